"""The node's signing agent (provenance.agent) with the real unix socket and SO_PEERCRED: jobs
connect as their own uid (a forked child that drops to it), Slurm's answers come from a Slurm
double (what `scontrol pidinfo` and `scontrol show job` would say), the vault is a local-key
double. A job gets signatures naming its own run only, whatever it asks; a process outside any
job, or of another uid, gets none. Resume (provenance.resume) refuses a planted `latest`."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cdk_trn_runtime.provenance.agent_client import AgentClient, AgentError, signed_file
from cdk_trn_runtime.provenance.agent_socket import serve
from cdk_trn_runtime.provenance.manifest import (
    load_public_key,
    manifest_digest,
    verify_signed_manifest,
)
from cdk_trn_runtime.provenance.peer_identity import Slurm
from cdk_trn_runtime.provenance.resume import ResumeRefused, check_resume
from cdk_trn_runtime.provenance.signing import AgentCheckpointSigner, write_signed_manifest
from cdk_trn_runtime.provenance.signing_agent import SigningAgent
from cdk_trn_runtime.train import checkpoint as ckpt
from tests.support.servers import POLL_INTERVAL

JOB_UID = 2000
OTHER_UID = 2001
NODE = "n1"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="jobs connect as uid 2000 (CI: root)")
#: The manifest child runs as the job's uid: an interpreter that uid can run (the venv's may sit
#: under a directory only root reads).
JOB_PYTHON = "/usr/bin/python3"


@pytest.fixture(autouse=True)
def _job_python(monkeypatch):
    monkeypatch.setenv("CDK_TRN_AGENT_PYTHON", JOB_PYTHON)


class SlurmDouble:
    """Answers scontrol as Slurm would for the jobs it is told about: ``jobs[pid] = (job id,
    uid, node)``."""

    def __init__(self) -> None:
        self.pids: dict[int, str] = {}
        self.jobs: dict[str, tuple[int, str, str]] = {}

    def run(self, argv: Sequence[str]) -> str:
        if list(argv[:2]) == ["scontrol", "pidinfo"]:
            job = self.pids.get(int(argv[2]))
            if job is None:
                raise AgentError(f"scontrol pidinfo {argv[2]}: no job")
            return f"Slurm JobId={job} ends at Sun Dec 06 12:00:00 2026\n"
        if list(argv[:3]) == ["scontrol", "show", "job"]:
            uid, node, state = self.jobs[argv[4]]
            return (
                f"JobId={argv[4]} JobName=train UserId=trn({uid}) GroupId=trn({uid}) "
                f"JobState={state} NodeList={node} WorkDir=/home/trn\n"
            )
        if list(argv[:3]) == ["scontrol", "show", "hostnames"]:
            return argv[3] + "\n"
        raise AssertionError(argv)


class LocalKeyVaultDouble:
    """Signs digests with a key of its own, as the vault's enclave does."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP384R1())
        self.der = self.key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.down = False

    def info(self) -> dict[str, Any]:
        import base64

        return {"public_key": base64.b64encode(self.der).decode()}

    def sign_digest(self, digest: bytes) -> dict[str, Any]:
        import base64

        if self.down:
            raise ConnectionError("vault double is down")
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

        signature = self.key.sign(digest, ec.ECDSA(Prehashed(hashes.SHA384())))
        return {
            "signature": base64.b64encode(signature).decode(),
            "public_key": base64.b64encode(self.der).decode(),
        }


@pytest.fixture
def world() -> Iterator[dict[str, Any]]:
    """A shared root a job can write (0755 chain, checkpoints/ owned by the job's uid), the
    agent serving a socket, its records root's."""
    base = Path(tempfile.mkdtemp(prefix="cdktrn-agent-", dir="/tmp"))
    base.chmod(0o755)
    shared = base / "fsx"
    (shared / "checkpoints").mkdir(parents=True)
    os.chown(shared / "checkpoints", JOB_UID, JOB_UID)
    (shared / "checkpoints").chmod(0o1777)
    slurm = SlurmDouble()
    vault = LocalKeyVaultDouble()
    agent = SigningAgent(
        slurm=Slurm(NODE, run=slurm.run),
        cluster="c1",
        records=shared / "slurm" / "signer",
        signer=vault,
    )
    sock = str(base / "run" / "signer.sock")
    server = serve(agent, sock, poll_interval=POLL_INTERVAL)
    try:
        yield {
            "base": base,
            "shared": shared,
            "slurm": slurm,
            "vault": vault,
            "agent": agent,
            "socket": sock,
        }
    finally:
        server.shutdown()
        server.server_close()
        shutil.rmtree(base, ignore_errors=True)


def _as_uid(uid: int, work) -> Any:
    """Run ``work()`` in a forked child that dropped to ``uid``; its JSON result or error."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: a job's process
        os.close(read)
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            result = {"result": work(os.getpid())}
        except Exception as exc:  # noqa: BLE001
            result = {"error": f"{type(exc).__name__}: {exc}"}
        os.write(write, json.dumps(result).encode())
        os._exit(0)
    os.close(write)
    data = b""
    while chunk := os.read(read, 65536):
        data += chunk
    os.close(read)
    os.waitpid(pid, 0)
    return json.loads(data)


def _job_checkpoint(world: dict[str, Any], job: str, step: int, content: bytes) -> Path:
    """What a job of uid 2000 commits: step-<N>/state.pt in its own directory."""
    directory = world["shared"] / "checkpoints" / f"train-{job}"

    def commit(_pid: int) -> str:
        return str(ckpt.save(directory, step, lambda h: h.write(content)))

    done = _as_uid(JOB_UID, commit)
    assert "result" in done, done
    return Path(done["result"])


def _register(world: dict[str, Any], job: str, uid: int = JOB_UID, state: str = "RUNNING") -> None:
    world["slurm"].jobs[job] = (uid, NODE, state)


def _ask(world: dict[str, Any], job: str | None, message: dict[str, Any], uid: int = JOB_UID):
    """A process of ``uid`` (in ``job`` as Slurm sees it, or in none) asks the agent."""
    slurm = world["slurm"]

    def ask(pid: int) -> Any:
        return AgentClient(world["socket"]).request(message)

    # The child's pid is only known once forked: Slurm's double learns it from a pid file.
    if job is not None:
        original = world["agent"].slurm._run

        def run(argv: Sequence[str]) -> str:
            if list(argv[:2]) == ["scontrol", "pidinfo"]:
                slurm.pids[int(argv[2])] = job
            return original(argv)

        world["agent"].slurm._run = run
        try:
            return _as_uid(uid, ask)
        finally:
            world["agent"].slurm._run = original
    return _as_uid(uid, ask)


def test_a_job_gets_its_own_run_signed_whatever_it_claims(world):
    _register(world, "12")
    path = _job_checkpoint(world, "12", 5, b"weights")
    done = _ask(
        world,
        "12",
        {"op": "sign", "checkpoint": str(path), "step": 5, "run_id": "42", "cluster": "x"},
    )
    assert "result" in done, done
    signed = signed_file(done["result"])
    assert signed is not None
    manifest = signed["manifest"]
    assert (manifest["run_id"], manifest["cluster"]) == ("12", "c1")  # from Slurm, not the ask
    assert manifest["checkpoint_path"] == str(path)
    report = verify_signed_manifest(
        signed, path, load_public_key(world["vault"].der), expected={"run_id": "12"}
    )
    assert report.ok, report.lines()
    assert not verify_signed_manifest(
        signed, path, load_public_key(world["vault"].der), expected={"run_id": "42"}
    ).ok


def test_a_manifest_child_that_claims_another_run_gets_no_signature(world):
    """The child runs as the job's uid: the job can plant a usercustomize.py or ptrace it and
    make it print anything. The agent signs only the identity it derived itself."""
    _register(world, "12")
    path = _job_checkpoint(world, "12", 5, b"weights")
    agent = world["agent"]
    honest = agent._hash_as

    def forged(uid, gid, directory, identity, **kw):
        manifest = honest(uid, gid, directory, identity, **kw)
        return {**manifest, "run_id": "42", "checkpoint_path": "/fsx/checkpoints/train-42/x"}

    agent._hash_as = forged
    try:
        done = _ask(world, "12", {"op": "sign", "checkpoint": str(path), "step": 5})
    finally:
        agent._hash_as = honest
    assert "the manifest child claims" in done["error"] and "refused" in done["error"]


def test_a_manifest_child_s_extra_claims_are_not_signed(world):
    _register(world, "12")
    path = _job_checkpoint(world, "12", 5, b"weights")
    agent = world["agent"]
    honest = agent._hash_as

    def forged(uid, gid, directory, identity, **kw):
        manifest = honest(uid, gid, directory, identity, **kw)
        return {**manifest, "created": "1999-01-01T00:00:00Z", "resumed_from": {"x": 1}}

    agent._hash_as = forged
    try:
        done = _ask(world, "12", {"op": "sign", "checkpoint": str(path), "step": 5})
    finally:
        agent._hash_as = honest
    manifest = signed_file(done["result"])["manifest"]
    assert manifest["run_id"] == "12" and manifest["created"] != "1999-01-01T00:00:00Z"
    assert "resumed_from" not in manifest


def test_the_manifest_child_runs_without_the_job_s_user_site(world, monkeypatch):
    """A usercustomize.py in the job's home is not imported (-s, PYTHONNOUSERSITE)."""
    import subprocess

    from cdk_trn_runtime.provenance import manifest_child

    seen: dict[str, Any] = {}

    def run(argv, **kw):
        seen["argv"], seen["env"] = argv, kw["env"]
        return subprocess.CompletedProcess(argv, 1, "", "stop")

    monkeypatch.setattr(manifest_child.subprocess, "run", run)
    with pytest.raises(AgentError):
        manifest_child.hash_as(JOB_UID, JOB_UID, "/x", {})
    assert "-s" in seen["argv"] and "-P" in seen["argv"]
    assert seen["env"]["PYTHONNOUSERSITE"] == "1" and "HOME" not in seen["env"]


def test_a_process_outside_any_job_gets_no_signature(world):
    _register(world, "12")
    path = _job_checkpoint(world, "12", 5, b"weights")
    done = _ask(world, None, {"op": "sign", "checkpoint": str(path), "step": 5})
    assert "not part of a Slurm job" in done["error"]


def test_a_caller_of_another_uid_than_the_job_s_user_gets_nothing(world):
    _register(world, "12", uid=OTHER_UID)
    path = _job_checkpoint(world, "12", 5, b"weights")
    done = _ask(world, "12", {"op": "sign", "checkpoint": str(path), "step": 5})
    assert "belongs to uid 2001, not the caller's 2000" in done["error"]


def test_a_job_cannot_have_a_root_file_or_a_linked_path_signed(world):
    _register(world, "12")
    done = _ask(world, "12", {"op": "sign", "checkpoint": "/etc", "step": 1})
    assert "is not a directory of the caller's uid" in done["error"]
    path = _job_checkpoint(world, "12", 5, b"weights")
    link = world["shared"] / "checkpoints" / "link"
    _as_uid(JOB_UID, lambda pid: os.symlink(path, link))
    done = _ask(world, "12", {"op": "sign", "checkpoint": str(link), "step": 5})
    assert "symbolic link" in done["error"]


def test_a_job_s_checkpoint_that_links_to_a_root_only_file_is_not_hashed(world):
    """The manifest child runs as the job's uid: a link inside is refused, not followed."""
    _register(world, "12")
    secret = world["base"] / "root-only"
    secret.write_bytes(b"munge key")
    secret.chmod(0o600)

    def plant(pid: int) -> str:
        directory = world["shared"] / "checkpoints" / "train-12" / "step-00000009"
        directory.mkdir(parents=True)
        os.symlink(secret, directory / "state.pt")
        return str(directory)

    path = _as_uid(JOB_UID, plant)["result"]
    done = _ask(world, "12", {"op": "sign", "checkpoint": path, "step": 9})
    assert "error" in done and "munge" not in json.dumps(done)


def test_the_agent_records_commits_root_only_and_a_vault_outage_leaves_them_unsigned(world):
    _register(world, "12")
    path = _job_checkpoint(world, "12", 5, b"weights")
    world["vault"].down = True
    done = _ask(world, "12", {"op": "sign", "checkpoint": str(path), "step": 5})
    assert "the vault did not sign" in done["error"]
    records = world["shared"] / "slurm" / "signer"
    assert records.stat().st_mode & 0o777 == 0o700 and records.stat().st_uid == 0
    assert _ask(world, "12", {"op": "committed", "checkpoint": str(path)})["result"]["record"]
    _register(world, "13")
    other = _ask(world, "13", {"op": "committed", "checkpoint": str(path)})
    assert other["result"]["record"] is None


# --- resume ----------------------------------------------------------------------------------


def _resume_as_job(
    world: dict[str, Any],
    job: str,
    latest: Path,
    env: dict[str, str],
    contents: dict[str, bytes] | None = None,
):
    slurm = world["slurm"]
    original = world["agent"].slurm._run

    def run(argv: Sequence[str]) -> str:
        if list(argv[:2]) == ["scontrol", "pidinfo"]:
            slurm.pids[int(argv[2])] = job
        return original(argv)

    world["agent"].slurm._run = run

    def resume(pid: int) -> Any:
        client = AgentClient(world["socket"])
        try:
            return check_resume(latest, env, client=client, log=lambda m: None, contents=contents)
        except ResumeRefused as exc:
            return {"refused": str(exc)}

    try:
        return _as_uid(JOB_UID, resume)["result"]
    finally:
        world["agent"].slurm._run = original


def test_a_requeued_job_resumes_its_own_signed_checkpoint_with_lineage(world):
    _register(world, "12")
    path = _job_checkpoint(world, "12", 5, b"weights")
    answer = _ask(world, "12", {"op": "sign", "checkpoint": str(path), "step": 5})["result"]
    signed = signed_file(answer)
    assert signed is not None
    _as_uid(JOB_UID, lambda pid: write_signed_manifest(ckpt.manifest_path(path), signed))
    lineage = _resume_as_job(world, "12", path, {"CDK_TRN_SLURM_ENV": "/nonexistent"})
    assert lineage == {
        "checkpoint_path": str(path),
        "manifest_sha384": manifest_digest(signed["manifest"]).hex(),
    }


def test_a_planted_latest_signed_for_another_run_is_refused(world):
    """Job 13 plants its own validly signed checkpoint and `latest` in job 12's directory."""
    _register(world, "12")
    _register(world, "13")
    planted = _job_checkpoint(world, "12", 99, b"poisoned")  # in 12's directory, by uid 2000
    answer = _ask(world, "13", {"op": "sign", "checkpoint": str(planted), "step": 99})["result"]
    signed = signed_file(answer)
    assert signed is not None
    _as_uid(JOB_UID, lambda pid: write_signed_manifest(ckpt.manifest_path(planted), signed))
    refused = _resume_as_job(world, "12", planted, {"CDK_TRN_SLURM_ENV": "/nonexistent"})
    assert "not proven to be this run's" in refused["refused"]
    assert "run_id: manifest says '13', expected '12'" in refused["refused"]


def test_an_unsigned_planted_latest_is_refused_and_accepted_only_when_told(world):
    _register(world, "12")
    planted = _job_checkpoint(world, "12", 99, b"poisoned")  # no request to the agent
    env = {"CDK_TRN_SLURM_ENV": "/nonexistent"}
    refused = _resume_as_job(world, "12", planted, env)
    assert "this job did not commit it" in refused["refused"]
    told = _resume_as_job(world, "12", planted, {**env, "CDK_TRN_RESUME_UNVERIFIED": "1"})
    assert told == {"checkpoint_path": str(planted), "manifest_sha384": None}


def test_an_unsigned_checkpoint_this_job_committed_during_an_outage_is_resumed(world):
    _register(world, "12")
    path = _job_checkpoint(world, "12", 5, b"weights")
    world["vault"].down = True
    _ask(world, "12", {"op": "sign", "checkpoint": str(path), "step": 5})
    lineage = _resume_as_job(world, "12", path, {"CDK_TRN_SLURM_ENV": "/nonexistent"})
    assert lineage == {"checkpoint_path": str(path), "manifest_sha384": None}


def _sign_and_write(world: dict[str, Any], job: str, path: Path) -> dict[str, Any]:
    answer = _ask(world, job, {"op": "sign", "checkpoint": str(path), "step": 5})["result"]
    signed = signed_file(answer)
    assert signed is not None
    _as_uid(JOB_UID, lambda pid: write_signed_manifest(ckpt.manifest_path(path), signed))
    return signed


def _overwrite(path: Path, content: bytes) -> None:
    _as_uid(JOB_UID, lambda pid: (path / ckpt.STATE_FILE).write_bytes(content) and None)


def test_a_tampered_signed_checkpoint_is_refused_on_requeue(world):
    """The record says this job committed it: it was signed, so only the signature counts."""
    _register(world, "12")
    path = _job_checkpoint(world, "12", 5, b"weights")
    _sign_and_write(world, "12", path)
    _overwrite(path, b"poisoned")
    refused = _resume_as_job(world, "12", path, {"CDK_TRN_SLURM_ENV": "/nonexistent"})
    assert "TAMPERED" in refused["refused"] or "tampered" in refused["refused"]
    assert "committed it signed, so only its signature is accepted" in refused["refused"]


def test_an_unsigned_checkpoint_changed_after_its_commit_is_refused(world):
    _register(world, "12")
    path = _job_checkpoint(world, "12", 5, b"weights")
    world["vault"].down = True
    _ask(world, "12", {"op": "sign", "checkpoint": str(path), "step": 5})
    _overwrite(path, b"poisoned")
    refused = _resume_as_job(world, "12", path, {"CDK_TRN_SLURM_ENV": "/nonexistent"})
    assert "not what this job committed unsigned" in refused["refused"]
    assert "state.pt" in refused["refused"]


def test_resume_verifies_the_bytes_the_caller_loads_not_the_file_again(world):
    """train reads state.pt once and hands those bytes to check_resume: swapped bytes fail."""
    _register(world, "12")
    path = _job_checkpoint(world, "12", 5, b"weights")
    _sign_and_write(world, "12", path)
    env = {"CDK_TRN_SLURM_ENV": "/nonexistent"}
    good = _resume_as_job(world, "12", path, env, contents={"state.pt": b"weights"})
    assert good["checkpoint_path"] == str(path)
    bad = _resume_as_job(world, "12", path, env, contents={"state.pt": b"poisoned"})
    assert "refused" in bad


def test_the_job_side_signer_writes_the_agent_s_manifest_and_records_lineage(world):
    _register(world, "12")
    path = _job_checkpoint(world, "12", 5, b"weights")
    slurm = world["slurm"]
    original = world["agent"].slurm._run

    def run(argv: Sequence[str]) -> str:
        if list(argv[:2]) == ["scontrol", "pidinfo"]:
            slurm.pids[int(argv[2])] = "12"
        return original(argv)

    world["agent"].slurm._run = run

    def sign(pid: int) -> Any:
        signer = AgentCheckpointSigner(AgentClient(world["socket"]), log=lambda m: None)
        signer.resumed_from = {"checkpoint_path": "/fsx/x/step-00000001", "manifest_sha384": None}
        return [str(p) for p in signer.after_commit(path, signer.manifest_of(path, path, 5))]

    try:
        [written] = _as_uid(JOB_UID, sign)["result"]
    finally:
        world["agent"].slurm._run = original
    manifest = json.loads(Path(written).read_text())["manifest"]
    assert manifest["run_id"] == "12" and manifest["resumed_from"]["manifest_sha384"] is None


def test_a_cluster_without_vault_or_agent_resumes_the_job_s_own_latest(tmp_path):
    latest = tmp_path / "step-00000005"
    latest.mkdir()
    env = {"CDK_TRN_SLURM_ENV": "/nonexistent", "CDK_TRN_SIGNER_SOCKET": str(tmp_path / "none")}
    assert check_resume(latest, env, log=lambda m: None)["manifest_sha384"] is None
    with pytest.raises(ResumeRefused, match="signing agent does not answer"):
        check_resume(latest, {**env, "CDK_TRN_SIGNER_ROLE_ARN": "arn:x"}, log=lambda m: None)


def test_retention_removes_only_what_this_run_committed(tmp_path):
    planted = tmp_path / "step-99999999"
    planted.mkdir()
    owned: list[Path] = []
    for step in (1, 2, 3):
        ckpt.save(tmp_path, step, lambda h: h.write(b"x"), keep=2, owned=owned)
    assert planted.is_dir()
    assert sorted(p.name for p in ckpt.checkpoints(tmp_path)) == [
        "step-00000002",
        "step-00000003",
        "step-99999999",
    ]
