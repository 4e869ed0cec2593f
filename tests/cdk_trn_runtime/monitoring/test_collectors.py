"""slurm_metrics.sh and node_metrics.sh against command doubles (sinfo, squeue, neuron-monitor)
and a fake /sys tree: their output is the metric data put-metric-data takes, named as the
contract (and so the dashboard) names them."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from cdk_trn_runtime import contract

MONITORING = Path(__file__).resolve().parents[3] / "cdk_trn_runtime" / "monitoring"
CLUSTER = [{"Name": contract.METRIC_DIMENSION_CLUSTER, "Value": "trn-test"}]


def _double(path: Path, body: str) -> None:
    path.write_text("#!/bin/bash\n# Test double.\n" + body)
    path.chmod(0o755)


def _run(script: str, bin_dir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(MONITORING / script), *args],
        env={"PATH": f"{bin_dir}:/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def _values(stdout: str) -> dict[str, tuple[float, str]]:
    data = json.loads(stdout)
    assert all(d["Dimensions"] == CLUSTER for d in data)
    return {d["MetricName"]: (d["Value"], d["Unit"]) for d in data}


# --- Slurm ------------------------------------------------------------------------------------

SINFO = """\
trn-1 idle
trn-2 alloc
trn-3 mix
trn-4 drain
trn-5 drng
trn-6 down*
trn-7 idle*
trn-8 comp
trn-9 idle~
trn-1 idle
"""


@pytest.fixture
def slurm_bin(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    sinfo = tmp_path / "sinfo.out"
    sinfo.write_text(SINFO)
    _double(bin_dir / "sinfo", f'[ "$*" = "-h -N -o %N %t" ] || exit 9\ncat {sinfo}\n')
    _double(
        bin_dir / "squeue",
        'case "$*" in\n'
        '  "-h -t RUNNING -o %A") printf "11\\n12\\n" ;;\n'
        '  "-h -t PENDING -o %A") printf "13\\n14\\n15\\n" ;;\n'
        "  *) exit 9 ;;\n"
        "esac\n",
    )
    return bin_dir


def test_slurm_metrics_count_each_node_once_in_its_state_and_the_queue(slurm_bin):
    result = _run("slurm_metrics.sh", slurm_bin, "trn-test")
    assert result.returncode == 0, result.stderr
    values = _values(result.stdout)
    assert set(values) == {*contract.SLURM_NODE_STATE_METRICS, *contract.SLURM_JOB_METRICS}
    assert {k: v for k, (v, _) in values.items()} == {
        "NodesIdle": 2,  # trn-1 (listed twice: two partitions), trn-9 (powered off, idle)
        "NodesAllocated": 2,  # trn-2, trn-8 (completing)
        "NodesMixed": 1,
        "NodesDrained": 2,  # drained and draining
        "NodesDown": 2,  # down, and idle but not responding
        "JobsRunning": 2,
        "JobsPending": 3,
    }
    assert {unit for _, unit in values.values()} == {"Count"}


def test_slurm_metrics_with_an_empty_cluster_report_zeros(slurm_bin, tmp_path):
    (tmp_path / "sinfo.out").write_text("")
    _double(slurm_bin / "squeue", "exit 0\n")
    result = _run("slurm_metrics.sh", slurm_bin, "trn-test")
    assert result.returncode == 0, result.stderr
    assert {v for v, _ in _values(result.stdout).values()} == {0}


def test_slurm_metrics_print_nothing_when_slurm_does_not_answer(slurm_bin):
    _double(slurm_bin / "sinfo", "echo 'slurm_load_partitions: Unable to contact' >&2\nexit 1\n")
    result = _run("slurm_metrics.sh", slurm_bin, "trn-test")
    assert result.returncode == 1
    assert result.stdout == ""


@pytest.mark.parametrize("name", ["", "Trn", 'x","Value":"y', "a b"])
def test_slurm_metrics_refuse_a_bad_cluster_name(slurm_bin, name):
    result = _run("slurm_metrics.sh", slurm_bin, name)
    assert result.returncode == 2
    assert result.stdout == ""


# --- Node: neuron-monitor and EFA counters ---------------------------------------------------

REPORT = {
    "neuron_runtime_data": [
        {
            "report": {
                "neuroncore_counters": {
                    "neuroncores_in_use": {
                        "0": {"neuroncore_utilization": 80.0},
                        "1": {"neuroncore_utilization": 60.0},
                    }
                },
                "memory_used": {"neuron_runtime_used_bytes": {"neuron_device": 1000, "host": 5}},
            }
        },
        {
            "report": {
                "neuroncore_counters": {
                    "neuroncores_in_use": {"2": {"neuroncore_utilization": 40.0}}
                },
                "memory_used": {"neuron_runtime_used_bytes": {"neuron_device": 24}},
            }
        },
    ],
    "system_data": {},
}


@pytest.fixture
def node(tmp_path: Path) -> dict[str, Path]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    report = tmp_path / "report.json"
    report.write_text(json.dumps(REPORT) + "\n")
    # neuron-monitor streams reports until its reader goes (SIGPIPE); the collector takes the first.
    _double(bin_dir / "neuron-monitor", f"while cat {report}; do sleep 0.2; done\n")
    root = tmp_path / "root"
    for device in ("rdmap0s0", "rdmap1s0"):
        counters = root / "sys" / "class" / "infiniband" / device / "ports" / "1" / "hw_counters"
        counters.mkdir(parents=True)
    return {"bin": bin_dir, "root": root, "state": tmp_path / "state" / "efa", "report": report}


def _counters(node: dict[str, Path], tx: tuple[int, int], rx: tuple[int, int], drops: int) -> None:
    for i, device in enumerate(("rdmap0s0", "rdmap1s0")):
        base = node["root"] / "sys" / "class" / "infiniband" / device / "ports" / "1"
        (base / "hw_counters" / "tx_bytes").write_text(f"{tx[i]}\n")
        (base / "hw_counters" / "rx_bytes").write_text(f"{rx[i]}\n")
        (base / "hw_counters" / "rx_drops").write_text(f"{drops if i == 0 else 0}\n")


def _node_run(node: dict[str, Path]) -> subprocess.CompletedProcess[str]:
    return _run(
        "node_metrics.sh",
        node["bin"],
        "trn-test",
        CDK_TRN_DEVICE_ROOT=str(node["root"]),
        CDK_TRN_METRICS_STATE=str(node["state"]),
    )


def test_node_metrics_report_neuron_figures_then_efa_increases(node):
    _counters(node, tx=(100, 200), rx=(10, 20), drops=1)
    first = _node_run(node)
    assert first.returncode == 0, first.stderr
    # The first run has no EFA baseline: Neuron figures only.
    assert _values(first.stdout) == {
        "NeuronCoreUtilization": (60.0, "Percent"),  # mean of 80, 60, 40
        "NeuronDeviceMemoryUsed": (1024, "Bytes"),
    }
    _counters(node, tx=(150, 260), rx=(15, 20), drops=4)
    second = _values(_node_run(node).stdout)
    assert {k: v for k, v in second.items() if k.startswith("Efa")} == {
        "EfaTxBytes": (110, "Bytes"),
        "EfaRxBytes": (5, "Bytes"),
        "EfaRxDrops": (3, "Count"),
    }
    assert set(second) == {*contract.NODE_NEURON_METRICS, *contract.NODE_EFA_COUNTERS.values()}


def test_node_metrics_take_a_counter_reset_as_a_new_baseline(node):
    _counters(node, tx=(100, 200), rx=(10, 20), drops=5)
    _node_run(node)
    _counters(node, tx=(1, 2), rx=(30, 40), drops=0)
    values = _values(_node_run(node).stdout)
    assert "EfaTxBytes" not in values and "EfaRxDrops" not in values
    assert values["EfaRxBytes"] == (40, "Bytes")
    _counters(node, tx=(11, 2), rx=(30, 40), drops=0)
    assert _values(_node_run(node).stdout)["EfaTxBytes"] == (10, "Bytes")


def test_node_without_neuron_applications_reports_zero_utilization(node):
    node["report"].write_text(json.dumps({"neuron_runtime_data": [], "system_data": {}}) + "\n")
    values = _values(_node_run(node).stdout)
    assert values["NeuronCoreUtilization"] == (0, "Percent")
    assert values["NeuronDeviceMemoryUsed"] == (0, "Bytes")


def test_node_with_nothing_to_report_prints_nothing(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    result = _run(
        "node_metrics.sh",
        bin_dir,
        "trn-test",
        CDK_TRN_DEVICE_ROOT=str(tmp_path / "empty"),
        CDK_TRN_METRICS_STATE=str(tmp_path / "state"),
    )
    assert result.returncode == 3
    assert result.stdout == ""


def test_collectors_pass_shellcheck():
    result = subprocess.run(
        ["shellcheck", "-x", "slurm_metrics.sh", "node_metrics.sh"],
        cwd=MONITORING,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout


def test_the_training_image_ships_the_collectors_where_the_hosts_run_them():
    from cdk_trn.acceptance.image import BUNDLED_SUBPACKAGES

    assert "monitoring" in BUNDLED_SUBPACKAGES
    repo = MONITORING.parents[1]
    dockerfile = (repo / "cdk_trn_runtime" / "container" / "Dockerfile").read_text()
    assert "COPY cdk_trn_runtime /opt/cdk-trn/cdk_trn_runtime" in dockerfile
    boot = (repo / "cdk_trn_runtime" / "node" / "boot_common.sh").read_text()
    assert "IMAGE_MONITORING=/opt/cdk-trn/cdk_trn_runtime/monitoring\n" in boot
    node = (repo / "cdk_trn_runtime" / "node" / "node_bootstrap.sh").read_text()
    controller = (repo / "cdk_trn_runtime" / "node" / "controller_bootstrap.sh").read_text()
    assert 'publish_metrics "$CONTRACT_METRICS_NAMESPACE_NODE" ' in node
    assert 'publish_metrics "$CONTRACT_METRICS_NAMESPACE_SLURM" ' in controller
