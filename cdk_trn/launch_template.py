"""The node launch template: every network card wired with EFA, IMDSv2, encrypted root volume.

The aws-cdk-lib L2 ``LaunchTemplate`` cannot express several network cards or ``efa-only``
interfaces, so this module writes the L1 ``CfnLaunchTemplate`` behind two small typed functions:
``efa_network_interfaces`` (pure data, derived from the catalog) and ``node_launch_template``.

Interface layout (EC2 user guide, efa-acc-inst-types.html; FACTS.md "EFA"):
card 0 carries the primary ENA ``interface`` at device 0 and an ``efa-only`` interface at
device 1; every other card carries one ``efa-only`` interface at device 1. ``efa-only``
interfaces take no IP address, so exactly one interface per node has one. The legacy layout
(``efa`` = EFA with ENA on every card, each with an IP) is an option, not the default.
Subnets are not set on the interfaces: the Auto Scaling group places them in its subnet.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Any

import aws_cdk as cdk
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_kms as kms
from constructs import Construct

from cdk_trn.capacity import Capacity
from cdk_trn.catalog import InstanceSpec
from cdk_trn.machine_image import NodeOs


class EfaInterfaceMode(enum.Enum):
    #: ENA primary + ``efa-only`` on every card (current EC2 guidance; one IP per node).
    EFA_ONLY = "efa-only"
    #: ``efa`` (EFA with ENA) on every card, each with an IP (older recipes).
    LEGACY_EFA = "efa"


ROOT_DEVICE = {NodeOs.AMAZON_LINUX_2023: "/dev/xvda", NodeOs.UBUNTU_24_04: "/dev/sda1"}


def efa_network_interfaces(
    spec: InstanceSpec,
    security_group_ids: Sequence[str],
    *,
    mode: EfaInterfaceMode = EfaInterfaceMode.EFA_ONLY,
) -> list[dict[str, Any]]:
    """The launch template ``NetworkInterfaces`` for ``spec``, as CloudFormation properties."""
    groups = list(security_group_ids)

    def interface(card: int, device: int, kind: str | None) -> dict[str, Any]:
        props: dict[str, Any] = {
            "NetworkCardIndex": card,
            "DeviceIndex": device,
            "Groups": groups,
            "DeleteOnTermination": True,
        }
        if kind is not None:
            props["InterfaceType"] = kind
        if device == 0:
            props["AssociatePublicIpAddress"] = False
        return props

    if not spec.has_efa:
        return [interface(0, 0, None)]
    if mode is EfaInterfaceMode.LEGACY_EFA:
        return [interface(card, 0 if card == 0 else 1, "efa") for card in range(spec.network_cards)]
    interfaces = [interface(0, 0, None), interface(0, 1, "efa-only")]
    interfaces += [interface(card, 1, "efa-only") for card in range(1, spec.network_cards)]
    return interfaces


def node_launch_template(
    scope: Construct,
    id: str,
    *,
    spec: InstanceSpec,
    image_id: str,
    node_os: NodeOs,
    instance_profile_arn: str,
    security_group_ids: Sequence[str],
    user_data: str,
    capacity: Capacity,
    tags: dict[str, str],
    interface_mode: EfaInterfaceMode = EfaInterfaceMode.EFA_ONLY,
    root_volume_gib: int = 512,
    volume_key: kms.IKey | None = None,
) -> ec2.CfnLaunchTemplate:
    """Write the node launch template. ``user_data`` is the raw script (base64 is applied here)."""
    ebs: dict[str, Any] = {
        "VolumeSize": root_volume_gib,
        "VolumeType": "gp3",
        "Iops": 3000,
        "Throughput": 250,
        "Encrypted": True,
        "DeleteOnTermination": True,
    }
    if volume_key is not None:
        ebs["KmsKeyId"] = volume_key.key_arn
    tag_list = [{"Key": k, "Value": v} for k, v in sorted(tags.items())]
    data: dict[str, Any] = {
        "ImageId": image_id,
        "InstanceType": spec.instance_type,
        "IamInstanceProfile": {"Arn": instance_profile_arn},
        "MetadataOptions": {
            "HttpEndpoint": "enabled",
            "HttpTokens": "required",
            # 2 hops so containers on the node (docker bridge) can still reach IMDSv2.
            "HttpPutResponseHopLimit": 2,
        },
        "Monitoring": {"Enabled": True},
        "EbsOptimized": True,
        "BlockDeviceMappings": [{"DeviceName": ROOT_DEVICE[node_os], "Ebs": ebs}],
        "NetworkInterfaces": efa_network_interfaces(spec, security_group_ids, mode=interface_mode),
        "UserData": cdk.Fn.base64(user_data),
        "TagSpecifications": [
            {"ResourceType": kind, "Tags": tag_list}
            for kind in ("instance", "volume", "network-interface")
        ],
    }
    if capacity.reservation_id is not None:
        data["CapacityReservationSpecification"] = {
            "CapacityReservationTarget": {"CapacityReservationId": capacity.reservation_id}
        }
    if capacity.is_block:
        data["InstanceMarketOptions"] = {"MarketType": "capacity-block"}

    # Raw CloudFormation shape: the typed struct would need a nested property class per field.
    template = ec2.CfnLaunchTemplate(scope, id, launch_template_data={})
    template.add_property_override("LaunchTemplateData", data)
    if not spec.regions_confirmed:
        # cfn-lint judges instance types by the EC2 pricing data, which does not list types sold
        # only as Capacity Blocks (trn2u.48xlarge, trn2.3xlarge). The type is real; the check is
        # silenced for this one resource and says why.
        template.cfn_options.metadata = {
            "cfn-lint": {"config": {"ignore_checks": ["E3628"]}},
            "cdk-trn:acknowledged": {
                "E3628": f"{spec.instance_type} is sold only as Capacity Blocks and is absent "
                "from the EC2 pricing data cfn-lint uses"
            },
        }
    return template
