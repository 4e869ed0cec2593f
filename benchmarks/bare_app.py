#!/usr/bin/env python3
"""The yardstick of benchmarks/synth_speed.py: a CDK app with one S3 bucket and nothing else."""

import aws_cdk as cdk
from aws_cdk import aws_s3 as s3

app = cdk.App()
s3.Bucket(cdk.Stack(app, "Bare"), "Bucket")
app.synth()
