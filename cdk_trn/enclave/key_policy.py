"""The vault key's policy: cryptographic use only from the attested enclave image, explicit Denies
for every principal, and key-policy changes for the deployment and break-glass roles only.

Facts: AWS KMS developer guide, "Condition keys for AWS Nitro Enclaves"
(``kms:RecipientAttestation:ImageSha384`` and ``kms:RecipientAttestation:PCR<n>``);
aws-nitro-enclaves-sdk-c issue 100 (an unconditioned Allow defeats attestation, hence the Deny).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aws_cdk import aws_iam as iam

from cdk_trn.enclave.image import BoundEnclaveImage

__all__ = [
    "ADMIN_ACTIONS",
    "CRYPTO_ACTIONS",
    "DENIED_TO_EVERYONE_ACTIONS",
    "IMAGE_SHA384",
    "KEY_POLICY_ACTION",
    "PCR8",
    "account_key_policy",
    "deny_everyone",
    "enclave_key_policy",
    "policy_change_statements",
]

#: Operations that honour the ``kms:RecipientAttestation:*`` condition keys (KMS developer guide).
#: ``kms:GenerateRandom`` is not scoped to a key: a key policy cannot grant it, but listing it keeps
#: the Deny and the Allow symmetric with the documented set.
CRYPTO_ACTIONS = (
    "kms:Decrypt",
    "kms:GenerateDataKey",
    "kms:GenerateDataKeyPair",
    "kms:GenerateRandom",
)
#: Key administration without any cryptographic use and without kms:CreateGrant (a grant could hand
#: Decrypt to another principal).
ADMIN_ACTIONS = (
    "kms:CancelKeyDeletion",
    "kms:CreateAlias",
    "kms:DeleteAlias",
    "kms:DescribeKey",
    "kms:DisableKey",
    "kms:DisableKeyRotation",
    "kms:EnableKey",
    "kms:EnableKeyRotation",
    "kms:GetKeyPolicy",
    "kms:GetKeyRotationStatus",
    "kms:ListAliases",
    "kms:ListGrants",
    "kms:ListKeyPolicies",
    "kms:ListKeyRotations",
    "kms:ListResourceTags",
    "kms:RevokeGrant",
    "kms:RotateKeyOnDemand",
    "kms:ScheduleKeyDeletion",
    "kms:TagResource",
    "kms:UntagResource",
    "kms:UpdateAlias",
    "kms:UpdateKeyDescription",
)
#: Changing the key policy could drop the Deny statements; only the deployment's CloudFormation
#: execution role and the break-glass role may, and every attempt notifies the alerts topic.
KEY_POLICY_ACTION = "kms:PutKeyPolicy"
#: Denied to every principal without condition: the enclave needs neither, a grant could hand
#: Decrypt to another principal, and ReEncrypt would move the ciphertext under another key.
DENIED_TO_EVERYONE_ACTIONS = ("kms:CreateGrant", "kms:ReEncrypt*")
IMAGE_SHA384 = "kms:RecipientAttestation:ImageSha384"
PCR8 = "kms:RecipientAttestation:PCR8"


def deny_everyone(
    sid: str, actions: Sequence[str], conditions: dict[str, Any] | None = None
) -> iam.PolicyStatement:
    """A key-policy Deny that binds every principal, administrators and grants included."""
    return iam.PolicyStatement(
        sid=sid,
        effect=iam.Effect.DENY,
        principals=[iam.AnyPrincipal()],
        actions=list(actions),
        resources=["*"],
        conditions=conditions,
    )


def policy_change_statements(key_policy_roles: Sequence[str]) -> list[iam.PolicyStatement]:
    """PutKeyPolicy for the deployment and break-glass roles only, denied to all others."""
    policy_roles = {"aws:PrincipalArn": list(key_policy_roles)}
    return [
        iam.PolicyStatement(
            sid="OnlyDeploymentAndBreakGlassRolesChangeKeyPolicy",
            principals=[iam.AccountRootPrincipal()],
            actions=[KEY_POLICY_ACTION],
            resources=["*"],
            conditions={"ArnEquals": policy_roles},
        ),
        # Whatever IAM or a future statement allows: nobody else rewrites the policy.
        deny_everyone(
            "DenyKeyPolicyChangesToOtherPrincipals",
            [KEY_POLICY_ACTION],
            {"ArnNotEquals": policy_roles},
        ),
    ]


def account_key_policy(key_policy_roles: Sequence[str]) -> list[iam.PolicyStatement]:
    """The vault's supporting keys (storage, alerts): the account's IAM policies govern
    every use as with a default key policy, except changing the policy itself."""
    return [
        iam.PolicyStatement(
            sid="AccountUsesKeyThroughIamExceptPolicyChanges",
            principals=[iam.AccountRootPrincipal()],
            not_actions=[KEY_POLICY_ACTION],
            resources=["*"],
        ),
        *policy_change_statements(key_policy_roles),
    ]


def enclave_key_policy(
    image: BoundEnclaveImage,
    *,
    host_role: iam.IRole,
    key_admins: Sequence[iam.IPrincipal],
    key_policy_roles: Sequence[str],
) -> iam.PolicyDocument:
    """The enclave key's policy: ``host_role`` uses the key only from ``image`` attested."""
    allow_conditions: dict[str, str] = {IMAGE_SHA384: image.pcr0}
    if image.pcr8 is not None:
        allow_conditions[PCR8] = image.pcr8
    change_policy, deny_policy_changes = policy_change_statements(key_policy_roles)
    statements = [
        iam.PolicyStatement(
            sid="AccountAdministersKeyWithoutCryptographicUse",
            principals=[iam.AccountRootPrincipal()],
            actions=list(ADMIN_ACTIONS),
            resources=["*"],
        ),
        change_policy,
        iam.PolicyStatement(
            sid="EnclaveHostUsesKeyOnlyFromAttestedEnclave",
            principals=[iam.ArnPrincipal(host_role.role_arn)],
            actions=list(CRYPTO_ACTIONS),
            resources=["*"],
            conditions={"StringEqualsIgnoreCase": allow_conditions},
        ),
        deny_everyone(
            "DenyCryptographicUseWithoutAttestation",
            CRYPTO_ACTIONS,
            {"Null": {IMAGE_SHA384: "true"}},
        ),
        # Also closes grants and IAM policies: any use must come from this exact image.
        deny_everyone(
            "DenyCryptographicUseFromOtherImages",
            CRYPTO_ACTIONS,
            {"StringNotEqualsIgnoreCase": {IMAGE_SHA384: image.pcr0}},
        ),
        deny_everyone("DenyGrantsAndReEncryptionToEveryone", DENIED_TO_EVERYONE_ACTIONS),
        deny_policy_changes,
    ]
    if image.pcr8 is not None:
        statements.append(
            deny_everyone(
                "DenyCryptographicUseFromOtherSigners",
                CRYPTO_ACTIONS,
                {"StringNotEqualsIgnoreCase": {PCR8: image.pcr8}},
            )
        )
    if key_admins:
        statements.insert(
            2,
            iam.PolicyStatement(
                sid="KeyAdministratorsWithoutCryptographicUse",
                principals=list(key_admins),
                actions=list(ADMIN_ACTIONS),
                resources=["*"],
            ),
        )
    return iam.PolicyDocument(statements=statements)
