"""Checkpoint manifests: what a signed manifest holds, how it is hashed, signed and verified.

A manifest lists every regular file under a checkpoint directory with its SHA-384 and size, plus
the checkpoint's identity: the run id, the cluster, the checkpoint's path where it was written and
its training step, and a UTC timestamp. The identity is signed with the files, so a genuinely
signed older checkpoint copied over a newer one is caught by a verifier that states which run,
cluster, step or path it expects (:func:`verify_signed_manifest` ``expected``).

Its signed form is the canonical JSON of the manifest (sorted keys, no insignificant whitespace,
ASCII only, integers and strings only), signed with ECDSA P-384 over SHA-384. So a verifier
needs only the public key and ``openssl dgst -sha384 -verify`` would agree with
:func:`verify_signed_manifest`.

The file written to disk is ``{"manifest": {...}, "signature": {...}}``; only ``manifest`` is
signed, through its canonical bytes, so pretty-printing the outer file changes nothing.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import stat
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

__all__ = [
    "FORMAT",
    "IDENTITY_FIELDS",
    "ManifestError",
    "VerificationReport",
    "build_manifest",
    "canonical_json",
    "load_public_key",
    "manifest_digest",
    "sign_with_private_key",
    "signed_manifest",
    "verify_signed_manifest",
]

# /2 added checkpoint_path and step to the signed identity; /1 manifests are not accepted.
FORMAT = "cdk-trn.checkpoint-manifest/2"
IDENTITY_FIELDS = ("run_id", "cluster", "step", "checkpoint_path")
SIGNATURE_ALGORITHM = "ECDSA_P384_SHA384"
_CHUNK = 1024 * 1024
_NAME = re.compile(r"^[A-Za-z0-9._:@+=/-]{1,256}$")
_CHECKPOINT_PATH = re.compile(r"^/[A-Za-z0-9._:@+=,/-]{0,1023}$")
_MAX_STEP = 2**53 - 1  # an integer every JSON reader holds exactly


class ManifestError(Exception):
    """A manifest cannot be built, read or trusted; says why."""


def canonical_json(value: Any) -> bytes:
    """The canonical bytes of a JSON value: sorted keys, ``,``/``:`` separators, ASCII.

    Floats are refused: their text form differs between implementations, integers do not.
    """
    _reject_floats(value)
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def _reject_floats(value: Any) -> None:
    if isinstance(value, float):
        raise ManifestError("manifest values must not be floats")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ManifestError("manifest keys must be strings")
            _reject_floats(item)
    elif isinstance(value, list | tuple):
        for item in value:
            _reject_floats(item)


def manifest_digest(manifest: dict[str, Any]) -> bytes:
    """SHA-384 of the canonical bytes: what the enclave signs."""
    return hashlib.sha384(canonical_json(manifest)).digest()


def _file_digest(path: Path) -> tuple[str, int]:
    digest = hashlib.sha384()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _relative(root: Path, path: Path) -> str:
    relative = path.relative_to(root).as_posix()
    try:
        relative.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ManifestError(f"file name is not valid UTF-8: {relative!r}") from exc
    return relative


def _walk(root: Path, exclude: set[Path]) -> tuple[dict[str, Path], list[str]]:
    """Regular files under root, keyed by POSIX relative path; and entries that are not files."""
    files: dict[str, Path] = {}
    others: list[str] = []
    for directory, dirnames, filenames in os.walk(root, followlinks=False):
        base = Path(directory)
        for name in list(dirnames):
            if (base / name).is_symlink():
                others.append(_relative(root, base / name))
                dirnames.remove(name)
        dirnames.sort()
        for name in sorted(filenames):
            path = base / name
            if path.resolve() in exclude:
                continue
            mode = path.lstat().st_mode
            if stat.S_ISREG(mode):
                files[_relative(root, path)] = path
            else:
                others.append(_relative(root, path))
    return files, others


def build_manifest(
    directory: str | Path,
    *,
    run_id: str,
    cluster: str,
    step: int,
    checkpoint_path: str | None = None,
    created: datetime | None = None,
    exclude: Iterable[str | Path] = (),
) -> dict[str, Any]:
    """List every regular file under ``directory`` with its SHA-384 and size, and the identity.

    ``checkpoint_path`` is where the checkpoint lives for the training job (default: the absolute
    path of ``directory``); ``step`` is its training step. Symbolic links and special files are
    refused: a checkpoint whose content can change through a link target cannot be pinned.
    """
    root = Path(directory)
    if not root.is_dir():
        raise ManifestError(f"checkpoint directory {root} does not exist or is not a directory")
    for name, value in (("run_id", run_id), ("cluster", cluster)):
        if not isinstance(value, str) or not _NAME.match(value):
            raise ManifestError(
                f"{name} must be 1-256 characters of A-Z a-z 0-9 . _ : @ + = / -, got {value!r}"
            )
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= _MAX_STEP:
        raise ManifestError(f"step must be a non-negative integer, got {step!r}")
    signed_path = normalise_checkpoint_path(
        checkpoint_path if checkpoint_path is not None else str(root.resolve())
    )
    files, others = _walk(root, {Path(p).resolve() for p in exclude})
    if others:
        raise ManifestError(f"not regular files (links or special files): {sorted(others)}")
    entries = []
    for relative, path in sorted(files.items()):
        sha384, size = _file_digest(path)
        entries.append({"path": relative, "sha384": sha384, "size": size})
    when = (created or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
    return {
        "format": FORMAT,
        "run_id": run_id,
        "cluster": cluster,
        "step": step,
        "checkpoint_path": signed_path,
        "created": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "files": entries,
    }


def normalise_checkpoint_path(path: str) -> str:
    """An absolute POSIX path without ``.``/``..`` parts or a trailing slash; refused otherwise."""
    if not isinstance(path, str) or not _CHECKPOINT_PATH.match(path):
        raise ManifestError(
            "checkpoint path must be an absolute path of A-Z a-z 0-9 . _ : @ + = , / -"
            f" (at most 1024 characters), got {path!r}"
        )
    parts = [part for part in path.split("/") if part]
    if any(part in (".", "..") for part in parts):
        raise ManifestError(f"checkpoint path must not contain . or .. parts, got {path!r}")
    return "/" + "/".join(parts)


def signed_manifest(
    manifest: dict[str, Any], signature: bytes, public_key_der: bytes
) -> dict[str, Any]:
    return {
        "manifest": manifest,
        "signature": {
            "algorithm": SIGNATURE_ALGORITHM,
            "value": base64.b64encode(signature).decode(),
            "key_sha256": hashlib.sha256(public_key_der).hexdigest(),
        },
    }


def sign_with_private_key(
    manifest: dict[str, Any], private_key: ec.EllipticCurvePrivateKey
) -> dict[str, Any]:
    """Sign locally (a key file, for tests or an offline signer); nodes use the vault instead."""
    if not isinstance(private_key.curve, ec.SECP384R1):
        raise ManifestError("the signing key must be EC P-384")
    signature = private_key.sign(manifest_digest(manifest), ec.ECDSA(Prehashed(hashes.SHA384())))
    public_der = private_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return signed_manifest(manifest, signature, public_der)


def load_public_key(data: bytes) -> ec.EllipticCurvePublicKey:
    """A P-384 public key from PEM or DER SubjectPublicKeyInfo."""
    try:
        key = (
            serialization.load_pem_public_key(data)
            if data.lstrip().startswith(b"-----BEGIN")
            else serialization.load_der_public_key(data)
        )
    except ValueError as exc:
        raise ManifestError(f"public key is neither PEM nor DER SPKI: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        raise ManifestError("public key must be EC P-384")
    return key


@dataclass
class VerificationReport:
    """Everything wrong with a checkpoint directory against a signed manifest."""

    signature_valid: bool = False
    identity: dict[str, Any] = field(default_factory=dict)
    mismatches: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    tampered: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    checked: int = 0

    @property
    def ok(self) -> bool:
        return (
            self.signature_valid
            and not self.mismatches
            and not self.problems
            and not self.tampered
            and not self.missing
            and not self.extra
        )

    def lines(self) -> list[str]:
        out = [f"SIGNATURE {'valid' if self.signature_valid else 'INVALID'}"]
        if self.identity:
            shown = " ".join(f"{k}={self.identity.get(k)}" for k in (*IDENTITY_FIELDS, "created"))
            out.append(f"IDENTITY {shown}")
        out += [f"MISMATCH {m}" for m in self.mismatches]
        out += [f"PROBLEM {p}" for p in self.problems]
        out += [f"TAMPERED {p}" for p in self.tampered]
        out += [f"MISSING {p}" for p in self.missing]
        out += [f"EXTRA {p}" for p in self.extra]
        out.append(f"{'OK' if self.ok else 'FAILED'}: {self.checked} files checked")
        return out


def _safe_path(path: Any) -> bool:
    if not isinstance(path, str) or not path or path.startswith("/") or "\\" in path:
        return False
    return all(part not in ("", ".", "..") for part in path.split("/"))


def _check_signature(
    signed: dict[str, Any], public_key: ec.EllipticCurvePublicKey, report: VerificationReport
) -> dict[str, Any] | None:
    manifest = signed.get("manifest")
    signature = signed.get("signature")
    if not isinstance(manifest, dict) or not isinstance(signature, dict):
        report.problems.append("file is not a signed manifest (needs manifest and signature)")
        return None
    if manifest.get("format") != FORMAT:
        report.problems.append(f"unknown manifest format {manifest.get('format')!r}")
        return None
    if signature.get("algorithm") != SIGNATURE_ALGORITHM:
        report.problems.append(f"signature algorithm must be {SIGNATURE_ALGORITHM}")
        return None
    try:
        value = base64.b64decode(str(signature.get("value", "")), validate=True)
        public_key.verify(value, manifest_digest(manifest), ec.ECDSA(Prehashed(hashes.SHA384())))
        report.signature_valid = True
    except (ValueError, InvalidSignature, ManifestError):
        report.problems.append("signature does not verify with the given public key")
    return manifest


def verify_signed_manifest(
    signed: dict[str, Any],
    directory: str | Path,
    public_key: ec.EllipticCurvePublicKey,
    *,
    expected: Mapping[str, Any] | None = None,
    exclude: Iterable[str | Path] = (),
    hash_file: Callable[[Path], tuple[str, int]] = _file_digest,
) -> VerificationReport:
    """Check the signature, the signed identity against ``expected``, then every listed file.

    ``expected`` maps identity fields (``run_id``, ``cluster``, ``step``, ``checkpoint_path``) to
    the values the verifier requires; each differing field is a mismatch. Files are compared even
    when the signature fails, so one run says everything that is wrong.
    """
    report = VerificationReport()
    manifest = _check_signature(signed, public_key, report) if isinstance(signed, dict) else None
    if manifest is None:
        if not report.problems:
            report.problems.append("file is not a signed manifest")
        return report
    _check_identity(manifest, expected or {}, report)
    root = Path(directory)
    if not root.is_dir():
        report.problems.append(f"checkpoint directory {root} does not exist")
        return report
    entries = manifest.get("files")
    if not isinstance(entries, list):
        report.problems.append("manifest has no file list")
        return report
    present, others = _walk(root, {Path(p).resolve() for p in exclude})
    listed: set[str] = set()
    for entry in entries:
        path = entry.get("path") if isinstance(entry, dict) else None
        if not _safe_path(path) or path in listed:
            report.problems.append(f"manifest entry with an unsafe or repeated path: {path!r}")
            continue
        assert isinstance(path, str) and isinstance(entry, dict)
        listed.add(path)
        report.checked += 1
        if path not in present:
            report.missing.append(path)
            continue
        sha384, size = hash_file(present[path])
        if size != entry.get("size") or sha384 != entry.get("sha384"):
            report.tampered.append(path)
    report.extra = sorted([p for p in present if p not in listed] + others)
    return report


def _check_identity(
    manifest: Mapping[str, Any], expected: Mapping[str, Any], report: VerificationReport
) -> None:
    unknown = sorted(set(expected) - set(IDENTITY_FIELDS))
    if unknown:
        raise ManifestError(f"cannot expect {unknown}; identity fields are {IDENTITY_FIELDS}")
    identity = {name: manifest.get(name) for name in (*IDENTITY_FIELDS, "created")}
    kinds = {"run_id": str, "cluster": str, "step": int, "checkpoint_path": str, "created": str}
    for name, kind in kinds.items():
        value = identity[name]
        if not isinstance(value, kind) or isinstance(value, bool):
            report.problems.append(f"manifest {name} is missing or not a {kind.__name__}")
    report.identity = identity
    for name, want in expected.items():
        if want is None:
            continue
        got = identity.get(name)
        if name == "checkpoint_path":
            want = normalise_checkpoint_path(str(want))
        if got != want:
            report.mismatches.append(f"{name}: manifest says {got!r}, expected {want!r}")
