"""The vault hosts' user data: the launcher of their boot bundle with the variables
``cdk_trn_runtime/vault/host_bootstrap.sh`` checks, rendered at synth (when the Auto Scaling
group's logical id is known)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import aws_cdk as cdk
import jsii
from aws_cdk import aws_autoscaling as autoscaling

from cdk_trn.enclave.vault_state import KEY_STATE_OBJECT

if TYPE_CHECKING:
    from cdk_trn.enclave.vault import EnclaveKeyVault

__all__ = ["ENCLAVE_CID", "KMS_PROXY_VSOCK_PORT", "HostUserData", "host_boot_variables"]

ENCLAVE_CID = 16  # fixed so the parent server knows where to forward
KMS_PROXY_VSOCK_PORT = 8000  # vsock-proxy's port on the parent (CID 3)


def host_boot_variables(
    vault: EnclaveKeyVault, stack: cdk.Stack, clients: Sequence[Any]
) -> dict[str, Any]:
    """The variables ``host_bootstrap.sh`` checks, for the hosts of ``vault``."""
    asg = vault.auto_scaling_group.node.default_child
    assert isinstance(asg, autoscaling.CfnAutoScalingGroup)
    return {
        "CDK_TRN_REGION": stack.region,
        "CDK_TRN_STACK": stack.stack_name,
        "CDK_TRN_RESOURCE": stack.get_logical_id(asg),
        "CDK_TRN_EIF_BUCKET": vault.image.eif.bucket.bucket_name,
        "CDK_TRN_EIF_KEY": vault.image.eif.key,
        "CDK_TRN_EXPECTED_PCR0": vault.image.pcr0,
        "CDK_TRN_ENCLAVE_CPU_COUNT": vault.enclave_cpu_count,
        "CDK_TRN_ENCLAVE_MEMORY_MIB": vault.enclave_memory_mib,
        "CDK_TRN_ENCLAVE_CID": ENCLAVE_CID,
        "CDK_TRN_KMS_PROXY_PORT": KMS_PROXY_VSOCK_PORT,
        "CDK_TRN_SERVICE_PORT": vault.port,
        "CDK_TRN_KMS_KEY_ARN": vault.key.key_arn,
        # A client's signing role when it has one (TrainiumCluster.signer_role: only
        # the nodes' root signing agents assume it), else its role.
        "CDK_TRN_ALLOWED_ROLE_ARNS": cdk.Fn.join(
            " ",
            [getattr(client, "signer_role", client.role).role_arn for client in clients],
        ),
        # Connection slots for every client node (TrainiumCluster.nodes) and a reserve.
        "CDK_TRN_MAX_CLIENTS": sum(int(getattr(client, "nodes", 0) or 0) for client in clients),
        "CDK_TRN_STATE_BUCKET": vault.state_bucket.bucket_name,
        "CDK_TRN_KEY_STATE_OBJECT": KEY_STATE_OBJECT,
        "CDK_TRN_PUBLIC_KEY_PARAMETER": vault.public_key_parameter,
        "CDK_TRN_URL_PARAMETERS": " ".join(vault.url_parameter_names),
    }


@jsii.implements(cdk.IStableStringProducer)
class HostUserData:
    """The hosts' user data, rendered at synth (the group's logical id is known by then)."""

    def __init__(self, vault: EnclaveKeyVault, stack: cdk.Stack, clients: Sequence[Any]) -> None:
        self._vault = vault
        self._stack = stack
        self._clients = list(clients)

    def produce(self) -> str:
        return self._vault.boot.user_data(
            host_boot_variables(self._vault, self._stack, self._clients)
        )
