"""The enclave key vault, in a stack of its own.

Separate from the cluster stack because a node may send CloudFormation signals to any resource
of its own stack (``cloudformation:SignalResource`` has no per-resource condition): a compromised
node must not be able to report the vault hosts healthy. The vault's key and state are retained.
"""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_s3 as s3
from constructs import Construct

from cdk_trn.cluster import TrainiumCluster
from cdk_trn.enclave.image import EnclaveImage
from cdk_trn.enclave.vault import EnclaveKeyVault


class VaultStack(cdk.Stack):
    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        cluster: TrainiumCluster,
        access_log_bucket: s3.IBucket | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(scope, id, **kwargs)  # type: ignore[arg-type]
        self.vault = EnclaveKeyVault(
            self,
            "EnclaveVault",
            network=cluster.network,
            clients=[cluster],
            image=EnclaveImage.bundled(),
            access_log_bucket=access_log_bucket,
        )
        endpoint = self.vault.endpoint
        for label, value, description in (
            ("VaultHostsGroup", endpoint.auto_scaling_group_name, "enclave vault hosts"),
            ("VaultPort", str(endpoint.port), "enclave vault parent server port"),
            (
                "VaultPublicKeyParameter",
                self.vault.public_key_parameter,
                "SSM parameter holding the manifest-signing public key (PEM)",
            ),
            (
                "VaultKeyPolicyAlertsTopic",
                self.vault.key_policy_alerts.topic_arn,
                "SNS topic notified of every attempt to change the vault key's policy",
            ),
        ):
            cdk.CfnOutput(self, label, value=value, description=description)
