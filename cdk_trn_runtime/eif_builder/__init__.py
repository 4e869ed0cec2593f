"""Deploy-time build of a Nitro Enclave image (EIF).

Owns the two halves that run outside the synth: the CodeBuild buildspec (``buildspec.py``) that
runs ``docker build`` and ``nitro-cli build-enclave`` and writes ``enclave.eif`` plus
``measurements.json`` to S3, and the custom-resource handler (``handler.py``, plain Python on
boto3) that starts that build and returns PCR0/PCR1/PCR2 to CloudFormation;
``cdk_trn.enclave.image`` wires them together.
This directory is the Lambda code asset, so nothing here may import aws_cdk or cdk_trn.
"""
