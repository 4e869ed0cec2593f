"""Command line for signed checkpoint manifests.

- ``sign DIR [--run-id ID] [--cluster NAME] [--step N] [--checkpoint-path P]
  [--vault URL | --private-key PEM] [--output FILE]``:
  builds the manifest, has the enclave vault sign its SHA-384 (the node proves its IAM role with a
  presigned ``sts:GetCallerIdentity``), checks the returned signature, writes the signed manifest
  atomically (default ``DIR.manifest.json`` beside the directory). Without ``--vault`` on a node,
  the vault is found as the training hook finds it (``provenance.signing.VaultLocator``).
- ``verify MANIFEST DIR --public-key KEY (--run-id ID | --any-run) [--cluster NAME] [--step N]
  [--path P]``: offline; fails closed (exit 2) when neither the run nor ``--any-run`` is given;
  prints the signed identity and every tampered, missing and extra file and every identity field
  that differs from the expected one, and exits 1 on any problem.
- ``public-key --vault URL --pcr0 HEX [--pcr8 HEX] [--pcr3 HEX] [--kms-key-arn ARN]``: asks the
  vault for an attestation document over a fresh nonce and prints the public key (PEM) only if
  the document chains to the AWS Nitro root and is valid now, carries the nonce and the expected
  PCRs, attests exactly the key the vault returned and (when given) names the expected KMS key;
  otherwise exits 1 naming the failed check. ``verify --vault URL --pcr0 HEX`` does the same and
  verifies with that key. No host is trusted: the NSM signs what the key is.

Exit codes: 0 success, 1 verification failed or signing refused, 2 usage error.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cdk_trn_runtime.provenance.manifest import (
    ManifestError,
    build_manifest,
    load_public_key,
    manifest_digest,
    sign_with_private_key,
    verify_signed_manifest,
)
from cdk_trn_runtime.provenance.signing import (
    SigningError,
    VaultLocator,
    checked_vault_signature,
    manifest_path_for,
    step_from_name,
    write_signed_manifest,
)

if TYPE_CHECKING:
    from cdk_trn_runtime.enclave.vault_attestation import VaultAttestation

__all__ = ["AttestationFetcher", "main"]

#: Gets the vault's ``/v1/attestation`` answer for a nonce; the default asks the vault directly
#: (``VaultClient(url).attestation``). ``cdk-trn`` relays it through a cluster node instead: the
#: answer is checked here either way, so the path it took is not trusted.
AttestationFetcher = Callable[[str, bytes], dict[str, Any]]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cdk_trn_runtime.provenance", description="Signed checkpoint manifests"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    sign = commands.add_parser("sign", help="build and sign the manifest of a checkpoint dir")
    sign.add_argument("directory", type=Path)
    sign.add_argument(
        "--run-id",
        default=os.environ.get("CDK_TRN_RUN_ID"),
        help="training run id (default: $CDK_TRN_RUN_ID, else the directory name)",
    )
    sign.add_argument(
        "--cluster",
        default=os.environ.get("CDK_TRN_CLUSTER"),
        help="cluster name (default: $CDK_TRN_CLUSTER)",
    )
    sign.add_argument(
        "--step",
        type=int,
        default=_env_int("CDK_TRN_STEP"),
        help="training step of the checkpoint (default: $CDK_TRN_STEP, else the number the "
        "directory name ends with, e.g. step-1000)",
    )
    sign.add_argument(
        "--checkpoint-path",
        default=None,
        help="the checkpoint's path as the job knows it (default: the absolute DIR)",
    )
    source = sign.add_mutually_exclusive_group()
    source.add_argument(
        "--vault",
        default=os.environ.get("CDK_TRN_VAULT_URL"),
        help="vault URL, e.g. http://10.0.1.5:8443 (default: $CDK_TRN_VAULT_URL, else the "
        "cluster's vault URL parameter, read with the node role)",
    )
    source.add_argument(
        "--private-key",
        type=Path,
        help="sign with a local P-384 PEM key instead of the vault (offline use)",
    )
    sign.add_argument(
        "--expect-key-sha256",
        default=None,
        help="refuse a signature from any other key (hex SHA-256 of its DER)",
    )
    sign.add_argument(
        "--output",
        type=Path,
        default=None,
        help="where to write the signed manifest (default: DIR.manifest.json)",
    )

    verify = commands.add_parser("verify", help="verify a checkpoint dir against a manifest")
    verify.add_argument("manifest", type=Path)
    verify.add_argument("directory", type=Path)
    key_source = verify.add_mutually_exclusive_group(required=True)
    key_source.add_argument(
        "--public-key", type=Path, help="the signer's P-384 public key, PEM or DER"
    )
    key_source.add_argument(
        "--vault",
        help="take the key from the vault's attestation instead (needs --pcr0; see public-key)",
    )
    _attestation_arguments(verify, required=False)
    verify.add_argument("--run-id", default=None, help="fail unless the manifest names this run")
    verify.add_argument(
        "--any-run",
        action="store_true",
        help="accept a checkpoint of any run (without it, --run-id is required: a valid "
        "signature over another run's checkpoint proves nothing about yours)",
    )
    verify.add_argument("--cluster", default=None, help="fail unless it names this cluster")
    verify.add_argument("--step", type=int, default=None, help="fail unless it is this step")
    verify.add_argument(
        "--path",
        dest="checkpoint_path",
        default=None,
        help="fail unless the checkpoint was signed at this path (e.g. /fsx/ckpt/step-1000)",
    )

    public_key = commands.add_parser(
        "public-key",
        help="verify the vault enclave's attestation and print its attested public key (PEM)",
    )
    public_key.add_argument("--vault", default=os.environ.get("CDK_TRN_VAULT_URL"), required=False)
    _attestation_arguments(public_key, required=True)
    return parser


def _attestation_arguments(parser: argparse.ArgumentParser, *, required: bool) -> None:
    parser.add_argument(
        "--pcr0",
        required=required,
        help="expected PCR0 (hex SHA-384 of the enclave image; the vault stack's output)",
    )
    parser.add_argument("--pcr8", help="expected PCR8 (hex; the signing certificate of the EIF)")
    parser.add_argument("--pcr3", help="expected PCR3 (hex; the SHA-384 of the host's IAM role)")
    parser.add_argument(
        "--kms-key-arn",
        help="expected KMS key ARN the enclave's key came from (the vault stack's key)",
    )


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value and value.isdigit() else None


def _fail(message: str, code: int = 1) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def _sign(args: argparse.Namespace) -> int:
    directory: Path = args.directory
    output: Path = args.output or manifest_path_for(directory)
    if not args.cluster:
        return _fail("--cluster is required (or set CDK_TRN_CLUSTER)", 2)
    if not args.vault and not args.private_key:
        locator = VaultLocator.from_environment(os.environ)
        try:
            args.vault = locator.find() if locator else None
        except SigningError as exc:
            return _fail(str(exc))
        if not args.vault:
            return _fail(
                "give --vault URL (or CDK_TRN_VAULT_URL) or --private-key PEM; no vault was "
                + (f"found ({locator.describe()} does not exist)" if locator else "configured"),
                2,
            )
    step = args.step if args.step is not None else step_from_name(directory)
    if step is None:
        return _fail(
            f"give --step (or CDK_TRN_STEP): {directory.name!r} does not end with a step number",
            2,
        )
    try:
        manifest = build_manifest(
            directory,
            run_id=args.run_id or directory.resolve().name,
            cluster=args.cluster,
            step=step,
            checkpoint_path=args.checkpoint_path,
            exclude=[output],
        )
    except ManifestError as exc:
        return _fail(str(exc), 2)
    if args.private_key:
        key = serialization.load_pem_private_key(args.private_key.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            return _fail("--private-key must be an EC P-384 private key", 2)
        try:
            signed = sign_with_private_key(manifest, key)
        except ManifestError as exc:
            return _fail(str(exc), 2)
    else:
        from cdk_trn_runtime.vault.client import VaultClient, VaultError  # noqa: PLC0415

        try:
            reply = VaultClient(args.vault).sign_digest(manifest_digest(manifest))
        except VaultError as exc:
            return _fail(f"the vault did not sign: {exc}")
        try:
            signed = checked_vault_signature(manifest, reply, args.expect_key_sha256)
        except SigningError as exc:
            return _fail(str(exc))
    write_signed_manifest(output, signed)
    print(
        f"signed {len(manifest['files'])} files of run {manifest['run_id']} on "
        f"{manifest['cluster']}, step {manifest['step']} at {manifest['checkpoint_path']} "
        f"-> {output} (key sha256 {signed['signature']['key_sha256']})"
    )
    return 0


def _fetch_directly(url: str, nonce: bytes) -> dict[str, Any]:
    from cdk_trn_runtime.vault.client import VaultClient  # noqa: PLC0415

    return VaultClient(url).attestation(nonce)


def _attested_key(
    args: argparse.Namespace, fetch: AttestationFetcher = _fetch_directly
) -> VaultAttestation | int:
    """Fetch the vault's attestation with a fresh nonce and check it; an exit code on failure."""
    from cdk_trn_runtime.enclave.vault_attestation import (  # noqa: PLC0415
        VaultAttestationError,
        verify_vault_attestation,
    )
    from cdk_trn_runtime.vault.client import VaultError  # noqa: PLC0415

    if not args.vault:
        return _fail("give --vault URL (or CDK_TRN_VAULT_URL)", 2)
    if not args.pcr0:
        return _fail("give --pcr0 HEX: the enclave image the key must live in", 2)
    pcrs: dict[int, bytes] = {}
    for index, value in ((0, args.pcr0), (3, args.pcr3), (8, args.pcr8)):
        if value is None:
            continue
        try:
            pcrs[index] = bytes.fromhex(value)
        except ValueError:
            return _fail(f"--pcr{index} is not hex: {value!r}", 2)
        if len(pcrs[index]) != 48:
            return _fail(f"--pcr{index} must be 96 hex digits (SHA-384)", 2)
    nonce = secrets.token_bytes(32)
    try:
        answer = fetch(args.vault, nonce)
        document = base64.b64decode(answer["attestation_document"], validate=True)
        public_der = base64.b64decode(answer["public_key"], validate=True)
    except VaultError as exc:
        return _fail(f"cannot get the vault's attestation: {exc}")
    except (KeyError, ValueError, TypeError) as exc:
        return _fail(f"the vault's attestation answer is malformed: {type(exc).__name__} {exc}")
    try:
        attested = verify_vault_attestation(
            document,
            public_key_der=public_der,
            nonce=nonce,
            expected_pcrs=pcrs,
            kms_key_arn=args.kms_key_arn,
        )
        load_public_key(attested.public_key_der)
    except VaultAttestationError as exc:
        return _fail(f"attestation check failed: {exc}")
    except ManifestError as exc:
        return _fail(f"attestation check failed: public_key: {exc}")
    pinned = ", ".join(f"PCR{i}={v.hex()[:16]}..." for i, v in sorted(pcrs.items()))
    print(
        f"attested: chain to the AWS Nitro root valid now, fresh nonce, {pinned}, "
        f"key sha256 {attested.key_sha256} from KMS key {attested.kms_key_arn}",
        file=sys.stderr,
    )
    if not args.kms_key_arn:
        print(
            "warning: no --kms-key-arn given; check the KMS key above is the vault stack's key",
            file=sys.stderr,
        )
    return attested


def _verify(args: argparse.Namespace, fetch: AttestationFetcher = _fetch_directly) -> int:
    if not args.run_id and not args.any_run:
        return _fail(
            "verify: name the run the checkpoint must belong to (--run-id), or accept any run "
            "explicitly (--any-run)",
            2,
        )
    if args.vault:
        attested = _attested_key(args, fetch)
        if isinstance(attested, int):
            return attested
        public_key = load_public_key(attested.public_key_der)
    else:
        try:
            public_key = load_public_key(args.public_key.read_bytes())
        except (OSError, ManifestError) as exc:
            return _fail(f"cannot read public key {args.public_key}: {exc}", 2)
    try:
        signed = json.loads(args.manifest.read_text())
    except (OSError, ValueError) as exc:
        return _fail(f"cannot read manifest {args.manifest}: {exc}", 2)
    expected = {
        "run_id": args.run_id,
        "cluster": args.cluster,
        "step": args.step,
        "checkpoint_path": args.checkpoint_path,
    }
    try:
        report = verify_signed_manifest(
            signed,
            args.directory,
            public_key,
            expected=expected,
            exclude=[args.manifest],
        )
    except ManifestError as exc:
        return _fail(str(exc), 2)
    for line in report.lines():
        print(line)
    if all(value is None for value in expected.values()):
        print(
            "warning: no --run-id, --cluster, --step or --path given; the identity above was "
            "signed but not compared with what you expect (an older checkpoint would pass)",
            file=sys.stderr,
        )
    return 0 if report.ok else 1


def _public_key(args: argparse.Namespace, fetch: AttestationFetcher = _fetch_directly) -> int:
    attested = _attested_key(args, fetch)
    if isinstance(attested, int):
        return attested
    key = load_public_key(attested.public_key_der)
    sys.stdout.write(
        key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()
    )
    return 0


def main(
    argv: list[str] | None = None, *, fetch_attestation: AttestationFetcher | None = None
) -> int:
    """Run the command line; ``fetch_attestation`` replaces how the vault's attestation answer
    is obtained (``cdk-trn`` relays it), never how it is checked."""
    args = _parser().parse_args(argv)
    fetch = fetch_attestation or _fetch_directly
    if args.command == "sign":
        return _sign(args)
    if args.command == "verify":
        return _verify(args, fetch)
    return _public_key(args, fetch)
