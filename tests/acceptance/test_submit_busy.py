"""The Slurm launcher (submit_suite.sh) never queues the acceptance job behind users' jobs: with
fewer idle nodes than the run needs it submits nothing, and a job still pending for lack of
nodes is cancelled; both exit with the busy status the handler turns into a fast failure (or,
with ``WhenBusy=report``, a report). Run against command doubles for docker (the controller's
container: sinfo, squeue, sbatch, scancel, scontrol) and aws."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from cdk_trn_runtime.acceptance import refresh, slurm_launcher
from cdk_trn_runtime.contract import ACCEPTANCE_BUSY_EXIT
from cdk_trn_runtime.contract.acceptance import ACCEPTANCE_NOT_READY_EXIT, RUN_NODES_LINE
from tests.acceptance.handler_doubles import load_handler

handler = load_handler()

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
    "DrainFor": "replace",
    "NodeAddresses": "",
}

#: Test double of docker: records every call; answers as the controller's container would, from
#: $IDLE_NODES (sinfo's idle count), $JOB_STATE (squeue's line for job 42), $JOB_NODES (job 42's
#: node list, comma-separated, as squeue -t all prints it after the job) and the node table
#: $NODE_TABLE (lines ``<name> <address> <state> <job ids or ->``), whose states a drain changes
#: as Slurm does (idle -> drained, allocated or mixed -> draining).
DOCKER_DOUBLE = """#!/bin/bash
echo "docker $*" >> "$CALLS"
# docker exec -i reads its input (the job script), as the real one does.
case " $* " in *" -i "*) cat >/dev/null ;; esac
after() { sed -n "s/.* $1 \\([^ ]*\\).*/\\1/p" <<<"$*"; }
case "$*" in
  "ps "*) echo container-id ;;
  *" squeue -h -t all -j 42 -o %N") [ -n "$JOB_NODES" ] && echo "$JOB_NODES" ;;
  *" scontrol show hostnames "*) tr , '\n' <<<"${*: -1}" ;;
  *" sinfo -h -N -n "*) awk -v n="$(after -n "$*")" '$1 == n {print $3}' "$NODE_TABLE" ;;
  *" sinfo -h -N "*) awk '{print $1, $2, $3}' "$NODE_TABLE" ;;
  *" sinfo "*) echo "$IDLE_NODES" ;;
  *" squeue -h -w "*)
    awk -v n="$(after -w "$*")" '$1 == n && $4 != "-" {gsub(",", "\\n", $4); print $4}' \
      "$NODE_TABLE" ;;
  *" scontrol update "*)
    name=$(sed -n 's/.*nodename=\\([^ ]*\\).*/\\1/p' <<<"$*")
    awk -v n="$name" '$1 == n {sub(/^idle$/, "drained", $3)}
      $1 == n {sub(/^(allocated|mixed)$/, "draining", $3)} {print}' \\
      "$NODE_TABLE" > "$NODE_TABLE.new" && mv "$NODE_TABLE.new" "$NODE_TABLE" ;;
  *" sbatch "*) echo 42 ;;
  *" squeue -h -j 42 "*) [ -n "$JOB_STATE" ] && echo "$JOB_STATE" ;;
  *" scontrol show job "*) echo "JobId=42 JobState=CANCELLED ExitCode=0:0" ;;
esac
exit 0
"""
#: The two nodes, both idle.
IDLE_TABLE = "ip-10-64-0-9 10.64.0.9 idle -\nip-10-64-0-12 10.64.0.12 idle -\n"
AWS_DOUBLE = '#!/bin/bash\necho "aws $*" >> "$CALLS"\n'


def run(
    tmp_path: Path,
    idle: int,
    job_state: str = "",
    drain: str = "",
    drain_for: str = "replace",
    nodes: str = "",
    table: str = IDLE_TABLE,
) -> tuple[int, str, list[str]]:
    result = run_script(tmp_path, idle, job_state, drain, drain_for, nodes, table)
    return result.returncode, result.stderr, (tmp_path / "calls.log").read_text().splitlines()


def run_script(
    tmp_path: Path,
    idle: int,
    job_state: str = "",
    drain: str = "",
    drain_for: str = "replace",
    nodes: str = "",
    table: str = IDLE_TABLE,
    job_nodes: str = "",
) -> subprocess.CompletedProcess[str]:
    runs = tmp_path / "runs"
    parameters = {
        **PARAMETERS,
        "RunsDir": str(runs),
        "DrainAddresses": drain,
        "DrainFor": drain_for,
        "NodeAddresses": nodes,
    }
    (tmp_path / "nodes.table").write_text(table)
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
    return subprocess.run(
        ["bash", str(script)],
        env={
            "PATH": f"{bin_dir}:/usr/bin:/bin",
            "CALLS": str(calls),
            "NODE_TABLE": str(tmp_path / "nodes.table"),
            "IDLE_NODES": str(idle),
            "JOB_STATE": job_state,
            "JOB_NODES": job_nodes,
            "CDK_TRN_ACCEPTANCE_POLL_SECONDS": "0",
            "CDK_TRN_ACCEPTANCE_BUSY_SECONDS": "0",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )


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


def test_after_the_job_its_nodes_are_reported_by_address_from_slurm(tmp_path):
    done = run_script(tmp_path, idle=2, job_nodes="ip-10-64-0-12,ip-10-64-0-9")
    assert done.returncode == 1  # the job double ends CANCELLED
    # Asked of Slurm as its admin, after the job; the handler reads the first such line.
    calls = (tmp_path / "calls.log").read_text()
    assert "docker exec -u root -w / cdk-trn-slurmctld squeue -h -t all -j 42 -o %N" in calls
    [line] = [x for x in done.stdout.splitlines() if x.startswith(RUN_NODES_LINE)]
    assert line == f"{RUN_NODES_LINE} 10.64.0.12,10.64.0.9"
    assert slurm_launcher.parse_run_nodes(done.stdout) == {"10.64.0.12", "10.64.0.9"}


def test_when_slurm_does_not_name_the_jobs_nodes_the_run_names_none(tmp_path):
    done = run_script(tmp_path, idle=2, job_nodes="")
    assert f"{RUN_NODES_LINE} -\n" in done.stdout
    assert slurm_launcher.parse_run_nodes(done.stdout) == set()


def test_a_drain_for_replacement_reports_what_slurm_says_after_the_drain(tmp_path):
    done = run_script(tmp_path, idle=1, drain="10.64.0.9,10.64.0.12", table=BUSY_TABLE)
    assert done.returncode == 0, done.stderr
    report = refresh.parse_refresh_report(done.stdout)
    assert {a: (n.state, n.jobs, n.replaceable) for a, n in report.items()} == {
        "10.64.0.9": ("drained", (), True),
        "10.64.0.12": ("draining", ("41", "42"), False),
    }


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


# --- an image refresh --------------------------------------------------------------------------

BUSY_TABLE = "ip-10-64-0-9 10.64.0.9 idle -\nip-10-64-0-12 10.64.0.12 mixed 41,42\n"


def test_a_refresh_drains_every_stale_node_and_reports_what_slurm_says_after_the_drain(tmp_path):
    done = run_script(
        tmp_path, idle=1, drain="10.64.0.9,10.64.0.12", drain_for="refresh-if-idle",
        table=BUSY_TABLE,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    calls = (tmp_path / "calls.log").read_text()
    assert calls.count(" scontrol update ") == 2
    assert "reason=cdk-trn: image refresh" in calls
    assert not any(" sbatch " in c for c in calls.splitlines())
    # The handler reads this report: only the idle node, now drained, may be replaced.
    report = refresh.parse_refresh_report(done.stdout)
    assert {a: (n.name, n.state, n.jobs, n.replaceable) for a, n in report.items()} == {
        "10.64.0.9": ("ip-10-64-0-9", "drained", (), True),
        "10.64.0.12": ("ip-10-64-0-12", "draining", ("41", "42"), False),
    }


def test_a_refresh_if_idle_with_no_idle_node_drains_nothing(tmp_path):
    table = "ip-10-64-0-9 10.64.0.9 allocated 7\nip-10-64-0-12 10.64.0.12 mixed 41,42\n"
    done = run_script(
        tmp_path, idle=0, drain="10.64.0.9,10.64.0.12", drain_for="refresh-if-idle", table=table
    )
    assert done.returncode == 0, done.stderr
    assert " scontrol update " not in (tmp_path / "calls.log").read_text()
    assert "cdk-trn refresh: 10.64.0.12 ip-10-64-0-12 mixed 41,42" in done.stdout


def test_a_run_on_named_nodes_submits_to_exactly_those(tmp_path):
    code, _, calls = run(tmp_path, idle=2, nodes="10.64.0.9,10.64.0.12")
    [sbatch] = [c for c in calls if " sbatch " in c]
    assert " -N 2 --exclusive " in sbatch
    assert " --nodelist ip-10-64-0-9,ip-10-64-0-12 " in sbatch


def test_a_run_on_named_nodes_one_of_which_a_user_holds_is_busy(tmp_path):
    code, stderr, calls = run(tmp_path, idle=1, nodes="10.64.0.9,10.64.0.12", table=BUSY_TABLE)
    assert code == ACCEPTANCE_BUSY_EXIT
    assert "users' jobs hold ip-10-64-0-12 (mixed)" in stderr
    assert not any(" sbatch " in c for c in calls)


def test_a_run_on_a_node_not_in_slurm_yet_is_not_ready(tmp_path):
    code, stderr, calls = run(tmp_path, idle=2, nodes="10.64.0.9,10.64.0.30")
    assert code == ACCEPTANCE_NOT_READY_EXIT
    assert "10.64.0.30 (not in Slurm yet)" in stderr
    assert not any(" sbatch " in c for c in calls)
