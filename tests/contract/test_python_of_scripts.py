"""The Python the shell scripts run, moved out of them into runtime modules: each tested as
functions, and each runnable the way its script runs it (a file, ``python3 -I``: the standard
library only, nothing from the working directory)."""

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

SPEC = json.dumps({"job_user": "trn", "job_uid": 2000, "document_parameter": None, "nodes": 4})


def _run_isolated(module, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-I", module.__file__, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={"PATH": "/usr/bin:/bin"},
    )


@pytest.mark.parametrize("module", [cluster_spec, neuron_report, host_checks])
def test_a_script_s_module_runs_as_an_isolated_file_ignoring_the_working_directory(
    tmp_path, module
):
    # A job-writable directory holding a json.py: an isolated run never imports it.
    (tmp_path / "json.py").write_text("raise SystemExit('imported the planted json.py')\n")
    done = _run_isolated(module, cwd=tmp_path)
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


def test_the_controller_s_command_line_prints_the_document_and_values(tmp_path):
    done = _run_isolated(cluster_spec, "get", SPEC, "job_uid", cwd=tmp_path)
    assert done.stdout == "2000\n"
    done = _run_isolated(cluster_spec, "get", SPEC, "job_home", cwd=tmp_path)
    assert done.returncode != 0 and done.stdout == ""
    done = _run_isolated(cluster_spec, "document", SPEC, "h", "a", cwd=tmp_path)
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


def test_the_collector_s_command_line_prints_two_figures(tmp_path):
    done = _run_isolated(neuron_report, json.dumps(_report(50, 25, memory=7)), cwd=tmp_path)
    assert done.stdout == "37.50 7\n"


def test_the_eif_s_pcr0_is_compared_without_case(tmp_path):
    measurements = tmp_path / "eif.json"
    measurements.write_text(json.dumps({"Measurements": {"PCR0": "ABCD"}}))
    assert host_checks.eif_pcr0(json.loads(measurements.read_text())) == "abcd"
    right = _run_isolated(host_checks, "pcr0", str(measurements), "abcd", cwd=tmp_path)
    assert right.returncode == 0
    wrong = _run_isolated(host_checks, "pcr0", str(measurements), "abce", cwd=tmp_path)
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
def test_the_enclave_must_run_alone_in_production_mode(tmp_path, enclaves, ok):
    assert host_checks.runs_in_production(host_checks.named_enclaves(enclaves, "v")) is ok
    path = tmp_path / "enclaves.json"
    path.write_text(json.dumps(enclaves))
    done = _run_isolated(host_checks, "enclave", str(path), "v", cwd=tmp_path)
    assert (done.returncode == 0) is ok


def test_the_public_key_is_published_as_pem(tmp_path):
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
    assert _run_isolated(host_checks, "public-key-pem", str(path), cwd=tmp_path).stdout == pem
