"""Whether a run may resume from the checkpoint ``latest`` names, and the lineage it records.

Anyone with the job user's uid (every job) can write a checkpoint and a ``latest`` into another
run's directory on the shared file system. A run therefore resumes only from a checkpoint it can
prove is its own:

- where the node has a signing agent (``provenance.agent``; every cloud node):
  - a signed manifest beside the checkpoint that verifies with the vault's key (the agent hands
    out the key the vault publishes) and names this run (the Slurm job id), this cluster and this
    path, with every file as signed; or
  - no valid signature, but the agent's root-owned record says this job committed this
    checkpoint and it was *not* signed (a vault outage leaves such checkpoints unsigned), and
    its files are exactly the ones recorded (re-hashed here); a checkpoint the record says was
    signed is resumed only with a signature that verifies (a tampered one is always refused);
- where the node has no agent and no signer role (the local twin, no vault): the checkpoint in
  the job's own directory is resumed as it is (nothing could sign it).

Anything else is refused (:class:`ResumeRefused`) unless the submitter said so:
``CDK_TRN_RESUME_UNVERIFIED=1``, logged.

The lineage a resumed run signs into each of its manifests (``resumed_from``) is the checkpoint's
path and the SHA-384 of the manifest it was verified with (null when it was accepted unsigned).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from cdk_trn_runtime.provenance.agent_client import AgentClient, AgentError
from cdk_trn_runtime.provenance.manifest import (
    ManifestError,
    _file_digest,
    _walk,
    load_public_key,
    manifest_digest,
    verify_signed_manifest,
)
from cdk_trn_runtime.provenance.signing import manifest_path_for, node_environment

__all__ = ["ENV_RESUME_UNVERIFIED", "ResumeRefused", "check_resume"]

ENV_RESUME_UNVERIFIED = "CDK_TRN_RESUME_UNVERIFIED"


class ResumeRefused(Exception):
    """``latest`` names a checkpoint this run cannot prove is its own; says why."""


def _lineage(checkpoint: Path, digest: str | None) -> dict[str, Any]:
    return {"checkpoint_path": str(checkpoint), "manifest_sha384": digest}


def _signed_by_this_run(
    checkpoint: Path, identity: Mapping[str, Any], contents: Mapping[str, bytes]
) -> tuple[str | None, str]:
    """(the manifest's SHA-384 when it verifies for this run, why not otherwise)."""
    key = identity.get("public_key")
    if not key:
        return None, "the cluster has no vault to have signed it"
    manifest = manifest_path_for(checkpoint)
    try:
        signed = json.loads(manifest.read_text())
    except FileNotFoundError:
        return None, f"it has no signed manifest ({manifest.name})"
    except (OSError, ValueError) as exc:
        return None, f"its manifest cannot be read: {exc}"
    import base64  # noqa: PLC0415

    try:
        public_key = load_public_key(base64.b64decode(key, validate=True))
        report = verify_signed_manifest(
            signed,
            checkpoint,
            public_key,
            expected={
                "run_id": identity["run_id"],
                "cluster": identity["cluster"],
                "checkpoint_path": str(checkpoint),
            },
            hash_file=_hasher(checkpoint, contents),
        )
    except (ManifestError, ValueError) as exc:
        return None, f"its manifest does not verify: {exc}"
    if not report.ok:
        return None, "its manifest does not verify: " + "; ".join(report.lines()[-3:])
    return manifest_digest(signed["manifest"]).hex(), ""


def _hasher(checkpoint: Path, contents: Mapping[str, bytes]) -> Callable[[Path], tuple[str, int]]:
    """Hash the bytes the caller already read for the files it named (relative paths), so that
    what is verified is what it loads; other files from disk."""

    def hash_file(path: Path) -> tuple[str, int]:
        relative = path.relative_to(checkpoint).as_posix()
        if relative in contents:
            data = contents[relative]
            return hashlib.sha384(data).hexdigest(), len(data)
        return _file_digest(path)

    return hash_file


def _differs_from_record(
    checkpoint: Path, record: Mapping[str, Any], contents: Mapping[str, bytes]
) -> str | None:
    """None when ``checkpoint`` holds exactly the files the agent recorded; why not otherwise."""
    files = record.get("files")
    if not isinstance(files, dict):
        return "the record lists no files"
    if not checkpoint.is_dir():
        return "it is not a directory"
    present, others = _walk(checkpoint, set())
    if others or set(present) != set(files):
        return "its files are not the recorded ones"
    hash_file = _hasher(checkpoint, contents)
    changed = sorted(name for name, path in present.items() if hash_file(path)[0] != files[name])
    return f"changed since the commit: {changed}" if changed else None


def check_resume(
    checkpoint: Path,
    env: Mapping[str, str],
    *,
    client: AgentClient | None = None,
    log: Callable[[str], None] = print,
    contents: Mapping[str, bytes] | None = None,
) -> dict[str, Any]:
    """The lineage to record when this run may resume from ``checkpoint``;
    :class:`ResumeRefused` otherwise (see the module docstring).

    ``contents``: files of the checkpoint the caller has already read (relative path -> bytes);
    those bytes, not the files as they are now, are what is verified (the caller then loads the
    same bytes: no window to swap a file between check and use)."""
    checkpoint = checkpoint.resolve()
    env = node_environment(env)
    told = env.get(ENV_RESUME_UNVERIFIED, "").strip() == "1"
    client = client or AgentClient(env.get("CDK_TRN_SIGNER_SOCKET"))
    why: str
    if client.available():
        try:
            identity = client.request({"op": "identity"})
            digest, why = _signed_by_this_run(checkpoint, identity, contents or {})
            if digest is not None:
                log(f"resume: {checkpoint} is signed for run {identity['run_id']}")
                return _lineage(checkpoint, digest)
            record = client.request({"op": "committed", "checkpoint": str(checkpoint)}).get(
                "record"
            )
            if not record:
                why = f"{why}, and this job did not commit it"
            elif record.get("signed") is not False:
                why = f"{why}; this job committed it signed, so only its signature is accepted"
            else:
                differ = _differs_from_record(checkpoint, record, contents or {})
                if differ is None:
                    log(f"resume: {checkpoint} is unsigned, but this job committed it")
                    return _lineage(checkpoint, None)
                why = f"{why}, and it is not what this job committed unsigned: {differ}"
        except AgentError as exc:
            why = f"the signing agent refused: {exc}"
    elif env.get("CDK_TRN_SIGNER_ROLE_ARN"):
        why = "the node's signing agent does not answer"
    else:
        log(f"resume: {checkpoint} (no vault on this cluster: not verified)")
        return _lineage(checkpoint, None)
    if told:
        log(f"resume: WARNING resuming {checkpoint} unverified ({ENV_RESUME_UNVERIFIED}=1): {why}")
        return _lineage(checkpoint, None)
    raise ResumeRefused(
        f"{checkpoint} is not proven to be this run's: {why}. Set {ENV_RESUME_UNVERIFIED}=1 to "
        "resume from it anyway, or start in a new CHECKPOINT_DIR"
    )
