"""The node's signing agent: the only signer of checkpoints on a cluster node, run by root.

A job asks it, over a unix socket, to sign *its own* checkpoint; everything the manifest says about
whose checkpoint it is comes from Slurm and the kernel, never from the caller:

- the caller's pid and uid from the socket (``SO_PEERCRED``, set by the kernel at connect);
- the job that pid belongs to from slurmd (``scontrol pidinfo <pid>``), and that job's user,
  name, state and nodes from slurmctld (``scontrol show job -o <id>``): the caller's uid must be
  the job's user, the job must be running on this node;
- the run id is the Slurm job id (a requeue keeps it); the cluster is the node's; the path is the
  checkpoint's real path, which must be a directory the caller's uid owns, with no link in it;
- the manifest (every file's SHA-384 and size) is computed here over the committed files, by a
  child process that runs as the caller's uid (root never opens what a job points it at).

The vault signs the manifest's digest for the agent only: the agent alone holds the credential
the vault accepts (the cluster's signer role, assumed with the node role, whose credentials only
root can fetch: imds_guard.sh). The signed manifest goes back to the caller, which writes it
beside its checkpoint (root writes nothing into a directory a job controls).

Every commit is recorded, signed or not, with its files' SHA-384, in a root-owned directory on
the shared file system (``<shared root>/slurm/signer/<job id>.jsonl``, readable by root only), so
that a requeue of the same job, on any node, may resume an unsigned ``latest`` it committed itself
(a vault outage leaves those) with exactly the files it committed, and nothing else: a checkpoint
the record says was signed is resumed only with a signature that verifies.

The agent signs only what it derived itself: run id, cluster, step and path, and the time; the
manifest child (the job's uid, so the job can tamper with it) contributes the file list only, and
a child naming another identity is refused.

Protocol: one JSON object per line each way. Requests: ``{"op": "sign", "checkpoint": PATH,
"step": N, "resumed_from": {...} | null}``, ``{"op": "committed", "checkpoint": PATH}``,
``{"op": "identity"}``. Answers: ``{"ok": true, ...}`` or ``{"ok": false, "error": ...}``.

    python -P -m cdk_trn_runtime.provenance.agent serve [--socket PATH] [--records DIR]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shlex
import socket
import socketserver
import stat
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cdk_trn_runtime import contract
from cdk_trn_runtime.provenance.manifest import (
    FORMAT,
    ManifestError,
    build_manifest,
    manifest_digest,
)

__all__ = [
    "DEFAULT_SOCKET",
    "AgentClient",
    "AgentError",
    "JobIdentity",
    "SigningAgent",
    "Slurm",
    "main",
    "serve",
    "signed_file",
]

LOG = logging.getLogger("cdk_trn.signer")
#: Where jobs find the agent (inside the node's Slurm container).
DEFAULT_SOCKET = "/run/cdk-trn/signer.sock"
#: The agent's credential: the role the vault accepts, assumed with the node role.
ENV_SIGNER_ROLE = "CDK_TRN_SIGNER_ROLE_ARN"
ENV_SOCKET = "CDK_TRN_SIGNER_SOCKET"
MAX_REQUEST_BYTES = 64 * 1024
CLIENT_TIMEOUT_SECONDS = 120.0
_JOB_ID = re.compile(r"JobId=(\d+)")
_FIELD = re.compile(r"(\w+)=(\S*)")
_USER = re.compile(r"^[^()]*\((\d+)\)$")
SO_PEERCRED_FORMAT = "3i"


class AgentError(Exception):
    """A request the agent refuses or cannot serve now; the message says why."""


@dataclass(frozen=True)
class JobIdentity:
    """What Slurm says about a job."""

    job_id: str
    uid: int
    name: str
    state: str
    nodes: tuple[str, ...]

    @property
    def run_id(self) -> str:
        return self.job_id


Runner = Callable[[Sequence[str]], str]


def _run(argv: Sequence[str]) -> str:
    done = subprocess.run(
        list(argv), capture_output=True, text=True, timeout=30, check=False, cwd="/"
    )
    if done.returncode != 0:
        raise AgentError(f"{shlex.join(argv)} failed: {done.stderr.strip() or done.returncode}")
    return done.stdout


class Slurm:
    """Slurm's own answers, through scontrol (the node's slurmd and the controller)."""

    def __init__(self, node: str, run: Runner = _run) -> None:
        self.node = node
        self._run = run

    def job_of_pid(self, pid: int) -> str:
        """The job slurmd says ``pid`` belongs to; AgentError when none."""
        try:
            out = self._run(["scontrol", "pidinfo", str(pid)])
        except AgentError as exc:
            raise AgentError(f"process {pid} is not part of a Slurm job on this node") from exc
        match = _JOB_ID.search(out)
        if not match:
            raise AgentError(f"process {pid} is not part of a Slurm job on this node")
        return match.group(1)

    def job(self, job_id: str) -> JobIdentity:
        fields = dict(_FIELD.findall(self._run(["scontrol", "show", "job", "-o", job_id])))
        user = _USER.match(fields.get("UserId", ""))
        if fields.get("JobId") != job_id or not user:
            raise AgentError(f"slurm does not describe job {job_id}")
        hosts = self._run(["scontrol", "show", "hostnames", fields.get("NodeList", "")])
        return JobIdentity(
            job_id=job_id,
            uid=int(user.group(1)),
            name=fields.get("JobName", ""),
            state=fields.get("JobState", ""),
            nodes=tuple(hosts.split()),
        )


#: The directory holding this package (cdk_trn_runtime), for the manifest child's imports.
_PACKAGE_PARENT = Path(__file__).resolve().parents[2]


def _hash_as(
    uid: int,
    gid: int,
    directory: str,
    identity: Mapping[str, Any],
    python: str | None = None,
) -> dict[str, Any]:
    """The manifest of ``directory``, computed by a child running as ``uid``:``gid`` (what the
    caller can read, and nothing root alone could). ``python``: an interpreter that uid may run
    (default: this one; ``$CDK_TRN_AGENT_PYTHON``)."""
    python = python or os.environ.get("CDK_TRN_AGENT_PYTHON") or sys.executable
    # -s and PYTHONNOUSERSITE: no usercustomize.py from the job's home; -P: nothing from the
    # working directory; a clean environment whose PYTHONPATH is where this package was loaded
    # from (root's: /opt/cdk-trn in the image), whatever the agent's own environment held. -I
    # would also drop that PYTHONPATH. The child's output is not trusted anyway: the agent
    # sets the identity itself (_trusted_manifest).
    argv = [python, "-s", "-P", "-m", "cdk_trn_runtime.provenance.agent", "manifest"]
    done = subprocess.run(
        argv,
        input=json.dumps({"directory": directory, **identity}),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd="/",
        user=uid,
        group=gid,
        extra_groups=[],
        env={
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": str(_PACKAGE_PARENT),
            "PYTHONNOUSERSITE": "1",
        },
    )
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        raise AgentError(lines[-1] if lines else f"the manifest child exited {done.returncode}")
    manifest: dict[str, Any] = json.loads(done.stdout)
    return manifest


_SHA384 = re.compile(r"^[0-9a-f]{96}$")


def _trusted_manifest(child: Any, identity: Mapping[str, Any]) -> dict[str, Any]:
    """The manifest the agent signs: the file list the child (a process of the job's uid, which
    the job can tamper with) reported, checked for shape, and the identity the agent derived
    from Slurm and the request, set here. A child that names another identity is refused."""
    if not isinstance(child, dict) or child.get("format") != FORMAT:
        raise AgentError("the manifest child answered something that is not a manifest")
    for name, want in identity.items():
        if child.get(name) != want:
            raise AgentError(
                f"the manifest child claims {name}={child.get(name)!r}, not {want!r}: refused"
            )
    entries = child.get("files")
    if not isinstance(entries, list):
        raise AgentError("the manifest child answered no file list")
    files = []
    for entry in entries:
        if (
            not isinstance(entry, dict)
            or set(entry) != {"path", "sha384", "size"}
            or not isinstance(entry["path"], str)
            or not isinstance(entry["sha384"], str)
            or not _SHA384.match(entry["sha384"])
            or isinstance(entry["size"], bool)
            or not isinstance(entry["size"], int)
        ):
            raise AgentError(f"the manifest child answered a bad file entry: {entry!r}")
        files.append({"path": entry["path"], "sha384": entry["sha384"], "size": entry["size"]})
    created = datetime.now(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"format": FORMAT, **identity, "created": created, "files": files}


def _manifest_child() -> int:
    """``agent manifest``: the child :func:`_hash_as` starts (already as the caller's uid)."""
    request = json.loads(sys.stdin.read())
    directory = request.pop("directory")
    try:
        manifest = build_manifest(directory, **request)
    except ManifestError as exc:
        print(f"manifest: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(manifest))
    return 0


def _lineage(value: Any) -> dict[str, Any] | None:
    """The checkpoint a run resumed from, as the caller states it: a path and the SHA-384 of its
    signed manifest (null when it had none)."""
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) != {"checkpoint_path", "manifest_sha384"}:
        raise AgentError("resumed_from must be {checkpoint_path, manifest_sha384} or null")
    digest = value["manifest_sha384"]
    if digest is not None and not (
        isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{96}", digest)
    ):
        raise AgentError("resumed_from.manifest_sha384 must be 96 hex digits or null")
    path = value["checkpoint_path"]
    if not isinstance(path, str) or not path.startswith("/"):
        raise AgentError("resumed_from.checkpoint_path must be an absolute path")
    return {"checkpoint_path": path, "manifest_sha384": digest}


class SigningAgent:
    """The agent's decisions, independent of the socket (tests call :meth:`handle`)."""

    def __init__(
        self,
        *,
        slurm: Slurm,
        cluster: str,
        records: Path,
        signer: Any = None,
        hash_as: Callable[..., dict[str, Any]] = _hash_as,
    ) -> None:
        self.slurm = slurm
        self.cluster = cluster
        self.records = records
        #: What signs digests (``vault.client.VaultClient`` with the signer role), or a callable
        #: that returns one (found again at each request: a replaced vault has a new address);
        #: None where the cluster has no vault.
        self._signer = signer
        self._hash_as = hash_as
        self._lock = threading.Lock()

    # --- identity -------------------------------------------------------------------------

    def identify(self, pid: int, uid: int) -> JobIdentity:
        job = self.slurm.job(self.slurm.job_of_pid(pid))
        if job.uid != uid:
            raise AgentError(f"job {job.job_id} belongs to uid {job.uid}, not the caller's {uid}")
        if job.state not in ("RUNNING", "COMPLETING"):
            raise AgentError(f"job {job.job_id} is {job.state}, not running")
        if self.slurm.node not in job.nodes:
            raise AgentError(f"job {job.job_id} does not run on {self.slurm.node}")
        return job

    # --- records --------------------------------------------------------------------------

    def _record_file(self, job: JobIdentity) -> Path:
        return self.records / f"{job.job_id}.jsonl"

    def record(self, job: JobIdentity, entry: Mapping[str, Any]) -> None:
        with self._lock:
            self.records.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(self.records, 0o700)
            flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW
            fd = os.open(self._record_file(job), flags, 0o600)
            with os.fdopen(fd, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(dict(entry), sort_keys=True) + "\n")
                handle.flush()
                os.fsync(handle.fileno())

    def committed(self, job: JobIdentity, checkpoint: str) -> dict[str, Any] | None:
        """The last record of ``checkpoint`` by this job, or None."""
        try:
            lines = self._record_file(job).read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return None
        found = None
        for line in lines:
            entry = json.loads(line)
            if entry.get("checkpoint_path") == checkpoint:
                found = entry
        return found

    # --- requests -------------------------------------------------------------------------

    def handle(self, request: Mapping[str, Any], *, pid: int, uid: int, gid: int) -> dict[str, Any]:
        try:
            op = request.get("op")
            job = self.identify(pid, uid)
            if op == "identity":
                return {
                    "ok": True,
                    "run_id": job.run_id,
                    "job_name": job.name,
                    "cluster": self.cluster,
                    "vault": self._signer is not None,
                    "public_key": self._public_key(),
                }
            if op == "committed":
                path = self._checkpoint(request.get("checkpoint"), uid, must_exist=False)
                return {"ok": True, "record": self.committed(job, path)}
            if op == "sign":
                return self._sign(job, request, uid, gid)
            raise AgentError(f"unknown op {op!r}")
        except AgentError as exc:
            return {"ok": False, "error": str(exc)}
        except Exception as exc:  # noqa: BLE001 - the caller gets the reason, the agent lives on
            LOG.warning("request failed", exc_info=True)
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}

    @staticmethod
    def _checkpoint(value: Any, uid: int, *, must_exist: bool = True) -> str:
        if not isinstance(value, str) or not value.startswith("/"):
            raise AgentError("checkpoint must be an absolute path")
        real = os.path.realpath(value)
        if real != os.path.normpath(value):
            raise AgentError(f"{value} has a symbolic link in its path (real path {real})")
        if not must_exist:
            return real
        try:
            info = os.lstat(real)
        except FileNotFoundError:
            raise AgentError(f"{real} does not exist") from None
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != uid:
            raise AgentError(f"{real} is not a directory of the caller's uid {uid}")
        return real

    def _current_signer(self) -> Any:
        return self._signer() if callable(self._signer) else self._signer

    def _public_key(self) -> str | None:
        signer = self._current_signer()
        if signer is None:
            return None
        key: str = signer.info()["public_key"]
        return key

    def _sign(
        self, job: JobIdentity, request: Mapping[str, Any], uid: int, gid: int
    ) -> dict[str, Any]:
        path = self._checkpoint(request.get("checkpoint"), uid)
        step = request.get("step")
        if isinstance(step, bool) or not isinstance(step, int):
            raise AgentError("step must be an integer")
        lineage = _lineage(request.get("resumed_from"))
        identity = {
            "run_id": job.run_id,
            "cluster": self.cluster,
            "step": step,
            "checkpoint_path": path,
        }
        manifest = _trusted_manifest(self._hash_as(uid, gid, path, identity), identity)
        if lineage is not None:
            manifest["resumed_from"] = lineage
        digest = manifest_digest(manifest)
        entry = {
            "checkpoint_path": path,
            "step": step,
            "manifest_sha384": digest.hex(),
            # What a requeue re-hashes before it resumes this checkpoint unsigned.
            "files": {f["path"]: f["sha384"] for f in manifest["files"]},
            "signed": False,
        }
        signer = self._current_signer()
        if signer is None:
            self.record(job, entry)
            return {"ok": True, "manifest": manifest, "signature": None}
        try:
            reply = signer.sign_digest(digest)
        except Exception as exc:  # noqa: BLE001 - an outage leaves the commit recorded, unsigned
            self.record(job, entry)
            raise AgentError(f"the vault did not sign: {type(exc).__name__}: {exc}") from exc
        self.record(job, {**entry, "signed": True})
        return {
            "ok": True,
            "manifest": manifest,
            "signature": {"signature": reply["signature"], "public_key": reply["public_key"]},
        }


# --- the socket ------------------------------------------------------------------------------


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end, as the kernel recorded them."""
    raw = sock.getsockopt(
        socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize(SO_PEERCRED_FORMAT)
    )
    pid, uid, gid = struct.unpack(SO_PEERCRED_FORMAT, raw)
    return pid, uid, gid


class _Handler(socketserver.StreamRequestHandler):
    timeout = CLIENT_TIMEOUT_SECONDS
    server: _Server

    def handle(self) -> None:
        pid, uid, gid = peer_credentials(self.request)
        line = self.rfile.readline(MAX_REQUEST_BYTES + 1)
        if len(line) > MAX_REQUEST_BYTES:
            answer: dict[str, Any] = {"ok": False, "error": "request too long"}
        else:
            try:
                request = json.loads(line)
                if not isinstance(request, dict):
                    raise ValueError("not an object")
            except ValueError as exc:
                answer = {"ok": False, "error": f"request is not a JSON object: {exc}"}
            else:
                answer = self.server.agent.handle(request, pid=pid, uid=uid, gid=gid)
        self.wfile.write((json.dumps(answer) + "\n").encode())


class _Server(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str, agent: SigningAgent) -> None:
        self.agent = agent
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        os.chmod(Path(path).parent, 0o755)  # noqa: S103 - root's, readable: jobs connect
        Path(path).unlink(missing_ok=True)
        super().__init__(path, _Handler)
        # Any local user may ask; the kernel and Slurm say who they are.
        os.chmod(path, 0o666)  # noqa: S103


def serve(agent: SigningAgent, path: str, *, poll_interval: float = 0.5) -> _Server:
    """Start serving ``path`` in a thread; the caller stops it with ``shutdown()``, which
    returns within ``poll_interval`` seconds."""
    server = _Server(path, agent)
    threading.Thread(target=server.serve_forever, args=(poll_interval,), daemon=True).start()
    return server


class AgentClient:
    """What a job uses: ``request`` one JSON object, get one back."""

    def __init__(self, path: str | None = None, timeout: float = CLIENT_TIMEOUT_SECONDS) -> None:
        self.path = path or os.environ.get(ENV_SOCKET) or DEFAULT_SOCKET
        self.timeout = timeout

    def available(self) -> bool:
        try:
            return stat.S_ISSOCK(os.stat(self.path).st_mode)
        except OSError:
            return False

    def request(self, message: Mapping[str, Any]) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(self.timeout)
            sock.connect(self.path)
            sock.sendall((json.dumps(dict(message)) + "\n").encode())
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        answer = json.loads(data)
        if not answer.get("ok"):
            raise AgentError(str(answer.get("error")))
        result: dict[str, Any] = answer
        return result


def signed_file(answer: Mapping[str, Any]) -> dict[str, Any] | None:
    """The signed manifest file's content from a ``sign`` answer, its signature checked (None
    when the cluster has no vault)."""
    from cdk_trn_runtime.provenance.signing import checked_vault_signature  # noqa: PLC0415

    signature = answer.get("signature")
    if not signature:
        return None
    return checked_vault_signature(answer["manifest"], signature)


# --- the daemon ------------------------------------------------------------------------------


def _vault_signer(env: Mapping[str, str]) -> Callable[[], Any] | None:
    """The vault client with the signer role's credentials, found again at each request; None
    where the cluster has no vault (no URL and no parameter)."""
    from cdk_trn_runtime.provenance.signing import VaultLocator  # noqa: PLC0415

    locator = VaultLocator.from_environment(env)
    if locator is None:
        return None
    role = env.get(ENV_SIGNER_ROLE, "").strip()
    region = env.get(contract.SLURM_ENV_REGION) or env.get("AWS_REGION")

    def make() -> Any:
        import botocore.session  # noqa: PLC0415
        from botocore.credentials import Credentials  # noqa: PLC0415

        from cdk_trn_runtime.vault.client import VaultClient  # noqa: PLC0415

        url = locator.find()
        if url is None:
            return None
        session = botocore.session.get_session()
        credentials = session.get_credentials()
        if role:
            sts = session.create_client("sts", region_name=region)
            answer = sts.assume_role(RoleArn=role, RoleSessionName="cdk-trn-signing-agent")
            c = answer["Credentials"]
            credentials = Credentials(c["AccessKeyId"], c["SecretAccessKey"], c["SessionToken"])
        return VaultClient(url, credentials=credentials)

    return make


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cdk_trn_runtime.provenance.agent")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("serve", help="serve the node's signing socket (as root)")
    run.add_argument("--socket", default=DEFAULT_SOCKET)
    run.add_argument("--records", default=None, help="default: <shared root>/slurm/signer")
    sub.add_parser("manifest", help="(internal) the manifest child, as the caller's uid")
    args = parser.parse_args(argv)
    if args.command == "manifest":
        return _manifest_child()
    if os.geteuid() != 0:
        print("signing agent: must run as root", file=sys.stderr)
        return 2
    from cdk_trn_runtime.provenance.signing import node_environment  # noqa: PLC0415

    logging.basicConfig(level=logging.INFO, format="signing agent: %(message)s")
    env = node_environment(os.environ)
    shared = env.get("CDK_TRN_SHARED_ROOT", "")
    records = Path(args.records or f"{shared}/slurm/signer")
    node = env.get("SLURMD_NODENAME") or socket.gethostname().split(".")[0]
    agent = SigningAgent(
        slurm=Slurm(node),
        cluster=env.get(contract.ENV_CLUSTER, ""),
        records=records,
        signer=_vault_signer(env),
    )
    server = _Server(args.socket, agent)
    LOG.info("serving %s for node %s, records in %s", args.socket, node, records)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
