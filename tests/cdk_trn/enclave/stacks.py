"""Small stacks for the enclave construct tests: a network, a cluster stand-in and a vault."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aws_cdk as cdk
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3 as s3

from cdk_trn.enclave.image import EifLocation, EnclaveImage
from cdk_trn.enclave.vault import EnclaveKeyVault
from cdk_trn.network import TrainingNetwork

REGION = "us-east-2"
AZ_ID = "use2-az3"
PCR0 = "a1" * 48
PCR8 = "b2" * 48
EIF_BUCKET = "prebuilt-enclave-images"
EIF_KEY = "vault/enclave.eif"


@dataclass
class ClusterStandIn:
    """Test double of TrainiumCluster as a vault client: a security group and a node role."""

    connections: ec2.Connections
    role: iam.IRole


@dataclass
class VaultStack:
    stack: cdk.Stack
    network: TrainingNetwork
    client: ClusterStandIn
    vault: EnclaveKeyVault

    def logical_id(self, construct: Any) -> str:
        element = (
            construct if isinstance(construct, cdk.CfnElement) else construct.node.default_child
        )
        return self.stack.get_logical_id(element)


def cluster_stand_in(
    stack: cdk.Stack, network: TrainingNetwork, id: str = "Cluster"
) -> ClusterStandIn:
    group = ec2.SecurityGroup(stack, f"{id}Nodes", vpc=network.vpc, description="stand-in nodes")
    role = iam.Role(stack, f"{id}NodeRole", assumed_by=iam.ServicePrincipal("ec2.amazonaws.com"))
    return ClusterStandIn(connections=ec2.Connections(security_groups=[group]), role=role)


def prebuilt_image(stack: cdk.Stack, *, signed: bool = False) -> EnclaveImage:
    bucket = s3.Bucket.from_bucket_name(stack, "PrebuiltImages", EIF_BUCKET)
    return EnclaveImage.from_measurements(
        PCR0, PCR8 if signed else None, eif=EifLocation(bucket=bucket, key=EIF_KEY)
    )


def vault_stack(
    image: str | Path = "prebuilt",
    *,
    app: cdk.App | None = None,
    key_admins: Sequence[str] = (),
    **vault_props: Any,
) -> VaultStack:
    """A stack in us-east-2 with a TrainingNetwork, one cluster stand-in and a vault.

    ``image``: "prebuilt", "signed" or a Docker build context directory.
    """
    app = app or cdk.App()
    stack = cdk.Stack(app, "VaultStack", env=cdk.Environment(region=REGION))
    network = TrainingNetwork(stack, "Network", availability_zone=AZ_ID)
    client = cluster_stand_in(stack, network)
    if image in ("prebuilt", "signed"):
        enclave_image = prebuilt_image(stack, signed=image == "signed")
    else:
        enclave_image = EnclaveImage.from_directory(image)
    admins = [iam.ArnPrincipal(arn) for arn in key_admins]
    vault = EnclaveKeyVault(
        stack,
        "Vault",
        network=network,
        clients=[client],
        image=enclave_image,
        key_admins=admins,
        **vault_props,
    )
    return VaultStack(stack=stack, network=network, client=client, vault=vault)


def write_build_context(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "Dockerfile").write_text(
        'FROM public.ecr.aws/amazonlinux/amazonlinux:2023\nCMD ["/bin/true"]\n'
    )
    return directory


def nag_findings(out_dir: Path, *, under: Sequence[str]) -> list[str]:
    """Unacknowledged cdk-nag findings from a synth's validation report, for paths under ``under``.

    No report means the validation passed.
    """
    report = out_dir / "validation-report.json"
    if not report.exists():
        return []
    findings = []
    for plugin in json.loads(report.read_text()).get("pluginReports", []):
        for violation in plugin.get("violations", []):
            for resource in violation.get("violatingConstructs", []) or violation.get(
                "violatingResources", []
            ):
                path = resource.get("constructPath", "")
                if any(path.startswith(prefix) for prefix in under):
                    findings.append(f"{violation.get('ruleName')} {path}")
    return findings
