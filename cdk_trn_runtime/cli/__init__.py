"""``cdk-trn``, the command users run against a deployed cluster: ``submit``, ``queue``, ``logs``,
``shell`` and ``status``.

It finds the cluster's Slurm controller from the cluster stack's outputs and reaches it through
AWS Systems Manager only. :mod:`~cdk_trn_runtime.cli.remote` builds the shell scripts that run on
the controller (pure functions), :mod:`~cdk_trn_runtime.cli.aws` makes the AWS calls through
clients passed in, and :mod:`~cdk_trn_runtime.cli.command` is the command line. boto3 only; never
the CDK.
"""

from cdk_trn_runtime.cli.command import main

__all__ = ["main"]
