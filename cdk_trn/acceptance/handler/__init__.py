"""Lambda code of the acceptance run's custom resource (plain Python: standard library + boto3).

This directory is the Lambda asset: nothing in it may import ``cdk_trn`` or anything the Lambda
Python runtime does not ship.
"""
