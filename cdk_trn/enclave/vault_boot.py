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
from cdk_trn_runtime.contract.boot import VaultBoot

if TYPE_CHECKING:
    from cdk_trn.enclave.vault import EnclaveKeyVault

__all__ = ["ENCLAVE_CID", "KMS_PROXY_VSOCK_PORT", "HostUserData", "host_boot_variables"]

ENCLAVE_CID = 16  # fixed so the parent server knows where to forward
KMS_PROXY_VSOCK_PORT = 8000  # vsock-proxy's port on the parent (CID 3)


def host_boot_variables(
    vault: EnclaveKeyVault, stack: cdk.Stack, clients: Sequence[Any]
) -> VaultBoot:
    """The variables ``host_bootstrap.sh`` checks, for the hosts of ``vault``."""
    asg = vault.auto_scaling_group.node.default_child
    assert isinstance(asg, autoscaling.CfnAutoScalingGroup)
    return VaultBoot(
        region=stack.region,
        stack=stack.stack_name,
        resource=stack.get_logical_id(asg),
        eif_bucket=vault.image.eif.bucket.bucket_name,
        eif_key=vault.image.eif.key,
        expected_pcr0=vault.image.pcr0,
        enclave_cpu_count=vault.enclave_cpu_count,
        enclave_memory_mib=vault.enclave_memory_mib,
        enclave_cid=ENCLAVE_CID,
        kms_proxy_port=KMS_PROXY_VSOCK_PORT,
        service_port=vault.port,
        kms_key_arn=vault.key.key_arn,
        # A client's signing role when it has one (TrainiumCluster.signer_role: only
        # the nodes' root signing agents assume it), else its role.
        allowed_role_arns=cdk.Fn.join(
            " ",
            [getattr(client, "signer_role", client.role).role_arn for client in clients],
        ),
        # Connection slots for every client node (TrainiumCluster.nodes) and a reserve.
        max_clients=sum(int(getattr(client, "nodes", 0) or 0) for client in clients),
        state_bucket=vault.state_bucket.bucket_name,
        key_state_object=KEY_STATE_OBJECT,
        public_key_parameter=vault.public_key_parameter,
        url_parameters=" ".join(vault.url_parameter_names),
    )


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
