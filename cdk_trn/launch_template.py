"""The node launch template: every network card wired with EFA, IMDSv2, encrypted root volume.

The aws-cdk-lib L2 ``LaunchTemplate`` cannot express several network cards or ``efa-only``
interfaces, so this module writes the L1 ``CfnLaunchTemplate`` behind two small typed functions:
``efa_network_interfaces`` (pure data, derived from the catalog) and ``node_launch_template``.

Interface layout (EC2 user guide, efa-acc-inst-types.html; FACTS.md "EFA"):
card 0 carries the primary ENA ``interface`` at device 0 and an ``efa-only`` interface at
device 1; every other card carries one ``efa-only`` interface at device 0 (the guide: "for each
additional network interface, use the next unused network card index, device index 0, for
EFA-only network interface, and/or device index 1 for ENA network interface"; the EKS user
guide's EFA node classes do the same; ParallelCluster 3.15 uses device 1 on cards that allow two
interfaces, which EC2 accepts too: the index only has to be unique per card). ``efa-only``
interfaces take no IP address, so exactly one interface per node has one. The legacy layout
(``efa`` = EFA with ENA on every card, each with an IP, device 1 beyond card 0 as for any ENA
interface) is an option, not the default.
Subnets are not set on the interfaces: the Auto Scaling group places them in its subnet.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Any

import aws_cdk as cdk
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_kms as kms
from aws_cdk import aws_resourcegroups as resourcegroups
from constructs import Construct

from cdk_trn.capacity import Capacity
from cdk_trn.catalog import InstanceSpec
from cdk_trn.compliance import silence_cfn_lint
from cdk_trn.errors import CdkTrnError
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
        return props

    if not spec.has_efa:
        # One interface may carry the flag; EC2 rejects AssociatePublicIpAddress on launches with
        # several interfaces, where the subnet (MapPublicIpOnLaunch false) decides instead.
        return [{**interface(0, 0, None), "AssociatePublicIpAddress": False}]
    if spec.max_interfaces_per_card < 2:
        raise CdkTrnError(
            f"{spec.instance_type} allows {spec.max_interfaces_per_card} interface per network "
            "card; the EFA layout needs 2 (ENA primary and efa-only on card 0)"
        )
    if mode is EfaInterfaceMode.LEGACY_EFA:
        return [interface(card, 0 if card == 0 else 1, "efa") for card in range(spec.network_cards)]
    interfaces = [interface(0, 0, None), interface(0, 1, "efa-only")]
    interfaces += [interface(card, 0, "efa-only") for card in range(1, spec.network_cards)]
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
    encryption_key: kms.IKey | None = None,
) -> ec2.CfnLaunchTemplate:
    """Write the node launch template. ``user_data`` is the raw script (base64 is applied here).

    Typed L1 properties, not raw overrides, so that property-reading tools (cdk-nag's rules,
    aspects) see the encryption and IMDS settings.
    """
    lt = ec2.CfnLaunchTemplate
    target: ec2.CfnLaunchTemplate.CapacityReservationTargetProperty | None = None
    if capacity.targets_reservation_group:
        group = capacity_reservation_group(
            scope,
            f"{id}ReservationGroup",
            capacity.reservation_ids,
            instance_type=spec.instance_type,
        )
        target = lt.CapacityReservationTargetProperty(
            capacity_reservation_resource_group_arn=group.attr_arn
        )
    elif capacity.reservation_id is not None:
        target = lt.CapacityReservationTargetProperty(
            capacity_reservation_id=capacity.reservation_id
        )
    tag_list = [cdk.CfnTag(key=k, value=v) for k, v in sorted(tags.items())]
    data = lt.LaunchTemplateDataProperty(
        image_id=image_id,
        instance_type=spec.instance_type,
        iam_instance_profile=lt.IamInstanceProfileProperty(arn=instance_profile_arn),
        metadata_options=lt.MetadataOptionsProperty(
            http_endpoint="enabled",
            http_tokens="required",
            # One hop: containers on a docker bridge cannot borrow the node role (the vault
            # trusts that role's identity); cdk-trn runs its containers with host networking.
            http_put_response_hop_limit=1,
        ),
        monitoring=lt.MonitoringProperty(enabled=True),
        ebs_optimized=True,
        block_device_mappings=[
            lt.BlockDeviceMappingProperty(
                device_name=ROOT_DEVICE[node_os],
                ebs=lt.EbsProperty(
                    volume_size=root_volume_gib,
                    volume_type="gp3",
                    iops=3000,
                    throughput=250,
                    encrypted=True,
                    delete_on_termination=True,
                    kms_key_id=encryption_key.key_arn if encryption_key is not None else None,
                ),
            )
        ],
        network_interfaces=[
            lt.NetworkInterfaceProperty(**{_SNAKE[k]: v for k, v in interface.items()})
            for interface in efa_network_interfaces(spec, security_group_ids, mode=interface_mode)
        ],
        user_data=cdk.Fn.base64(user_data),
        tag_specifications=[
            lt.TagSpecificationProperty(resource_type=kind, tags=tag_list)
            for kind in ("instance", "volume", "network-interface")
        ],
        capacity_reservation_specification=lt.CapacityReservationSpecificationProperty(
            capacity_reservation_target=target
        )
        if target is not None
        else None,
        instance_market_options=lt.InstanceMarketOptionsProperty(market_type="capacity-block")
        if capacity.is_block
        else None,
    )
    template = ec2.CfnLaunchTemplate(scope, id, launch_template_data=data)
    if not spec.regions_confirmed:
        # cfn-lint judges instance types by the EC2 pricing data, which does not list types sold
        # only as Capacity Blocks (trn2u.48xlarge) or not yet in it (trn2.3xlarge). The type is
        # real; the check is silenced for this one resource and says why.
        silence_cfn_lint(
            template,
            "E3628",
            f"{spec.instance_type} is absent from the EC2 pricing data cfn-lint uses",
        )
    return template


def capacity_reservation_group(
    scope: Construct, id: str, reservation_ids: Sequence[str], *, instance_type: str
) -> resourcegroups.CfnGroup:
    """A Capacity Reservation resource group holding the UltraServer capacity blocks
    ``reservation_ids``, so that one launch template targets them together.

    The configuration is the one EC2 documents for UltraServer Capacity Blocks (EC2 user guide,
    cb-group.html; Resource Groups user guide, about-slg-types.html): the
    ``CapacityReservationPool`` item (a launch target) with the parameters ``instance-type`` and
    ``reservation-type = capacity-block``, and ``allowed-resource-types`` admitting only Capacity
    Reservations. Capacity Blocks cannot be added to a group without those two parameters (the
    On-Demand form), and a group with them cannot be changed after creation: a change of
    instance type makes CloudFormation replace the group (``Configuration`` is set once here,
    the group's name follows its path)."""
    stack = cdk.Stack.of(scope)
    group = resourcegroups.CfnGroup(
        scope,
        id,
        name="placeholder",  # set below, from the group's own path
        description="cdk-trn capacity blocks the nodes launch into",  # no colon (E3031)
        configuration=capacity_block_group_configuration(instance_type),
        resources=[
            stack.format_arn(service="ec2", resource="capacity-reservation", resource_name=rid)
            for rid in reservation_ids
        ],
    )
    # Group names are unique per account and region: stack name, path and a hash.
    group.name = cdk.Names.unique_resource_name(group, max_length=128, separator="-")
    return group


def reservation_group_of(launch_template: ec2.CfnLaunchTemplate) -> resourcegroups.CfnGroup | None:
    """The resource group ``node_launch_template`` made for ``launch_template``, if any."""
    scope = launch_template.node.scope
    if scope is None:
        return None
    child = scope.node.try_find_child(f"{launch_template.node.id}ReservationGroup")
    return child if isinstance(child, resourcegroups.CfnGroup) else None


def capacity_block_group_configuration(
    instance_type: str,
) -> list[resourcegroups.CfnGroup.ConfigurationItemProperty]:
    """The two configuration items of a Capacity Reservation resource group for Capacity
    Blocks of ``instance_type`` (see ``capacity_reservation_group``)."""
    item = resourcegroups.CfnGroup.ConfigurationItemProperty
    parameter = resourcegroups.CfnGroup.ConfigurationParameterProperty
    return [
        item(
            type="AWS::EC2::CapacityReservationPool",
            parameters=[
                parameter(name="instance-type", values=[instance_type]),
                parameter(name="reservation-type", values=["capacity-block"]),
            ],
        ),
        item(
            type="AWS::ResourceGroups::Generic",
            parameters=[
                parameter(name="allowed-resource-types", values=["AWS::EC2::CapacityReservation"])
            ],
        ),
    ]


_SNAKE = {
    "NetworkCardIndex": "network_card_index",
    "DeviceIndex": "device_index",
    "Groups": "groups",
    "DeleteOnTermination": "delete_on_termination",
    "InterfaceType": "interface_type",
    "AssociatePublicIpAddress": "associate_public_ip_address",
}
