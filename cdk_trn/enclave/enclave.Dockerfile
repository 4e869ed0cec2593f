# The enclave image of cdk-trn's key vault: the in-enclave manifest signer and nothing else.
# Built into an EIF during the deploy (EnclaveImage.from_directory, CodeBuild + nitro-cli); its
# PCR0 goes into the vault key's policy, so every byte here is part of what KMS trusts.
FROM public.ecr.aws/amazonlinux/amazonlinux:2023

RUN dnf install -y python3.11 python3.11-pip iproute \
    && dnf clean all \
    && rm -rf /var/cache/dnf
RUN python3.11 -m pip install --no-cache-dir \
    cbor2==6.2.1 cryptography==48.0.0 asn1crypto==1.5.1 boto3==1.43.11

COPY __init__.py channel.py cms.py kms_recipient.py service.py /opt/vault/cdk_trn/enclave/
COPY enclave_entrypoint.sh /opt/vault/entrypoint.sh
RUN touch /opt/vault/cdk_trn/__init__.py

ENV PYTHONPATH=/opt/vault \
    PYTHONUNBUFFERED=1
ENTRYPOINT ["/bin/sh", "/opt/vault/entrypoint.sh"]
