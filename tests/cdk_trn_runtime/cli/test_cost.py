"""``cdk-trn cost`` and ``cdk_trn_runtime.cost``: per-job cost from a job completion log in the
format Slurm 22.05's jobcomp/filetxt writes, per-user sums, idle node-hours, JSON that is only JSON,
and the read-only SSM document's commands run for real (with a docker double) in the cloud path."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from cdk_trn_runtime import contract, cost
from cdk_trn_runtime.cli import command as cli_main
from cdk_trn_runtime.cli.aws import Aws
from cdk_trn_runtime.cli.cost import job_completions_commands, parse_page

ROOT = Path(__file__).resolve().parents[3]
#: Lines in the exact layout of Slurm 22.05's jobcomp/filetxt (JOB_FORMAT in
#: src/plugins/jobcomp/filetxt/jobcomp_filetxt.c): a two-node job, a one-node job whose WorkDir
#: has a space, a job cancelled while pending (StartTime=Unknown, no nodes) and an array task.
JOBCOMP = ROOT / "tests" / "data" / "cost" / "jobcomp.log"
DOUBLES = ROOT / "tests" / "cdk_trn_runtime" / "cli" / "controller_command_doubles"
JSON_KEYS = {"job_id", "user", "name", "nodes", "elapsed_s", "node_hours", "cost_usd"}


def run_local(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli_main.main(["cost", "--jobcomp", str(JOBCOMP), *argv], make_aws=_no_aws)
    out, err = capsys.readouterr()
    return code, out, err


def _no_aws(profile: str | None, region: str | None) -> Aws:
    raise AssertionError("--jobcomp must not call AWS")


@pytest.fixture(autouse=True)
def no_local_slurm(monkeypatch):
    """No squeue/scontrol answers unless a test puts its doubles on PATH."""
    monkeypatch.setenv("PATH", "/nonexistent")


def test_the_log_parses_every_record_of_the_22_05_format():
    records, bad = cost.parse_jobcomp(JOBCOMP.read_text())
    assert bad == 0
    assert [r.job_id for r in records] == ["7", "8", "9", "10_1"]
    two = records[0]
    assert (two.user, two.name, two.state, two.nodes) == ("trn", "train llama", "COMPLETED", 2)
    assert two.start == dt.datetime(2026, 12, 5, 10, 0) and two.end == dt.datetime(
        2026, 12, 5, 11, 30
    )
    assert records[1].user == "alice" and records[1].state == "FAILED"
    assert records[2].start is None and records[2].nodes == 0


def test_json_is_only_json_and_costs_each_job_at_the_price(capsys):
    code, out, _ = run_local(capsys, "--hourly-price", "10", "--format", "json")
    assert code == 0
    document = json.loads(out)  # nothing else on stdout
    assert set(document) == {"jobs", "totals", "idle_node_hours"}
    jobs = {job["job_id"]: job for job in document["jobs"]}
    assert all(set(job) == JSON_KEYS for job in jobs.values())
    two = jobs["7"]
    assert two["nodes"] == 2 and two["elapsed_s"] == 5400
    assert two["node_hours"] == 3.0 > 0
    assert two["cost_usd"] == round(two["node_hours"] * 10, 2) == 30.0
    for job in jobs.values():
        assert job["cost_usd"] == round(job["node_hours"] * 10, 2)
    assert "9" not in jobs  # cancelled while pending: it held no node
    totals = document["totals"]
    assert totals["jobs"] == 3
    assert totals["node_hours"] == pytest.approx(sum(j["node_hours"] for j in jobs.values()))
    assert totals["cost_usd"] == round(sum(j["cost_usd"] for j in jobs.values()), 2)
    assert totals["hourly_price"] == 10.0


def test_by_user_sums_the_jobs_and_since_drops_the_older_ones(capsys):
    code, out, _ = run_local(
        capsys,
        "--hourly-price",
        "10",
        "--format",
        "json",
        "--by",
        "user",
        "--since",
        "2026-12-05T12:00",
    )
    assert code == 0
    document = json.loads(out)
    users = {u["user"]: u for u in document["users"]}
    assert users["alice"] == {"user": "alice", "jobs": 1, "node_hours": 0.333333, "cost_usd": 3.33}
    assert users["trn"]["jobs"] == 1  # job 7 ended before --since
    assert document["totals"]["since"] == "2026-12-05T12:00:00"


def test_without_a_price_costs_are_null_and_stderr_says_why(capsys):
    code, out, err = run_local(capsys, "--format", "json")
    assert code == 0
    document = json.loads(out)
    assert all(job["cost_usd"] is None for job in document["jobs"])
    assert document["totals"]["cost_usd"] is None
    assert "--hourly-price" in err


def test_text_prints_each_job_then_the_totals(capsys):
    code, out, _ = run_local(capsys, "--hourly-price", "10")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["JOB", "USER", "NAME", "NODES"]
    job = next(line for line in lines if line.startswith("7 "))
    assert "train llama" in job and "1:30:00" in job and "3.0000" in job and "$30.00" in job
    assert lines[-2].startswith("total: 3 jobs, ") and "$10.00/node-hour" in lines[-2]
    assert lines[-1].startswith("idle: unknown")


def test_bad_options_are_refused(capsys):
    for argv in (["--hourly-price", "-1"], ["--hourly-price", "x"], ["--since", "yesterday"]):
        with pytest.raises(SystemExit) as exit_:
            cli_main.main(["cost", "--jobcomp", str(JOBCOMP), *argv], make_aws=_no_aws)
        assert exit_.value.code == 2
    missing = cli_main.main(["cost", "--jobcomp", "/nonexistent/jobcomp.log"], make_aws=_no_aws)
    assert missing == 1
    assert "cannot read the job completion log" in capsys.readouterr().err


def test_running_jobs_count_up_to_now_and_idle_is_in_service_minus_held(
    tmp_path, monkeypatch, capsys
):
    # Test doubles for the local squeue and scontrol: one running two-node job, two nodes up.
    start = (dt.datetime.now() - dt.timedelta(hours=1)).replace(microsecond=0)
    boot = start - dt.timedelta(hours=2)
    fmt = "%Y-%m-%dT%H:%M:%S"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "squeue").write_text(f"#!/bin/sh\necho '12|trn|2|{start.strftime(fmt)}|long run'\n")
    (bin_dir / "scontrol").write_text(
        "#!/bin/sh\n"
        f"echo 'NodeName=n1 Arch=x86_64 BootTime={boot.strftime(fmt)} SlurmdStartTime=x'\n"
        f"echo 'NodeName=n2 Arch=x86_64 BootTime={boot.strftime(fmt)} SlurmdStartTime=x'\n"
    )
    for name in ("squeue", "scontrol"):
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    log = tmp_path / "empty.log"
    log.write_text("")
    code = cli_main.main(
        ["cost", "--jobcomp", str(log), "--hourly-price", "10", "--format", "json"],
        make_aws=_no_aws,
    )
    assert code == 0
    document = json.loads(capsys.readouterr().out)
    (job,) = document["jobs"]
    assert job["job_id"] == "12" and job["name"] == "long run" and job["nodes"] == 2
    assert job["elapsed_s"] >= 3600 and job["node_hours"] >= 2.0
    # Window: the nodes' boot (3 h ago) to now; 2 nodes x 3 h in service, 2 x 1 h held.
    assert document["idle_node_hours"] == pytest.approx(4.0, abs=0.02)


def test_idle_node_hours_clip_to_the_window():
    since, until = dt.datetime(2026, 1, 1, 0), dt.datetime(2026, 1, 1, 10)
    spans = [
        cost.InService("a", dt.datetime(2025, 12, 31, 20)),  # before the window: from since
        cost.InService("b", dt.datetime(2026, 1, 1, 2), dt.datetime(2026, 1, 1, 6)),
    ]
    job = cost.JobRecord(
        "1", "u", "n", "COMPLETED", 2, dt.datetime(2026, 1, 1, 4), dt.datetime(2026, 1, 1, 5)
    )
    assert cost.idle_node_hours(spans, [job], since, until) == 12.0  # 10 + 4 - 2


def test_group_activities_give_each_instance_its_time_in_service():
    t = dt.datetime(2026, 1, 1, 0, tzinfo=dt.UTC)
    activities = [
        {
            "Description": "Launching a new EC2 instance: i-0aaa",
            "StatusCode": "Successful",
            "StartTime": t,
            "EndTime": t + dt.timedelta(minutes=5),
        },
        {
            "Description": "Terminating EC2 instance: i-0aaa",
            "StatusCode": "Successful",
            "StartTime": t + dt.timedelta(hours=3),
            "EndTime": t + dt.timedelta(hours=3, minutes=2),
        },
        {
            "Description": "Launching a new EC2 instance: i-0bbb",
            "StatusCode": "Failed",
            "StartTime": t,
        },
    ]
    (span,) = cost.parse_group_activities(activities)
    assert (span.node, span.start, span.end) == (
        "i-0aaa",
        t + dt.timedelta(minutes=5),
        t + dt.timedelta(hours=3),
    )
    standby = [
        *activities[:1],
        {
            "Description": "Moving EC2 instance to Standby: i-0aaa",
            "StatusCode": "Successful",
            "StartTime": t + dt.timedelta(hours=1),
        },
        {
            "Description": "Moving EC2 instance out of Standby: i-0aaa",
            "StatusCode": "Successful",
            "StartTime": t + dt.timedelta(hours=2),
            "EndTime": t + dt.timedelta(hours=2),
        },
    ]
    first, second = cost.parse_group_activities(standby)  # stopped in Standby in between
    assert (first.start, first.end) == (t + dt.timedelta(minutes=5), t + dt.timedelta(hours=1))
    assert (second.start, second.end) == (t + dt.timedelta(hours=2), None)


def test_tokens_per_dollar():
    assert cost.tokens_per_usd(1000.0, 36.0) == 100_000.0
    assert cost.usd_per_million_tokens(1000.0, 36.0) == 10.0
    assert cost.usd_per_million_tokens(0.0, 36.0) is None
    with pytest.raises(ValueError, match="hourly_price must be above 0"):
        cost.tokens_per_usd(1.0, 0)


# --- the cloud path: the read-only document, run for real ------------------------------------


def _document_script(shared: Path, since: str, offset: int) -> str:
    lines = job_completions_commands(str(shared), "trn")
    text = "\n".join(lines)
    return text.replace("{{ Since }}", since).replace("{{ Offset }}", str(offset))


class _SsmDouble:
    """Test double of the SSM client: runs the document's commands with sh on this machine."""

    def __init__(self, shared: Path, env: dict[str, str]) -> None:
        self.shared, self.env, self._out = shared, env, ""
        self.calls: list[dict[str, Any]] = []

    def send_command(self, **kw: Any) -> dict[str, Any]:
        self.calls.append(kw)
        assert kw["DocumentName"] == "trn-cluster-JobCompletions"
        params = kw["Parameters"]
        script = _document_script(
            self.shared,
            params[contract.DOC_PARAM_SINCE][0],
            int(params[contract.DOC_PARAM_OFFSET][0]),
        )
        done = subprocess.run(["sh", "-c", script], capture_output=True, text=True, env=self.env)
        assert done.returncode == 0, done.stderr
        self._out = done.stdout
        return {"Command": {"CommandId": f"c{len(self.calls)}"}}

    def get_command_invocation(self, **kw: Any) -> dict[str, Any]:
        return {"Status": "Success", "StandardOutputContent": self._out, "ResponseCode": 0}


class _CfnDouble:
    def describe_stacks(self, StackName: str) -> dict[str, Any]:
        outputs = {
            contract.OUTPUT_DOC_JOB_COMPLETIONS: "trn-cluster-JobCompletions",
            contract.OUTPUT_CONTROLLER_GROUP: "ctl-group",
            contract.OUTPUT_NODE_GROUP: "node-group",
            contract.OUTPUT_NODE_HOURLY_PRICE: "10",
        }
        return {
            "Stacks": [
                {"Outputs": [{"OutputKey": k, "OutputValue": v} for k, v in outputs.items()]}
            ]
        }


class _AutoScalingDouble:
    def describe_auto_scaling_groups(self, AutoScalingGroupNames: list[str]) -> dict[str, Any]:
        return {
            "AutoScalingGroups": [
                {
                    "Instances": [
                        {
                            "InstanceId": "i-0c",
                            "LifecycleState": "InService",
                            "HealthStatus": "Healthy",
                        }
                    ]
                }
            ]
        }

    def describe_scaling_activities(self, **kw: Any) -> dict[str, Any]:
        assert kw["AutoScalingGroupName"] == "node-group"
        return {"Activities": []}


def test_the_cloud_path_pages_the_log_through_the_document(tmp_path, capsys):
    shared = tmp_path / "fsx"
    logs = shared / contract.SHARED_JOB_LOGS
    logs.mkdir(parents=True)
    # 45 records: three pages of at most 20 lines.
    template = JOBCOMP.read_text().splitlines()[0]
    (logs / "jobcomp.log").write_text(
        "".join(template.replace("JobId=7 ", f"JobId={n} ") + "\n" for n in range(100, 145))
    )
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "squeue").write_text("#!/bin/sh\necho '200|bob|1|2026-12-06T01:00:00|x'\n")
    (bin_dir / "squeue").chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{DOUBLES}:/usr/bin:/bin",
        "DOUBLES_LOG": str(tmp_path / "calls"),
    }
    ssm = _SsmDouble(shared, env)
    aws = Aws(
        cloudformation=_CfnDouble(),
        autoscaling=_AutoScalingDouble(),
        ssm=ssm,
        region="us-east-2",
        sleep=lambda s: None,
    )
    code = cli_main.main(["cost", "--format", "json"], make_aws=lambda p, r: aws)
    out, err = capsys.readouterr()
    assert code == 0, err
    document = json.loads(out)
    ids = [job["job_id"] for job in document["jobs"]]
    assert ids == [str(n) for n in range(100, 145)] + ["200"]
    assert [c["Parameters"][contract.DOC_PARAM_OFFSET] for c in ssm.calls] == [
        ["0"],
        ["20"],
        ["40"],
    ]
    assert all(job["cost_usd"] == round(job["node_hours"] * 10, 2) for job in document["jobs"])
    assert document["totals"]["hourly_price"] == 10.0  # the stack's NodeHourlyPrice output
    assert document["idle_node_hours"] is not None


def test_the_document_filters_by_since_and_says_when_it_is_done(tmp_path):
    shared = tmp_path / "fsx"
    (shared / contract.SHARED_JOB_LOGS).mkdir(parents=True)
    (shared / contract.SHARED_JOB_LOGS / "jobcomp.log").write_text(JOBCOMP.read_text())
    env = {"PATH": f"{DOUBLES}:/usr/bin:/bin", "DOUBLES_LOG": str(tmp_path / "calls")}
    script = _document_script(shared, "2026-12-05T12:25:00", 0)
    done = subprocess.run(["sh", "-c", script], capture_output=True, text=True, env=env)
    page = parse_page(done.stdout)
    assert page.done and page.next_offset == 4
    assert [line.split()[0] for line in page.lines] == ["JobId=9", "JobId=11"]
    bad = subprocess.run(
        ["sh", "-c", _document_script(shared, "x; rm -rf /", 0)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert bad.returncode == 2 and "Since must be" in bad.stderr


def test_a_stack_without_the_document_says_what_to_do(capsys):
    class _NoDocument(_CfnDouble):
        def describe_stacks(self, StackName: str) -> dict[str, Any]:
            return {"Stacks": [{"Outputs": []}]}

    aws = Aws(
        cloudformation=_NoDocument(),
        autoscaling=_AutoScalingDouble(),
        ssm=None,
        region="us-east-2",
    )
    assert cli_main.main(["cost"], make_aws=lambda p, r: aws) == 1
    err = capsys.readouterr().err
    assert "no output SlurmJobCompletionsDocument" in err and "--jobcomp FILE" in err
