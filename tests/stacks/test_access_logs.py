"""In the default app every S3 server access log goes to the storage stack's access-log bucket:
the later stacks' buckets under prefixes the storage stack admits, and only those."""

from __future__ import annotations

import functools
import re
from typing import Any

import aws_cdk as cdk
import pytest

from cdk_trn.acceptance import RESULTS_ACCESS_LOG_PREFIX
from cdk_trn.enclave.vault import STATE_ACCESS_LOG_PREFIX
from stacks import build_default_app
from stacks.config import AppConfig


@functools.cache
def _other_app(acceptance: bool, enclave_vault: bool) -> tuple[Any, dict]:
    """The default app without the acceptance run or the vault."""
    app = cdk.App()
    default = build_default_app(app, AppConfig(acceptance=acceptance, enclave_vault=enclave_vault))
    assembly = app.synth()
    stacks = [default.storage_stack, default.cluster_stack, default.vault_stack]
    return default, {
        s.stack_name: assembly.get_stack_by_name(s.stack_name).template
        for s in stacks
        if s is not None
    }


def _log_bucket_export(default: Any, templates: dict) -> tuple[str, str]:
    storage = default.storage_stack
    bucket = storage.resolve(
        storage.get_logical_id(default.storage_stack.buckets.access_log_bucket.node.default_child)
    )
    outputs = templates[storage.stack_name]["Outputs"]
    [export] = [
        o["Export"]["Name"]
        for o in outputs.values()
        if o.get("Value") == {"Ref": bucket} and "Export" in o
    ]
    return bucket, export


def _logging(templates: dict) -> dict[str, dict]:
    return {
        f"{stack}/{k}": r["Properties"]["LoggingConfiguration"]
        for stack, t in templates.items()
        for k, r in t["Resources"].items()
        if r["Type"] == "AWS::S3::Bucket" and "LoggingConfiguration" in r["Properties"]
    }


def _admitted_prefixes(default: Any, templates: dict) -> set[str]:
    bucket, _ = _log_bucket_export(default, templates)
    storage = templates[default.storage_stack.stack_name]["Resources"]
    [policy] = [
        r
        for r in storage.values()
        if r["Type"] == "AWS::S3::BucketPolicy" and r["Properties"]["Bucket"] == {"Ref": bucket}
    ]
    prefixes = set()
    for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
        if statement["Effect"] == "Allow" and "ArnLike" not in statement["Condition"]:
            [suffix] = [p for p in statement["Resource"]["Fn::Join"][1] if isinstance(p, str)]
            prefixes.add(re.fullmatch(r"/(.*)\*", suffix).group(1))
    return prefixes


def _templates(
    default_app, acceptance: bool = True, enclave_vault: bool = True
) -> tuple[Any, dict]:
    if acceptance and enclave_vault:  # the default app's configuration
        return default_app.default, default_app.templates()
    return _other_app(acceptance, enclave_vault)


def test_every_bucket_of_the_default_app_logs_to_the_storage_log_bucket(default_app):
    default, templates = _templates(default_app)
    bucket, export = _log_bucket_export(default, templates)
    logging = _logging(templates)
    assert len(logging) == 4  # datasets, checkpoints, acceptance results, vault state
    for where, config in logging.items():
        assert config["DestinationBucketName"] in ({"Ref": bucket}, {"Fn::ImportValue": export})
    by_prefix = {c["LogFilePrefix"]: where for where, c in logging.items()}
    assert by_prefix[RESULTS_ACCESS_LOG_PREFIX].startswith(default.cluster_stack.stack_name)
    assert by_prefix[STATE_ACCESS_LOG_PREFIX].startswith(default.vault_stack.stack_name)


def test_the_later_stacks_create_no_access_log_bucket_of_their_own(default_app):
    default, templates = _templates(default_app)
    for stack in (default.cluster_stack, default.vault_stack):
        buckets = [
            r
            for r in templates[stack.stack_name]["Resources"].values()
            if r["Type"] == "AWS::S3::Bucket"
        ]
        assert buckets and all("LoggingConfiguration" in b["Properties"] for b in buckets)


@pytest.mark.parametrize(
    ("acceptance", "enclave_vault", "prefixes"),
    [
        (True, True, {RESULTS_ACCESS_LOG_PREFIX, STATE_ACCESS_LOG_PREFIX}),
        (False, True, {STATE_ACCESS_LOG_PREFIX}),
        (True, False, {RESULTS_ACCESS_LOG_PREFIX}),
    ],
)
def test_the_storage_stack_admits_exactly_the_prefixes_the_later_stacks_use(
    default_app, acceptance, enclave_vault, prefixes
):
    default, templates = _templates(default_app, acceptance, enclave_vault)
    used = {
        c["LogFilePrefix"]
        for where, c in _logging(templates).items()
        if not where.startswith(default.storage_stack.stack_name)
    }
    assert used == prefixes
    assert _admitted_prefixes(default, templates) == prefixes
