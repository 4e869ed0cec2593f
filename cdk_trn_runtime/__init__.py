"""cdk-trn's runtime: everything that runs on an instance, in a Lambda handler, in the enclave or
in the training container, apart from the constructs that deploy it.

Nothing in this package imports aws-cdk-lib, constructs or cdk-nag; most of it needs only the
standard library (handlers add boto3, the enclave cbor2/cryptography/asn1crypto, the suite torch).
The names both sides must agree on live in :mod:`cdk_trn_runtime.contract`.
"""

__version__ = "0.1.0"
