"""Every option of docs/configuration.md's "Context keys of the default app" table synthesizes
clean with a valid non-default value (an opt-in that needs an acknowledgment carries one naming
the opt-in), and every invalid value is refused with a message: exit 2, no traceback.

A synth with all five packs takes 20-40 s here, so four contexts together cover every key, each
in a combination the README shows; invalid values go to the parser without a synth.
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import aws_cdk as cdk
import pytest
from aws_cdk.assertions import Template

from cdk_trn.compliance import DEFAULT_PACKS, enable_compliance, synth_checked
from cdk_trn.errors import CdkTrnError
from stacks import build_default_app
from stacks.config import AppConfig

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "docs" / "configuration.md").read_text()

RESERVATION = "cr-0123456789abcdef0"
#: Four contexts that together give every key of the table a non-default value.
CONTEXTS = {
    # The opt-ins that need acknowledgments, on another OS and file system size.
    "egress-efa": {
        "prefix": "team-a",
        "natEgress": "true",
        "fsxEfa": "true",
        "nodeOs": "ubuntu-24.04",
        "fsxCapacityGiB": "9600",
        "fsxThroughput": "250",
        "idleScaleInMinutes": "45",
    },
    # README: `-c nodes=8 -c capacity=capacity-block -c reservationId=cr-…`.
    "capacity-block": {
        "nodes": "8",
        "capacity": "capacity-block",
        "reservationId": RESERVATION,
        "instanceType": "trn1.32xlarge",
        "amiId": "ami-0123456789abcdef0",
        "acceptance": "false",
        "scheduler": "none",
    },
    # README and issue: several UltraServer blocks targeted together.
    "ultraservers": {
        "instanceType": "trn2u.48xlarge",
        "capacity": "ultraserver-block",
        "reservationIds": f"{RESERVATION},cr-0123456789abcdef1",
        "nodes": "8",
        "enclaveVault": "false",
        "compliancePacks": "AwsSolutions,TrainiumChecks",
        # A block's price is known only when bought: the team gives it.
        "hourlyPrice": "40.5",
        "idleAlarmHours": "24",
        "alarmEmail": "ops@example.com",
    },
    # Another region, by AZ id, on a reservation.
    "other-region": {
        "region": "ap-south-2",
        "availabilityZone": "aps2-az1",
        "capacity": "reservation",
        "reservationId": RESERVATION,
        "dashboard": "false",
        # An image the team pushed: the scheduler, jobs and the acceptance run use it.
        "trainingImage": "123456789012.dkr.ecr.ap-south-2.amazonaws.com/team/trn-train:v1",
        # An existing VPC: TrainingNetwork.from_attributes, no lookup at synth.
        "vpcId": "vpc-0123456789abcdef0",
        "subnetId": "subnet-0123456789abcdef0",
        "vpcCidrBlock": "10.20.0.0/16",
    },
}


def readme_table_keys() -> set[str]:
    section = README.split("## Context keys of the default app", 1)[1].split("\n## ", 1)[0]
    keys: set[str] = set()
    for row in re.findall(r"^\| (`[^|]+`) \|", section, re.M):
        keys.update(re.findall(r"`([A-Za-z]+)`", row))
    return keys


def test_the_contexts_cover_every_key_of_the_readme_table():
    keys = readme_table_keys()
    assert {"prefix", "fsxEfa", "natEgress", "scheduler", "reservationIds"} <= keys
    covered = {key for context in CONTEXTS.values() for key in context}
    assert keys <= covered, keys - covered


@functools.cache
def synthesize(name: str):
    app = cdk.App(context=CONTEXTS[name])
    enable_compliance(app, app.node.try_get_context("compliancePacks") or DEFAULT_PACKS)
    default = build_default_app(app)
    return default, synth_checked(app), app.synth()


@pytest.mark.parametrize("name", list(CONTEXTS))
def test_options_synthesize_clean(name):
    default, report, _ = synthesize(name)
    assert report.unacknowledged == []
    assert all(len(f.reason or "") >= 40 for f in report.acknowledged)
    if name == "ultraservers":
        assert set(report.packs) == {"AwsSolutions", "TrainiumChecks"}
        assert default.vault_stack is None
    if name == "capacity-block":
        assert default.cluster_stack.scheduler is None
        assert default.cluster_stack.acceptance is None
    if name == "other-region":
        assert default.cluster_stack.region == "ap-south-2"
        storage = Template.from_stack(default.storage_stack)
        storage.resource_count_is("AWS::EC2::VPC", 0)
        storage.resource_count_is("AWS::EC2::VPCEndpoint", 0)
        assert default.cluster.subnet.subnet_id == "subnet-0123456789abcdef0"


@pytest.fixture
def egress_efa():
    return synthesize("egress-efa")


def test_fsx_efa_all_traffic_rules_are_acknowledged_naming_the_opt_in(egress_efa):
    _, report, _ = egress_efa
    efa = [
        f
        for f in report.acknowledged
        if f.rule_id.endswith("EC2RestrictedCommonPorts") and "FileSystem" in f.path
    ]
    # The file system's self rule and the two rules per client group (nodes, controller); the
    # nodes' own EFA self rule is acknowledged by the cluster with its own reason.
    assert {f.path.split("/")[0] for f in efa} == {"team-a-storage", "team-a-cluster"}
    assert len({f.path for f in efa}) == 5
    assert all("fsxEfa" in (f.reason or "") for f in efa)


def test_nat_egress_route_is_acknowledged_and_no_subnet_hands_out_public_ips(egress_efa):
    default, report, assembly = egress_efa
    igw = [f for f in report.acknowledged if f.rule_id.endswith("VPCNoUnrestrictedRouteToIGW")]
    assert igw and all("natEgress" in (f.reason or "") for f in igw)
    assert not [f for f in report.findings if "AutoAssignPublicIp" in f.rule_id]
    storage = assembly.get_stack_by_name(default.storage_stack.stack_name).template
    subnets = [r for r in storage["Resources"].values() if r["Type"] == "AWS::EC2::Subnet"]
    assert len(subnets) == 2
    assert all(s["Properties"].get("MapPublicIpOnLaunch") is False for s in subnets)
    assert any(r["Type"] == "AWS::EC2::NatGateway" for r in storage["Resources"].values())


INVALID = [
    ({"prefix": "Bad_Prefix"}, "prefix must be 1-31 lower-case"),
    ({"prefix": "a" * 32}, "prefix must be"),
    ({"prefix": "trn-"}, "prefix must be"),
    ({"region": "mars"}, "region must be an AWS Region name"),
    ({"availabilityZone": "nowhere"}, "availability_zone must be an Availability Zone id"),
    ({"availabilityZone": "use1-az1"}, "availability_zone must be an Availability Zone of"),
    ({"instanceType": "m5.large"}, "instance_type must be one of"),
    ({"instanceType": "trn2.3xlarge"}, "offered in the stack's region"),
    ({"nodes": "0"}, "nodes must be an integer from 1"),
    ({"nodes": "many"}, "nodes must be an integer, got 'many'"),
    ({"capacity": "spot"}, "capacity must be one of"),
    ({"capacity": "reservation"}, "reservationId must be a reservation id"),
    ({"reservationId": RESERVATION}, "reservationId must be unset with capacity 'on-demand'"),
    ({"capacity": "reservation", "reservationId": "bogus"}, "reservation_id must be"),
    ({"reservationIds": "cr-a,cr-b"}, "reservationIds must be set only with capacity"),
    ({"nodeOs": "windows"}, "nodeOs must be one of"),
    ({"amiId": "ami-x'$(id)'"}, "ami_id must be an AMI id"),
    ({"natEgress": "yes"}, "natEgress must be true or false"),
    ({"fsxCapacityGiB": "100"}, "storage_capacity_gib must be"),
    ({"fsxThroughput": "7"}, "per_unit_storage_throughput must be"),
    ({"fsxEfa": "1"}, "fsxEfa must be true or false"),
    ({"acceptance": "maybe"}, "acceptance must be true or false"),
    ({"enclaveVault": "no"}, "enclaveVault must be true or false"),
    ({"scheduler": "pbs"}, "scheduler must be slurm or none"),
    (
        {"trainingImage": "/no/such/dir"},
        "trainingImage must be a directory containing a Dockerfile",
    ),
    ({"compliancePacks": "Nope"}, "packs must be names among"),
    ({"alarmEmail": "ops at example"}, "alarm_email must be an email address"),
    ({"vpcId": "vpc-0123456789abcdef0"}, "subnetId must be given with vpcId"),
    ({"subnetId": "subnet-0123456789abcdef0"}, "vpcId must be given with subnetId"),
    ({"vpcCidrBlock": "10.0.0.0/16"}, "vpcCidrBlock must be set only with vpcId"),
    (
        {"vpcId": "vpc-0123456789abcdef0", "subnetId": "subnet-1", "natEgress": "true"},
        "natEgress must be false with vpcId",
    ),
    ({"vpcId": "vpc-1", "subnetId": "subnet-0123456789abcdef0"}, "Network: vpc_id must be an id"),
]


@pytest.mark.parametrize(("context", "message"), INVALID, ids=[str(c) for c, _ in INVALID])
def test_invalid_value_is_refused_before_any_synth(context, message):
    app = cdk.App(context=context)
    with pytest.raises(CdkTrnError, match=re.escape(message)):
        enable_compliance(app, app.node.try_get_context("compliancePacks") or DEFAULT_PACKS)
        build_default_app(app)


def test_valid_prefix_and_region_parse():
    app = cdk.App(context={"prefix": "team-a2", "region": "ap-southeast-4"})
    config = AppConfig.from_context(app.node)
    assert (config.prefix, config.region) == ("team-a2", "ap-southeast-4")


def test_app_with_a_bad_prefix_exits_2_with_a_message_and_no_traceback(tmp_path):
    env = {
        **os.environ,
        "CDK_CONTEXT_JSON": json.dumps({"prefix": "Bad_Prefix"}),
        "CDK_OUTDIR": str(tmp_path),
        "PYTHONPATH": str(ROOT),
    }
    result = subprocess.run(
        [sys.executable, str(ROOT / "app.py")], env=env, capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 2, result.stderr
    assert "cdk-trn: invalid configuration: prefix must be" in result.stderr
    assert "Bad_Prefix" in result.stderr
    assert "Traceback" not in result.stderr
