"""The Slurm launcher (submit_suite.sh) never queues the acceptance job behind users' jobs: with
fewer idle nodes than the run needs it submits nothing, and a job still pending for lack of
nodes is cancelled; both exit with the busy status the handler turns into a fast failure (or,
with ``WhenBusy=report``, a report). Run against command doubles for docker (the controller's
container: sinfo, squeue, sbatch, scancel, scontrol) and aws."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from cdk_trn.acceptance.document import submit_script
from cdk_trn_runtime.acceptance import refresh, slurm_launcher
from cdk_trn_runtime.contract import ACCEPTANCE_BUSY_EXIT
from cdk_trn_runtime.contract.acceptance import (
    ACCEPTANCE_NOT_READY_EXIT,
    LIST_SUFFIX,
    REAPER_REFRESH_MARKER,
    REPORT_NO_REAPER_RULE,
    REPORT_SUFFIX,
    RUN_NODES_KEY,
)
from tests.cdk_trn_runtime.acceptance.handler_doubles import load_handler

handler = load_handler()

REAPER = Path(__file__).parents[3] / "cdk_trn_runtime/slurm/scripts/reaper.sh"
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
    "DrainList": "",
    "DrainFor": "replace",
    "NodeList": "",
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
  *" squeue -h --name="*)
    if [ -n "${LEFTOVER:-}" ] && [ ! -e "$NODE_TABLE.cancelled" ]; then echo "$LEFTOVER"; fi ;;
  *" scancel --name="*) touch "$NODE_TABLE.cancelled" ;;
  *" squeue -h -t all -j 42 -o %N") [ -n "$JOB_NODES" ] && echo "$JOB_NODES" ;;
  *" scontrol show hostnames "*) tr , '\n' <<<"${*: -1}" ;;
  *" sinfo -h -N -n "*) awk -v n="$(after -n "$*")" '$1 == n {print $3}' "$NODE_TABLE" ;;
  *" sinfo -h -N "*) awk '{print $1, $2, $3}' "$NODE_TABLE" ;;
  *" sinfo "*) echo "$IDLE_NODES" ;;
  *" squeue -h -w "*)
    awk -v n="$(after -w "$*")" '$1 == n && $4 != "-" {gsub(",", "\\n", $4); print $4}' \
      "$NODE_TABLE" ;;
  *" scontrol update "*)
    names=$(sed -n 's/.*nodename=\\([^ ]*\\).*/\\1/p' <<<"$*")
    awk -v names="$names" 'BEGIN {split(names, l, ","); for (i in l) d[l[i]] = 1}
      d[$1] {sub(/^idle$/, "drained", $3); sub(/^idle~$/, "drained~", $3)}
      d[$1] {sub(/^(allocated|mixed)$/, "draining", $3)} {print}' \\
      "$NODE_TABLE" > "$NODE_TABLE.new" && mv "$NODE_TABLE.new" "$NODE_TABLE" ;;
  *" sbatch "*) echo 42 ;;
  *" squeue -h -j 42 "*) [ -n "$JOB_STATE" ] && echo "$JOB_STATE" ;;
  *" scontrol show job "*) echo "JobId=42 JobState=CANCELLED ExitCode=0:0" ;;
esac
exit 0
"""
#: The two nodes, both idle.
IDLE_TABLE = "ip-10-64-0-9 10.64.0.9 idle -\nip-10-64-0-12 10.64.0.12 idle -\n"
#: Test double of the AWS CLI: records every call; ``s3 cp s3://bucket/key -`` prints the object
#: from $FAKE_S3, ``s3 cp FILE s3://bucket/key`` stores it there.
AWS_DOUBLE = """#!/bin/bash
echo "aws $*" >> "$CALLS"
args=()
for a in "$@"; do
  case "$a" in --region | us-east-2 | --only-show-errors) ;; *) args+=("$a") ;; esac
done
[ "${args[0]} ${args[1]}" = "s3 cp" ] || exit 0
src=${args[2]} dest=${args[3]:-}
if [ "$dest" = - ]; then cat "$FAKE_S3/${src#s3://}"; exit; fi
case "$dest" in
  s3://*) mkdir -p "$(dirname "$FAKE_S3/${dest#s3://}")"; cp "$src" "$FAKE_S3/${dest#s3://}" ;;
esac
"""
RESULTS = "results-double/acceptance-runs/run-1/"


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
    *,
    reaper: str | None = REAPER.read_text(),
    leftover: str = "",
    job_nodes: str = "",
) -> subprocess.CompletedProcess[str]:
    """The Slurm document's script as Run Command runs it; the lists (``drain``, ``nodes``:
    comma-separated addresses) are written where the handler writes them; ``reaper`` is the
    installed reaper's text (None: no reaper unit installed)."""
    runs = tmp_path / "runs"
    fake_s3 = tmp_path / "s3"
    lists = {}
    for stem, addresses in ((f"control/drain-{drain_for}", drain), ("control/nodes", nodes)):
        if addresses:
            path = fake_s3 / RESULTS / f"{stem}{LIST_SUFFIX}"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(a + "\n" for a in addresses.split(",")))
            lists[stem] = stem
    parameters = {
        **PARAMETERS,
        "RunsDir": str(runs),
        "DrainList": lists.get(f"control/drain-{drain_for}", ""),
        "DrainFor": drain_for,
        "NodeList": lists.get("control/nodes", ""),
    }
    (tmp_path / "nodes.table").write_text(table)
    text = re.sub(r"\{\{ (\w+) \}\}", lambda m: parameters[m.group(1)], submit_script())
    script = tmp_path / "submit.sh"
    script.write_text(text)
    unit = tmp_path / "cdk-trn-reaper.service"
    if reaper is not None:
        (tmp_path / "reaper.sh").write_text(reaper)
        unit.write_text(f"[Service]\nExecStart=/bin/bash {tmp_path / 'reaper.sh'}\n")
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
            "FAKE_S3": str(fake_s3),
            "LEFTOVER": leftover,
            "CDK_TRN_REAPER_UNIT": str(unit),
            "JOB_NODES": job_nodes,
            "CDK_TRN_ACCEPTANCE_POLL_SECONDS": "0",
            "CDK_TRN_ACCEPTANCE_BUSY_SECONDS": "0",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )


def report_of(tmp_path: Path, drain_for: str) -> str:
    """The drain report the script wrote under the run's prefix."""
    return (tmp_path / "s3" / RESULTS / f"control/drain-{drain_for}{REPORT_SUFFIX}").read_text()


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


def ran_on(tmp_path: Path) -> str:
    """The job's nodes the script wrote under the run's prefix (S3 double)."""
    return (tmp_path / "s3" / RESULTS / RUN_NODES_KEY).read_text()


def test_after_the_job_its_nodes_are_reported_by_address_from_slurm(tmp_path):
    done = run_script(tmp_path, idle=2, job_nodes="ip-10-64-0-12,ip-10-64-0-9")
    assert done.returncode == 1  # the job double ends CANCELLED
    # Asked of Slurm as its admin, after the job; written to S3 (not the command's output, which
    # SSM cuts at 24,000 characters), where the handler reads it.
    calls = (tmp_path / "calls.log").read_text()
    assert "docker exec -u root -w / cdk-trn-slurmctld squeue -h -t all -j 42 -o %N" in calls
    assert ran_on(tmp_path) == "10.64.0.12\n10.64.0.9\n"
    assert slurm_launcher.parse_run_nodes(ran_on(tmp_path)) == {"10.64.0.12", "10.64.0.9"}
    assert "job 42 ran on 2 nodes" in done.stdout
    assert "10.64.0.9" not in done.stdout


def test_when_slurm_does_not_name_the_jobs_nodes_the_run_names_none(tmp_path):
    done = run_script(tmp_path, idle=2, job_nodes="")
    assert ran_on(tmp_path) == ""
    assert slurm_launcher.parse_run_nodes(ran_on(tmp_path)) == set()
    assert "job 42 ran on 0 nodes" in done.stdout


def test_the_upload_of_the_jobs_results_leaves_control_out(tmp_path):
    # The job user writes the results directory: a control/ there (a forged list of the job's
    # nodes, or a drain report) is never uploaded where the handler reads them.
    forged = tmp_path / "runs" / "run-1" / "results" / RUN_NODES_KEY
    forged.parent.mkdir(parents=True)
    forged.write_text("10.64.7.77\n")
    run_script(tmp_path, idle=2, job_nodes="ip-10-64-0-9")
    [upload] = [c for c in (tmp_path / "calls.log").read_text().splitlines() if "--recursive" in c]
    assert upload.split(" --exclude ")[1].split()[0] == "control/*"
    assert upload.endswith(f" s3://{RESULTS}")


def test_a_list_of_a_thousand_nodes_is_written_whole(tmp_path):
    names = [f"ip-10-64-{i // 256}-{i % 256}" for i in range(1024)]
    table = "".join(f"{n} {n[3:].replace('-', '.')} allocated 42\n" for n in names)
    run_script(tmp_path, idle=1024, table=table, job_nodes=",".join(names))
    assert len(slurm_launcher.parse_run_nodes(ran_on(tmp_path))) == 1024


def test_a_drain_for_replacement_reports_what_slurm_says_after_the_drain(tmp_path):
    done = run_script(tmp_path, idle=1, drain="10.64.0.9,10.64.0.12", table=BUSY_TABLE)
    assert done.returncode == 0, done.stderr
    # Written to S3, where the handler's replacement round reads it (read_drain_report).
    report = refresh.parse_refresh_report(report_of(tmp_path, "replace"))
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
    # One call drains both (Slurm takes a list of names).
    assert "scontrol update nodename=ip-10-64-0-9,ip-10-64-0-12 state=drain" in calls
    assert "reason=cdk-trn: image refresh" in calls
    assert not any(" sbatch " in c for c in calls.splitlines())
    # The handler reads this report: only the idle node, now drained, may be replaced.
    report = refresh.parse_refresh_report(report_of(tmp_path, "refresh-if-idle"))
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
    assert "cdk-trn refresh: 10.64.0.12 ip-10-64-0-12 mixed 41,42" in report_of(
        tmp_path, "refresh-if-idle"
    )


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


# --- the controller's installed reaper, leftovers, size ------------------------------------------


def test_the_reaper_carries_the_marker_the_drain_command_looks_for():
    assert f"# {REAPER_REFRESH_MARKER}" in REAPER.read_text().splitlines()
    assert f"'# {REAPER_REFRESH_MARKER}'" in submit_script()


def test_without_the_reapers_refresh_rule_only_idle_nodes_are_drained(tmp_path):
    # A controller booted before the rule keeps its reaper: a busy node drained for the refresh
    # would never be replaced, so it is left undrained and the report says why.
    old_reaper = REAPER.read_text().replace(f"# {REAPER_REFRESH_MARKER}\n", "")
    done = run_script(
        tmp_path, idle=1, drain="10.64.0.9,10.64.0.12", drain_for="refresh", table=BUSY_TABLE,
        reaper=old_reaper,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    drains = [
        c for c in (tmp_path / "calls.log").read_text().splitlines() if "scontrol update" in c
    ]
    assert len(drains) == 1 and " nodename=ip-10-64-0-9 " in drains[0]
    text = report_of(tmp_path, "refresh")
    assert REPORT_NO_REAPER_RULE in text.splitlines()
    assert not refresh.reaper_has_rule(text)
    assert "cdk-trn refresh: 10.64.0.12 ip-10-64-0-12 mixed 41,42" in text
    assert "has no image-refresh rule" in done.stderr


def test_without_a_reaper_unit_a_rollbacks_drain_drains_nothing(tmp_path):
    done = run_script(
        tmp_path, idle=1, drain="10.64.0.9,10.64.0.12", drain_for="refresh-by-reaper",
        table=BUSY_TABLE, reaper=None,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert " scontrol update " not in (tmp_path / "calls.log").read_text()
    assert REPORT_NO_REAPER_RULE in report_of(tmp_path, "refresh-by-reaper")


def test_with_the_rule_a_rollbacks_drain_drains_every_node_for_the_reaper(tmp_path):
    done = run_script(
        tmp_path, idle=1, drain="10.64.0.9,10.64.0.12", drain_for="refresh-by-reaper",
        table=BUSY_TABLE,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    calls = (tmp_path / "calls.log").read_text()
    assert "scontrol update nodename=ip-10-64-0-9,ip-10-64-0-12 state=drain" in calls
    assert "reason=cdk-trn: image refresh" in calls


def test_our_own_leftover_job_is_cancelled_before_the_drain(tmp_path):
    done = run_script(
        tmp_path, idle=1, drain="10.64.0.9", drain_for="refresh-if-idle", leftover="17"
    )
    assert done.returncode == 0, done.stderr
    calls = (tmp_path / "calls.log").read_text().splitlines()
    cancel = next(i for i, c in enumerate(calls) if " scancel --name=cdk-trn-acceptance " in c)
    drain = next(i for i, c in enumerate(calls) if " scontrol update " in c)
    assert cancel < drain


def test_a_refresh_of_1024_nodes_drains_and_reports_every_one(tmp_path):
    addresses = [f"10.64.{i // 250}.{i % 250 + 1}" for i in range(1024)]
    table = "".join(f"ip-{a.replace('.', '-')} {a} idle -\n" for a in addresses)
    done = run_script(
        tmp_path, idle=1024, drain=",".join(addresses), drain_for="refresh", table=table
    )
    assert done.returncode == 0, done.stderr
    report = refresh.parse_refresh_report(report_of(tmp_path, "refresh"))
    assert len(report) == 1024
    assert all(n.replaceable for n in report.values())


def test_a_run_on_named_nodes_takes_a_powered_down_idle_one(tmp_path):
    # Idle scale-in stopped it; Slurm starts it again for the job.
    table = "ip-10-64-0-9 10.64.0.9 idle -\nip-10-64-0-12 10.64.0.12 idle~ -\n"
    code, _, calls = run(tmp_path, idle=2, nodes="10.64.0.9,10.64.0.12", table=table)
    [sbatch] = [c for c in calls if " sbatch " in c]
    assert " --nodelist ip-10-64-0-9,ip-10-64-0-12 " in sbatch
