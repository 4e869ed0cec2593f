"""TrainingNetwork: one VPC, one AZ, one node subnet, no internet path by default.

EFA traffic cannot cross Availability Zones and capacity reservations/blocks live in one AZ, so the
network is built around a single AZ chosen by the user. Nodes sit in an isolated subnet and reach
AWS through VPC endpoints (S3 gateway; SSM, SSM messages, EC2 messages, ECR api/dkr, KMS, CloudWatch
Logs, STS, CloudFormation, Secrets Manager, CloudWatch metrics, Auto Scaling, Lambda, EC2, Service
Quotas, CodeBuild interface endpoints), and so do the deploy-time functions (custom resources),
which run in the same subnet. NAT egress is an explicit opt-in.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence

import aws_cdk as cdk
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from constructs import Construct

from cdk_trn._provider import S3PrefixListLookup
from cdk_trn._resources import (
    ManagedPolicyRole,
    allow_cloudwatch_logs,
    log_retention_period,
    stateful_removal_policy,
)
from cdk_trn.compliance import acknowledge_regulated, drop_implied_depends_on, silence_cfn_lint
from cdk_trn.errors import invalid
from cdk_trn.interfaces import ITrainingNetwork

_AZ_NAME = re.compile(r"^[a-z]{2}(-gov)?-[a-z]+-\d[a-z]$")
_AZ_ID = re.compile(r"^([a-z]+\d)-az\d+$")
_RESOURCE_ID = "^{}-[0-9a-f]{{8}}([0-9a-f]{{9}})?$"
_DIRECTIONS = {
    "east": "e",
    "west": "w",
    "north": "n",
    "south": "s",
    "central": "c",
    "northeast": "ne",
    "northwest": "nw",
    "southeast": "se",
    "southwest": "sw",
}


def custom_resource_response_bucket(region: str) -> str:
    """The AWS-owned bucket CloudFormation's pre-signed custom-resource response URLs point into,
    ``cloudformation-custom-resource-response-<region without dashes>`` (``useast2``)."""
    if cdk.Token.is_unresolved(region):
        return "cloudformation-custom-resource-response-" + cdk.Fn.join(
            "", cdk.Fn.split("-", region)
        )
    return "cloudformation-custom-resource-response-" + region.replace("-", "")


def az_id_prefix(region: str) -> str:
    """The prefix of a region's Availability Zone ids: ``us-east-2`` -> ``use2``."""
    parts = region.split("-")
    return parts[0] + "".join(_DIRECTIONS.get(p, p) for p in parts[1:-1]) + parts[-1]


def is_az_id(value: str) -> bool:
    return bool(_AZ_ID.match(value))


#: Interface endpoints the nodes need with no internet path: SSM agent (ssm, ssmmessages,
#: ec2messages), image pulls (ecr.api, ecr.dkr; layers come from S3), KMS (encrypted volumes and
#: data), CloudWatch Logs, STS (IAM identities for the enclave vault), CloudFormation (cfn-signal),
#: Secrets Manager (the Slurm authentication key), CloudWatch metrics (monitoring: the nodes' and
#: the controller's metric publishers), Auto Scaling (a node drained for a hardware failure marks
#: itself Unhealthy). The deploy-time functions (``cdk_trn._provider``, preflight), which run in
#: the node subnet too, also need Lambda (a waiting function continues in a new invocation of
#: itself), EC2 (instances, offerings, reservations, prefix lists, network interfaces), Service
#: Quotas (the preflight's Trn quota) and CodeBuild (the enclave image build); SSM, Auto Scaling
#: and S3 serve the acceptance run.
INTERFACE_ENDPOINTS: dict[str, ec2.InterfaceVpcEndpointAwsService] = {
    "Ssm": ec2.InterfaceVpcEndpointAwsService.SSM,
    "SsmMessages": ec2.InterfaceVpcEndpointAwsService.SSM_MESSAGES,
    "Ec2Messages": ec2.InterfaceVpcEndpointAwsService.EC2_MESSAGES,
    "EcrApi": ec2.InterfaceVpcEndpointAwsService.ECR,
    "EcrDocker": ec2.InterfaceVpcEndpointAwsService.ECR_DOCKER,
    "Kms": ec2.InterfaceVpcEndpointAwsService.KMS,
    "Logs": ec2.InterfaceVpcEndpointAwsService.CLOUDWATCH_LOGS,
    "Sts": ec2.InterfaceVpcEndpointAwsService.STS,
    "CloudFormation": ec2.InterfaceVpcEndpointAwsService.CLOUDFORMATION,
    "SecretsManager": ec2.InterfaceVpcEndpointAwsService.SECRETS_MANAGER,
    "Monitoring": ec2.InterfaceVpcEndpointAwsService.CLOUDWATCH_MONITORING,
    "AutoScaling": ec2.InterfaceVpcEndpointAwsService.AUTOSCALING,
    "Lambda": ec2.InterfaceVpcEndpointAwsService.LAMBDA_,
    "Ec2": ec2.InterfaceVpcEndpointAwsService.EC2,
    "ServiceQuotas": ec2.InterfaceVpcEndpointAwsService("servicequotas"),
    "CodeBuild": ec2.InterfaceVpcEndpointAwsService.CODEBUILD,
}


class TrainingNetwork(Construct):
    """A new single-AZ network for a training cluster; :meth:`from_attributes` imports one that
    exists (another app's, or one made outside CDK). Every construct that needs a network takes
    it as ``network=`` (an :class:`~cdk_trn.interfaces.ITrainingNetwork`), either kind.

    :param availability_zone: the AZ of the nodes (and of the capacity reservation or block),
        as an AZ id (``use2-az3``, preferred: the same in every account, and what capacity
        reservations report) or an AZ name (``us-east-2b``, mapped differently per account).
        Must belong to the stack's region when that region is known.
    :param cidr: IPv4 CIDR of a new VPC. Default: ``10.64.0.0/16``.
    :param nat_egress: give nodes an internet path through a NAT gateway. Default: ``False``
        (isolated subnet, VPC endpoints only). Opt in only when the node bootstrap must reach
        package mirrors that no endpoint serves (Ubuntu DLAMIs).
    :param flow_log_retention: retention of the VPC flow-log group, one of CloudWatch Logs'
        periods. Default: 365 days.
    :param encryption_key: KMS key for the flow-log group. Default: a new key with rotation,
        retained.
    :param extra_s3_read_buckets: names of buckets outside this account that nodes may read
        through the S3 endpoint, besides AL2023's repositories, ECR layers and SSM's buckets.
        Default: none. (Endpoints serve only this account's principals and buckets.)
    :param destroy_on_delete: the explicit opt-out from retention: delete the flow-log group,
        the S3 prefix-list lookup's log group and a key this construct creates with the stack.
        Default: False (retained on stack delete).
    """

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        availability_zone: str,
        cidr: str = "10.64.0.0/16",
        nat_egress: bool = False,
        flow_log_retention: cdk.Duration | None = None,
        encryption_key: kms.IKey | None = None,
        extra_s3_read_buckets: Sequence[str] = (),
        destroy_on_delete: bool = False,
    ) -> None:
        super().__init__(scope, id)
        region = cdk.Stack.of(self).region
        self._validate_availability_zone(availability_zone, region)
        retention = log_retention_period(
            "flow_log_retention", flow_log_retention or cdk.Duration.days(365)
        )
        validate_cidr("cidr", cidr)
        self._removal_policy = stateful_removal_policy(destroy_on_delete)

        self.availability_zone = availability_zone
        self.nat_egress = nat_egress
        #: The VPC endpoints this construct created; nodes must not boot before they exist.
        self.endpoints: list[ec2.IVpcEndpoint] = []
        #: The flow log's delivery role (its grants in a customer-managed policy), when this
        #: construct created the VPC.
        self.flow_log_role: ManagedPolicyRole | None = None
        self._key: kms.IKey | None = None
        self._s3_prefix_list_id: str | None = None
        self.vpc: ec2.IVpc
        self.subnet: ec2.ISubnet
        self.vpc, self.subnet = self._new_vpc(
            availability_zone,
            cidr,
            nat_egress,
            retention,
            encryption_key,
            extra_s3_read_buckets,
        )
        # A literal CIDR, so that rule checkers can read the source range.
        self.endpoint_security_group: ec2.SecurityGroup | None = self._add_endpoints(cidr)

    @classmethod
    def from_attributes(
        cls,
        scope: Construct,
        id: str,
        *,
        vpc_id: str,
        subnet_id: str,
        availability_zone: str,
        route_table_id: str | None = None,
        vpc_cidr_block: str | None = None,
    ) -> ITrainingNetwork:
        """A network that exists (another app's, or one made outside CDK), by its ids: no
        lookup, no AWS call at synth, no resource, no endpoint.

        Its endpoints are the owner's to provide: the nodes need the interface endpoints of
        :data:`INTERFACE_ENDPOINTS` (or a NAT path), and the deploy-time functions an S3
        gateway endpoint that allows ``s3:PutObject`` to
        ``cloudformation-custom-resource-response-<region without dashes>``.

        :param vpc_id: ``vpc-...``.
        :param subnet_id: the node subnet, ``subnet-...``, in ``availability_zone``.
        :param availability_zone: that subnet's AZ, as an AZ id (``use2-az3``) or name, checked
            as for a new network.
        :param route_table_id: the subnet's route table (``rtb-...``), needed only by constructs
            that add routes or gateway endpoints. Default: none.
        :param vpc_cidr_block: the VPC's IPv4 CIDR; deploy-time functions then allow HTTPS to
            that range (the VPC's endpoints) only. Default: none (they allow HTTPS to any IPv4
            address, and the subnet's routes decide where it can go).
        """
        return ImportedTrainingNetwork(
            scope,
            id,
            vpc_id=vpc_id,
            subnet_id=subnet_id,
            availability_zone=availability_zone,
            route_table_id=route_table_id,
            vpc_cidr_block=vpc_cidr_block,
        )

    # --- validation -------------------------------------------------------------------------

    @staticmethod
    def _validate_availability_zone(az: str, region: str, prop: str = "availability_zone") -> None:
        if cdk.Token.is_unresolved(az):
            return
        if is_az_id(az):
            if not cdk.Token.is_unresolved(region) and not az.startswith(
                az_id_prefix(region) + "-"
            ):
                raise invalid(
                    prop,
                    az,
                    f"an Availability Zone of the stack's region {region} "
                    f"(ids {az_id_prefix(region)}-az1, ...)",
                )
            return
        if not _AZ_NAME.match(az):
            raise invalid(
                prop,
                az,
                "an Availability Zone id such as 'use2-az3' or a name such as 'us-east-2b'",
            )
        if not cdk.Token.is_unresolved(region) and not az.startswith(region):
            raise invalid(prop, az, f"an Availability Zone of the stack's region {region}")

    @property
    def s3_prefix_list_id(self) -> str | None:
        """The region's S3 managed prefix list id (a deploy-time value) when this construct
        created the VPC, else ``None``.

        Found once, on first use, by a deploy-time function in the node subnet of this stack;
        the deploy-time functions of every stack in this VPC (preflight, acceptance run, enclave
        image build) name it in their HTTPS egress to S3 instead of looking it up again.
        """
        if self._key is None:
            return None
        if self._s3_prefix_list_id is None:
            self._s3_prefix_list_id = S3PrefixListLookup(
                self,
                "S3PrefixList",
                vpc=self.vpc,
                subnet=self.subnet,
                encryption_key=self._key,
                removal_policy=self._removal_policy,
            ).prefix_list_id
        return self._s3_prefix_list_id

    # --- resources ----------------------------------------------------------------------------

    def _new_vpc(
        self,
        az: str,
        cidr: str,
        nat_egress: bool,
        retention: logs.RetentionDays,
        encryption_key: kms.IKey | None,
        extra_s3_read_buckets: Sequence[str],
    ) -> tuple[ec2.Vpc, ec2.ISubnet]:
        node_type = (
            ec2.SubnetType.PRIVATE_WITH_EGRESS if nat_egress else ec2.SubnetType.PRIVATE_ISOLATED
        )
        subnets = [ec2.SubnetConfiguration(name="nodes", subnet_type=node_type, cidr_mask=20)]
        if nat_egress:
            subnets.append(
                # Only the NAT gateway lives here, with its own Elastic IP: nothing launched in
                # this subnet gets a public address.
                ec2.SubnetConfiguration(
                    name="public",
                    subnet_type=ec2.SubnetType.PUBLIC,
                    cidr_mask=24,
                    map_public_ip_on_launch=False,
                )
            )
        vpc = ec2.Vpc(
            self,
            "Vpc",
            ip_addresses=ec2.IpAddresses.cidr(cidr),
            availability_zones=[az],
            subnet_configuration=subnets,
            nat_gateways=1 if nat_egress else 0,
            restrict_default_security_group=True,
        )
        s3_endpoint = vpc.add_gateway_endpoint("S3", service=ec2.GatewayVpcEndpointAwsService.S3)
        self._limit_s3_endpoint(s3_endpoint, extra_s3_read_buckets)
        self.endpoints.append(s3_endpoint)
        key = self._key = encryption_key or self._flow_log_key()
        log_group = logs.LogGroup(
            self,
            "FlowLogs",
            retention=retention,
            encryption_key=key,
            removal_policy=self._removal_policy,
        )
        delivery_role = self.flow_log_role = self._flow_log_role()
        flow_log = vpc.add_flow_log(
            "FlowLog",
            destination=ec2.FlowLogDestination.to_cloud_watch_logs(log_group, delivery_role),
            traffic_type=ec2.FlowLogTrafficType.ALL,
        )
        # The flow log's grants (write to its log group) land in the role's managed policy;
        # delivery starts only once it exists.
        flow_log.node.add_dependency(delivery_role)
        # The provider aws-cdk-lib adds for restrict_default_security_group declares DependsOn on
        # its role although its GetAtt already orders them (cfn-lint W3005): one pass per stack
        # drops such edges without naming CDK-internal constructs.
        drop_implied_depends_on(self)
        for subnet in vpc.public_subnets + vpc.private_subnets + vpc.isolated_subnets:
            self._pin_subnet_zone(subnet, az)
        for subnet in vpc.public_subnets:
            acknowledge_regulated(
                subnet,
                "VPCNoUnrestrictedRouteToIGW",
                "nat_egress=True (the default app's -c natEgress=true) asks for internet egress: "
                "the NAT gateway's subnet needs its 0.0.0.0/0 route to the internet gateway; it "
                "holds only the NAT gateway, and the nodes' subnet routes to the NAT, not the IGW",
            )
        node_subnet = vpc.select_subnets(subnet_type=node_type).subnets[0]
        return vpc, node_subnet

    @staticmethod
    def _pin_subnet_zone(subnet: ec2.ISubnet, az: str) -> None:
        cfn_subnet = subnet.node.default_child
        assert isinstance(cfn_subnet, ec2.CfnSubnet)
        if is_az_id(az):
            cfn_subnet.add_property_deletion_override("AvailabilityZone")
            cfn_subnet.add_property_override("AvailabilityZoneId", az)
            return
        # A single, fixed AZ is the design (EFA cannot cross AZs; reservations live in one AZ).
        silence_cfn_lint(
            cfn_subnet,
            "W3010",
            "the cluster lives in one chosen AZ by design: EFA cannot cross AZs and "
            "capacity reservations and blocks live in one AZ",
        )

    def _flow_log_role(self) -> ManagedPolicyRole:
        """The flow log's delivery role: trusted by VPC Flow Logs for this account's flow logs
        only (the confused-deputy conditions of the VPC user guide, flow-logs-iam-role.html;
        the flow log's id is not known before it exists, hence ``vpc-flow-log/*``), its
        permissions in a customer-managed policy."""
        stack = cdk.Stack.of(self)
        return ManagedPolicyRole(
            self,
            "FlowLogRole",
            description="VPC Flow Logs delivery to the training VPC's flow-log group",
            assumed_by=iam.ServicePrincipal(
                "vpc-flow-logs.amazonaws.com",
                conditions={
                    "StringEquals": {"aws:SourceAccount": stack.account},
                    "ArnLike": {
                        "aws:SourceArn": stack.format_arn(
                            service="ec2", resource="vpc-flow-log", resource_name="*"
                        )
                    },
                },
            ),
        )

    def _flow_log_key(self) -> kms.Key:
        key = kms.Key(
            self,
            "FlowLogKey",
            description="Encrypts the training VPC flow logs",
            enable_key_rotation=True,
            removal_policy=self._removal_policy,
        )
        allow_cloudwatch_logs(key)
        return key

    def _add_endpoints(self, source_cidr: str) -> ec2.SecurityGroup:
        group = ec2.SecurityGroup(
            self,
            "EndpointSecurityGroup",
            vpc=self.vpc,
            description="VPC interface endpoints: HTTPS from inside the VPC only",
            allow_all_outbound=False,
        )
        group.add_ingress_rule(ec2.Peer.ipv4(source_cidr), ec2.Port.tcp(443), "HTTPS from the VPC")
        for name, service in INTERFACE_ENDPOINTS.items():
            endpoint = self.vpc.add_interface_endpoint(
                name,
                service=service,
                subnets=ec2.SubnetSelection(subnets=[self.subnet]),
                security_groups=[group],
                private_dns_enabled=True,
                open=False,
            )
            # Only principals of this account may use the endpoints: stolen credentials of
            # another account cannot carry data out through them.
            endpoint.add_to_policy(
                iam.PolicyStatement(
                    principals=[iam.AnyPrincipal()],
                    actions=["*"],
                    resources=["*"],
                    conditions={
                        "StringEquals": {"aws:PrincipalAccount": cdk.Stack.of(self).account}
                    },
                )
            )
            self.endpoints.append(endpoint)
        return group

    def _limit_s3_endpoint(
        self, endpoint: ec2.GatewayVpcEndpoint, extra_read_buckets: Sequence[str]
    ) -> None:
        """The S3 endpoint reaches this account's buckets, plus read access to the AWS-owned
        buckets nodes need: AL2023's package repositories (FACTS.md), ECR image layers (ECR user
        guide, "Amazon S3 gateway endpoint") and the SSM agent's buckets, and writes to
        CloudFormation's custom-resource response bucket of the region (the deploy-time
        functions answer through it: CloudFormation user guide, "Setting up VPC endpoints for
        AWS CloudFormation", names ``cloudformation-custom-resource-response-<region without
        dashes>``). Nothing here uses a wait condition, so its bucket is not listed."""
        stack = cdk.Stack.of(self)
        endpoint.add_to_policy(
            iam.PolicyStatement(
                sid="ThisAccountsBuckets",
                principals=[iam.AnyPrincipal()],
                actions=["s3:*"],
                resources=["*"],
                conditions={"StringEquals": {"aws:ResourceAccount": stack.account}},
            )
        )
        region = stack.region
        aws_buckets = [
            f"al2023-repos-{region}-de612dc2",
            f"prod-{region}-starport-layer-bucket",
            f"amazon-ssm-{region}",
            f"aws-ssm-{region}",
            *extra_read_buckets,
        ]
        endpoint.add_to_policy(
            iam.PolicyStatement(
                sid="AwsOwnedBucketsNodesRead",
                principals=[iam.AnyPrincipal()],
                actions=["s3:GetObject"],
                resources=[f"arn:{stack.partition}:s3:::{bucket}/*" for bucket in aws_buckets],
            )
        )
        endpoint.add_to_policy(
            iam.PolicyStatement(
                sid="AnswerCloudFormationCustomResources",
                principals=[iam.AnyPrincipal()],
                actions=["s3:PutObject"],
                resources=[
                    f"arn:{stack.partition}:s3:::{custom_resource_response_bucket(region)}/*"
                ],
            )
        )


def _validate_resource_id(prop: str, value: str | None, kind: str) -> None:
    if value is None or (isinstance(value, str) and cdk.Token.is_unresolved(value)):
        return
    if not isinstance(value, str) or not re.match(_RESOURCE_ID.format(kind), value):
        raise invalid(prop, value, f"an id such as '{kind}-0123456789abcdef0'")


def validate_cidr(prop: str, value: str) -> None:
    """``value`` is an IPv4 CIDR in its network address form (tokens pass)."""
    if isinstance(value, str) and cdk.Token.is_unresolved(value):
        return
    try:
        network = ipaddress.IPv4Network(value)
    except (ValueError, TypeError):
        raise invalid(prop, value, "an IPv4 CIDR such as '10.64.0.0/16'") from None
    if str(network) != value:
        raise invalid(prop, value, f"the network address form {network}")


class ImportedTrainingNetwork(Construct):
    """A training network created elsewhere, from :meth:`TrainingNetwork.from_attributes`.

    Creates nothing: the VPC and the node subnet are referenced by id, and the endpoints are
    assumed to exist already (the nodes of an imported network do not wait for any).
    """

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        vpc_id: str,
        subnet_id: str,
        availability_zone: str,
        route_table_id: str | None = None,
        vpc_cidr_block: str | None = None,
    ) -> None:
        where = f"{scope.node.path}/{id}"
        _validate_resource_id(f"{where}: vpc_id", vpc_id, "vpc")
        if vpc_cidr_block is not None:
            validate_cidr(f"{where}: vpc_cidr_block", vpc_cidr_block)
        _validate_resource_id(f"{where}: subnet_id", subnet_id, "subnet")
        _validate_resource_id(f"{where}: route_table_id", route_table_id, "rtb")
        TrainingNetwork._validate_availability_zone(
            availability_zone, cdk.Stack.of(scope).region, f"{where}: availability_zone"
        )
        super().__init__(scope, id)
        self._availability_zone = availability_zone
        self._vpc = ec2.Vpc.from_vpc_attributes(
            self,
            "Vpc",
            vpc_id=vpc_id,
            vpc_cidr_block=vpc_cidr_block,
            availability_zones=[availability_zone],
            isolated_subnet_ids=[subnet_id],
            isolated_subnet_route_table_ids=[route_table_id] if route_table_id else None,
        )
        self._subnet = ec2.Subnet.from_subnet_attributes(
            self,
            "Subnet",
            subnet_id=subnet_id,
            availability_zone=availability_zone,
            route_table_id=route_table_id,
        )

    @property
    def vpc(self) -> ec2.IVpc:
        return self._vpc

    @property
    def subnet(self) -> ec2.ISubnet:
        return self._subnet

    @property
    def availability_zone(self) -> str:
        return self._availability_zone

    @property
    def endpoints(self) -> Sequence[ec2.IVpcEndpoint]:
        return ()
