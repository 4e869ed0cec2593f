"""Inside the Nitro Enclave: attestation, CMS, KMS with a Recipient, the signer service.

This folder (with the package's ``__init__`` and ``contract``) is the enclave image's build
context; its ``Dockerfile`` copies it whole, so every byte here is part of what KMS trusts.
"""
