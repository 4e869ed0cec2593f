"""The scripts ``cdk-trn`` sends to the controller, run for real by bash and by dash (what ``sh``
is on Debian; SSM's AWS-RunShellScript runs scripts with ``sh``) against the command doubles in
``controller_command_doubles/``: a ``docker`` double that runs ``exec``'s command on this machine,
and doubles of sbatch, scontrol, squeue and sinfo. A temporary directory stands in for the shared
file system. Every double appends its exact argv to a call log."""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from cdk_trn_runtime.cli import remote
from cdk_trn_runtime.contract import (
    SLURM_CONTROLLER_CONTAINER,
    SLURM_DRAIN_REASON_PREFIX,
    SLURM_JOB_USER,
)

DOUBLES = Path(__file__).parent / "controller_command_doubles"
SHELLS = ["bash", "dash"]
JOB_SCRIPT = b"#!/bin/bash\n#SBATCH --nodes=2\nsrun hostname  # it's 'quoted' \"here\" $HOME\n"


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str
    calls: list[list[str]]


@dataclass
class FakeController:
    """A temp directory as the shared file system, and the environment for the doubles."""

    root: Path
    controller: remote.Controller
    env: dict[str, str]

    @property
    def home(self) -> Path:
        return Path(self.controller.home)

    def run(self, script: str, shell: str = "bash", **env: str) -> Ran:
        path = self.root / "_script.sh"
        path.write_text(script)
        log = Path(self.env["DOUBLES_LOG"])
        log.write_text("")
        result = subprocess.run(
            [shell, str(path)],
            env={**self.env, **env},
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=60,
        )
        calls = [line.split("\x1f") for line in log.read_text().splitlines()]
        return Ran(result.returncode, result.stdout, result.stderr, calls)

    def sbatch_argv(self) -> list[str]:
        return Path(self.env["SBATCH_DOUBLE_ARGV"]).read_bytes().decode().split("\0")[:-1]

    def job_record(self, job: str, state: str, stdout: Path) -> None:
        """What ``scontrol show job`` prints for a job (the lines the script reads)."""
        (self.root / "jobs" / job).write_text(
            f"JobId={job} JobName=train.sbatch\n"
            f"   UserId=trn(2000) GroupId=trn(2000) MCS_label=N/A\n"
            f"   JobState={state} Reason=None Dependency=(null)\n"
            f"   WorkDir={self.home}\n"
            f"   StdErr={stdout}\n"
            f"   StdIn=/dev/null\n"
            f"   StdOut={stdout}\n"
        )


@pytest.fixture
def fake(tmp_path) -> FakeController:
    if not shutil.which("dash"):
        pytest.fail("dash is needed: it is what sh is on the controller's image family")
    shared = tmp_path / "fsx dir"  # a space in the path proves the paths are quoted
    controller = remote.Controller(
        instance_id="i-0123456789abcdef0",
        container=SLURM_CONTROLLER_CONTAINER,
        job_user=SLURM_JOB_USER,
        shared_root=str(shared),
        slurm_cluster="trn",
    )
    Path(controller.home).mkdir(parents=True)
    (tmp_path / "jobs").mkdir()
    env = {
        "PATH": f"{DOUBLES}:{os.environ['PATH']}",
        "DOUBLES_LOG": str(tmp_path / "calls.log"),
        "SBATCH_DOUBLE_ARGV": str(tmp_path / "sbatch.argv"),
        "SCONTROL_DOUBLE_JOBS": str(tmp_path / "jobs"),
        "LC_ALL": "C",
    }
    return FakeController(tmp_path, controller, env)


def _docker_execs(ran: Ran) -> list[list[str]]:
    return [c for c in ran.calls if c[:2] == ["docker", "exec"]]


# --- submit ----------------------------------------------------------------------------------


@pytest.mark.parametrize("shell", SHELLS)
def test_submit_writes_the_script_byte_for_byte_and_sbatches_it(fake, shell):
    name = remote.script_file_name("train.sbatch", "20260301T120000Z")
    ran = fake.run(remote.submit_script(fake.controller, JOB_SCRIPT, name, ["-N", "2"]), shell)
    assert ran.returncode == 0, ran.stderr
    written = fake.home / "jobs" / "20260301T120000Z-train.sbatch"
    assert written.read_bytes() == JOB_SCRIPT
    assert fake.sbatch_argv() == ["--parsable", "--requeue", "-N", "2", str(written)]
    assert remote.parse_job_id(ran.stdout) == "4242"


@pytest.mark.parametrize("shell", SHELLS)
def test_submit_passes_hostile_arguments_to_sbatch_as_literals(fake, shell):
    hostile = ["; rm -rf /", "$(touch pwned)", "`touch pwned2`", "a b'c\"d", "--job-name=x&&id"]
    script_args = ["--lr", "$(touch pwned3)", "two words"]
    ran = fake.run(
        remote.submit_script(fake.controller, JOB_SCRIPT, "t-job.sh", hostile, script_args), shell
    )
    assert ran.returncode == 0, ran.stderr
    path = str(fake.home / "jobs" / "t-job.sh")
    assert fake.sbatch_argv() == ["--parsable", "--requeue", *hostile, path, *script_args]
    assert not list(fake.root.rglob("pwned*"))


def test_submit_runs_every_command_as_the_job_user_in_the_controller_container(fake):
    ran = fake.run(remote.submit_script(fake.controller, JOB_SCRIPT, "t-job.sh"))
    execs = _docker_execs(ran)
    assert execs, ran.calls
    for call in execs:
        user = call[call.index("-u") + 1]
        assert user == SLURM_JOB_USER
        assert "-w" in call
        assert SLURM_CONTROLLER_CONTAINER in call
    sbatch_call = next(c for c in execs if "sbatch" in c)
    assert sbatch_call[sbatch_call.index("-w") + 1] == str(fake.home)
    assert Path(fake.env["SBATCH_DOUBLE_ARGV"] + ".cwd").read_text().strip() == str(fake.home)


@pytest.mark.parametrize("given", ["--no-requeue", "--requeue"])
def test_submit_adds_requeue_only_when_the_user_did_not_choose(fake, given):
    ran = fake.run(remote.submit_script(fake.controller, JOB_SCRIPT, "t-job.sh", [given]))
    assert ran.returncode == 0, ran.stderr
    argv = fake.sbatch_argv()
    assert argv.count("--requeue") + argv.count("--no-requeue") == 1
    assert given in argv


def test_submit_reports_sbatch_failure_with_its_stderr(fake):
    error = (
        "sbatch: error: Batch job submission failed: Requested node configuration is not available"
    )
    ran = fake.run(
        remote.submit_script(fake.controller, JOB_SCRIPT, "t-job.sh", ["-N", "99"]),
        SBATCH_DOUBLE_ERROR=error,
    )
    assert ran.returncode == 1
    assert error in ran.stderr


@pytest.mark.parametrize("shell", SHELLS)
def test_submit_stops_when_the_controller_container_is_not_running(fake, shell):
    ran = fake.run(
        remote.submit_script(fake.controller, JOB_SCRIPT, "t-job.sh"),
        shell,
        DOCKER_DOUBLE_RUNNING="false",
    )
    assert ran.returncode == remote.EXIT_NO_CONTAINER
    assert f"container {SLURM_CONTROLLER_CONTAINER} is not running" in ran.stderr
    assert not _docker_execs(ran)


def test_submit_stops_when_the_job_users_home_is_missing(fake):
    shutil.rmtree(fake.home)
    ran = fake.run(remote.submit_script(fake.controller, JOB_SCRIPT, "t-job.sh"))
    assert ran.returncode == remote.EXIT_NO_FILE
    assert "home" in ran.stderr
    assert not any("sbatch" in c for c in ran.calls)


def test_submit_never_overwrites_an_earlier_script(fake):
    script = remote.submit_script(fake.controller, JOB_SCRIPT, "t-job.sh")
    assert fake.run(script).returncode == 0
    again = fake.run(remote.submit_script(fake.controller, b"#!/bin/sh\nother\n", "t-job.sh"))
    assert again.returncode != 0
    assert (fake.home / "jobs" / "t-job.sh").read_bytes() == JOB_SCRIPT
    assert not any("sbatch" in c for c in again.calls)


def test_submit_script_refuses_more_than_64_kib():
    controller = remote.Controller("i-1", "c", "trn", "/fsx", "trn")
    remote.submit_script(controller, b"#" * remote.MAX_SCRIPT_BYTES, "ok.sh")
    with pytest.raises(ValueError, match="more than 65536"):
        remote.submit_script(controller, b"#" * (remote.MAX_SCRIPT_BYTES + 1), "big.sh")


@pytest.mark.parametrize(
    ("local", "expected"),
    [
        ("train.sbatch", "T-train.sbatch"),
        ("dir/sub/job.sh", "T-job.sh"),
        ("my job;rm -rf.sh", "T-my_job_rm_-rf.sh"),
        (".hidden", "T-hidden"),
        ("$(x)", "T-__x_"),
    ],
)
def test_script_file_name_keeps_only_safe_characters(local, expected):
    assert remote.script_file_name(local, "T") == expected


# --- queue and status ------------------------------------------------------------------------


@pytest.mark.parametrize("shell", SHELLS)
def test_queue_runs_squeue_with_the_fixed_format_as_the_job_user(fake, shell):
    ran = fake.run(remote.queue_script(fake.controller), shell)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == "squeue double\n"
    assert _docker_execs(ran) == [
        [
            "docker",
            "exec",
            "-u",
            SLURM_JOB_USER,
            "-w",
            "/",
            SLURM_CONTROLLER_CONTAINER,
            "squeue",
            f"--format={remote.QUEUE_FORMAT}",
        ]
    ]


@pytest.mark.parametrize("shell", SHELLS)
def test_status_lists_nodes_with_reasons_then_running_jobs(fake, shell):
    ran = fake.run(remote.status_script(fake.controller), shell)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == (
        "NODES\nsinfo double\n\nDRAINED BY HEALTH CHECKS\nnone\n\nRUNNING JOBS\nsqueue double\n"
    )
    slurm_calls = [c[7:] for c in _docker_execs(ran)]
    assert slurm_calls == [
        ["sinfo", "-N", f"--format={remote.NODE_FORMAT}"],
        ["sinfo", "--list-reasons", "--noheader", "--format=%N %E"],
        ["squeue", "--states=RUNNING", f"--format={remote.QUEUE_FORMAT}"],
    ]
    # the node's state (%T: drained, draining, idle...) and its reason (%E)
    assert re.search(r"%-?[0-9]*T", remote.NODE_FORMAT)
    assert remote.NODE_FORMAT.endswith("%E")


@pytest.mark.parametrize("shell", SHELLS)
def test_status_lists_the_nodes_the_health_checks_drained_by_their_reason_prefix(fake, shell):
    reasons = (
        f"trn-1 {SLURM_DRAIN_REASON_PREFIX} neuron devices 15 of 16\n"
        "trn-2 maintenance by the operator\n"
        f"trn-3 {SLURM_DRAIN_REASON_PREFIX} shared fs /fsx missing"
    )
    ran = fake.run(remote.status_script(fake.controller), shell, SINFO_DOUBLE_REASONS=reasons)
    assert ran.returncode == 0, ran.stderr
    section = ran.stdout.split("DRAINED BY HEALTH CHECKS\n")[1].split("\n\n")[0]
    assert section.splitlines() == [
        "trn-1 cdk-trn: neuron devices 15 of 16",
        "trn-3 cdk-trn: shared fs /fsx missing",
    ]


# --- logs ------------------------------------------------------------------------------------


def _output(fake: FakeController, name: str, text: bytes) -> Path:
    path = fake.home / name
    path.write_bytes(text)
    return path


@pytest.mark.parametrize("shell", SHELLS)
def test_logs_reads_the_last_lines_of_the_jobs_stdout(fake, shell):
    out = _output(fake, "train-17.out", b"line 1\nline 2\nline 3\nline 4\n")
    fake.job_record("17", "RUNNING", out)
    ran = fake.run(remote.log_chunk_script(fake.controller, "17", offset=None, lines=2), shell)
    assert ran.returncode == 0, ran.stderr
    chunk = remote.parse_log_chunk(ran.stdout)
    assert (chunk.state, chunk.size, chunk.path) == ("RUNNING", 28, str(out))
    assert chunk.data == b"line 3\nline 4\n"
    assert chunk.start == 14
    assert chunk.active


def test_logs_reads_from_an_offset_and_no_more_than_one_chunk(fake):
    text = bytes(range(256)) * 200  # 51,200 bytes, not text: base64 carries it exactly
    out = _output(fake, "big.out", text)
    fake.job_record("18", "COMPLETED", out)
    ran = fake.run(remote.log_chunk_script(fake.controller, "18", offset=1000, lines=None))
    chunk = remote.parse_log_chunk(ran.stdout)
    assert chunk.data == text[1000 : 1000 + remote.LOG_CHUNK_BYTES]
    assert len(ran.stdout) < 24_000  # what GetCommandInvocation returns of standard output
    assert not chunk.active


def test_logs_of_a_whole_file(fake):
    out = _output(fake, "all.out", b"a\nb\n")
    fake.job_record("19", "COMPLETED", out)
    ran = fake.run(remote.log_chunk_script(fake.controller, "19", offset=None, lines=None))
    assert remote.parse_log_chunk(ran.stdout).data == b"a\nb\n"


def test_logs_of_a_job_slurm_forgot_falls_back_to_the_default_output(fake):
    out = _output(fake, "slurm-20.out", b"done\n")
    ran = fake.run(remote.log_chunk_script(fake.controller, "20", offset=0, lines=None))
    chunk = remote.parse_log_chunk(ran.stdout)
    assert (chunk.state, chunk.path, chunk.data) == ("", str(out), b"done\n")


def test_logs_of_a_pending_job_without_output_reports_no_file(fake):
    fake.job_record("21", "PENDING", fake.home / "slurm-21.out")
    ran = fake.run(remote.log_chunk_script(fake.controller, "21", offset=None, lines=10))
    assert ran.returncode == 0, ran.stderr
    chunk = remote.parse_log_chunk(ran.stdout)
    assert (chunk.state, chunk.size, chunk.data) == ("PENDING", -1, b"")


def test_logs_refuses_a_job_id_that_is_not_one():
    controller = remote.Controller("i-1", "c", "trn", "/fsx", "trn")
    for bad in ["12; rm -rf /", "$(id)", "", "12 13", "-1"]:
        with pytest.raises(ValueError, match="job must be a Slurm job id"):
            remote.log_chunk_script(controller, bad, offset=0, lines=None)
    remote.log_chunk_script(controller, "123_4", offset=0, lines=None)


def test_parse_log_chunk_rejects_an_unexpected_answer():
    with pytest.raises(ValueError, match="unexpected answer"):
        remote.parse_log_chunk("Error: something else\n")
    ok = "cdk-trn-log state=RUNNING size=3 start=0 path=/a b\n" + base64.b64encode(b"hi\n").decode()
    assert remote.parse_log_chunk(ok).path == "/a b"


# --- shell, job ids, and every script under shellcheck ---------------------------------------


def test_the_shell_document_is_a_login_shell_as_the_job_user_in_the_container():
    from cdk_trn_runtime.cli.documents import session_document

    document = session_document(
        container=SLURM_CONTROLLER_CONTAINER, job_user="trn", shared_root="/fsx"
    )
    assert document["sessionType"] == "InteractiveCommands" and document["parameters"] == {}
    assert document["properties"]["linux"]["commands"] == (
        f"docker exec -it -u trn -w /fsx/home/trn {SLURM_CONTROLLER_CONTAINER} bash -l"
    )


@pytest.mark.parametrize(
    ("stdout", "job"), [("4242\n", "4242"), ("4242;trn\n", "4242"), ("warn\n77\n", "77")]
)
def test_parse_job_id_reads_sbatch_parsable(stdout, job):
    assert remote.parse_job_id(stdout) == job


def test_parse_job_id_rejects_other_output():
    with pytest.raises(ValueError, match="no job id"):
        remote.parse_job_id("Submitted batch job 12\n")


def _all_scripts() -> dict[str, str]:
    c = remote.Controller("i-1", SLURM_CONTROLLER_CONTAINER, "trn", "/fsx", "trn")
    return {
        "submit": remote.submit_script(c, JOB_SCRIPT, "t.sh", ["-N", "2"], ["x"]),
        "queue": remote.queue_script(c),
        "status": remote.status_script(c),
        "logs-lines": remote.log_chunk_script(c, "1", offset=None, lines=5),
        "logs-offset": remote.log_chunk_script(c, "1", offset=7, lines=None),
    }


@pytest.mark.parametrize("name", sorted(_all_scripts()))
def test_every_remote_script_passes_shellcheck_as_posix_sh(name):
    result = subprocess.run(
        ["shellcheck", "-s", "sh", "-"],
        input=_all_scripts()[name],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout


def test_the_command_doubles_pass_shellcheck():
    doubles = sorted(str(p) for p in DOUBLES.iterdir() if not p.name.startswith("_"))
    result = subprocess.run(
        ["shellcheck", "-x", *doubles], cwd=DOUBLES, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout


def test_submit_with_code_unpacks_it_as_the_job_user_and_sbatches_there(tmp_path):
    """Root fetches the archive (aws s3 cp to stdout); the job user's docker exec unpacks it
    into <jobs>/<name>.code, and sbatch runs in that directory."""
    import io
    import tarfile

    shared = tmp_path / "fsx"
    controller = remote.Controller(
        "i-1", SLURM_CONTROLLER_CONTAINER, SLURM_JOB_USER, str(shared), "trn", "c1", "code-bkt"
    )
    Path(controller.home).mkdir(parents=True)
    (tmp_path / "jobs").mkdir()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        data = b"print('hi')\n"
        info = tarfile.TarInfo("src/train.py")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    (tmp_path / "s3" / "code-bkt" / "code").mkdir(parents=True)
    (tmp_path / "s3" / "code-bkt" / "code" / "x.sh.tar.gz").write_bytes(buffer.getvalue())
    env = {
        "PATH": f"{DOUBLES}:{os.environ['PATH']}",
        "DOUBLES_LOG": str(tmp_path / "calls.log"),
        "SBATCH_DOUBLE_ARGV": str(tmp_path / "sbatch.argv"),
        "SCONTROL_DOUBLE_JOBS": str(tmp_path / "jobs"),
        "FAKE_S3": str(tmp_path / "s3"),
        "LC_ALL": "C",
    }
    fake = FakeController(tmp_path, controller, env)
    script = remote.submit_script(controller, b"echo hi\n", "x.sh")
    assert "code_key=''" in script
    script = remote.render(
        controller, remote.submit_invocation(b"echo hi\n", "x.sh", code_key="code/x.sh.tar.gz")
    )
    ran = fake.run(script)
    assert ran.returncode == 0, ran.stderr
    code = Path(controller.jobs_dir) / "x.sh.code"
    assert (code / "src" / "train.py").read_bytes() == b"print('hi')\n"
    assert Path(env["SBATCH_DOUBLE_ARGV"] + ".cwd").read_text().strip() == str(code)
    unpack = next(c for c in ran.calls if c[:2] == ["docker", "exec"] and "tar" in " ".join(c))
    assert unpack[unpack.index("-u") + 1] == SLURM_JOB_USER


def test_a_code_key_is_refused_where_the_cluster_has_no_code_bucket(fake):
    with pytest.raises(ValueError, match="CodeKey"):
        remote.render(
            fake.controller, remote.submit_invocation(b"x", "x.sh", code_key="code/x.tar.gz")
        )
