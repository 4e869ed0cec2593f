"""Signed checkpoint manifests: build, sign (through the enclave vault) and verify offline.

``python -m cdk_trn_runtime.provenance sign DIR`` on a node,
``python -m cdk_trn_runtime.provenance verify MANIFEST DIR --public-key KEY --step N`` anywhere.
Imports neither aws_cdk nor torch.
"""

from cdk_trn_runtime.provenance.manifest import (
    FORMAT,
    IDENTITY_FIELDS,
    ManifestError,
    VerificationReport,
    build_manifest,
    canonical_json,
    load_public_key,
    manifest_digest,
    sign_with_private_key,
    signed_manifest,
    verify_signed_manifest,
)

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
