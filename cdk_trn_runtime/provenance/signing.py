"""Signing checkpoints by themselves on the cluster: where the vault is, and the hook a training
entry point calls after each committed checkpoint.

Where the vault is, asked again at every checkpoint (a replaced vault host publishes a new
address): ``$CDK_TRN_VAULT_URL`` when set, else the SSM parameter
``contract.vault_url_parameter(<cluster>)`` that the vault hosts write their URL into, read with
the node role in the cluster's region (both from the environment or the node environment file the
node bootstrap writes). No such parameter means the cluster has no vault: checkpoints stay
unsigned and the hook says so once.

:class:`CheckpointSigner` builds the manifest of a committed checkpoint directory (run id,
cluster, step and path signed with the files), has the vault sign its SHA-384, checks the
signature and writes ``<checkpoint>.manifest.json`` beside the checkpoint, atomically. It never
raises and never touches the checkpoint: a failure is logged and the next call signs every kept
checkpoint that still has no manifest, so one unreachable moment costs no signature.

Needs ``cryptography`` and ``botocore`` (both in the training image); imports no AWS SDK until a
parameter is read.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from cdk_trn_runtime import contract
from cdk_trn_runtime.provenance.manifest import (
    ManifestError,
    build_manifest,
    load_public_key,
    manifest_digest,
    signed_manifest,
)

__all__ = [
    "CheckpointSigner",
    "DigestSigner",
    "SigningError",
    "VaultLocator",
    "checked_vault_signature",
    "manifest_path_for",
    "write_signed_manifest",
]

MANIFEST_SUFFIX = ".manifest.json"
#: Seconds for each call to SSM and to the vault: a slow vault delays a checkpoint by little.
SSM_TIMEOUT_SECONDS = 10
VAULT_TIMEOUT_SECONDS = 30
_STEP = re.compile(r"(\d+)$")


class SigningError(Exception):
    """A checkpoint could not be signed now; says why."""


class DigestSigner(Protocol):
    """What signs a SHA-384 digest: the vault client (``vault.client.VaultClient``)."""

    def sign_digest(self, digest: bytes) -> dict[str, Any]: ...


def manifest_path_for(checkpoint: Path) -> Path:
    """``<checkpoint>.manifest.json`` beside the checkpoint directory (never inside it)."""
    checkpoint = checkpoint.resolve()
    return checkpoint.with_name(checkpoint.name + MANIFEST_SUFFIX)


def step_from_name(checkpoint: Path) -> int | None:
    """The number a checkpoint directory's name ends with (``step-00001000`` -> 1000)."""
    match = _STEP.search(checkpoint.resolve().name)
    return int(match.group(1)) if match else None


def checked_vault_signature(
    manifest: dict[str, Any], reply: Mapping[str, Any], expected_key_sha256: str | None = None
) -> dict[str, Any]:
    """The signed manifest from the vault's answer, once its signature verifies with the key it
    names (and that key is the expected one, when given); :class:`SigningError` otherwise."""
    try:
        public_der = base64.b64decode(reply["public_key"], validate=True)
        signature = base64.b64decode(reply["signature"], validate=True)
        key = load_public_key(public_der)
        key.verify(signature, manifest_digest(manifest), ec.ECDSA(Prehashed(hashes.SHA384())))
    except (KeyError, ValueError, TypeError, ManifestError, InvalidSignature) as exc:
        raise SigningError(
            f"the vault's answer does not hold a valid signature: {type(exc).__name__} {exc}"
        ) from exc
    key_sha256 = hashlib.sha256(public_der).hexdigest()
    if expected_key_sha256 and key_sha256 != expected_key_sha256.lower():
        raise SigningError(
            f"the vault signed with key {key_sha256}, expected {expected_key_sha256}"
        )
    return signed_manifest(manifest, signature, public_der)


def write_signed_manifest(path: Path, signed: Mapping[str, Any]) -> None:
    """Write the signed manifest completely or not at all (temp file, fsync, rename)."""
    data = (json.dumps(signed, indent=2, sort_keys=True) + "\n").encode()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # a manifest is public: auditors read it
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def node_environment(env: Mapping[str, str]) -> dict[str, str]:
    """The node environment file (``contract.SLURM_NODE_ENV_FILE``, or ``$CDK_TRN_SLURM_ENV``)
    under ``env``: the job's own variables win."""
    path = env.get("CDK_TRN_SLURM_ENV") or contract.SLURM_NODE_ENV_FILE
    values: dict[str, str] = {}
    try:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                name, sep, value = line.rstrip("\n").partition("=")
                if sep and name.strip():
                    values[name.strip()] = value.strip().strip("'\"")
    except OSError:
        pass
    return {**values, **env}


class VaultLocator:
    """Finds the vault's URL: a fixed one, or the cluster's SSM parameter read each time."""

    def __init__(
        self,
        *,
        url: str | None = None,
        parameter: str | None = None,
        region: str | None = None,
        ssm_client: Any = None,
    ) -> None:
        self.url = url
        self.parameter = parameter
        self.region = region
        self._ssm = ssm_client

    @classmethod
    def from_environment(
        cls, env: Mapping[str, str], *, ssm_client: Any = None
    ) -> VaultLocator | None:
        """From ``$CDK_TRN_VAULT_URL``, else the cluster's parameter in the node's region;
        None when neither can be known (e.g. a laptop, or a local cluster without a vault)."""
        env = node_environment(env)
        url = env.get(contract.ENV_VAULT_URL, "").strip()
        if url:
            return cls(url=url)
        cluster = env.get(contract.ENV_CLUSTER, "").strip()
        region = (
            env.get(contract.SLURM_ENV_REGION)
            or env.get("AWS_REGION")
            or env.get("AWS_DEFAULT_REGION")
            or ""
        ).strip()
        if not cluster or not region:
            return None
        return cls(
            parameter=contract.vault_url_parameter(cluster), region=region, ssm_client=ssm_client
        )

    def describe(self) -> str:
        return self.url or f"SSM parameter {self.parameter} in {self.region}"

    def find(self) -> str | None:
        """The vault's URL; None when the cluster has no vault (no parameter).

        :class:`SigningError` when the parameter cannot be read now or names no URL yet."""
        if self.url:
            return self.url
        from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415

        try:
            answer = self._client().get_parameter(Name=self.parameter)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            if error.get("Code") == "ParameterNotFound":
                return None
            raise SigningError(
                f"cannot read {self.parameter}: {error.get('Code')} {error.get('Message')}"
            ) from exc
        except BotoCoreError as exc:
            raise SigningError(f"cannot read {self.parameter}: {exc}") from exc
        value = str(answer.get("Parameter", {}).get("Value", "")).strip()
        if not value.startswith(("http://", "https://")):
            raise SigningError(f"{self.parameter} holds no vault URL yet ({value!r})")
        return value

    def _client(self) -> Any:
        if self._ssm is None:
            import botocore.session  # noqa: PLC0415
            from botocore.config import Config  # noqa: PLC0415

            self._ssm = botocore.session.get_session().create_client(
                "ssm",
                region_name=self.region,
                config=Config(
                    connect_timeout=SSM_TIMEOUT_SECONDS,
                    read_timeout=SSM_TIMEOUT_SECONDS,
                    retries={"max_attempts": 3, "mode": "standard"},
                ),
            )
        return self._ssm


def _vault_client(url: str) -> DigestSigner:
    from cdk_trn_runtime.vault.client import VaultClient  # noqa: PLC0415

    return VaultClient(url, timeout=VAULT_TIMEOUT_SECONDS)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class CheckpointSigner:
    """Signs committed checkpoint directories through the vault; see the module docstring."""

    def __init__(
        self,
        *,
        locator: VaultLocator,
        cluster: str,
        run_id: str | None = None,
        make_signer: Callable[[str], DigestSigner] = _vault_client,
        log: Callable[[str], None] = _stderr,
    ) -> None:
        self.locator = locator
        self.cluster = cluster
        self.run_id = run_id
        self._make_signer = make_signer
        self._log = log
        self._said_off = False

    @classmethod
    def from_environment(
        cls,
        env: Mapping[str, str] | None = None,
        *,
        ssm_client: Any = None,
        make_signer: Callable[[str], DigestSigner] = _vault_client,
        log: Callable[[str], None] = _stderr,
    ) -> CheckpointSigner | None:
        """The signer a job on the cluster gets: the vault from ``$CDK_TRN_VAULT_URL`` or the
        cluster's parameter, the cluster's name, the run id ``$CDK_TRN_RUN_ID`` or the Slurm
        job id. None (and one line saying so) when no vault can be found this way."""
        env = node_environment(os.environ if env is None else env)
        locator = VaultLocator.from_environment(env, ssm_client=ssm_client)
        cluster = (env.get(contract.ENV_CLUSTER) or env.get("SLURM_CLUSTER_NAME") or "").strip()
        if locator is None or not cluster:
            log(
                "provenance: checkpoints are not signed: no vault URL "
                f"(${contract.ENV_VAULT_URL}) and no cluster name and region to find one"
            )
            return None
        run_id = (env.get(contract.ENV_RUN_ID) or env.get("SLURM_JOB_ID") or "").strip() or None
        return cls(
            locator=locator, cluster=cluster, run_id=run_id, make_signer=make_signer, log=log
        )

    def sign(self, checkpoint: Path, step: int | None = None) -> Path | None:
        """Sign one committed checkpoint directory; the manifest's path, or None when the cluster
        has no vault. :class:`SigningError` (or ManifestError) on failure."""
        checkpoint = checkpoint.resolve()
        step = step if step is not None else step_from_name(checkpoint)
        if step is None:
            raise SigningError(f"{checkpoint.name} does not end with a step number")
        url = self.locator.find()
        if url is None:
            if not self._said_off:
                self._log(
                    f"provenance: checkpoints are not signed: the cluster {self.cluster} has no "
                    f"vault ({self.locator.describe()} does not exist)"
                )
                self._said_off = True
            return None
        output = manifest_path_for(checkpoint)
        manifest = build_manifest(
            checkpoint,
            run_id=self.run_id or checkpoint.parent.name,
            cluster=self.cluster,
            step=step,
            checkpoint_path=str(checkpoint),
            exclude=[output],
        )
        from cdk_trn_runtime.vault.client import VaultError  # noqa: PLC0415

        try:
            reply = self._make_signer(url).sign_digest(manifest_digest(manifest))
        except VaultError as exc:
            raise SigningError(f"the vault at {url} did not sign: {exc}") from exc
        signed = checked_vault_signature(manifest, reply)
        write_signed_manifest(output, signed)
        self._log(
            f"provenance: signed {checkpoint} (run {manifest['run_id']}, step {step}, "
            f"{len(manifest['files'])} files) -> {output.name}, key sha256 "
            f"{signed['signature']['key_sha256'][:16]}..."
        )
        return output

    def after_commit(self, committed: Path, kept: Iterable[Path] = ()) -> list[Path]:
        """Call after a checkpoint's commit: signs it, then every kept checkpoint that has no
        manifest yet (an earlier failure). Never raises; returns the manifests written."""
        written: list[Path] = []
        pending = [committed.resolve()] + [
            p.resolve()
            for p in kept
            if p.resolve() != committed.resolve() and not manifest_path_for(p).exists()
        ]
        for checkpoint in pending:
            try:
                manifest = self.sign(checkpoint)
            except (ManifestError, OSError) as exc:
                # This checkpoint cannot be listed (a link, a vanished file): the others still can.
                self._log(f"provenance: WARNING {checkpoint} is committed but not signed: {exc}")
                continue
            except SigningError as exc:
                self._log(
                    f"provenance: WARNING {checkpoint} is committed but not signed: {exc}; "
                    "signing is retried at the next checkpoint"
                )
                break  # the vault is unreachable now: the others wait for the next checkpoint
            if manifest is None:
                break  # no vault
            written.append(manifest)
        return written
