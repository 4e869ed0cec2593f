"""The Slurm launcher (submit_suite.sh) never queues the acceptance job behind users' jobs: with
fewer idle nodes than the run needs it submits nothing, and a job still pending for lack of
nodes is cancelled; both exit with the busy status the handler turns into a fast failure (or,
with ``WhenBusy=report``, a report). Run against command doubles for docker (the controller's
container: sinfo, squeue, sbatch, scancel, scontrol) and aws."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from cdk_trn_runtime.contract import ACCEPTANCE_BUSY_EXIT

SCRIPT = Path(__file__).parents[2] / "cdk_trn_runtime/acceptance/submit_suite.sh"
PARAMETERS = {
    "Region": "us-east-2",
    "RunId": "run-1",
    "Nodes": "2",
    "ProcsPerNode": "2",
    "Partition": "trn",
    "JobUser": "trn",
    "ControllerContainer": "cdk-trn-slurmctld",
    "RendezvousPort": "29400",
    "NeuronCommPort": "46820",
    "ResultsUri": "s3://results-double/acceptance-runs/run-1/",
    "CompileCacheDir": "/fsx/neuron-compile-cache",
    "ExpectedNeuronDevices": "16",
    "ExpectedEfaDevices": "16",
    "SuiteArgs": "",
    "ExecutionTimeout": "3000",
    "DrainAddresses": "",
}

#: Test double of docker: records every call; answers as the controller's container would, from
#: $IDLE_NODES (sinfo's idle count) and $JOB_STATE (squeue's line for job 42).
DOCKER_DOUBLE = """#!/bin/bash
echo "docker $*" >> "$CALLS"
# docker exec -i reads its input (the job script), as the real one does.
case " $* " in *" -i "*) cat >/dev/null ;; esac
case "$*" in
  "ps "*) echo container-id ;;
  *" sinfo -h -N "*) printf 'ip-10-64-0-9 10.64.0.9\nip-10-64-0-12 10.64.0.12\n' ;;
  *" sinfo "*) echo "$IDLE_NODES" ;;
  *" sbatch "*) echo 42 ;;
  *" squeue -h -j 42 "*) [ -n "$JOB_STATE" ] && echo "$JOB_STATE" ;;
  *" scontrol show job "*) echo "JobId=42 JobState=CANCELLED ExitCode=0:0" ;;
esac
exit 0
"""
AWS_DOUBLE = '#!/bin/bash\necho "aws $*" >> "$CALLS"\n'


def run(
    tmp_path: Path, idle: int, job_state: str = "", drain: str = ""
) -> tuple[int, str, list[str]]:
    runs = tmp_path / "runs"
    parameters = {**PARAMETERS, "RunsDir": str(runs), "DrainAddresses": drain}
    text = re.sub(r"\{\{ (\w+) \}\}", lambda m: parameters[m.group(1)], SCRIPT.read_text())
    script = tmp_path / "submit.sh"
    script.write_text(text)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (("docker", DOCKER_DOUBLE), ("aws", AWS_DOUBLE)):
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    calls = tmp_path / "calls.log"
    calls.touch()
    result = subprocess.run(
        ["bash", str(script)],
        env={
            "PATH": f"{bin_dir}:/usr/bin:/bin",
            "CALLS": str(calls),
            "IDLE_NODES": str(idle),
            "JOB_STATE": job_state,
            "CDK_TRN_ACCEPTANCE_POLL_SECONDS": "0",
            "CDK_TRN_ACCEPTANCE_BUSY_SECONDS": "0",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result.returncode, result.stderr, calls.read_text().splitlines()


def test_fewer_idle_nodes_than_the_run_needs_submit_nothing_and_exit_busy(tmp_path):
    code, stderr, calls = run(tmp_path, idle=1)
    assert code == ACCEPTANCE_BUSY_EXIT
    assert not any(" sbatch " in c for c in calls)
    assert "cluster busy: 1 of the 2 nodes the run needs are idle in partition trn" in stderr


def test_a_job_pending_for_lack_of_nodes_is_cancelled_not_queued(tmp_path):
    code, stderr, calls = run(tmp_path, idle=2, job_state="PENDING Resources")
    assert code == ACCEPTANCE_BUSY_EXIT
    assert any(c.endswith("scancel 42") for c in calls)
    assert "Slurm job 42 still PENDING Resources" in stderr


def test_with_enough_idle_nodes_the_job_runs_to_its_end(tmp_path):
    code, _, calls = run(tmp_path, idle=2, job_state="")
    # The job double ends at once (CANCELLED here): not busy, an ordinary failed job.
    assert code == 1
    assert any(" sbatch " in c for c in calls)


def test_a_drain_only_command_drains_the_nodes_at_those_addresses_and_runs_nothing(tmp_path):
    code, _, calls = run(tmp_path, idle=2, drain="10.64.0.9")
    assert code == 0
    drains = [c for c in calls if " scontrol update " in c]
    assert drains == [
        "docker exec -u root -w / cdk-trn-slurmctld scontrol update nodename=ip-10-64-0-9 "
        "state=drain "
        "reason=cdk-trn acceptance: below threshold, being replaced"
    ]
    assert not any(" sbatch " in c for c in calls)
