"""Nitro Enclave-backed key handling: the constructs.

``EnclaveKeyVault`` (``vault``) runs the enclave hosts, the attested-only KMS key and the state
bucket (its concerns in ``key_policy``, ``key_policy_alerts``, ``vault_props``, ``vault_state``,
``vault_host`` and ``vault_boot``); ``EnclaveImage`` (``image``) says which enclave image they
run and builds it during the deploy. What runs on the hosts and in the enclave lives in
``cdk_trn_runtime.vault`` and ``cdk_trn_runtime.enclave``.
"""

from cdk_trn.enclave.image import EifLocation, EnclaveImage
from cdk_trn.enclave.vault import EnclaveKeyVault

__all__ = ["EifLocation", "EnclaveImage", "EnclaveKeyVault"]
