"""Node rules: IMDS hop limit 1 (TRN3), a declared root volume (TRN4), no public IP (TRN5),
capacity blocks without placement groups (TRN6) and the instance type's region (TRN10).

Every rule here looks only at Trainium nodes: a launch template, Auto Scaling group or instance
whose instance type is ``trn*`` (a launch template also counts when a group launching from it
names a ``trn*`` override). Anything else is NOT_APPLICABLE, so the pack adds nothing on an
ordinary app. No rule repeats one of the bundled cdk-nag packs: IMDSv2 itself is
``EC2IMDSv2Enabled`` and an explicitly unencrypted EBS mapping is ``AwsSolutions-EC26``.

IMDSv2 itself is cdk-nag's ``EC2IMDSv2Enabled`` (NIST, HIPAA, PCI), which follows an Auto Scaling
group to its launch template; TRN3 checks what that rule does not: the PUT response hop limit,
which decides whether a container on a docker bridge (one hop more) can fetch the node role's
credentials.
Sources: EC2 user guide configuring-IMDS-new-instances.html, capacity-blocks-using.html
(no placement group with a capacity block); FACTS.md "Capacity"; regions from cdk_trn.catalog.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from cdk_trn.catalog import INSTANCE_SPECS
from cdk_trn.compliance.rules import (
    COMPLIANT,
    NON_COMPLIANT,
    NOT_APPLICABLE,
    Compliance,
    Rule,
    TemplateResource,
    as_list,
    is_true,
    launch_template_data,
    launch_templates_of_group,
    literal_str,
)

LAUNCH_TEMPLATE = "AWS::EC2::LaunchTemplate"
AUTO_SCALING_GROUP = "AWS::AutoScaling::AutoScalingGroup"
INSTANCE = "AWS::EC2::Instance"


def _trainium_types(resource: TemplateResource) -> list[str]:
    if resource.type == LAUNCH_TEMPLATE:
        candidates = [launch_template_data(resource).get("InstanceType")]
    elif resource.type == INSTANCE:
        candidates = [resource.properties.get("InstanceType")]
    else:
        mixed = resource.properties.get("MixedInstancesPolicy") or {}
        overrides = as_list((mixed.get("LaunchTemplate") or {}).get("Overrides"))
        candidates = [o.get("InstanceType") for o in overrides if isinstance(o, Mapping)]
    names = [literal_str(c) for c in candidates]
    return [n for n in names if n is not None and n.startswith("trn")]


def is_trainium(resource: TemplateResource) -> bool:
    """Whether ``resource`` launches Trainium instances (its own type, or for a launch template,
    the overrides of a group launching from it; for a group, its launch templates' type)."""
    if _trainium_types(resource):
        return True
    if resource.type == LAUNCH_TEMPLATE:
        return any(
            _trainium_types(group)
            and any(t.logical_id == resource.logical_id for t in launch_templates_of_group(group))
            for group in resource.resources(AUTO_SCALING_GROUP)
        )
    if resource.type == AUTO_SCALING_GROUP:
        return any(_trainium_types(t) for t in launch_templates_of_group(resource))
    return False


def trainium_only(
    check: Callable[[TemplateResource], Compliance],
) -> Callable[[TemplateResource], Compliance]:
    """``check`` on Trainium nodes, NOT_APPLICABLE on everything else."""

    def checked(resource: TemplateResource) -> Compliance:
        return check(resource) if is_trainium(resource) else NOT_APPLICABLE

    checked.__doc__ = check.__doc__
    return checked


def launch_template_imds_hop_limit_one(launch_template: TemplateResource) -> Compliance:
    """TRN3: ``MetadataOptions.HttpPutResponseHopLimit`` is 1 (or the metadata endpoint is off).

    Unset means EC2's default, which is 1 only for some AMIs (AL2023 sets 2), so it must be stated.
    """
    options = launch_template_data(launch_template).get("MetadataOptions") or {}
    if options.get("HttpEndpoint") == "disabled":
        return COMPLIANT
    hop_limit = options.get("HttpPutResponseHopLimit")
    return COMPLIANT if hop_limit in (1, "1") else NON_COMPLIANT


def launch_template_root_volume_declared(launch_template: TemplateResource) -> Compliance:
    """TRN4: the launch template declares its EBS volumes, and none is left unencrypted by default.

    An explicit ``Encrypted: false`` is AwsSolutions-EC26's finding, not repeated here. What that
    rule does not see: a launch template with no EBS mapping at all, whose root volume then takes
    whatever encryption the AMI snapshot has, and a mapping that omits ``Encrypted``.
    """
    mappings = [
        m
        for m in as_list(launch_template_data(launch_template).get("BlockDeviceMappings"))
        if isinstance(m, Mapping)
    ]
    ebs = [m["Ebs"] for m in mappings if isinstance(m.get("Ebs"), Mapping)]
    if not ebs:
        return NON_COMPLIANT
    return COMPLIANT if all("Encrypted" in volume for volume in ebs) else NON_COMPLIANT


def _primary_interface_public_ip(launch_template: TemplateResource) -> bool | None:
    """The device-0 interface's explicit AssociatePublicIpAddress, ``None`` if unset."""
    for interface in as_list(launch_template_data(launch_template).get("NetworkInterfaces")):
        if not isinstance(interface, Mapping):
            continue
        if interface.get("NetworkCardIndex", 0) == 0 and interface.get("DeviceIndex", 0) == 0:
            value = interface.get("AssociatePublicIpAddress")
            return None if value is None else is_true(value)
    return None


def nodes_get_no_public_ip(resource: TemplateResource) -> Compliance:
    """TRN5: no interface asks for a public IP; a group's subnets do not hand one out."""
    if resource.type == LAUNCH_TEMPLATE:
        interfaces = as_list(launch_template_data(resource).get("NetworkInterfaces"))
        public = any(
            isinstance(i, Mapping) and is_true(i.get("AssociatePublicIpAddress"))
            for i in interfaces
        )
        return NON_COMPLIANT if public else COMPLIANT
    templates = launch_templates_of_group(resource)
    if templates and all(_primary_interface_public_ip(t) is False for t in templates):
        return COMPLIANT  # the interface setting overrides the subnet's MapPublicIpOnLaunch
    for subnet_ref in as_list(resource.properties.get("VPCZoneIdentifier")):
        subnet = resource.resolve(subnet_ref)
        if subnet is not None and is_true(subnet.properties.get("MapPublicIpOnLaunch")):
            return NON_COMPLIANT
    return COMPLIANT


def _is_capacity_block(launch_template: TemplateResource) -> bool:
    options = launch_template_data(launch_template).get("InstanceMarketOptions") or {}
    return options.get("MarketType") == "capacity-block"


def capacity_block_without_placement_group(resource: TemplateResource) -> Compliance:
    """TRN6: a capacity-block launch template is not combined with a placement group."""
    if resource.type == LAUNCH_TEMPLATE:
        if not _is_capacity_block(resource):
            return NOT_APPLICABLE
        placement = launch_template_data(resource).get("Placement") or {}
        grouped = placement.get("GroupName") or placement.get("GroupId")
        return NON_COMPLIANT if grouped else COMPLIANT
    if not any(_is_capacity_block(t) for t in launch_templates_of_group(resource)):
        return NOT_APPLICABLE
    return NON_COMPLIANT if resource.properties.get("PlacementGroup") else COMPLIANT


def instance_type_offered_in_region(resource: TemplateResource) -> Compliance:
    """TRN10: each Trainium type is in the catalog and offered in the stack's region."""
    types = _trainium_types(resource)
    if not types or resource.region is None:
        return NOT_APPLICABLE
    for name in types:
        spec = INSTANCE_SPECS.get(name)
        if spec is None or not spec.offered_in(resource.region):
            return NON_COMPLIANT
    return COMPLIANT


TRN3 = Rule(
    id="TRN3",
    info="The launch template does not limit IMDS responses to one hop "
    "(MetadataOptions.HttpPutResponseHopLimit: 1).",
    explanation=(
        "With a hop limit above 1, the IMDSv2 token reaches containers on a docker bridge, so any "
        "container on the node (a data loader, a notebook, a pulled image) reads the node role's "
        "credentials. Containers that need AWS access run with host networking or get their own "
        "credentials. cdk-nag's EC2IMDSv2Enabled checks HttpTokens, not the hop limit."
    ),
    resource_types=(LAUNCH_TEMPLATE,),
    check=trainium_only(launch_template_imds_hop_limit_one),
)

TRN4 = Rule(
    id="TRN4",
    info="The Trainium launch template leaves its root volume or a volume's encryption undeclared.",
    explanation=(
        "Checkpoints, datasets and compile caches pass through the root volume. It must be "
        "declared, and each EBS mapping must state Encrypted; otherwise the volume takes "
        "whatever encryption the AMI snapshot has. Encrypted: false is AwsSolutions-EC26."
    ),
    resource_types=(LAUNCH_TEMPLATE,),
    check=trainium_only(launch_template_root_volume_declared),
)

TRN5 = Rule(
    id="TRN5",
    info="Nodes get a public IP (from an interface or from the Auto Scaling group's subnet).",
    explanation=(
        "Training nodes reach AWS through VPC endpoints and have no internet path by default; a "
        "public IP exposes every listening port of the node to the internet side of the "
        "security group. Interfaces must not set AssociatePublicIpAddress and the group's "
        "subnets must not MapPublicIpOnLaunch unless the primary interface turns it off."
    ),
    resource_types=(LAUNCH_TEMPLATE, AUTO_SCALING_GROUP),
    check=trainium_only(nodes_get_no_public_ip),
)

TRN6 = Rule(
    id="TRN6",
    info="A capacity-block launch template is combined with a placement group.",
    explanation=(
        "Capacity Blocks are already placed together; adding a placement group is not needed "
        "and is reported (AWS ParallelCluster, eksctl) to fail launches with "
        "InsufficientInstanceCapacity although the block is paid for."
    ),
    resource_types=(LAUNCH_TEMPLATE, AUTO_SCALING_GROUP),
    check=trainium_only(capacity_block_without_placement_group),
)

TRN10 = Rule(
    id="TRN10",
    info="The Trainium instance type is not in the catalog or not offered in the stack's region.",
    explanation=(
        "A Trainium type outside its regions fails only at deploy time, after the storage "
        "stack is created. Regions come from cdk_trn.catalog (cfn-lint's per-region EC2 data; "
        "Capacity-Block-only types are marked unconfirmed there)."
    ),
    resource_types=(LAUNCH_TEMPLATE, AUTO_SCALING_GROUP, INSTANCE),
    check=instance_type_offered_in_region,
)
