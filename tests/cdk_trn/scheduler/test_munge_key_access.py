"""Who can read the munge key (issue 20): with it, anyone mints uid-0 MUNGE credentials that
slurmctld and every slurmd accept. Only the controller and node roles may read the secret; those
roles are EC2 instance roles that nothing else may assume, so their credentials come only from
instance metadata, which imds_guard.sh (the first step of both boots) leaves to root."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from aws_cdk.assertions import Template

from cdk_trn.scheduler import SlurmScheduler
from cdk_trn_runtime.node.bundle import ENTRY_SCRIPTS, bundle_files
from tests.cdk_trn_runtime.node.test_node_bootstrap import FileSystemStandIn
from tests.support.stacks import cluster_stack

NODE = Path(__file__).parents[3] / "cdk_trn_runtime" / "node"
READS = {"secretsmanager:GetSecretValue", "secretsmanager:*", "*"}


@pytest.fixture(scope="module")
def synth() -> tuple[SlurmScheduler, dict]:
    stack, cluster = cluster_stack("trn2.48xlarge", file_system=FileSystemStandIn())
    scheduler = SlurmScheduler(stack, "Slurm", cluster=cluster)
    return scheduler, Template.from_stack(stack).to_json()


def _logical_id(template: dict, type_: str, prefix: str) -> str:
    [found] = [
        k for k, v in template["Resources"].items() if v["Type"] == type_ and k.startswith(prefix)
    ]
    return found


def _roles_that_read(template: dict, secret: str) -> set[str]:
    roles: set[str] = set()
    for resource in template["Resources"].values():
        if resource["Type"] not in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
            continue
        for statement in resource["Properties"]["PolicyDocument"]["Statement"]:
            actions = statement.get("Action", [])
            actions = {actions} if isinstance(actions, str) else set(actions)
            if statement["Effect"] != "Allow" or not actions & READS:
                continue
            resources = json.dumps(statement.get("Resource"))
            if secret in resources or '"*"' in resources:
                roles |= {r["Ref"] for r in resource["Properties"].get("Roles", [])}
    return roles


def test_only_the_controller_and_node_roles_read_the_munge_secret(synth):
    _, template = synth
    secret = _logical_id(template, "AWS::SecretsManager::Secret", "SlurmAuthKey")
    readers = _roles_that_read(template, secret)
    controller = _logical_id(template, "AWS::IAM::Role", "SlurmControllerRole")
    node = _logical_id(template, "AWS::IAM::Role", "ClusterNodeRole")
    assert readers == {controller, node}


def test_the_roles_that_read_it_are_assumed_by_ec2_only(synth):
    _, template = synth
    secret = _logical_id(template, "AWS::SecretsManager::Secret", "SlurmAuthKey")
    for role in _roles_that_read(template, secret):
        trust = template["Resources"][role]["Properties"]["AssumeRolePolicyDocument"]
        principals = [s["Principal"] for s in trust["Statement"]]
        assert principals == [{"Service": "ec2.amazonaws.com"}], role


def test_the_secret_has_no_resource_policy_that_widens_it(synth):
    _, template = synth
    assert not [
        r
        for r in template["Resources"].values()
        if r["Type"] == "AWS::SecretsManager::ResourcePolicy"
    ]


def _function(script: str, name: str) -> str:
    return script.split(f"\n{name}() {{\n", 1)[1].split("\n}\n", 1)[0]


@pytest.mark.parametrize("role", ["node", "controller"])
def test_both_boots_close_instance_metadata_before_reading_the_key(role):
    # The boot as its bundle ships it (the user data only launches the bundle's entry script).
    files = bundle_files(role)
    assert "imds_guard.sh" in files
    script = files[ENTRY_SCRIPTS[role]].read_text()
    boot = _function(script, "boot")
    # The node reads the key when it starts slurmd; the controller before it starts slurmctld.
    reads_key = "fetch_munge_key" if role == "controller" else "start_slurmd"
    if role == "node":
        assert "fetch_munge_key" in _function(script, "start_slurmd")
        assert "fetch_munge_key" not in boot
    assert re.search(r"\bguard_imds\b[^\n]*\|\| fail ", boot)
    assert boot.index("guard_imds") < boot.index(reads_key)
