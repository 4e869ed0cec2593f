"""Whether a run may resume from the checkpoint ``latest`` names, and the lineage it records.

Anyone with the job user's uid (every job) can write a checkpoint and a ``latest`` into another
run's directory on the shared file system. A run therefore resumes only from a checkpoint it can
prove is its own:

- where the node has a signing agent (``provenance.agent``; every cloud node):
  - a signed manifest beside the checkpoint that verifies with the vault's key (the agent hands
    out the key the vault publishes) and names this run (the Slurm job id), this cluster and this
    path, with every file as signed; or
  - no valid signature, but the agent's root-owned record says this job committed exactly this
    checkpoint (a vault outage leaves such checkpoints unsigned);
- where the node has no agent and no signer role (the local twin, no vault): the checkpoint in
  the job's own directory is resumed as it is (nothing could sign it).

Anything else is refused (:class:`ResumeRefused`) unless the submitter said so:
``CDK_TRN_RESUME_UNVERIFIED=1``, logged.

The lineage a resumed run signs into each of its manifests (``resumed_from``) is the checkpoint's
path and the SHA-384 of the manifest it was verified with (null when it was accepted unsigned).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from cdk_trn_runtime.provenance.agent import AgentClient, AgentError
from cdk_trn_runtime.provenance.manifest import (
    ManifestError,
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


def _signed_by_this_run(checkpoint: Path, identity: Mapping[str, Any]) -> tuple[str | None, str]:
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
        )
    except (ManifestError, ValueError) as exc:
        return None, f"its manifest does not verify: {exc}"
    if not report.ok:
        return None, "its manifest does not verify: " + "; ".join(report.lines()[-3:])
    return manifest_digest(signed["manifest"]).hex(), ""


def check_resume(
    checkpoint: Path,
    env: Mapping[str, str],
    *,
    client: AgentClient | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """The lineage to record when this run may resume from ``checkpoint``;
    :class:`ResumeRefused` otherwise (see the module docstring)."""
    checkpoint = checkpoint.resolve()
    env = node_environment(env)
    told = env.get(ENV_RESUME_UNVERIFIED, "").strip() == "1"
    client = client or AgentClient(env.get("CDK_TRN_SIGNER_SOCKET"))
    why: str
    if client.available():
        try:
            identity = client.request({"op": "identity"})
            digest, why = _signed_by_this_run(checkpoint, identity)
            if digest is not None:
                log(f"resume: {checkpoint} is signed for run {identity['run_id']}")
                return _lineage(checkpoint, digest)
            record = client.request({"op": "committed", "checkpoint": str(checkpoint)})
            if record.get("record"):
                log(f"resume: {checkpoint} is unsigned, but this job committed it")
                return _lineage(checkpoint, None)
            why = f"{why}, and this job did not commit it"
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
