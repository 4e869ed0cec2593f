"""The signing agent's decisions, independent of the socket: who the caller is (its job, from
Slurm), what it may have signed (its own checkpoint, a directory of its uid with no link in its
path), the manifest (by the child of :mod:`~cdk_trn_runtime.provenance.manifest_child`), the
vault's signature, and the record of every commit, signed or not."""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from cdk_trn_runtime.provenance.agent_client import AgentError
from cdk_trn_runtime.provenance.manifest import manifest_digest
from cdk_trn_runtime.provenance.manifest_child import hash_as, trusted_manifest
from cdk_trn_runtime.provenance.peer_identity import JobIdentity, Slurm

__all__ = ["SigningAgent"]

LOG = logging.getLogger("cdk_trn.signer")


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
        hash_as: Callable[..., dict[str, Any]] = hash_as,
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
        manifest = trusted_manifest(self._hash_as(uid, gid, path, identity), identity)
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
