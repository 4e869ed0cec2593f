"""CloudFormation resources for the TrainiumChecks tests, as plain dicts.

The same dicts serve the pure rule tests (as a template) and the pack tests (as generic
``cdk.CfnResource`` children of a stack: a stack's direct children keep their construct id as
logical id, so the ``Ref``s below hold in both).
"""

from __future__ import annotations

import copy
from typing import Any

Resources = dict[str, dict[str, Any]]

VPC_ID = "vpc-0123456789abcdef0"
AMI_ID = "ami-0123456789abcdef0"
PCR0 = "a" * 96


def group_id(logical_id: str) -> dict[str, Any]:
    return {"Fn::GetAtt": [logical_id, "GroupId"]}


def efa_security_group(name: str, *, ingress: bool = True, egress: bool = True) -> Resources:
    resources: Resources = {
        name: {
            "Type": "AWS::EC2::SecurityGroup",
            "Properties": {"GroupDescription": "EFA traffic between nodes", "VpcId": VPC_ID},
        }
    }
    if ingress:
        resources[f"{name}SelfIn"] = {
            "Type": "AWS::EC2::SecurityGroupIngress",
            "Properties": {
                "GroupId": group_id(name),
                "SourceSecurityGroupId": group_id(name),
                "IpProtocol": "-1",
                "Description": "EFA from the group itself",
            },
        }
    if egress:
        resources[f"{name}SelfOut"] = {
            "Type": "AWS::EC2::SecurityGroupEgress",
            "Properties": {
                "GroupId": group_id(name),
                "DestinationSecurityGroupId": group_id(name),
                "IpProtocol": "-1",
                "Description": "EFA to the group itself",
            },
        }
    return resources


def efa_interfaces(
    group: str, cards: int, *, kind: str = "efa-only", public_ip: bool = False
) -> list[dict[str, Any]]:
    groups = [group_id(group)]
    primary = {
        "NetworkCardIndex": 0,
        "DeviceIndex": 0,
        "Groups": groups,
        "AssociatePublicIpAddress": public_ip,
        "DeleteOnTermination": True,
    }
    return [primary] + [
        {"NetworkCardIndex": c, "DeviceIndex": 1, "Groups": groups, "InterfaceType": kind}
        for c in range(cards)
    ]


def launch_template_data(group: str, **overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "InstanceType": "trn2.48xlarge",
        "ImageId": AMI_ID,
        "MetadataOptions": {
            "HttpTokens": "required",
            "HttpEndpoint": "enabled",
            "HttpPutResponseHopLimit": 1,
        },
        "BlockDeviceMappings": [
            {"DeviceName": "/dev/xvda", "Ebs": {"Encrypted": True, "VolumeSize": 200}}
        ],
        "NetworkInterfaces": efa_interfaces(group, 16),
    }
    data.update(overrides)
    return data


def launch_template(group: str, **overrides: Any) -> dict[str, Any]:
    return {
        "Type": "AWS::EC2::LaunchTemplate",
        "Properties": {"LaunchTemplateData": launch_template_data(group, **overrides)},
    }


CAPACITY_BLOCK = {
    "InstanceMarketOptions": {"MarketType": "capacity-block"},
    "CapacityReservationSpecification": {
        "CapacityReservationTarget": {"CapacityReservationId": "cr-0123456789abcdef0"}
    },
}


def subnet(public: bool) -> dict[str, Any]:
    return {
        "Type": "AWS::EC2::Subnet",
        "Properties": {
            "VpcId": VPC_ID,
            "CidrBlock": "10.0.0.0/20",
            "MapPublicIpOnLaunch": public,
        },
    }


def auto_scaling_group(
    launch_template_id: str, subnet_id: str, placement_group: str | None = None
) -> dict[str, Any]:
    props: dict[str, Any] = {
        "MinSize": "2",
        "MaxSize": "2",
        "LaunchTemplate": {
            "LaunchTemplateId": {"Ref": launch_template_id},
            "Version": {"Fn::GetAtt": [launch_template_id, "LatestVersionNumber"]},
        },
        "VPCZoneIdentifier": [{"Ref": subnet_id}],
    }
    if placement_group:
        props["PlacementGroup"] = {"Ref": placement_group}
    return {"Type": "AWS::AutoScaling::AutoScalingGroup", "Properties": props}


def kms_key(policy_statements: list[dict[str, Any]], tags: list[dict[str, str]] | None = None):
    props: dict[str, Any] = {
        "EnableKeyRotation": True,
        "KeyPolicy": {"Version": "2012-10-17", "Statement": policy_statements},
    }
    if tags:
        props["Tags"] = tags
    return {"Type": "AWS::KMS::Key", "Properties": props}


ACCOUNT_ROOT = {"AWS": {"Fn::Join": ["", ["arn:aws:iam::", {"Ref": "AWS::AccountId"}, ":root"]]}}
HOST_ROLE = {"AWS": "arn:aws:iam::111111111111:role/enclave-host"}
ADMIN_STATEMENT = {
    "Effect": "Allow",
    "Principal": ACCOUNT_ROOT,
    "Action": ["kms:DescribeKey", "kms:PutKeyPolicy", "kms:ScheduleKeyDeletion"],
    "Resource": "*",
}
ATTESTED_ALLOW = {
    "Effect": "Allow",
    "Principal": HOST_ROLE,
    "Action": ["kms:Decrypt", "kms:GenerateDataKey"],
    "Resource": "*",
    "Condition": {"StringEqualsIgnoreCase": {"kms:RecipientAttestation:ImageSha384": PCR0}},
}
DENY_WITHOUT_ATTESTATION = {
    "Effect": "Deny",
    "Principal": {"AWS": "*"},
    "Action": ["kms:Decrypt", "kms:GenerateDataKey", "kms:GenerateDataKeyPair"],
    "Resource": "*",
    "Condition": {"Null": {"kms:RecipientAttestation:ImageSha384": "true"}},
}
ROOT_ALL = {"Effect": "Allow", "Principal": ACCOUNT_ROOT, "Action": "kms:*", "Resource": "*"}


def lustre(**lustre_overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "DeploymentType": "PERSISTENT_2",
        "PerUnitStorageThroughput": 500,
        "EfaEnabled": True,
        "MetadataConfiguration": {"Mode": "AUTOMATIC"},
    }
    config.update(lustre_overrides)
    config = {k: v for k, v in config.items() if v is not None}
    return {
        "Type": "AWS::FSx::FileSystem",
        "Properties": {
            "FileSystemType": "LUSTRE",
            "FileSystemTypeVersion": "2.15",
            "StorageCapacity": 4800,
            "SubnetIds": [{"Ref": "PrivateSubnet"}],
            "SecurityGroupIds": [group_id("EfaSg")],
            "KmsKeyId": {"Ref": "DataKey"},
            "LustreConfiguration": config,
        },
    }


def good_resources() -> Resources:
    """A small Trainium deployment that passes every TrainiumChecks rule."""
    resources: Resources = {}
    resources.update(efa_security_group("EfaSg"))
    resources["NodeLt"] = launch_template("EfaSg")
    resources["CbLt"] = launch_template("EfaSg", **CAPACITY_BLOCK)
    resources["PrivateSubnet"] = subnet(public=False)
    resources["Pg"] = {"Type": "AWS::EC2::PlacementGroup", "Properties": {"Strategy": "cluster"}}
    resources["Nodes"] = auto_scaling_group("NodeLt", "PrivateSubnet", placement_group="Pg")
    resources["CbNodes"] = auto_scaling_group("CbLt", "PrivateSubnet")
    resources["DataKey"] = kms_key([ROOT_ALL])
    resources["Fsx"] = lustre()
    resources["EnclaveKey"] = kms_key([ADMIN_STATEMENT, ATTESTED_ALLOW, DENY_WITHOUT_ATTESTATION])
    return copy.deepcopy(resources)


#: For each rule, the resources of one violation added to the good set and the logical id the
#: rule must fire on.
def bad_resources() -> dict[str, tuple[Resources, str]]:
    interfaces_15 = efa_interfaces("EfaSg", 16)[:-1]
    public_lt = launch_template("EfaSg")
    public_lt["Properties"]["LaunchTemplateData"]["NetworkInterfaces"] = efa_interfaces(
        "EfaSg", 16, public_ip=True
    )
    no_primary_setting = launch_template("EfaSg")
    del no_primary_setting["Properties"]["LaunchTemplateData"]["NetworkInterfaces"][0][
        "AssociatePublicIpAddress"
    ]
    return copy.deepcopy(
        {
            "TRN1": (
                {
                    **efa_security_group("HalfSg", egress=False),
                    "HalfSgLt": launch_template("HalfSg"),
                },
                "HalfSg",
            ),
            "TRN2": (
                {"MissingCardLt": launch_template("EfaSg", NetworkInterfaces=interfaces_15)},
                "MissingCardLt",
            ),
            "TRN3": (
                {
                    "TwoHopLt": launch_template(
                        "EfaSg",
                        MetadataOptions={"HttpTokens": "required", "HttpPutResponseHopLimit": 2},
                    )
                },
                "TwoHopLt",
            ),
            "TRN4": (
                {
                    "PlainEbsLt": launch_template(
                        "EfaSg",
                        BlockDeviceMappings=[
                            {"DeviceName": "/dev/xvda", "Ebs": {"VolumeSize": 200}}
                        ],
                    )
                },
                "PlainEbsLt",
            ),
            "TRN5": ({"PublicIpLt": public_lt}, "PublicIpLt"),
            "TRN5-subnet": (
                {
                    "PublicSubnet": subnet(public=True),
                    "UnsetLt": no_primary_setting,
                    "PublicNodes": auto_scaling_group("UnsetLt", "PublicSubnet"),
                },
                "PublicNodes",
            ),
            "TRN6": (
                {
                    "CbPlacedLt": launch_template(
                        "EfaSg", Placement={"GroupName": "pg-name"}, **CAPACITY_BLOCK
                    )
                },
                "CbPlacedLt",
            ),
            "TRN6-group": (
                {
                    "CbPlacedNodes": auto_scaling_group(
                        "CbLt", "PrivateSubnet", placement_group="Pg"
                    )
                },
                "CbPlacedNodes",
            ),
            "TRN7": (
                {
                    "ScratchFsx": lustre(
                        DeploymentType="SCRATCH_2",
                        EfaEnabled=None,
                        MetadataConfiguration=None,
                        PerUnitStorageThroughput=None,
                    )
                },
                "ScratchFsx",
            ),
            "TRN8": ({"NoMetadataFsx": lustre(MetadataConfiguration=None)}, "NoMetadataFsx"),
            "TRN9": (
                {"LeakyKey": kms_key([ROOT_ALL, ATTESTED_ALLOW, DENY_WITHOUT_ATTESTATION])},
                "LeakyKey",
            ),
        }
    )


def template(resources: Resources) -> dict[str, Any]:
    return {"AWSTemplateFormatVersion": "2010-09-09", "Resources": resources}
