"""The Python the shell scripts run, moved out of them into runtime modules: each tested as
functions, and each runnable the way its script runs it, as a file with ``python3 -I``, on this
Python and on AL2023's system python3 (3.9, ``tests/support/host_python.py``).

Root runs these files from the root-only bundle directory, so no job can put a module beside
them; what ``-I`` defends against is the environment: ``PYTHONPATH`` and ``PYTHONHOME`` are
ignored (as is the user site, and the script's own directory is left off ``sys.path``). The
working directory is never on ``sys.path`` when a file is run, with or without ``-I``, so a
module planted there proves nothing and is not tested.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest

from cdk_trn_runtime.monitoring import neuron_report
from cdk_trn_runtime.node import cluster_spec
from cdk_trn_runtime.vault import host_checks
from tests.support.host_python import host_python

SPEC = json.dumps({"job_user": "trn", "job_uid": 2000, "document_parameter": None, "nodes": 4})


MODULES = [cluster_spec, neuron_report, host_checks]
PLANTED = "raise SystemExit('imported the planted json.py')\n"


@pytest.fixture(params=["this", "3.9"])
def python(request) -> str:
    """This interpreter, and AL2023's system python3 (3.9) that the hosts run these files with."""
    return sys.executable if request.param == "this" else host_python()


def _run(
    python: str, *command: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [python, *command],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
    )


def _run_isolated(module, *args: str, cwd: Path, python: str = sys.executable):
    return _run(python, "-I", module.__file__, *args, cwd=cwd)


@pytest.mark.parametrize("module", MODULES)
def test_pythonpath_from_the_environment_is_ignored(tmp_path, module, python):
    planted = tmp_path / "planted"
    planted.mkdir()
    (planted / "json.py").write_text(PLANTED)
    env = {"PYTHONPATH": str(planted)}
    # Without -I the planted json.py is imported: the test can fail.
    assert "planted" in _run(python, module.__file__, cwd=tmp_path, env=env).stderr
    done = _run(python, "-I", module.__file__, cwd=tmp_path, env=env)
    assert done.returncode == 2 and "usage:" in done.stderr, done.stderr


@pytest.mark.parametrize("module", MODULES)
def test_pythonhome_from_the_environment_is_ignored(tmp_path, module, python):
    # PYTHONHOME names the standard library; an empty one: without -I nothing starts.
    env = {"PYTHONHOME": str(tmp_path)}
    assert _run(python, module.__file__, cwd=tmp_path, env=env).returncode not in (0, 2)
    done = _run(python, "-I", module.__file__, cwd=tmp_path, env=env)
    assert done.returncode == 2 and "usage:" in done.stderr, done.stderr


@pytest.mark.parametrize("module", MODULES)
def test_a_module_beside_the_file_is_not_imported(tmp_path, module, python):
    # Depth only (the bundle directory is root's): -I leaves the script's directory off sys.path.
    copy = tmp_path / Path(module.__file__).name
    copy.write_text(Path(module.__file__).read_text())
    (tmp_path / "json.py").write_text(PLANTED)
    assert "planted" in _run(python, str(copy), cwd=tmp_path).stderr
    done = _run(python, "-I", str(copy), cwd=tmp_path)
    assert done.returncode == 2 and "usage:" in done.stderr, done.stderr


def test_the_controller_s_document_adds_what_only_the_instance_knows():
    document = json.loads(cluster_spec.instance_document(SPEC, "ip-10-0-0-5", "cdk-trn-slurmctld"))
    assert document["controller_host"] == "ip-10-0-0-5"
    assert document["controller_addr"] == "cdk-trn-slurmctld"
    assert document["nodes"] == 4


def test_the_controller_reads_one_value_of_the_document():
    assert cluster_spec.value(SPEC, "job_user") == "trn"
    assert cluster_spec.value(SPEC, "job_uid") == "2000"
    assert cluster_spec.value(SPEC, "document_parameter", "") == ""
    with pytest.raises(KeyError, match="no 'job_home'"):
        cluster_spec.value(SPEC, "job_home")
    with pytest.raises(ValueError, match="not a JSON object"):
        cluster_spec.value("[]", "job_user")


def test_the_controller_s_command_line_prints_the_document_and_values(tmp_path, python):
    done = _run_isolated(cluster_spec, "get", SPEC, "job_uid", cwd=tmp_path, python=python)
    assert done.stdout == "2000\n"
    done = _run_isolated(cluster_spec, "get", SPEC, "job_home", cwd=tmp_path, python=python)
    assert done.returncode != 0 and done.stdout == ""
    done = _run_isolated(cluster_spec, "document", SPEC, "h", "a", cwd=tmp_path, python=python)
    assert json.loads(done.stdout)["controller_host"] == "h"


def _report(*cores: float, memory: int = 0) -> dict:
    return {
        "neuron_runtime_data": [
            {
                "report": {
                    "neuroncore_counters": {
                        "neuroncores_in_use": {
                            str(i): {"neuroncore_utilization": c} for i, c in enumerate(cores)
                        }
                    },
                    "memory_used": {"neuron_runtime_used_bytes": {"neuron_device": memory}},
                }
            }
        ]
    }


def test_neuron_figures_are_the_mean_core_utilization_and_the_memory_in_use():
    assert neuron_report.neuron_figures(_report(80, 60, 40, memory=1024)) == (60.0, 1024)
    assert neuron_report.neuron_figures({"neuron_runtime_data": None}) == (0.0, 0)


def test_the_collector_s_command_line_prints_two_figures(tmp_path, python):
    report = json.dumps(_report(50, 25, memory=7))
    done = _run_isolated(neuron_report, report, cwd=tmp_path, python=python)
    assert done.stdout == "37.50 7\n"


def test_the_eif_s_pcr0_is_compared_without_case(tmp_path, python):
    measurements = tmp_path / "eif.json"
    measurements.write_text(json.dumps({"Measurements": {"PCR0": "ABCD"}}))
    assert host_checks.eif_pcr0(json.loads(measurements.read_text())) == "abcd"
    right = _run_isolated(
        host_checks, "pcr0", str(measurements), "abcd", cwd=tmp_path, python=python
    )
    assert right.returncode == 0
    wrong = _run_isolated(
        host_checks, "pcr0", str(measurements), "abce", cwd=tmp_path, python=python
    )
    assert wrong.returncode == 1 and wrong.stdout == "EIF PCR0 abcd\n"


@pytest.mark.parametrize(
    ("enclaves", "ok"),
    [
        ([{"EnclaveName": "v", "State": "RUNNING", "Flags": "NONE"}], True),
        ([{"EnclaveName": "v", "State": "RUNNING", "Flags": "DEBUG_MODE"}], False),
        ([{"EnclaveName": "v", "State": "TERMINATING", "Flags": "NONE"}], False),
        ([{"EnclaveName": "v", "State": "RUNNING", "Flags": "NONE"}] * 2, False),
        ([{"EnclaveName": "other", "State": "RUNNING", "Flags": "NONE"}], False),
    ],
)
def test_the_enclave_must_run_alone_in_production_mode(tmp_path, enclaves, ok, python):
    assert host_checks.runs_in_production(host_checks.named_enclaves(enclaves, "v")) is ok
    path = tmp_path / "enclaves.json"
    path.write_text(json.dumps(enclaves))
    done = _run_isolated(host_checks, "enclave", str(path), "v", cwd=tmp_path, python=python)
    assert (done.returncode == 0) is ok


def test_the_public_key_is_published_as_pem(tmp_path, python):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    public = ec.generate_private_key(ec.SECP384R1()).public_key()
    der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    state = {"public_key": base64.b64encode(der).decode()}
    assert host_checks.public_key_pem(state) == pem
    path = tmp_path / "state.json"
    path.write_text(json.dumps(state))
    done = _run_isolated(host_checks, "public-key-pem", str(path), cwd=tmp_path, python=python)
    assert done.stdout == pem
