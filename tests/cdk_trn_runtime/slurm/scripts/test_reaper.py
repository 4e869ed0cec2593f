"""The controller reaper's refresh rule (slurm/scripts/reaper.sh): a node an image refresh drained
is marked Unhealthy in its group once Slurm reports it drained without a job, and not before;
nodes drained for another reason, or still running or completing a job, are left alone; free
text Slurm prints after the fixed fields (Comment=, Extra=, a reason naming users' processes)
cannot stand in for State=, NodeAddr=, CPUAlloc= or Reason=; and squeue must list no job on the
node. Run against command doubles of scontrol, squeue and aws."""

from __future__ import annotations

import subprocess
from pathlib import Path

from cdk_trn_runtime.contract import REFRESH_DRAIN_REASON

REAPER = Path(__file__).parents[4] / "cdk_trn_runtime/slurm/scripts/reaper.sh"
STAMP = "[root@2026-11-25T17:00:00]"


def node(n: int, state: str, cpus: int, reason: str) -> str:
    """One ``scontrol show node --oneliner`` line."""
    return (
        f"NodeName=ip-10-0-0-{n} Arch=x86_64 CoresPerSocket=1 CPUAlloc={cpus} CPUEfctv=192 "
        f"CPUTot=192 State={state} ThreadsPerCore=2 NodeAddr=10.0.0.{n} "
        f"NodeHostName=ip-10-0-0-{n} Partitions=trn Reason={reason} {STAMP}"
    )


NODES = "\n".join(
    [
        node(1, "IDLE+DRAIN+DYNAMIC_NORM", 0, REFRESH_DRAIN_REASON),  # drained, no job: refresh
        node(2, "MIXED+DRAIN+DYNAMIC_NORM", 64, REFRESH_DRAIN_REASON),  # still running a job
        node(3, "IDLE+COMPLETING+DRAIN+DYNAMIC_NORM", 0, REFRESH_DRAIN_REASON),  # a job ending
        node(4, "ALLOCATED+DRAIN+DYNAMIC_NORM", 192, REFRESH_DRAIN_REASON),
        node(5, "IDLE+DRAIN+DYNAMIC_NORM", 0, "cdk-trn: neuron devices 15 < 16"),  # not ours
        node(6, "IDLE+DYNAMIC_NORM", 0, "none"),
    ]
)


def run_reaper(
    tmp_path: Path,
    nodes: str,
    *,
    health_fails: bool = False,
    jobs: dict[str, str] | None = None,
    squeue_fails: bool = False,
    gone: str = "-",
    current: str = "-",
    autoscaling_fails: bool = False,
):
    """``jobs``: node name -> the job ids squeue lists on it (none when absent); ``gone``: an
    address no instance has any more; ``current``: an instance already on the group's launch
    template version (version 7; every other instance runs version 6)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (tmp_path / "nodes").write_text(nodes + "\n")
    (tmp_path / "jobs").write_text("".join(f"{n} {j}\n" for n, j in (jobs or {}).items()))
    squeue = bin_dir / "squeue-double"
    squeue.write_text(
        "#!/bin/bash\n# Test double of squeue -h -w <node> -o %i: the jobs file's ids for it.\n"
        f"{'exit 1' if squeue_fails else ':'}\n"
        f"awk -v n=\"$3\" '$1 == n {{print $2}}' {tmp_path}/jobs\n"
    )
    squeue.chmod(0o755)
    scontrol = bin_dir / "scontrol-double"
    scontrol.write_text(
        "#!/bin/bash\n# Test double of scontrol.\n"
        f'if [ "$1" = show ]; then cat {tmp_path}/nodes; exit 0; fi\n'
        f'echo "$*" >> {tmp_path}/scontrol-calls\n'
    )
    aws = bin_dir / "aws"
    aws.write_text(
        "#!/bin/bash\n# Test double of aws: one running instance per address, i-0<n>.\n"
        f'echo "$*" >> {tmp_path}/aws-calls\n'
        'case "$*" in\n'
        f"  *Values={gone}\\ *InstanceId*) ;;\n"
        f"  *Values={gone}\\ *length*) echo 0 ;;\n"
        "  *InstanceId*) sed -n 's/.*Values=10\\.0\\.0\\.\\([0-9]*\\) .*/i-0\\1/p' <<<\"$*\" ;;\n"
        "  *length*) echo 1 ;;\n"
        f"  *set-instance-health*) exit {1 if health_fails else 0} ;;\n"
        f"  *describe-auto-scaling-instances*) {'exit 255' if autoscaling_fails else ':'}\n"
        f'    case "$*" in *"--instance-ids {current} "*) echo \'nodes 7\' ;;'
        " *) echo 'nodes 6' ;; esac ;;\n"
        "  *describe-auto-scaling-groups*) echo 7 ;;\n"
        "  *) exit 255 ;;\n"
        "esac\n"
    )
    for f in (scontrol, aws):
        f.chmod(0o755)
    done = subprocess.run(
        ["bash", str(REAPER)],
        capture_output=True,
        text=True,
        env={
            "PATH": f"{bin_dir}:/usr/bin:/bin",
            "CDK_TRN_SCONTROL": str(scontrol),
            "CDK_TRN_SQUEUE": str(squeue),
            "CDK_TRN_REGION": "us-east-2",
            "CDK_TRN_CLUSTER": "c1",
        },
        timeout=60,
    )
    calls = tmp_path / "aws-calls"
    return done, calls.read_text().splitlines() if calls.exists() else []


def test_only_a_node_drained_for_the_refresh_without_a_job_is_marked_unhealthy(tmp_path):
    done, calls = run_reaper(tmp_path, NODES)
    assert done.returncode == 0, done.stderr
    marks = [c for c in calls if c.startswith("autoscaling set-instance-health")]
    assert marks == [
        "autoscaling set-instance-health --region us-east-2 --instance-id i-01 "
        "--health-status Unhealthy --no-should-respect-grace-period"
    ]
    # Its instance is found by address among this cluster's running instances.
    [lookup] = [c for c in calls if c.startswith("ec2 describe-instances")]
    assert "Name=private-ip-address,Values=10.0.0.1 " in lookup
    assert "Name=tag:cdk-trn:cluster,Values=c1" in lookup
    assert "refreshing ip-10-0-0-1 (i-01)" in done.stderr
    # Nothing is deleted: the instance's shutdown takes the node out of Slurm.
    assert not (tmp_path / "scontrol-calls").exists()


def test_a_node_whose_instance_already_runs_the_current_template_is_resumed_not_marked(tmp_path):
    # A successor took the address of a predecessor the refresh drained, and with it the record.
    done, calls = run_reaper(tmp_path, NODES, current="i-01")
    assert done.returncode == 0, done.stderr
    assert not [c for c in calls if c.startswith("autoscaling set-instance-health")]
    assert (tmp_path / "scontrol-calls").read_text() == "update nodename=ip-10-0-0-1 state=resume\n"
    assert "resumed ip-10-0-0-1 (i-01)" in done.stderr


def test_no_answer_from_auto_scaling_marks_nothing(tmp_path):
    done, calls = run_reaper(tmp_path, NODES, autoscaling_fails=True)
    assert done.returncode == 0, done.stderr
    assert not [c for c in calls if c.startswith("autoscaling set-instance-health")]
    assert not (tmp_path / "scontrol-calls").exists()
    assert "Auto Scaling did not answer for i-01 (ip-10-0-0-1)" in done.stderr


def test_a_refused_mark_is_said_and_retried_next_round(tmp_path):
    done, _ = run_reaper(tmp_path, NODES, health_fails=True)
    assert done.returncode == 0
    assert "could not mark i-01 (ip-10-0-0-1) Unhealthy: retrying" in done.stderr


def test_a_refreshed_node_whose_instance_is_gone_loses_its_record(tmp_path):
    # Stopped by idle scale-in, then replaced by the acceptance run: a powered-down node is never
    # pinged, so it never turns DOWN; its record goes once no instance has its address.
    line = node(7, "IDLE+DRAIN+DYNAMIC_NORM+POWERED_DOWN", 0, REFRESH_DRAIN_REASON)
    done, calls = run_reaper(tmp_path, line, gone="10.0.0.7")
    assert done.returncode == 0, done.stderr
    assert not any("set-instance-health" in c for c in calls)
    assert (tmp_path / "scontrol-calls").read_text().splitlines() == ["delete nodename=ip-10-0-0-7"]


def test_the_reaper_says_it_has_the_refresh_rule():
    from cdk_trn_runtime.contract.acceptance import REAPER_REFRESH_MARKER

    assert f"# {REAPER_REFRESH_MARKER}" in REAPER.read_text().splitlines()


def marked(calls: list[str]) -> list[str]:
    return [c.split(" --instance-id ")[1].split()[0] for c in calls if "set-instance-health" in c]


def test_free_text_after_the_fixed_fields_cannot_stand_in_for_them(tmp_path):
    refresh = REFRESH_DRAIN_REASON
    lines = [
        # An idle drained node whose Comment names another address: its own is the one marked.
        node(1, "IDLE+DRAIN+DYNAMIC_NORM", 0, f"{refresh} {STAMP} Comment=x NodeAddr=10.0.0.9 y"),
        # A node running a job, whose Comment claims it idle and drained without a CPU.
        node(2, "ALLOCATED+DRAIN+DYNAMIC_NORM", 192, f"{refresh} {STAMP} Comment= State=IDLE+DRAIN")
        + " CPUAlloc=0",
        # No reason at all; the refresh reason only inside a Comment.
        node(3, "IDLE+DRAIN+DYNAMIC_NORM", 0, "x").split(" Reason=")[0]
        + f" Comment=a Reason={refresh}",
    ]
    done, calls = run_reaper(tmp_path, "\n".join(lines))
    assert done.returncode == 0, done.stderr
    assert marked(calls) == ["i-01"]
    assert not any("10.0.0.9" in c for c in calls)


def test_a_node_squeue_lists_a_job_on_is_not_marked(tmp_path):
    done, calls = run_reaper(tmp_path, NODES, jobs={"ip-10-0-0-1": "77"})
    assert done.returncode == 0, done.stderr
    assert marked(calls) == []


def test_an_unanswered_squeue_marks_nothing(tmp_path):
    done, calls = run_reaper(tmp_path, NODES, squeue_fails=True)
    assert marked(calls) == []
    assert "squeue did not answer for ip-10-0-0-1" in done.stderr


def test_a_gone_node_squeue_lists_a_job_on_keeps_its_record(tmp_path):
    # The delete of a refreshed node's record waits for Slurm's job list too.
    line = node(7, "IDLE+DRAIN+DYNAMIC_NORM+POWERED_DOWN", 0, REFRESH_DRAIN_REASON)
    done, calls = run_reaper(tmp_path, line, gone="10.0.0.7", jobs={"ip-10-0-0-7": "77"})
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "scontrol-calls").exists()
    assert marked(calls) == []
