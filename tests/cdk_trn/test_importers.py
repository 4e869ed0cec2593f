"""A second app attaches a new cluster to a network and a file system another app created.

Everything is imported by attributes: the synth makes no lookup (no missing context) and no AWS
call, and the nodes mount the imported file system through an ingress rule the cluster's stack
owns on the imported security group.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import aws_cdk as cdk
import pytest
from aws_cdk.assertions import Match, Template

from cdk_trn.cluster import TrainiumCluster
from cdk_trn.errors import CdkTrnError
from cdk_trn.network import TrainingNetwork
from cdk_trn.storage import TrainingFileSystem

VPC_ID = "vpc-0a1b2c3d4e5f60718"
SUBNET_ID = "subnet-0a1b2c3d4e5f60718"
FS_ID = "fs-0a1b2c3d4e5f60718"
FS_DNS = "fs-0a1b2c3d4e5f60718.fsx.us-east-2.amazonaws.com"
FS_MOUNT_NAME = "abcdef12"
FS_SG = "sg-0a1b2c3d4e5f60718"


def second_app(*, efa_enabled: bool = False, mount_path: str = "/lustre") -> dict[str, Any]:
    app = cdk.App()
    stack = cdk.Stack(app, "SecondApp", env=cdk.Environment(region="us-east-2"))
    network = TrainingNetwork.from_attributes(
        stack,
        "Network",
        vpc_id=VPC_ID,
        subnet_id=SUBNET_ID,
        availability_zone="use2-az3",
        route_table_id="rtb-0a1b2c3d4e5f60718",
    )
    file_system = TrainingFileSystem.from_attributes(
        stack,
        "FileSystem",
        file_system_id=FS_ID,
        dns_name=FS_DNS,
        mount_name=FS_MOUNT_NAME,
        security_group_id=FS_SG,
        mount_path=mount_path,
        efa_enabled=efa_enabled,
    )
    cluster = TrainiumCluster(stack, "Cluster", network=network, file_system=file_system)
    template = Template.from_stack(stack)
    return {"assembly": app.synth(), "cluster": cluster, "template": template, "stack": stack}


@pytest.fixture(scope="module")
def imported():
    return second_app()


def boot_variables(template: Template) -> dict[str, str]:
    """The ``NAME=value`` header of the node user data, values unquoted as the shell would."""
    (launch_template,) = template.find_resources("AWS::EC2::LaunchTemplate").values()
    user_data = launch_template["Properties"]["LaunchTemplateData"]["UserData"]["Fn::Base64"]
    if isinstance(user_data, dict):  # Fn::Join around the stack's tokens
        user_data = "".join(p for p in user_data["Fn::Join"][1] if isinstance(p, str))
    variables = {}
    for line in user_data.splitlines():
        name, sep, value = line.partition("=")
        if sep and name.startswith("CDK_TRN_FSX_"):
            variables[name] = " ".join(shlex.split(value))
    return variables


def test_the_second_app_synthesizes_without_lookups(imported):
    manifest = json.loads((Path(imported["assembly"].directory) / "manifest.json").read_text())
    assert "missing" not in manifest
    # Nothing of the imported network or file system is created again.
    template = imported["template"]
    for kind in ("AWS::EC2::VPC", "AWS::EC2::Subnet", "AWS::FSx::FileSystem"):
        assert template.find_resources(kind) == {}
    template.has_resource_properties(
        "AWS::AutoScaling::AutoScalingGroup", {"VPCZoneIdentifier": [SUBNET_ID]}
    )


def test_nodes_mount_the_imported_file_system(imported):
    assert boot_variables(imported["template"]) == {
        "CDK_TRN_FSX_DNS": FS_DNS,
        "CDK_TRN_FSX_MOUNT_NAME": FS_MOUNT_NAME,
        "CDK_TRN_FSX_MOUNT_PATH": "/lustre",
        "CDK_TRN_FSX_EFA": "0",
    }
    assert imported["cluster"].compile_cache_path == "/lustre/neuron-compile-cache"


def test_the_cluster_stack_opens_the_lustre_ports_on_the_imported_group(imported):
    stack, template = imported["stack"], imported["template"]
    nodes_group = stack.resolve(imported["cluster"].security_group.security_group_id)
    into_fsx = {
        (r["Properties"]["IpProtocol"], r["Properties"]["FromPort"], r["Properties"]["ToPort"])
        for r in template.find_resources("AWS::EC2::SecurityGroupIngress").values()
        if r["Properties"]["GroupId"] == FS_SG
        and r["Properties"]["SourceSecurityGroupId"] == nodes_group
    }
    assert into_fsx == {("tcp", 988, 988), ("tcp", 1018, 1023)}
    # The nodes' side: out to the file system and back in from it, on the Lustre ports.
    for kind, peer in (
        ("AWS::EC2::SecurityGroupEgress", "DestinationSecurityGroupId"),
        ("AWS::EC2::SecurityGroupIngress", "SourceSecurityGroupId"),
    ):
        ports = {
            (r["Properties"]["FromPort"], r["Properties"]["ToPort"])
            for r in template.find_resources(kind).values()
            if r["Properties"]["GroupId"] == nodes_group and r["Properties"].get(peer) == FS_SG
        }
        assert ports == {(988, 988), (1018, 1023)}, kind


def test_an_efa_file_system_admits_all_traffic_from_the_nodes():
    under_test = second_app(efa_enabled=True)
    nodes_group = under_test["stack"].resolve(
        under_test["cluster"].security_group.security_group_id
    )
    rules = [
        r["Properties"]
        for r in under_test["template"].find_resources("AWS::EC2::SecurityGroupIngress").values()
        if r["Properties"]["GroupId"] == FS_SG
    ]
    assert rules == [
        {
            "GroupId": FS_SG,
            "SourceSecurityGroupId": nodes_group,
            "IpProtocol": "-1",
            "Description": "Lustre clients to FSx ALL TRAFFIC",
        }
    ]
    assert boot_variables(under_test["template"])["CDK_TRN_FSX_EFA"] == "1"


@pytest.mark.parametrize(
    ("props", "message"),
    [
        ({"vpc_id": "vpc-12"}, "vpc_id must be an id such as 'vpc-"),
        ({"subnet_id": "sn-0a1b2c3d"}, "subnet_id must be an id such as 'subnet-"),
        ({"route_table_id": "rtb-xyz"}, "route_table_id must be an id such as 'rtb-"),
        ({"availability_zone": "usw2-az1"}, "availability_zone must be an Availability Zone of"),
        ({"availability_zone": "somewhere"}, "availability_zone must be an Availability Zone id"),
        ({"vpc_cidr_block": "10.64.0.1/16"}, "vpc_cidr_block must be an IPv4 CIDR"),
    ],
)
def test_bad_network_attributes_are_refused(props, message):
    stack = cdk.Stack(cdk.App(), "Bad", env=cdk.Environment(region="us-east-2"))
    attributes = {"vpc_id": VPC_ID, "subnet_id": SUBNET_ID, "availability_zone": "use2-az3"}
    with pytest.raises(CdkTrnError, match=message):
        TrainingNetwork.from_attributes(stack, "Network", **{**attributes, **props})
    assert stack.node.try_find_child("Network") is None


def _deploy_time_egress(template: Template) -> list[dict[str, Any]]:
    groups = template.find_resources(
        "AWS::EC2::SecurityGroup",
        {"Properties": {"GroupDescription": Match.string_like_regexp("deploy-time functions")}},
    )
    ((group_id, group),) = groups.items()
    separate = template.find_resources(
        "AWS::EC2::SecurityGroupEgress",
        {"Properties": {"GroupId": {"Fn::GetAtt": [group_id, "GroupId"]}}},
    )
    return [
        *group["Properties"]["SecurityGroupEgress"],
        *(r["Properties"] for r in separate.values()),
    ]


def test_deploy_time_functions_of_an_imported_network_without_its_cidr_allow_https_anywhere(
    imported,
):
    # The preflight runs in the imported subnet; the VPC's range is unknown.
    egress = _deploy_time_egress(imported["template"])
    assert [(e.get("CidrIp"), e["FromPort"]) for e in egress][0] == ("0.0.0.0/0", 443)
    assert "DestinationPrefixListId" in egress[1]


def test_deploy_time_functions_of_an_imported_network_with_its_cidr_reach_only_that_range():
    stack = cdk.Stack(cdk.App(), "WithCidr", env=cdk.Environment(region="us-east-2"))
    network = TrainingNetwork.from_attributes(
        stack,
        "Network",
        vpc_id=VPC_ID,
        subnet_id=SUBNET_ID,
        availability_zone="use2-az3",
        vpc_cidr_block="10.1.0.0/16",
    )
    TrainiumCluster(stack, "Cluster", network=network)
    egress = _deploy_time_egress(Template.from_stack(stack))
    assert [(e.get("CidrIp"), e["FromPort"], e["ToPort"]) for e in egress][0] == (
        "10.1.0.0/16",
        443,
        443,
    )
    assert len(egress) == 2


def test_an_availability_zone_name_is_accepted():
    stack = cdk.Stack(cdk.App(), "Named", env=cdk.Environment(region="us-east-2"))
    network = TrainingNetwork.from_attributes(
        stack, "Network", vpc_id=VPC_ID, subnet_id=SUBNET_ID, availability_zone="us-east-2b"
    )
    assert network.availability_zone == "us-east-2b"
    assert network.subnet.availability_zone == "us-east-2b"
    assert list(network.endpoints) == []


@pytest.mark.parametrize(
    ("props", "message"),
    [
        ({"file_system_id": "fsx-1"}, "file_system_id must be an id fs-"),
        ({"security_group_id": "sg-1"}, "security_group_id must be an id sg-"),
        ({"mount_name": "Bad Name"}, "mount_name must be the Lustre mount name"),
        ({"dns_name": "fs.example.com; reboot"}, "dns_name must be the file system's DNS name"),
        ({"mount_path": "relative"}, "mount_path must be an absolute directory"),
        ({"efa_enabled": "yes"}, "efa_enabled must be True or False"),
    ],
)
def test_bad_file_system_attributes_are_refused(props, message):
    stack = cdk.Stack(cdk.App(), "Bad", env=cdk.Environment(region="us-east-2"))
    attributes = {
        "file_system_id": FS_ID,
        "dns_name": FS_DNS,
        "mount_name": FS_MOUNT_NAME,
        "security_group_id": FS_SG,
    }
    with pytest.raises(CdkTrnError, match=message):
        TrainingFileSystem.from_attributes(stack, "FileSystem", **{**attributes, **props})
    assert stack.node.try_find_child("FileSystem") is None
