"""What the vault hosts may reach and do: HTTPS egress to the VPC's interface endpoints and to
the S3 gateway endpoint only, and the host role's statements (enclave image and boot bundle, boot
log, key state, the published public key and URL, the creation signal)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import aws_cdk as cdk
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from constructs import Construct

from cdk_trn._provider import DeployTimeNetwork
from cdk_trn.enclave.vault_state import KEY_STATE_OBJECT

if TYPE_CHECKING:
    from cdk_trn.enclave.vault import EnclaveKeyVault

__all__ = ["grant_host_access", "restrict_host_egress"]


def restrict_host_egress(
    scope: Construct,
    security_group: ec2.SecurityGroup,
    *,
    vpc: ec2.IVpc,
    subnet: ec2.ISubnet,
    encryption_key: kms.IKey,
) -> str:
    """HTTPS out of ``security_group`` to the VPC (interface endpoints) and to S3 (the gateway
    endpoint's prefix list); answers that prefix list's id."""
    https = ec2.Port.tcp(443)
    security_group.add_egress_rule(
        ec2.Peer.ipv4(vpc.vpc_cidr_block),
        https,
        "Interface endpoints: KMS (vsock-proxy), STS (caller checks), SSM, CloudFormation",
    )
    # S3 (EIF, package, dnf repositories) goes through the gateway endpoint, whose addresses
    # are the regional managed prefix list; its id differs per region and is looked up at
    # deploy time (a synth-time lookup is not allowed), once per stack and subnet for every
    # deploy-time function there.
    placement = DeployTimeNetwork.of(scope, vpc=vpc, subnet=subnet, encryption_key=encryption_key)
    s3_prefix_list_id = placement.s3_prefix_list_id
    security_group.add_egress_rule(
        ec2.Peer.prefix_list(s3_prefix_list_id),
        https,
        "S3 gateway endpoint: EIF, boot bundle, AL2023 package repositories",
    )
    return s3_prefix_list_id


def grant_host_access(
    vault: EnclaveKeyVault,
    stack: cdk.Stack,
    *,
    public_key_parameter_arn: str,
    url_parameter_arns: list[str],
) -> None:
    """The host role's statements, in its managed policy."""
    image = vault.image
    statements = [
        iam.PolicyStatement(
            sid="ReadEnclaveImageAndBootBundle",
            actions=["s3:GetObject"],
            resources=[image.eif.bucket.arn_for_objects(image.eif.key), vault.boot.object_arn],
        ),
        iam.PolicyStatement(
            sid="WriteBootLog",
            actions=["logs:CreateLogStream", "logs:PutLogEvents"],
            resources=[vault.boot.log_group.log_group_arn],
        ),
        iam.PolicyStatement(
            sid="KeepKeyState",
            actions=["s3:GetObject", "s3:PutObject"],
            resources=[vault.state_bucket.arn_for_objects(KEY_STATE_OBJECT)],
        ),
        # Lets HeadObject answer 404 (not 403) for a missing key state on a first start.
        iam.PolicyStatement(
            sid="TellMissingKeyStateFromDenied",
            actions=["s3:ListBucket"],
            resources=[vault.state_bucket.bucket_arn],
        ),
        iam.PolicyStatement(
            sid="StateBucketEncryptionThroughS3",
            actions=["kms:Decrypt", "kms:GenerateDataKey"],
            resources=[vault.storage_key.key_arn],
            conditions={"StringEquals": {"kms:ViaService": f"s3.{stack.region}.amazonaws.com"}},
        ),
        iam.PolicyStatement(
            sid="PublishManifestSigningPublicKey",
            actions=["ssm:PutParameter", "ssm:GetParameter"],
            resources=[public_key_parameter_arn],
        ),
        # The statement the Auto Scaling group's signals add too, written alike (no Sid), so
        # the policy holds it once.
        iam.PolicyStatement(
            actions=["cloudformation:SignalResource"], resources=[cdk.Aws.STACK_ID]
        ),
        iam.PolicyStatement(
            sid="PublishVaultUrl",
            actions=["ssm:PutParameter"],
            resources=url_parameter_arns,
        ),
    ]
    eif_key = image.eif.bucket.encryption_key
    if eif_key is not None and eif_key is not vault.storage_key:
        statements.append(
            iam.PolicyStatement(
                sid="EnclaveImageBucketEncryption",
                actions=["kms:Decrypt"],
                resources=[eif_key.key_arn],
                conditions={"StringEquals": {"kms:ViaService": f"s3.{stack.region}.amazonaws.com"}},
            )
        )
    # Into the role's managed policy, under the role: the launch template depends on the
    # role, so no host boots before its permissions exist.
    for statement in statements:
        vault.host_role.add_to_principal_policy(statement)
