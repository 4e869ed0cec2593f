"""Signing checkpoints by themselves on the cluster: where the vault is, and the hook a training
entry point calls after each committed checkpoint.

Where the vault is, asked again at every checkpoint (a replaced vault host publishes a new
address): ``$CDK_TRN_VAULT_URL`` when set, else the SSM parameter
``contract.vault_url_parameter(<cluster>)`` that the vault hosts write their URL into, read with
the node role in the cluster's region (both from the environment or the node environment file the
node bootstrap writes). No such parameter means the cluster has no vault: checkpoints stay
unsigned and the hook says so once.

:class:`CheckpointSigner` signs only what this process committed. The training entry point has
it build each checkpoint's manifest (every file's SHA-384 and size, plus the run id, cluster, step
and path) from the files it has just written, in the staged directory before the commit's rename
(:meth:`CheckpointSigner.manifest_of`); after the commit, :meth:`CheckpointSigner.after_commit`
has the vault sign that manifest's SHA-384, checks the signature and writes
``<checkpoint>.manifest.json`` beside the checkpoint, atomically. A checkpoint directory is never
hashed at signing time: a ``step-<N>/`` that another job, or anyone with write access to the
shared directory, put there is never signed with this run's id. A resumed run does not sign its
predecessor's checkpoints either: the job that wrote one signs it; one it could not sign stays
unsigned, visible to an auditor.

Every signature must be made with one key per job: the vault's public key, read once
(``/v1/info``, the key the enclave attests; checked against ``$CDK_TRN_VAULT_KEY_SHA256`` when
set, e.g. the output of ``cdk-trn vault-key``). A vault answering with another key (a wrong URL, a
replaced vault with another key) does not sign: a manifest ``verify`` would reject is never
written and logged as signed.

The hook never raises and never touches the checkpoint: a failure is logged with its type and
message, the manifest stays in memory and the next commit retries it (while the checkpoint is
kept), so one unreachable moment costs no signature.

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
from collections.abc import Callable, Mapping
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
    "AgentCheckpointSigner",
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
    """What publishes its public key (``info()["public_key"]``, base64 DER) and signs a SHA-384
    digest: the vault client (``vault.client.VaultClient``)."""

    def info(self) -> dict[str, Any]: ...

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


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class CheckpointSigner:
    """Signs the checkpoints this process committed, through the vault; see the module
    docstring."""

    def __init__(
        self,
        *,
        locator: VaultLocator,
        cluster: str,
        run_id: str | None = None,
        make_signer: Callable[[str], DigestSigner] = _vault_client,
        expected_key_sha256: str | None = None,
        log: Callable[[str], None] = _stderr,
    ) -> None:
        self.locator = locator
        self.cluster = cluster
        self.run_id = run_id
        self.expected_key_sha256 = (expected_key_sha256 or "").strip().lower() or None
        self._make_signer = make_signer
        self._log = log
        self._said_off = False
        #: The SHA-256 of the vault's public key (DER), established once per job.
        self.key_sha256: str | None = None
        #: Manifests built at commit time and not signed yet, by checkpoint path, oldest first.
        self.pending: dict[Path, dict[str, Any]] = {}

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
        job id, the key ``$CDK_TRN_VAULT_KEY_SHA256`` when set. None (and one line saying so)
        when no vault can be found this way."""
        env = node_environment(os.environ if env is None else env)
        from cdk_trn_runtime.provenance.agent_client import AgentClient  # noqa: PLC0415

        agent = AgentClient(env.get("CDK_TRN_SIGNER_SOCKET"))
        if agent.available():
            return AgentCheckpointSigner(agent, log=log)  # type: ignore[return-value]
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
            locator=locator,
            cluster=cluster,
            run_id=run_id,
            make_signer=make_signer,
            expected_key_sha256=env.get(contract.ENV_VAULT_KEY_SHA256),
            log=log,
        )

    def manifest_of(
        self, directory: Path, checkpoint: Path, step: int | None = None
    ) -> dict[str, Any] | None:
        """The unsigned manifest of the files in ``directory`` (the staged copy, just written and
        not yet renamed), identified as the checkpoint ``checkpoint`` at ``step``. Never raises:
        None, logged, when the files cannot be listed (the checkpoint then stays unsigned)."""
        try:
            checkpoint = checkpoint.resolve()
            step = step if step is not None else step_from_name(checkpoint)
            if step is None:
                raise SigningError(f"{checkpoint.name} does not end with a step number")
            return build_manifest(
                directory,
                run_id=self.run_id or checkpoint.parent.name,
                cluster=self.cluster,
                step=step,
                checkpoint_path=str(checkpoint),
            )
        except Exception as exc:  # noqa: BLE001 - never fail the checkpoint for its manifest
            self._log(f"provenance: WARNING {checkpoint} will not be signed: {_why(exc)}")
            return None

    def sign(self, checkpoint: Path, step: int | None = None) -> Path | None:
        """Sign one checkpoint directory as it is now: the caller's explicit choice, as with
        ``provenance sign DIR`` (the hook never does this). The manifest's path, or None when
        the cluster has no vault. :class:`SigningError` (or ManifestError) on failure."""
        checkpoint = checkpoint.resolve()
        step = step if step is not None else step_from_name(checkpoint)
        if step is None:
            raise SigningError(f"{checkpoint.name} does not end with a step number")
        manifest = build_manifest(
            checkpoint,
            run_id=self.run_id or checkpoint.parent.name,
            cluster=self.cluster,
            step=step,
            checkpoint_path=str(checkpoint),
            exclude=[manifest_path_for(checkpoint)],
        )
        return self.sign_manifest(checkpoint, manifest)

    def sign_manifest(self, checkpoint: Path, manifest: dict[str, Any]) -> Path | None:
        """Have the vault sign ``manifest`` (built when ``checkpoint`` was committed; the
        directory is not read) with the job's key, and write it beside ``checkpoint``. None when
        the cluster has no vault; :class:`SigningError` when it cannot be signed now."""
        url = self.locator.find()
        if url is None:
            if not self._said_off:
                self._log(
                    f"provenance: checkpoints are not signed: the cluster {self.cluster} has no "
                    f"vault ({self.locator.describe()} does not exist)"
                )
                self._said_off = True
            return None
        from cdk_trn_runtime.vault.client import VaultError  # noqa: PLC0415

        client = self._make_signer(url)
        try:
            key_sha256 = self._job_key(url, client)
            reply = client.sign_digest(manifest_digest(manifest))
        except VaultError as exc:
            raise SigningError(f"the vault at {url} did not sign: {exc}") from exc
        signed = checked_vault_signature(manifest, reply, key_sha256)
        output = manifest_path_for(checkpoint)
        write_signed_manifest(output, signed)
        self._log(
            f"provenance: signed {checkpoint} (run {manifest['run_id']}, step "
            f"{manifest['step']}, {len(manifest['files'])} files) -> {output.name}, key sha256 "
            f"{signed['signature']['key_sha256'][:16]}..."
        )
        return output

    def _job_key(self, url: str, client: DigestSigner) -> str:
        """The SHA-256 of the key every signature of this job must be made with: the public key
        the vault publishes (``/v1/info``, the key its enclave attests), read once per job and
        checked against ``$CDK_TRN_VAULT_KEY_SHA256`` when that is set. :class:`SigningError`
        (nothing pinned, retried at the next checkpoint) when it cannot be established."""
        if self.key_sha256 is not None:
            return self.key_sha256
        try:
            info = client.info()
            der = base64.b64decode(info["public_key"], validate=True)
            load_public_key(der)
        except (KeyError, ValueError, TypeError, ManifestError) as exc:
            raise SigningError(
                f"the vault at {url} publishes no usable public key: {_why(exc)}"
            ) from exc
        key_sha256 = hashlib.sha256(der).hexdigest()
        if self.expected_key_sha256 and key_sha256 != self.expected_key_sha256:
            raise SigningError(
                f"the vault at {url} has key sha256 {key_sha256}, but "
                f"${contract.ENV_VAULT_KEY_SHA256} expects {self.expected_key_sha256}"
            )
        self.key_sha256 = key_sha256
        self._log(f"provenance: this job signs with the vault key sha256 {key_sha256}")
        return key_sha256

    def after_commit(self, committed: Path, manifest: dict[str, Any] | None) -> list[Path]:
        """Call right after this process committed ``committed``, with the manifest it built of
        the files it wrote (:meth:`manifest_of` on the staged copy; None when that failed).
        Signs it, then the manifests of this process's earlier commits that are still unsigned
        and still kept, oldest first; never lists a directory and never signs a checkpoint
        another process committed (a resumed run's predecessor's included). Never raises;
        returns the manifests written."""
        written: list[Path] = []
        try:
            committed = committed.resolve()
            if manifest is not None:
                self.pending.pop(committed, None)
                self.pending[committed] = manifest  # the newest last
        except Exception as exc:  # noqa: BLE001 - signing must never stop training
            self._log(f"provenance: WARNING {committed} will not be signed: {_why(exc)}")
        for checkpoint, unsigned in list(self.pending.items()):
            try:
                if not checkpoint.is_dir():
                    del self.pending[checkpoint]  # removed by the retention: nothing to sign
                    continue
                output = self.sign_manifest(checkpoint, unsigned)
            except ManifestError as exc:
                del self.pending[checkpoint]  # this manifest can never be signed
                self._log(
                    f"provenance: WARNING {checkpoint} is committed but not signed: {_why(exc)}"
                )
                continue
            except Exception as exc:  # noqa: BLE001 - signing must never stop training
                self._log(
                    f"provenance: WARNING {checkpoint} is committed but not signed: {_why(exc)}; "
                    "signing is retried at the next checkpoint"
                )
                if isinstance(exc, OSError):
                    continue  # this manifest could not be written: the others still can
                break  # the vault cannot sign now: the others wait for the next checkpoint
            if output is None:
                break  # no vault
            del self.pending[checkpoint]
            written.append(output)
        return written


class AgentCheckpointSigner:
    """Signs this process's commits through the node's signing agent (``provenance.agent``),
    which takes the run's identity from Slurm and hashes the committed files itself; the signed
    manifest it returns is written here, beside the checkpoint. Same hooks as
    :class:`CheckpointSigner`; never raises from them."""

    def __init__(self, client: Any, *, log: Callable[[str], None] = _stderr) -> None:
        self.client = client
        self._log = log
        #: What this run resumed from (``provenance.resume``), signed into every manifest.
        self.resumed_from: dict[str, Any] | None = None
        #: Checkpoints committed and not signed yet, with their steps, oldest first.
        self.pending: dict[Path, int] = {}

    def manifest_of(
        self, directory: Path, checkpoint: Path, step: int | None = None
    ) -> dict[str, Any] | None:
        """Only the step: the agent hashes the committed files itself."""
        step = step if step is not None else step_from_name(checkpoint)
        return None if step is None else {"step": step}

    def after_commit(self, committed: Path, manifest: dict[str, Any] | None) -> list[Path]:
        written: list[Path] = []
        try:
            committed = committed.resolve()
            step = (manifest or {}).get("step", step_from_name(committed))
            if isinstance(step, int):
                self.pending.pop(committed, None)
                self.pending[committed] = step
        except Exception as exc:  # noqa: BLE001 - signing must never stop training
            self._log(f"provenance: WARNING {committed} will not be signed: {_why(exc)}")
        from cdk_trn_runtime.provenance.agent_client import signed_file  # noqa: PLC0415

        for checkpoint, step in list(self.pending.items()):
            if not checkpoint.is_dir():
                del self.pending[checkpoint]
                continue
            try:
                answer = self.client.request(
                    {
                        "op": "sign",
                        "checkpoint": str(checkpoint),
                        "step": step,
                        "resumed_from": self.resumed_from,
                    }
                )
                signed = signed_file(answer)
                if signed is not None:
                    output = manifest_path_for(checkpoint)
                    write_signed_manifest(output, signed)
                    written.append(output)
                    self._log(
                        f"provenance: signed {checkpoint} (run {signed['manifest']['run_id']}, "
                        f"step {step}) -> {output.name}"
                    )
                else:
                    self._log(
                        f"provenance: {checkpoint} committed unsigned (the cluster has no vault)"
                    )
            except Exception as exc:  # noqa: BLE001 - signing must never stop training
                self._log(
                    f"provenance: WARNING {checkpoint} is committed but not signed: {_why(exc)}; "
                    "signing is retried at the next checkpoint"
                )
                break
            del self.pending[checkpoint]
        return written
