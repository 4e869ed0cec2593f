"""``cdk-trn``'s subcommands end to end against stubbed CloudFormation, Auto Scaling and SSM
clients (botocore Stubber on real clients): what each one asks AWS, what it prints, how it fails."""

from __future__ import annotations

import base64
import importlib
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from cdk_trn_runtime.cli import command as cli_main
from cdk_trn_runtime.cli import remote
from cdk_trn_runtime.cli.aws import CliError, find_controller, run_document
from tests.cdk_trn_runtime.cli.aws_doubles import (
    COMMAND,
    CONTROLLER,
    GROUP,
    INSTANCE,
    OUTPUTS,
    STACK,
    stubbed_aws,
)

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = b"#!/bin/bash\n#SBATCH --nodes=2\nsrun hostname\n"


@pytest.fixture
def stubs(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test-double-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-double-secret")
    stubs = stubbed_aws()
    yield stubs
    stubs.assert_all_called()


def run(stubs, *argv: str, **kw) -> int:
    return cli_main.main(list(argv), make_aws=lambda profile, region: stubs.aws, **kw)


@pytest.fixture
def job_script(tmp_path) -> Path:
    path = tmp_path / "train.sbatch"
    path.write_bytes(SCRIPT)
    return path


# --- finding the controller ------------------------------------------------------------------


def test_the_controller_comes_from_the_stack_outputs_and_its_group(stubs):
    stubs.cluster()
    assert find_controller(stubs.aws, STACK) == CONTROLLER


def test_a_missing_stack_says_so_and_how_to_name_another(stubs):
    stubs.no_stack()
    with pytest.raises(CliError, match=r"stack trn-cluster does not exist in us-east-2.*--stack"):
        find_controller(stubs.aws, STACK)


def test_a_stack_without_the_slurm_outputs_names_them(stubs):
    stubs.stack({k: v for k, v in OUTPUTS.items() if k != "SlurmControllerGroup"})
    with pytest.raises(CliError, match="no output SlurmControllerGroup.*scheduler"):
        find_controller(stubs.aws, STACK)


def test_no_in_service_controller_is_a_clear_error(stubs):
    stubs.stack()
    stubs.group([(INSTANCE, "Pending"), ("i-0fedcba9876543210", "Terminating")])
    with pytest.raises(CliError) as raised:
        find_controller(stubs.aws, STACK)
    message = str(raised.value)
    assert f"no InService controller in Auto Scaling group {GROUP}" in message
    assert f"{INSTANCE} Pending" in message


def test_an_empty_controller_group_is_a_clear_error(stubs):
    stubs.stack()
    stubs.group([])
    with pytest.raises(CliError, match="no InService controller.*no instances"):
        find_controller(stubs.aws, STACK)


def test_the_in_service_instance_is_chosen_over_one_leaving(stubs):
    stubs.stack()
    stubs.group([("i-0aaaaaaaaaaaaaaaa", "Terminating:Wait"), (INSTANCE, "InService")])
    assert find_controller(stubs.aws, STACK).instance_id == INSTANCE


# --- running a script ------------------------------------------------------------------------


def test_run_document_polls_with_a_growing_wait_until_the_command_ends(stubs):
    stubs.send(("queue", {}), "c")
    stubs.invocation_not_yet()
    stubs.invocation("InProgress")
    stubs.invocation("InProgress")
    stubs.invocation("Success", 0, "hi\n")
    result = run_document(
        stubs.aws, INSTANCE, "cdk-trn-trn-cluster-queue", {}, comment="c", timeout_seconds=120
    )
    assert (result.ok, result.stdout, result.command_id) == (True, "hi\n", COMMAND)
    assert stubs.clock.sleeps == [0.5, 1.0, 2.0, 4.0]


def test_run_document_gives_up_after_its_timeout_and_names_the_command(stubs):
    stubs.send(("queue", {}), "c", timeout=10)
    # waits of 0.5, 1, 2 then 4 s: the 20th poll is the first at or past 10 s + 60 s delivery
    for _ in range(20):
        stubs.invocation("InProgress")
    with pytest.raises(CliError) as raised:
        run_document(
            stubs.aws, INSTANCE, "cdk-trn-trn-cluster-queue", {}, comment="c", timeout_seconds=10
        )
    assert raised.value.exit_code == 124
    assert COMMAND in str(raised.value) and "InProgress" in str(raised.value)
    assert 10 + 60 <= sum(stubs.clock.sleeps) <= 10 + 60 + 4


def test_an_instance_ssm_does_not_know_gets_a_hint(stubs):
    stubs.ssm.add_client_error(
        "send_command", service_error_code="InvalidInstanceId", http_status_code=400
    )
    with pytest.raises(CliError, match="is its SSM agent registered"):
        run_document(stubs.aws, INSTANCE, "cdk-trn-x-queue", {}, comment="c", timeout_seconds=30)


# --- submit ----------------------------------------------------------------------------------


def test_submit_sends_the_script_and_prints_the_job_id(stubs, job_script, capsys):
    stubs.cluster()
    name = "20260301T120000Z-train.sbatch"
    expected = remote.submit_invocation(SCRIPT, name, ["-N", "2", "; rm -rf /"], ["x"])
    assert base64.b64decode(expected[1]["SbatchArgs"]) == b"--requeue\0-N\0002\0; rm -rf /\0"
    stubs.run(expected, f"cdk-trn submit {name}", "4242;trn\n")
    code = run(stubs, "submit", str(job_script), "-N", "2", "; rm -rf /", "--", "x")
    out, err = capsys.readouterr()
    assert (code, out) == (0, "4242\n")
    assert "cdk-trn logs 4242 --follow" in err
    assert base64.b64decode(expected[1]["Script"]) == SCRIPT


def test_submit_accepts_global_options_after_the_subcommand(stubs, job_script, capsys):
    seen = []
    stubs.stack(stack="other")
    stubs.group()
    stubs.run(None, "cdk-trn submit 20260301T120000Z-train.sbatch", "7\n")

    def make_aws(profile, region):
        seen.append((profile, region))
        return stubs.aws

    code = cli_main.main(
        ["submit", "--stack", "other", "--region", "eu-west-1", str(job_script), "--profile", "p"],
        make_aws=make_aws,
    )
    assert code == 0
    assert seen == [(None, "eu-west-1")]  # after SCRIPT, options belong to sbatch


def test_submit_reports_slurms_error_and_fails(stubs, job_script, capsys):
    stubs.cluster()
    stubs.send(None, "cdk-trn submit 20260301T120000Z-train.sbatch")
    error = "sbatch: error: Batch job submission failed: Invalid partition name specified"
    stubs.invocation("Failed", 1, "", error + "\n")
    code = run(stubs, "submit", str(job_script), "-p", "nope")
    out, err = capsys.readouterr()
    assert code == 1
    assert out == ""
    assert error in err and "sbatch failed on the controller" in err


def test_submit_passes_on_the_remote_exit_status(stubs, job_script, capsys):
    stubs.cluster()
    stubs.send(None, "cdk-trn submit 20260301T120000Z-train.sbatch")
    stubs.invocation("Failed", remote.EXIT_NO_CONTAINER, "", "container is not running\n")
    assert run(stubs, "submit", str(job_script)) == remote.EXIT_NO_CONTAINER


def test_submit_times_out_with_a_message(stubs, job_script, capsys):
    stubs.cluster()
    stubs.send(None, "cdk-trn submit 20260301T120000Z-train.sbatch")
    for _ in range(48):  # polls until 120 s + 60 s have passed on the fake clock
        stubs.invocation("InProgress")
    assert run(stubs, "submit", str(job_script)) == 124
    assert "no result from the controller" in capsys.readouterr().err


def test_submit_refuses_a_script_over_64_kib_before_calling_aws(stubs, tmp_path, capsys):
    big = tmp_path / "big.sbatch"
    big.write_bytes(b"#" * (remote.MAX_SCRIPT_BYTES + 1))
    assert run(stubs, "submit", str(big)) == 1
    assert "limited to 65536" in capsys.readouterr().err


@pytest.mark.parametrize("data", [b"#!/bin/bash\n\0\x01", b"\xff\xfe\x00binary"])
def test_submit_refuses_a_binary_file(stubs, tmp_path, capsys, data):
    binary = tmp_path / "a.out"
    binary.write_bytes(data)
    assert run(stubs, "submit", str(binary)) == 1
    assert "is not a text file" in capsys.readouterr().err


def test_submit_of_a_missing_file(stubs, tmp_path, capsys):
    assert run(stubs, "submit", str(tmp_path / "nope.sbatch")) == 1
    assert "no such file" in capsys.readouterr().err


def test_submit_against_a_missing_stack_fails_cleanly(stubs, job_script, capsys):
    stubs.no_stack()
    assert run(stubs, "submit", str(job_script)) == 1
    assert "stack trn-cluster does not exist" in capsys.readouterr().err


# --- queue, status, logs ---------------------------------------------------------------------


def test_queue_prints_squeue(stubs, capsys):
    stubs.cluster()
    table = "       JOBID  PARTITION  NAME\n        4242        trn  train.sbatch\n"
    stubs.run(("queue", {}), "cdk-trn queue", table)
    assert run(stubs, "queue") == 0
    assert capsys.readouterr().out == table


def test_status_prints_nodes_and_running_jobs(stubs, capsys):
    stubs.cluster()
    text = "NODES\nn1 trn drained neuron devices 15 of 16\n\nRUNNING JOBS\n"
    stubs.run(("status", {}), "cdk-trn status", text)
    assert run(stubs, "status") == 0
    assert capsys.readouterr().out == text


def test_status_with_no_in_service_controller_fails(stubs, capsys):
    stubs.stack()
    stubs.group([(INSTANCE, "Pending")])
    assert run(stubs, "status") == 1
    assert "no InService controller" in capsys.readouterr().err


def _chunk(state: str, size: int, start: int, data: bytes, path: str = "/fsx/o.out") -> str:
    header = f"cdk-trn-log state={state} size={size} start={start} path={path}\n"
    return header + (base64.encodebytes(data).decode() if data else "")


def test_logs_prints_the_tail_of_the_output(stubs, capsys):
    stubs.cluster()
    script = remote.log_chunk_invocation("42", offset=None, lines=200)
    stubs.run(script, "cdk-trn logs 42", _chunk("COMPLETED", 6, 0, b"a\nb\nc\n"))
    assert run(stubs, "logs", "42") == 0
    assert capsys.readouterr().out == "a\nb\nc\n"


def test_logs_reads_the_rest_of_a_file_larger_than_one_chunk(stubs, capsys):
    stubs.cluster()
    first = remote.log_chunk_invocation("42", offset=None, lines=None)
    stubs.run(first, "cdk-trn logs 42", _chunk("COMPLETED", 8, 0, b"abcd"))
    second = remote.log_chunk_invocation("42", offset=4, lines=None)
    stubs.run(second, "cdk-trn logs 42", _chunk("COMPLETED", 8, 4, b"efgh"))
    assert run(stubs, "logs", "42", "--lines", "all") == 0
    assert capsys.readouterr().out == "abcdefgh"


def test_logs_follow_waits_for_new_output_until_the_job_ends(stubs, capsys):
    stubs.cluster()
    full = "step \u00e9 1\n".encode()  # 10 bytes; the \u00e9 is bytes 5 and 6
    polls = [
        (None, 200, _chunk("RUNNING", 6, 0, full[:6])),
        (6, None, _chunk("RUNNING", 6, 6, b"")),
        (6, None, _chunk("COMPLETED", 10, 6, full[6:])),
    ]
    for offset, lines, stdout in polls:
        script = remote.log_chunk_invocation("42", offset=offset, lines=lines)
        stubs.run(script, "cdk-trn logs 42", stdout)
    assert run(stubs, "logs", "42", "--follow") == 0
    # a character split between two chunks comes out whole
    assert capsys.readouterr().out == "step \u00e9 1\n"
    assert cli_main.FOLLOW_INTERVAL_SECONDS in stubs.clock.sleeps


def test_logs_follow_starts_again_when_a_requeued_job_restarts_its_file(stubs, capsys):
    stubs.cluster()
    polls = [
        (None, 200, _chunk("RUNNING", 4, 0, b"old\n")),
        (4, None, _chunk("RUNNING", 2, 4, b"")),
        (0, None, _chunk("COMPLETED", 4, 0, b"new\n")),
    ]
    for offset, lines, stdout in polls:
        script = remote.log_chunk_invocation("42", offset=offset, lines=lines)
        stubs.run(script, "cdk-trn logs 42", stdout)
    assert run(stubs, "logs", "42", "-f") == 0
    out, err = capsys.readouterr()
    assert out == "old\nnew\n"
    assert "restarted" in err


def test_logs_of_a_job_without_output_and_unknown_to_slurm_fails(stubs, capsys):
    stubs.cluster()
    script = remote.log_chunk_invocation("42", offset=None, lines=200)
    stubs.run(script, "cdk-trn logs 42", _chunk("", -1, 0, b"", "/fsx/home/trn/slurm-42.out"))
    assert run(stubs, "logs", "42") == remote.EXIT_NO_FILE
    assert "not known to Slurm" in capsys.readouterr().err


def test_logs_of_a_pending_job_says_there_is_no_output_yet(stubs, capsys):
    stubs.cluster()
    script = remote.log_chunk_invocation("42", offset=None, lines=200)
    stubs.run(script, "cdk-trn logs 42", _chunk("PENDING", -1, 0, b""))
    assert run(stubs, "logs", "42") == 0
    assert "PENDING; no output yet" in capsys.readouterr().err


def test_logs_refuses_what_is_not_a_job_id(stubs, capsys):
    with pytest.raises(SystemExit) as raised:
        run(stubs, "logs", "42; rm -rf /")
    assert raised.value.code == 2
    assert "job must be a Slurm job id" in capsys.readouterr().err


# --- shell -----------------------------------------------------------------------------------


def test_shell_starts_a_session_manager_session_in_the_container(stubs):
    stubs.cluster()
    started = []

    def run_interactive(argv):
        started.append(list(argv))
        return 0

    code = run(
        stubs,
        "shell",
        which=lambda name: f"/usr/local/bin/{name}",
        run_interactive=run_interactive,
    )
    assert code == 0
    assert started == [
        [
            "/usr/local/bin/aws",
            "ssm",
            "start-session",
            "--target",
            INSTANCE,
            "--document-name",
            "cdk-trn-trn-cluster-shell",
            "--region",
            "us-east-2",
        ]
    ]


def test_shell_without_the_session_manager_plugin_says_how_to_install_it(stubs, capsys):
    code = run(
        stubs,
        "shell",
        which=lambda name: None if name == "session-manager-plugin" else "/usr/bin/aws",
        run_interactive=lambda argv: pytest.fail("no session without the plugin"),
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "session-manager-plugin" in err and "install-plugin" in err


def test_shell_passes_on_the_sessions_exit_status(stubs):
    stubs.cluster()
    assert run(stubs, "shell", which=lambda n: n, run_interactive=lambda argv: 3) == 3


# --- the command itself ----------------------------------------------------------------------

SUBCOMMANDS = ("submit", "queue", "logs", "shell", "status", "cancel")


def test_python_m_help_lists_every_subcommand():
    result = subprocess.run(
        [sys.executable, "-m", "cdk_trn_runtime.cli", "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    for name in SUBCOMMANDS:
        assert f"    {name} " in result.stdout


def test_the_console_script_entry_point_is_main():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, attr = scripts["cdk-trn"].partition(":")
    assert getattr(importlib.import_module(module), attr) is cli_main.main


def test_the_default_stack_is_the_default_apps_cluster_stack():
    from stacks.config import AppConfig

    assert f"{AppConfig().prefix}-cluster" == cli_main.DEFAULT_STACK


def test_no_region_is_a_clear_error(monkeypatch, capsys):
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/config")
    assert cli_main.main(["queue"]) == 1
    assert "no AWS region" in capsys.readouterr().err


def test_a_job_s_escape_sequences_do_not_reach_a_terminal():
    from cdk_trn_runtime.cli.command import terminal_safe

    hostile = "loss 1.0\x1b]52;c;cm0gLXJmIH4=\x07\x1b[2J\r50%\x9b31m\tok\n"
    assert terminal_safe(hostile) == "loss 1.0]52;c;cm0gLXJmIH4=[2J\n50%31m\tok\n"
    assert "\x1b" not in terminal_safe(hostile) and "\x9b" not in terminal_safe(hostile)


def test_logs_and_status_take_raw():
    from cdk_trn_runtime.cli.command import build_parser

    parser = build_parser()
    assert parser.parse_args(["logs", "12", "--raw"]).raw
    assert parser.parse_args(["status", "--raw"]).raw
    assert not parser.parse_args(["logs", "12"]).raw


# --- least privilege: the stacks' documents only ---------------------------------------------


def test_cdk_trn_sends_only_the_cluster_s_own_documents(stubs, job_script, capsys):
    """IAM cannot see a Run Command's parameters: AWS-RunShellScript is root on the controller.
    Every command cdk-trn sends names one of the cluster's fixed documents."""
    sent: list[str] = []
    stubs.aws.ssm.meta.events.register(
        "provide-client-params.ssm.SendCommand",
        lambda params, **_: sent.append(params["DocumentName"]),
    )
    for argv, invocation in (
        (["queue"], ("queue", {})),
        (["status"], ("status", {})),
        (["cancel", "42"], ("cancel", {"JobId": "42"})),
        (["logs", "42"], remote.log_chunk_invocation("42", offset=None, lines=200)),
        (["submit", str(job_script)], None),
    ):
        stubs.cluster()
        comment = f"cdk-trn {argv[0]}" + (f" {argv[1]}" if argv[0] == "logs" else "")
        if argv[0] == "submit":
            comment = "cdk-trn submit 20260301T120000Z-train.sbatch"
        stdout = _chunk("COMPLETED", 0, 0, b"") if argv[0] == "logs" else "7\n"
        stubs.run(invocation, comment, stdout)
        assert run(stubs, *argv) == 0, capsys.readouterr().err
    assert sent == [
        f"cdk-trn-trn-cluster-{a}" for a in ("queue", "status", "cancel", "logs", "submit")
    ]
    source = "".join(
        p.read_text()
        for p in (ROOT / "cdk_trn_runtime" / "cli").glob("*.py")
        if p.name != "documents.py"
    )
    for forbidden in ('"AWS-RunShellScript"', '"AWS-StartInteractiveCommand"', '"commands"'):
        assert forbidden not in source


def test_shell_sends_no_command_of_its_own(stubs):
    stubs.cluster()
    started: list[list[str]] = []

    def run_interactive(argv):
        started.append(list(argv))
        return 0

    run(stubs, "shell", which=lambda n: n, run_interactive=run_interactive)
    [argv] = started
    assert "--parameters" not in argv
    assert argv[argv.index("--document-name") + 1] == "cdk-trn-trn-cluster-shell"


def test_submit_with_code_uploads_the_directory_and_names_it_to_the_document(
    stubs, job_script, tmp_path, capsys
):
    import io
    import tarfile

    from botocore.stub import ANY

    code = tmp_path / "src"
    (code / "pkg").mkdir(parents=True)
    (code / "pkg" / "train.py").write_text("print('hi')\n")
    (code / "link").symlink_to("/etc/passwd")
    stubs.cluster()
    stubs.stack({"DatasetBucketName": "code-bkt"}, stack="trn-storage")
    name = "20260301T120000Z-train.sbatch"
    key = f"code/{name}.tar.gz"
    uploaded: list[bytes] = []
    stubs.aws.s3.meta.events.register(
        "provide-client-params.s3.PutObject", lambda params, **_: uploaded.append(params["Body"])
    )
    stubs.s3.add_response("put_object", {}, {"Bucket": "code-bkt", "Key": key, "Body": ANY})
    stubs.run(remote.submit_invocation(SCRIPT, name, code_key=key), f"cdk-trn submit {name}", "9\n")
    assert run(stubs, "submit", "--code", str(code), str(job_script)) == 0
    with tarfile.open(fileobj=io.BytesIO(uploaded[0])) as archive:
        assert sorted(archive.getnames()) == ["pkg", "pkg/train.py"]  # no link


def test_submit_with_code_uploads_to_the_cluster_stacks_code_bucket_output(
    stubs, job_script, tmp_path, capsys
):
    from botocore.stub import ANY

    from cdk_trn_runtime.contract import OUTPUT_CODE_ARCHIVE_BUCKET

    code = tmp_path / "src"
    code.mkdir()
    (code / "train.py").write_text("print('hi')\n")
    # A user's own stack: the bucket's name is its own output, no storage stack is read.
    stubs.stack({**OUTPUTS, OUTPUT_CODE_ARCHIVE_BUCKET: "team-code"}, stack="team-a")
    stubs.group()
    name = "20260301T120000Z-train.sbatch"
    key = f"code/{name}.tar.gz"
    stubs.s3.add_response("put_object", {}, {"Bucket": "team-code", "Key": key, "Body": ANY})
    stubs.run(remote.submit_invocation(SCRIPT, name, code_key=key), f"cdk-trn submit {name}", "9\n")
    assert run(stubs, "--stack", "team-a", "submit", "--code", str(code), str(job_script)) == 0


def test_submit_with_code_on_a_stack_without_a_code_bucket_says_so(
    stubs, job_script, tmp_path, capsys
):
    code = tmp_path / "src"
    code.mkdir()
    stubs.stack(stack="team-a")
    stubs.group()
    assert run(stubs, "--stack", "team-a", "submit", "--code", str(code), str(job_script)) == 1
    assert "stack team-a has no output SlurmCodeBucket" in capsys.readouterr().err
