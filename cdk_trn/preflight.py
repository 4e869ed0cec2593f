"""Preflight: a deploy-time check that the nodes can launch, run before their Auto Scaling group.

A wrong AZ, an On-Demand Trn vCPU quota of 0 (the default of many accounts) or a capacity
reservation that is missing, too small, for another type or AZ, or a capacity block that has not
started all end today in a 45-minute creation-policy timeout with no reason (FACTS.md
"First-deploy traps"). ``Preflight`` is a custom resource whose handler
(``cdk_trn_runtime/preflight/handler.py``) asks EC2 and Service Quotas first and fails the deploy
within a minute with the reason and the fix in the stack event.

Make the nodes wait for it::

    preflight = Preflight(stack, "Preflight", network=network, instance_type="trn2.48xlarge",
                          nodes=2, capacity=Capacity.on_demand())
    cluster.auto_scaling_group.node.add_dependency(preflight)

Served by cdk-trn's deploy-time provider (``cdk_trn._provider``): one function in the nodes'
subnet, with one managed policy and a dead-letter queue, reaching EC2, Service Quotas and Lambda
through the network's interface endpoints. Waiting for a capacity block that starts later is the
provider's poll of the handler's ``is_complete``.
"""

from __future__ import annotations

from collections.abc import Sequence

import aws_cdk as cdk
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from constructs import Construct

from cdk_trn._provider import DeployTimeProvider
from cdk_trn._resources import allow_cloudwatch_logs, stateful_removal_policy
from cdk_trn.capacity import Capacity
from cdk_trn.catalog import INSTANCE_SPECS
from cdk_trn.errors import CdkTrnError, invalid
from cdk_trn.interfaces import ITrainingNetwork
from cdk_trn.network import TrainingNetwork
from cdk_trn_runtime.contract import preflight as contract
from cdk_trn_runtime.contract.preflight import PreflightAttributes, PreflightProperties

HANDLER_MODULE = "cdk_trn_runtime.preflight.handler"
#: Without waiting the checks take seconds; a waiting preflight continues in a new invocation every
#: 15 minutes, and CloudFormation gives a custom resource at most one hour.
_CHECK_TIMEOUT = cdk.Duration.minutes(3)
_WAIT_INVOCATION_TIMEOUT = cdk.Duration.minutes(15)
_CHECK_SERVICE_TIMEOUT = cdk.Duration.minutes(10)
#: The handler's wait budget and poll (the contract's, ``cdk_trn_runtime.contract.preflight``)
#: are the provider's total timeout and query interval.
WAIT_BUDGET = cdk.Duration.minutes(contract.WAIT_BUDGET_MINUTES)
POLL_SECONDS = contract.POLL_SECONDS


class Preflight(Construct):
    """Fails the deploy early, with the fix, when ``nodes`` x ``instance_type`` cannot launch.

    :param network: the nodes' network (the cluster's): the check runs in its node subnet and
        checks its AZ (an id such as ``use2-az3``, or a name such as ``us-east-2b``, resolved to
        its id in the deploying account by the handler).
    :param instance_type: a catalog instance type (``cdk_trn.catalog.INSTANCE_SPECS``).
    :param nodes: how many nodes the cluster launches.
    :param capacity: where they come from; reservations and blocks are checked by id, on-demand
        by the type's offering in the AZ and the account's On-Demand Trn vCPU quota
        (L-2C3B7624).
    :param wait_for_capacity_block: when a capacity block starts within 55 minutes, let the
        deploy wait for it instead of failing. Default: False (the deploy fails and says when
        the block starts).
    :param cluster_name: the cluster's name (its ``cdk-trn:cluster`` tag): its own running nodes
        do not count as other use of the quota on an update. Default: none.
    :param endpoint_services: short names of the interface endpoint services the nodes reach
        AWS through (``ssm``, ``ecr.dkr``...); each must be offered in the AZ. Default: none.
    :param reservation_group_arn: the Capacity Reservation resource group the nodes target
        (several UltraServer blocks); every reservation must be in it. Default: none.
    :param encryption_key: KMS key of the handler's log group. Default: a new key with rotation.
    :param log_retention: Default: one year.
    :param destroy_on_delete: the explicit opt-out from retention: delete the handler's log group
        and a key this construct creates with the stack. Default: False (retained).
    """

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        network: ITrainingNetwork,
        instance_type: str,
        nodes: int,
        capacity: Capacity,
        wait_for_capacity_block: bool = False,
        cluster_name: str | None = None,
        endpoint_services: Sequence[str] = (),
        reservation_group_arn: str | None = None,
        encryption_key: kms.IKey | None = None,
        log_retention: logs.RetentionDays = logs.RetentionDays.ONE_YEAR,
        destroy_on_delete: bool = False,
    ) -> None:
        removal_policy = stateful_removal_policy(destroy_on_delete)
        super().__init__(scope, id)
        spec = INSTANCE_SPECS.get(instance_type)
        if spec is None:
            raise invalid("instance_type", instance_type, "one of " + ", ".join(INSTANCE_SPECS))
        if not isinstance(nodes, int) or isinstance(nodes, bool) or nodes < 1:
            raise invalid("nodes", nodes, "a positive integer")
        if not isinstance(capacity, Capacity):
            raise invalid("capacity", capacity, "a Capacity (Capacity.on_demand(), ...)")
        if wait_for_capacity_block and not capacity.is_block:
            raise CdkTrnError(
                "wait_for_capacity_block must be False unless capacity is a capacity block, got "
                f"True with {capacity.kind.value}"
            )
        self.instance_type = instance_type
        self.nodes = nodes
        self.capacity = capacity

        if encryption_key is None:
            key = kms.Key(
                self,
                "Key",
                description=f"cdk-trn preflight logs of {self.node.path}",
                enable_key_rotation=True,
                removal_policy=removal_policy,
            )
            allow_cloudwatch_logs(key)
            encryption_key = key
        statements = [
            iam.PolicyStatement(
                sid="ReadOfferingsQuotaUseAndReservations",
                actions=[
                    "ec2:DescribeAvailabilityZones",
                    "ec2:DescribeInstanceTypeOfferings",
                    "ec2:DescribeInstances",
                    "ec2:DescribeVpcEndpointServices",
                    "ec2:DescribeCapacityReservations",
                    "servicequotas:GetServiceQuota",
                    "servicequotas:GetAWSDefaultServiceQuota",
                ],
                resources=["*"],
            )
        ]
        if capacity.reservation_ids:
            statements.append(
                iam.PolicyStatement(
                    sid="ReadTheReservationsGroups",
                    actions=["ec2:GetGroupsForCapacityReservation"],
                    resources=[
                        cdk.Stack.of(self).format_arn(
                            service="ec2", resource="capacity-reservation", resource_name=rid
                        )
                        for rid in capacity.reservation_ids
                    ],
                )
            )
        self.provider = DeployTimeProvider(
            self,
            "Provider",
            purpose="preflight of AZ, quota and reservations",
            subpackage="preflight",
            handler_module=HANDLER_MODULE,
            statements=statements,
            wildcard_reason="ec2:DescribeAvailabilityZones, ec2:DescribeInstanceTypeOfferings, "
            "ec2:DescribeInstances, ec2:DescribeVpcEndpointServices, "
            "ec2:DescribeCapacityReservations, servicequotas:GetServiceQuota and "
            "servicequotas:GetAWSDefaultServiceQuota support no resource-level permission (the "
            "Service Authorization Reference lists no resource type for them), so their "
            "Resource must be '*'; all seven are read-only.",
            wildcard_resources=["*"],
            encryption_key=encryption_key,
            vpc=network.vpc,
            subnet=network.subnet,
            total_timeout=WAIT_BUDGET,
            query_interval=cdk.Duration.seconds(POLL_SECONDS),
            handler_timeout=_WAIT_INVOCATION_TIMEOUT if wait_for_capacity_block else _CHECK_TIMEOUT,
            log_retention=log_retention,
            removal_policy=removal_policy,
        )
        self.function = self.provider.function
        self.role = self.provider.role
        self.policy = self.provider.policy
        self.log_group = self.provider.log_group
        self.dead_letters = self.provider.dead_letters
        #: Every policy the custom resource needs attached before it runs.
        self.policies = list(self.provider.policies)
        self.resource = self.provider.custom_resource(
            self,
            "Resource",
            resource_type="Custom::TrnPreflight",
            service_timeout=None if wait_for_capacity_block else _CHECK_SERVICE_TIMEOUT,
            properties=PreflightProperties(
                instance_type=instance_type,
                availability_zone=network.availability_zone,
                nodes=nodes,
                vcpus_per_node=spec.vcpus,
                capacity=capacity.kind,
                reservation_ids=capacity.reservation_ids,
                wait_for_capacity_block=wait_for_capacity_block,
                cluster_name=cluster_name or "",
                endpoint_services=tuple(endpoint_services),
                reservation_group_arn=reservation_group_arn or "",
                # A network created here puts its subnet in the AZ; an imported one is checked.
                subnet_id=None
                if isinstance(network, TrainingNetwork)
                else network.subnet.subnet_id,
            ).to_properties(strings=True),
        )

    def scale_to_zero_before_block_ends(
        self, scope: Construct, group: autoscaling.CfnAutoScalingGroup
    ) -> autoscaling.CfnScheduledAction:
        """A one-time scheduled action that takes ``group`` to zero 35 minutes before the
        earliest capacity block ends (EC2 stops a block's instances 30 minutes before its end;
        without it the group would retry launches into the ended block forever).

        The end date is known only at deploy time (no AWS call at synth), so the action's start
        time is the preflight's ``ScaleToZeroAt`` attribute: the preflight reads the blocks
        before the group exists, and CloudFormation writes the action after it."""
        if not self.capacity.is_block:
            raise CdkTrnError(
                "scale_to_zero_before_block_ends needs a capacity block, got "
                f"{self.capacity.kind.value}"
            )
        return autoscaling.CfnScheduledAction(
            scope,
            "ScaleToZeroBeforeBlockEnds",
            auto_scaling_group_name=group.ref,
            start_time=self.resource.get_att_string(PreflightAttributes.key_of("scale_to_zero_at")),
            min_size=0,
            max_size=0,
            desired_capacity=0,
        )
