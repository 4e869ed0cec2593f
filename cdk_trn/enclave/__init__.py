"""Nitro Enclave-backed key handling and signed checkpoints.

Pure-Python modules (no CDK import, so nodes, enclave images and hosts can use them):

- ``cdk_trn.enclave.attestation``: ``verify_attestation`` of Nitro attestation documents;
- ``cdk_trn.enclave.cms``: opening KMS ``CiphertextForRecipient`` (CMS EnvelopedData);
- ``cdk_trn.enclave.kms_recipient``: KMS calls with a ``Recipient``, the P-384 signing key;
- ``cdk_trn.enclave.service``: the signer inside the enclave (vsock, ``/dev/nsm``);
- ``cdk_trn.enclave.parent``: the parent-side server (IAM-authenticated) and its node client.

The CDK constructs live in ``cdk_trn.enclave.vault`` and ``cdk_trn.enclave.image`` and are imported
from there; this package file imports nothing so that ``import cdk_trn.enclave.attestation`` never
pulls in aws_cdk.
"""
