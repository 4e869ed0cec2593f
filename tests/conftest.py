"""Shared test setup: quiet jsii, no AWS credentials or endpoints, CPU for the container suite."""

import os

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
os.environ.setdefault("CDK_TRN_DEVICE", "cpu")
