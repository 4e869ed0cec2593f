"""The Slurm launcher end to end on a real local Slurm cluster: the controller script that the SSM
document runs (rendered as Run Command renders it) submits the real job script with sbatch, the
suite runs under torchrun across both nodes on the CPU device, the script waits for the job and
uploads the results in the layout the handler reads (``<run>/0/summary.json``).

Only the two things the local machine has no stand-in for are doubles: ``docker`` (a test double
that runs ``docker exec``'s command here, as remote.py's docstring describes) and ``aws`` (a test
double whose ``s3 cp`` copies into a directory standing in for the bucket). The cluster and its
rendezvous port come from the Slurm test harness (tests/cdk_trn_runtime/slurm/twin/harness.py),
which stops it and checks, by pid, that no daemon is left. Needs root, slurm-wlm, munge and torch.
"""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from cdk_trn.acceptance.document import SLURM_DOCUMENT_PARAMETERS, submit_script
from cdk_trn_runtime.acceptance import slurm_launcher
from cdk_trn_runtime.contract.acceptance import RUN_NODES_KEY
from tests.cdk_trn_runtime.slurm.twin.harness import NEEDS_ROOT_AND_SLURM, REPO, local_cluster
from tests.cdk_trn_runtime.suite.conftest import TINY_ARGS

pytestmark = [*NEEDS_ROOT_AND_SLURM, pytest.mark.torch]

DOCKER_DOUBLE = """#!/bin/bash
# Test double of docker: `ps` names a running container, `exec` runs its command here.
set -euo pipefail
case "$1" in
  ps) echo c0ffee00 ;;
  exec)
    shift
    dir=""
    while [ "$#" -gt 0 ]; do
      case "$1" in
        -i | -it) shift ;;
        -u) shift 2 ;;
        -w) dir="$2"; shift 2 ;;
        *) break ;;
      esac
    done
    shift  # the container
    if [ -n "$dir" ]; then cd "$dir"; fi
    exec "$@"
    ;;
  *) echo "docker double: unexpected $*" >&2; exit 64 ;;
esac
"""

AWS_DOUBLE = """#!/bin/bash
# Test double of the AWS CLI: `s3 cp [--recursive] SRC s3://bucket/key` copies under $FAKE_S3.
set -euo pipefail
[ "$1 $2" = "s3 cp" ] || { echo "aws double: unexpected $*" >&2; exit 64; }
shift 2
args=()
while [ "$#" -gt 0 ]; do
  case "$1" in
    --region) shift 2 ;;
    --recursive | --only-show-errors | --no-follow-symlinks) shift ;;
    --exclude) exclude="${2%%/*}"; shift 2 ;;  # a top directory, `dir/*`, as the script uses it
    *) args+=("$1"); shift ;;
  esac
done
dest="$FAKE_S3/${args[1]#s3://}"
if [ -d "${args[0]}" ]; then
  mkdir -p "$dest"
  shopt -s nullglob dotglob
  for entry in "${args[0]}"/*; do
    if [ "$(basename "$entry")" != "${exclude:-}" ]; then cp -r "$entry" "$dest/"; fi
  done
else
  mkdir -p "$(dirname "$dest")" && cp "${args[0]}" "$dest"
fi
"""


def _render(values: dict[str, str]) -> str:
    """The controller script with every parameter filled, as Run Command fills it."""
    assert set(values) == set(SLURM_DOCUMENT_PARAMETERS)
    for name, value in values.items():
        assert re.fullmatch(SLURM_DOCUMENT_PARAMETERS[name][1], value), (name, value)
    return re.sub(r"\{\{ (\w+) \}\}", lambda m: values[m.group(1)], submit_script())


def test_the_controller_script_runs_the_suite_as_a_slurm_job_and_uploads_its_results():
    with local_cluster(prefix="cdk-trn-acceptance-slurm-") as cluster:
        root, shared = cluster.root, cluster.layout.shared
        doubles = root / "doubles"
        doubles.mkdir()
        for name, text in (("docker", DOCKER_DOUBLE), ("aws", AWS_DOUBLE)):
            (doubles / name).write_text(text)
            (doubles / name).chmod(0o755)
        fake_s3 = root / "fake-s3"
        run_id = "acceptance-0123456789ab"
        # The twin's one partition, as its Slurm names it (the launcher counts its idle nodes).
        partition = cluster.run("sinfo", "-h", "-o", "%R").stdout.split()
        assert len(partition) == 1, partition
        script = _render(
            {
                "Region": "us-east-2",
                "RunId": run_id,
                "Nodes": "2",
                "ProcsPerNode": "1",
                "Partition": partition[0],
                "JobUser": "trn",
                "ControllerContainer": "cdk-trn-slurmctld",
                "RunsDir": f"{shared}/acceptance",
                "RendezvousPort": str(cluster.rendezvous_port()),
                "NeuronCommPort": "46820",
                "ResultsUri": f"s3://results-bucket/acceptance-runs/{run_id}/",
                "CompileCacheDir": f"{shared}/neuron-compile-cache",
                "ExpectedNeuronDevices": "0",
                "ExpectedEfaDevices": "0",
                "SuiteArgs": " ".join(TINY_ARGS),
                "ExecutionTimeout": "900",
                "DrainList": "",  # a run, as the handler sends it; not a drain-only command
                "DrainFor": "replace",
                "NodeList": "",  # any idle nodes of the partition
            }
        )
        (root / "submit.sh").write_text(script)
        run_env = {
            **cluster.env,
            "PYTHONPATH": str(REPO),
            "PATH": f"{doubles}:{cluster.env['PATH']}",
            "FAKE_S3": str(fake_s3),
            "CDK_TRN_ACCEPTANCE_POLL_SECONDS": "2",
            "OMP_NUM_THREADS": "1",
        }
        done = subprocess.run(
            ["bash", str(root / "submit.sh")],
            capture_output=True,
            text=True,
            env=run_env,
            timeout=600,
            cwd="/",
        )
        assert done.returncode == 0, done.stdout + done.stderr
        job = re.search(r"submitted Slurm job (\d+): 2 nodes x 1 processes", done.stdout)
        assert job, done.stdout
        uploaded = fake_s3 / "results-bucket" / "acceptance-runs" / run_id
        summary = json.loads((uploaded / "0" / "summary.json").read_text())
        assert summary["passed"] is True, summary.get("failures")
        assert summary["run_id"] == run_id
        assert summary["world_size"] == 2
        assert (uploaded / "1" / "rank-1.json").is_file()
        assert (uploaded / "1" / "node-1.log").is_file()
        # Slurm's word on the job's nodes (the only ones a failure may get replaced), written to
        # S3 beside the results, names the nodes the results came from.
        ran_on = slurm_launcher.parse_run_nodes((uploaded / RUN_NODES_KEY).read_text())
        named = {json.loads(p.read_text())["node"] for p in uploaded.glob("*/rank-*.json")}
        assert ran_on == named and len(named) == 2, (ran_on, named, done.stdout)
        job_log = (uploaded / f"slurm-{job.group(1)}.out").read_text()
        assert "acceptance.sbatch: the suite exited with status 0" in job_log
        # The job script beside the results is the one shipped in the document.
        assert (shared / "acceptance" / run_id / "acceptance.sbatch").read_text() == (
            REPO / "cdk_trn_runtime" / "acceptance" / "acceptance.sbatch"
        ).read_text()
