"""Preflight: a deploy-time check that the nodes can launch, run before their Auto Scaling group.

A wrong AZ, an On-Demand Trn vCPU quota of 0 (the default of many accounts) or a capacity
reservation that is missing, too small, for another type or AZ, or a capacity block that has not
started all end today in a 45-minute creation-policy timeout with no reason (FACTS.md
"First-deploy traps"). ``Preflight`` is a custom resource whose handler
(``cdk_trn_runtime/preflight/handler.py``) asks EC2 and Service Quotas first and fails the deploy
within a minute with the reason and the fix in the stack event.

Make the nodes wait for it::

    preflight = Preflight(stack, "Preflight", instance_type="trn2.48xlarge",
                          availability_zone="use2-az3", nodes=2, capacity=Capacity.on_demand())
    cluster.auto_scaling_group.node.add_dependency(preflight)

A plain Lambda-backed custom resource (one function, one role with one managed policy, one log
group, a dead-letter queue); the handler answers CloudFormation itself. Like every deploy-time
function of cdk-trn it runs in the nodes' subnet with the stack's deploy-time security group
(``cdk_trn._provider.DeployTimeNetwork``) and reaches EC2, Service Quotas and Lambda through the
network's interface endpoints.
"""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from constructs import Construct

from cdk_trn._provider import (
    DeployTimeNetwork,
    acknowledge_deploy_time_functions,
    dead_letter_queue,
    network_interface_arns,
    network_interface_statements,
    send_dead_letters,
)
from cdk_trn._resources import allow_cloudwatch_logs
from cdk_trn._runtime import runtime_lambda_code
from cdk_trn.capacity import Capacity
from cdk_trn.catalog import INSTANCE_SPECS
from cdk_trn.compliance.acknowledge import acknowledge_wildcards
from cdk_trn.compliance.depends_on import drop_implied_depends_on
from cdk_trn.errors import CdkTrnError, invalid

HANDLER = "cdk_trn_runtime.preflight.handler.on_event"
#: Without waiting the checks take seconds; a waiting handler re-invokes itself every 15 minutes
#: and CloudFormation gives a custom resource at most one hour.
_CHECK_TIMEOUT = cdk.Duration.minutes(2)
_WAIT_INVOCATION_TIMEOUT = cdk.Duration.minutes(15)
_CHECK_SERVICE_TIMEOUT = cdk.Duration.minutes(10)
_WAIT_SERVICE_TIMEOUT = cdk.Duration.hours(1)


class Preflight(Construct):
    """Fails the deploy early, with the fix, when ``nodes`` x ``instance_type`` cannot launch.

    :param instance_type: a catalog instance type (``cdk_trn.catalog.INSTANCE_SPECS``).
    :param availability_zone: the nodes' AZ, an id (``use2-az3``) or a name (``us-east-2b``,
        resolved to its id in the deploying account by the handler).
    :param nodes: how many nodes the cluster launches.
    :param vpc: the VPC the check runs in (the cluster's).
    :param subnet: the subnet it runs in (the nodes').
    :param capacity: where they come from; reservations and blocks are checked by id, on-demand
        by the type's offering in the AZ and the account's On-Demand Trn vCPU quota
        (L-2C3B7624).
    :param wait_for_capacity_block: when a capacity block starts within 55 minutes, let the
        deploy wait for it instead of failing. Default: False (the deploy fails and says when
        the block starts).
    :param encryption_key: KMS key of the handler's log group. Default: a new key with rotation.
    :param log_retention: Default: one year.
    """

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        instance_type: str,
        availability_zone: str,
        nodes: int,
        capacity: Capacity,
        vpc: ec2.IVpc,
        subnet: ec2.ISubnet,
        wait_for_capacity_block: bool = False,
        encryption_key: kms.IKey | None = None,
        log_retention: logs.RetentionDays = logs.RetentionDays.ONE_YEAR,
    ) -> None:
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
                removal_policy=cdk.RemovalPolicy.RETAIN,
            )
            allow_cloudwatch_logs(key)
            encryption_key = key
        self.log_group = logs.LogGroup(
            self,
            "Logs",
            retention=log_retention,
            encryption_key=encryption_key,
            removal_policy=cdk.RemovalPolicy.RETAIN,
        )
        self.role = iam.Role(
            self,
            "Role",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description=f"cdk-trn preflight of {self.node.path}",
        )
        # CloudFormation (and a waiting preflight, itself) invoke the function asynchronously: an
        # event that fails every retry lands here instead of vanishing.
        self.dead_letters = dead_letter_queue(self, "DeadLetters", encryption_key)
        placement = DeployTimeNetwork.of(
            self, vpc=vpc, subnet=subnet, encryption_key=encryption_key
        )
        # Named, so that its own policy can let a waiting preflight invoke it again.
        function_name = cdk.Names.unique_resource_name(self, max_length=64, separator="-")
        stack = cdk.Stack.of(self)
        # Everything the handler may do is in this one managed policy (no inline policy, no
        # AWS managed policy).
        statements = [
            iam.PolicyStatement(
                sid="WriteOwnLogs",
                actions=["logs:CreateLogStream", "logs:PutLogEvents"],
                resources=[self.log_group.log_group_arn],
            ),
            iam.PolicyStatement(
                sid="ReadOfferingsQuotaAndReservations",
                actions=[
                    "ec2:DescribeAvailabilityZones",
                    "ec2:DescribeInstanceTypeOfferings",
                    "ec2:DescribeCapacityReservations",
                    "servicequotas:GetServiceQuota",
                    "servicequotas:GetAWSDefaultServiceQuota",
                ],
                resources=["*"],
            ),
            *send_dead_letters(self.dead_letters, encryption_key),
            *network_interface_statements(stack, vpc, subnet, placement.security_group),
        ]
        if wait_for_capacity_block:
            statements.append(
                iam.PolicyStatement(
                    sid="ContinueWaitingInANewInvocation",
                    actions=["lambda:InvokeFunction"],
                    resources=[
                        stack.format_arn(
                            service="lambda",
                            resource="function",
                            resource_name=function_name,
                            arn_format=cdk.ArnFormat.COLON_RESOURCE_NAME,
                        )
                    ],
                )
            )
        self.policy = iam.ManagedPolicy(
            self,
            "Policy",
            description="cdk-trn preflight: read AZ offerings, the Trn quota and reservations",
            roles=[self.role],
            statements=statements,
        )
        #: Every policy the custom resource needs attached before it runs.
        self.policies: list[iam.ManagedPolicy] = [self.policy]
        self.function = lambda_.Function(
            self,
            "Function",
            function_name=function_name,
            dead_letter_queue=self.dead_letters,
            runtime=lambda_.Runtime.PYTHON_3_14,
            architecture=lambda_.Architecture.ARM_64,
            handler=HANDLER,
            code=runtime_lambda_code("preflight"),
            role=self.role.without_policy_updates(),
            timeout=_WAIT_INVOCATION_TIMEOUT if wait_for_capacity_block else _CHECK_TIMEOUT,
            memory_size=256,
            log_group=self.log_group,
            description="cdk-trn preflight: AZ offering, Trn quota, capacity reservations",
            vpc=vpc,
            vpc_subnets=ec2.SubnetSelection(subnets=[subnet]),
            security_groups=[placement.security_group],
            # A retried check would answer twice; a lost event ends in the dead-letter queue.
            retry_attempts=0,
            max_event_age=cdk.Duration.hours(1),
        )
        acknowledge_wildcards(
            self.policy,
            "ec2:DescribeAvailabilityZones, ec2:DescribeInstanceTypeOfferings, "
            "ec2:DescribeCapacityReservations, "
            "servicequotas:GetServiceQuota and servicequotas:GetAWSDefaultServiceQuota support "
            "no resource-level permission (the Service Authorization Reference lists no resource "
            "type for them), so their Resource must be '*'; all five are read-only. So does "
            "ec2:DescribeNetworkInterfaces, for the network interfaces Lambda manages for the "
            "function in its VPC; those are created in its subnet with its security group only "
            "and get ids at run time (network-interface/*, limited by the ec2:Subnet condition).",
            resources=["*", network_interface_arns(stack)],
        )
        # Lambda checks sqs:SendMessage on the dead-letter queue and the network-interface
        # permissions when it creates the function, so the function waits for the policy; the
        # role edge its GetAtt implies is dropped.
        self.function.node.add_dependency(self.policy)
        drop_implied_depends_on(self)
        acknowledge_deploy_time_functions(self, "preflight of AZ, quota and reservations")

        self.resource = cdk.CustomResource(
            self,
            "Resource",
            service_token=self.function.function_arn,
            resource_type="Custom::TrnPreflight",
            service_timeout=_WAIT_SERVICE_TIMEOUT
            if wait_for_capacity_block
            else _CHECK_SERVICE_TIMEOUT,
            properties={
                "InstanceType": instance_type,
                "AvailabilityZone": availability_zone,
                "Nodes": str(nodes),
                "VcpusPerNode": str(spec.vcpus),
                "Capacity": capacity.kind.value,
                "ReservationIds": list(capacity.reservation_ids),
                "WaitForCapacityBlock": "true" if wait_for_capacity_block else "false",
            },
        )
        # The handler needs its permissions and the VPC's endpoints before CloudFormation
        # invokes it.
        self.resource.node.add_dependency(*self.policies)
        for endpoint in placement.endpoints:
            self.resource.node.add_dependency(endpoint)
