"""Enclave key rule (TRN9): decryption only from an attested Nitro Enclave, denied otherwise.

Sources: AWS KMS developer guide, "Condition keys for AWS Nitro Enclaves"
(``kms:RecipientAttestation:ImageSha384`` and ``:PCR<n>`` apply only when the request carries a
Recipient attestation document); aws-nitro-enclaves-sdk-c issue 100 (an unconditioned Allow for
the parent's role defeats attestation, so the policy must also Deny when the condition is absent);
FACTS.md "Nitro Enclaves".
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from fnmatch import fnmatchcase
from typing import Any

from cdk_trn.compliance.rules import (
    COMPLIANT,
    NON_COMPLIANT,
    NOT_APPLICABLE,
    Compliance,
    Rule,
    TemplateResource,
    as_list,
    is_true,
)

ATTESTATION_PREFIX = "kms:recipientattestation:"
PURPOSE_TAG = ("cdk-trn:purpose", "enclave")
#: Actions that yield key material or plaintext; ReEncryptFrom would move the ciphertext under a
#: key the caller controls, so it counts as decryption here.
PLAINTEXT_ACTIONS = (
    "kms:Decrypt",
    "kms:GenerateDataKey",
    "kms:GenerateDataKeyPair",
    "kms:ReEncryptFrom",
)
#: What the Deny-without-attestation statement must cover at least.
DENIED_ACTIONS = ("kms:Decrypt", "kms:GenerateDataKey")


def _is_enclave_key(key: TemplateResource) -> bool:
    policy_text = json.dumps(key.properties.get("KeyPolicy", {})).lower()
    if ATTESTATION_PREFIX in policy_text:
        return True
    return any(
        isinstance(tag, Mapping) and (tag.get("Key"), tag.get("Value")) == PURPOSE_TAG
        for tag in as_list(key.properties.get("Tags"))
    )


def _statements(key: TemplateResource) -> list[Mapping[str, Any]]:
    policy = key.properties.get("KeyPolicy") or {}
    if not isinstance(policy, Mapping):
        return []
    return [s for s in as_list(policy.get("Statement")) if isinstance(s, Mapping)]


def _grants(statement: Mapping[str, Any], action: str) -> bool:
    """Whether ``statement`` (Action or NotAction) covers ``action``."""
    target = action.lower()
    if "NotAction" in statement:
        return not any(fnmatchcase(target, str(p).lower()) for p in as_list(statement["NotAction"]))
    return any(fnmatchcase(target, str(p).lower()) for p in as_list(statement.get("Action")))


def _condition_keys(statement: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``{operator: {lowercased key: value}}`` of the statement's Condition block."""
    conditions = statement.get("Condition") or {}
    if not isinstance(conditions, Mapping):
        return {}
    return {
        op: {str(k).lower(): v for k, v in block.items()}
        for op, block in conditions.items()
        if isinstance(block, Mapping)
    }


def _requires_attestation(statement: Mapping[str, Any]) -> bool:
    return any(
        key.startswith(ATTESTATION_PREFIX)
        for op, block in _condition_keys(statement).items()
        if op != "Null"
        for key in block
    )


def _denies_missing_attestation(statement: Mapping[str, Any]) -> bool:
    if statement.get("Effect") != "Deny":
        return False
    principal = statement.get("Principal")
    if principal != "*" and not (isinstance(principal, Mapping) and principal.get("AWS") == "*"):
        return False
    if not all(_grants(statement, action) for action in DENIED_ACTIONS):
        return False
    null = _condition_keys(statement).get("Null", {})
    return any(key.startswith(ATTESTATION_PREFIX) and is_true(v) for key, v in null.items())


def enclave_key_requires_attestation(key: TemplateResource) -> Compliance:
    """TRN9: every Allow of a plaintext action is attestation-conditioned, and a Deny covers the
    case where the attestation is absent."""
    if not _is_enclave_key(key):
        return NOT_APPLICABLE
    statements = _statements(key)
    for statement in statements:
        if statement.get("Effect") != "Allow":
            continue
        if any(_grants(statement, a) for a in PLAINTEXT_ACTIONS) and not _requires_attestation(
            statement
        ):
            return NON_COMPLIANT
    return COMPLIANT if any(_denies_missing_attestation(s) for s in statements) else NON_COMPLIANT


TRN9 = Rule(
    id="TRN9",
    info=(
        "The enclave key allows decryption without a kms:RecipientAttestation condition, or "
        "does not deny it when the attestation is absent."
    ),
    explanation=(
        "A key meant for a Nitro Enclave (its policy names kms:RecipientAttestation:* keys, or it "
        "is tagged cdk-trn:purpose=enclave) protects nothing if any Allow of Decrypt, "
        "GenerateDataKey* or ReEncryptFrom (including kms:* for the account) lacks the "
        "attestation condition: the parent instance's role, or an IAM policy in the account, "
        "could then decrypt outside the enclave. A Deny to everyone with Null "
        "kms:RecipientAttestation:ImageSha384 = true closes IAM policies and grants as well."
    ),
    resource_types=("AWS::KMS::Key",),
    check=enclave_key_requires_attestation,
)
