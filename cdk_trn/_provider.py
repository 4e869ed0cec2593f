"""The one deploy-time custom-resource provider of cdk-trn (internal).

Used by ``AcceptanceRun``, ``Preflight``, the enclave image build (``EifBuild``) and the S3
prefix-list lookup of :class:`DeployTimeNetwork`: a handler module in ``cdk_trn_runtime``
(``on_event`` and, when it waits, ``is_complete``) served by ONE Lambda function per custom
resource, which speaks CloudFormation's custom-resource protocol itself
(``cdk_trn_runtime/deploy_time/driver.py``).

Why not aws-cdk-lib's ``custom_resources.Provider``: for each custom resource it deploys five
functions (our two handlers and three framework functions) and a Step Functions waiter, with
inline policies we cannot replace, a waiter that has no X-Ray option, and functions outside the
VPC invoked synchronously. The waiting it does is a poll of ``is_complete`` every query interval
until a total timeout; the driver does that same poll inside the function's own invocation and,
when the invocation runs short of time, continues in a new asynchronous invocation of itself with
the deadline. The handler API stays the framework's, so handlers did not change. Decided once,
here:

* Permissions: the function runs as a role of ours whose only permission is one customer managed
  policy (no inline policy, no AWS managed policy): write its log group, invoke itself (by name,
  so the policy need not wait for the function), send to its dead-letter queue, manage its
  network interfaces in its subnet, plus what the caller lists.
* Invocation: CloudFormation invokes the function asynchronously, and so does the function
  itself, so the function has an encrypted SQS dead-letter queue, no automatic retry (a retried
  first invocation would start the work twice; a lost event ends in the queue and the resource's
  ``ServiceTimeout`` fails it) and events older than an hour are dropped (CloudFormation gave up).
* Network: the function runs in the VPC's node subnet (isolated unless the user opted into NAT)
  with a security group that allows HTTPS to the VPC (its interface endpoints) and to the S3
  gateway endpoint's prefix list (CloudFormation's response bucket) only; see
  :class:`DeployTimeNetwork`. Every custom resource waits for the VPC endpoints of its VPC that
  this app creates.
* Logs: one log group per function, encrypted with the caller's KMS key, retained. The driver
  answers a handler's exception itself, so Lambda's Errors metric never counts it:
  :meth:`DeployTimeProvider.metric_failures` counts FAILED answers from the log instead.
* Runtime: Python 3.14 on arm64, code from ``cdk_trn._runtime.runtime_lambda_code``.
* No reserved concurrency unless asked for: reserving it fails the deploy in accounts whose
  Lambda concurrency limit is low (new accounts), for functions that run a few times per deploy.
* Ordering: the function is created after its policy (Lambda checks the queue and network
  permissions when it creates a function); the custom resource runs after the function.
* The regulated packs' one remaining Lambda rule is acknowledged once, in
  :func:`acknowledge_deploy_time_functions`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import aws_cdk as cdk
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_sqs as sqs
from constructs import Construct, IConstruct

from cdk_trn._runtime import runtime_lambda_code
from cdk_trn.compliance.acknowledge import acknowledge_regulated, acknowledge_wildcards
from cdk_trn.compliance.depends_on import drop_implied_depends_on
from cdk_trn.errors import invalid
from cdk_trn_runtime.contract import DEPLOY_TIME_FAILURE_MARK, METRICS_NAMESPACE_DEPLOY_TIME
from cdk_trn_runtime.contract.deploy_time import DeployTimeSettings, PrefixListAttributes

DRIVER = "cdk_trn_runtime.deploy_time.driver.handler"
#: CloudFormation waits at most one hour for a custom resource (``ServiceTimeout`` 1-3600 s).
MAX_SERVICE_TIMEOUT = cdk.Duration.hours(1)
#: Each invocation's time kept back for the last poll, the answer or the hand-over (the driver's
#: ``HANDOVER_MARGIN_SECONDS``), plus a margin of its own.
_HANDOVER_SECONDS = 90
#: Time between the driver's own deadline and CloudFormation's ``ServiceTimeout``, so that our
#: reason ("timed out after N minutes waiting for ..."), not a generic one, reaches the stack.
SERVICE_TIMEOUT_MARGIN = cdk.Duration.minutes(5)


def acknowledge_deploy_time_functions(construct: IConstruct, purpose: str) -> None:
    """Acknowledge the regulated packs' Lambda rules that still apply to deploy-time functions
    under ``construct``: only reserved concurrency (the functions are in the VPC and have a
    dead-letter queue). ``purpose`` says what the functions do, for the reason."""
    acknowledge_regulated(
        construct,
        "LambdaConcurrency",
        f"deploy-time handler ({purpose}) that runs a few times per deploy; reserved concurrency "
        "would only take capacity from the account's pool, and fails the deploy in accounts "
        "whose Lambda concurrency limit is low (DeployTimeProvider's reserved_concurrency opts "
        "in)",
    )


class DeployTimeNetwork(Construct):
    """Where the deploy-time functions of one stack run in one subnet (one per stack and subnet,
    from :meth:`of`).

    Owns the functions' security group: HTTPS to the VPC's CIDR (the interface endpoints: Lambda,
    EC2, SSM, Auto Scaling, CodeBuild, Service Quotas, ... from ``TrainingNetwork``) and HTTPS to
    the S3 gateway endpoint by the region's S3 managed prefix list, which CloudFormation's
    response bucket is reached through. The prefix list's id has no CloudFormation attribute, so
    a deploy-time lookup (:class:`S3PrefixListLookup`) finds it: once for the app when the VPC
    is a ``TrainingNetwork``'s (its ``s3_prefix_list_id``), otherwise once here. When the VPC's
    CIDR is unknown (an imported VPC without it), HTTPS goes to any IPv4 address: in an isolated
    subnet the only routes are the VPC and the S3 gateway endpoint.

    With an imported network (``TrainingNetwork.from_attributes``, or ``create_endpoints=False``)
    the endpoints are the user's to provide: interface endpoints with private DNS for ``lambda``,
    ``ec2``, ``ssm``, ``autoscaling``, ``codebuild`` (enclave image build) and ``servicequotas``
    (preflight), and an S3 gateway endpoint whose policy allows ``s3:PutObject`` to
    ``cloudformation-custom-resource-response-<region without dashes>``.
    """

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        vpc: ec2.IVpc,
        subnet: ec2.ISubnet,
        encryption_key: kms.IKey,
        s3_prefix_list_id: str | None = None,
    ) -> None:
        super().__init__(scope, id)
        self.vpc = vpc
        self.subnet = subnet
        cidr = _cidr_of(vpc)
        https = ec2.Port.tcp(443)
        #: VPC endpoints of ``vpc`` created in this app; every custom resource waits for them.
        self.endpoints: list[ec2.IVpcEndpoint] = [
            c for c in vpc.node.find_all() if isinstance(c, ec2.VpcEndpoint)
        ]
        if s3_prefix_list_id is None:
            s3_prefix_list_id = S3PrefixListLookup(
                self, "Lookup", vpc=vpc, subnet=subnet, encryption_key=encryption_key
            ).prefix_list_id
        #: The region's S3 managed prefix list (``pl-...``), a deploy-time value.
        self.s3_prefix_list_id = s3_prefix_list_id

        #: The security group of every other deploy-time function in ``subnet``.
        self.security_group = ec2.SecurityGroup(
            self,
            "SecurityGroup",
            vpc=vpc,
            allow_all_outbound=False,
            description="cdk-trn deploy-time functions: HTTPS to the VPC endpoints and S3 only",
        )
        if cidr is None:
            self.security_group.add_egress_rule(
                ec2.Peer.any_ipv4(), https, "HTTPS: the VPC's CIDR is unknown (imported VPC)"
            )
        else:
            self.security_group.add_egress_rule(
                ec2.Peer.ipv4(cidr), https, "HTTPS to the VPC's interface endpoints"
            )
        self.security_group.add_egress_rule(
            ec2.Peer.prefix_list(self.s3_prefix_list_id),
            https,
            "HTTPS to S3 through the gateway endpoint: CloudFormation's response bucket",
        )

    @classmethod
    def of(
        cls, scope: Construct, *, vpc: ec2.IVpc, subnet: ec2.ISubnet, encryption_key: kms.IKey
    ) -> DeployTimeNetwork:
        """The stack's placement in ``subnet``, created on first use (its lookup's log group and
        dead-letter queue then use ``encryption_key``)."""
        stack = cdk.Stack.of(scope)
        id = f"CdkTrnDeployTime{subnet.node.addr[:10]}"
        found = stack.node.try_find_child(id)
        if isinstance(found, DeployTimeNetwork):
            return found
        # The construct that made the VPC (``TrainingNetwork``) may know the prefix list already:
        # one lookup for the app instead of one per stack.
        known = getattr(vpc.node.scope, "s3_prefix_list_id", None)
        return cls(
            stack,
            id,
            vpc=vpc,
            subnet=subnet,
            encryption_key=encryption_key,
            s3_prefix_list_id=known if isinstance(known, str) else None,
        )


class S3PrefixListLookup(Construct):
    """The region's S3 managed prefix list id, found at deploy time.

    The id has no CloudFormation attribute, so a deploy-time function (one
    :class:`DeployTimeProvider`) looks it up. That function cannot name the list it looks up, so
    its security group allows HTTPS to any IPv4 address: in an isolated subnet the only routes
    are the VPC (its endpoints) and the S3 gateway endpoint.
    """

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        vpc: ec2.IVpc,
        subnet: ec2.ISubnet,
        encryption_key: kms.IKey,
        removal_policy: cdk.RemovalPolicy = cdk.RemovalPolicy.RETAIN,
    ) -> None:
        super().__init__(scope, id)
        group = ec2.SecurityGroup(
            self,
            "SecurityGroup",
            vpc=vpc,
            allow_all_outbound=False,
            description="cdk-trn S3 prefix-list lookup: HTTPS to the VPC endpoints and S3",
        )
        group.add_egress_rule(
            ec2.Peer.any_ipv4(),
            ec2.Port.tcp(443),
            "HTTPS: the EC2 endpoint, and S3 by the prefix list this function looks up",
        )
        provider = DeployTimeProvider(
            self,
            "Provider",
            purpose="S3 prefix-list lookup",
            subpackage="deploy_time",
            handler_module="cdk_trn_runtime.deploy_time.prefix_list",
            statements=[
                iam.PolicyStatement(
                    sid="FindTheS3PrefixList",
                    actions=["ec2:DescribeManagedPrefixLists"],
                    resources=["*"],
                )
            ],
            encryption_key=encryption_key,
            vpc=vpc,
            subnet=subnet,
            security_group=group,
            handler_timeout=cdk.Duration.minutes(2),
            removal_policy=removal_policy,
            wildcard_reason="ec2:DescribeManagedPrefixLists supports no resource-level "
            "permission (Resource '*'); the call is read-only.",
            wildcard_resources=["*"],
        )
        lookup = provider.custom_resource(
            self,
            "S3PrefixList",
            resource_type="Custom::CdkTrnS3PrefixList",
            properties={},
            service_timeout=cdk.Duration.minutes(10),
        )
        #: The region's S3 managed prefix list (``pl-...``), a deploy-time value.
        self.prefix_list_id = lookup.get_att_string(PrefixListAttributes.key_of("prefix_list_id"))


def _cidr_of(vpc: ec2.IVpc) -> str | None:
    try:
        return vpc.vpc_cidr_block
    except RuntimeError:  # jsii: imported without vpc_cidr_block
        return None


class DeployTimeProvider(Construct):
    """One Lambda function serving a custom resource with a ``cdk_trn_runtime`` handler module.

    :param purpose: what the handlers do, for descriptions, reasons and timeout messages.
    :param subpackage: the ``cdk_trn_runtime`` subpackage holding the handler module.
    :param handler_module: the module, e.g. ``cdk_trn_runtime.acceptance.handler``; its
        ``on_event`` and (optional) ``is_complete`` functions are the handlers.
    :param statements: what the handlers may do besides what every function needs.
    :param encryption_key: KMS key of the log group and the dead-letter queue (must allow
        CloudWatch Logs).
    :param vpc: the VPC the function runs in.
    :param subnet: the subnet it runs in (the node subnet, isolated by default).
    :param total_timeout: how long the driver waits for ``is_complete``, at most 55 minutes
        (CloudFormation's hour less :data:`SERVICE_TIMEOUT_MARGIN`). Default: 55 minutes.
    :param query_interval: how often ``is_complete`` is called. Default: 30 seconds.
    :param handler_timeout: each invocation's timeout; a wait longer than that continues in a new
        invocation. Default: 15 minutes (Lambda's longest).
    :param log_retention: retention of the log group. Default: one year.
    :param removal_policy: the log group's (the owner's ``destroy_on_delete``). Default: retain.
    :param reserved_concurrency: reserved concurrent executions of the function. Default: none
        (reserving fails the deploy in accounts with a low Lambda concurrency limit).
    :param security_group: the function's security group. Default: the stack's
        :class:`DeployTimeNetwork` group for ``subnet``.
    :param extra_subpackages: more ``cdk_trn_runtime`` subpackages the handler imports.
        Default: none.
    :param wildcard_reason: why ``statements`` have the wildcard resources
        ``wildcard_resources`` (as for ``acknowledge_wildcards``); ``"*"`` shares one
        acknowledgment with the provider's own. Default: no wildcard in ``statements``.
    """

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        purpose: str,
        subpackage: str,
        handler_module: str,
        statements: Sequence[iam.PolicyStatement],
        encryption_key: kms.IKey,
        vpc: ec2.IVpc,
        subnet: ec2.ISubnet,
        total_timeout: cdk.Duration | None = None,
        query_interval: cdk.Duration | None = None,
        handler_timeout: cdk.Duration | None = None,
        extra_subpackages: Sequence[str] = (),
        log_retention: logs.RetentionDays = logs.RetentionDays.ONE_YEAR,
        removal_policy: cdk.RemovalPolicy = cdk.RemovalPolicy.RETAIN,
        reserved_concurrency: int | None = None,
        security_group: ec2.ISecurityGroup | None = None,
        wildcard_reason: str | None = None,
        wildcard_resources: Sequence[str] = (),
    ) -> None:
        total_timeout = total_timeout or MAX_SERVICE_TIMEOUT.minus(SERVICE_TIMEOUT_MARGIN)
        query_interval = query_interval or cdk.Duration.seconds(30)
        handler_timeout = handler_timeout or cdk.Duration.minutes(15)
        self._validate(reserved_concurrency, total_timeout, query_interval, handler_timeout)
        super().__init__(scope, id)
        stack = cdk.Stack.of(self)
        self.purpose = purpose
        self.total_timeout = total_timeout
        network: DeployTimeNetwork | None = None
        if security_group is None:
            network = DeployTimeNetwork.of(
                self, vpc=vpc, subnet=subnet, encryption_key=encryption_key
            )
            security_group = network.security_group
        #: The VPC endpoints the custom resources wait for.
        self.endpoints: Sequence[ec2.IVpcEndpoint] = (
            network.endpoints
            if network is not None
            else [c for c in vpc.node.find_all() if isinstance(c, ec2.VpcEndpoint)]
        )
        self.security_group = security_group

        self.log_group = logs.LogGroup(
            self,
            "Logs",
            retention=log_retention,
            encryption_key=encryption_key,
            removal_policy=removal_policy,
        )
        self.role = iam.Role(
            self,
            "Role",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description=f"cdk-trn {purpose}: the custom resource's function",
        )
        #: Every invocation is asynchronous: an event the function could not handle lands here.
        self.dead_letters = dead_letter_queue(self, "DeadLetters", encryption_key)
        # Named, so that its own policy can let it invoke itself without waiting for it.
        self.function_name = cdk.Names.unique_resource_name(self, max_length=64, separator="-")
        own_arn = stack.format_arn(
            service="lambda",
            resource="function",
            resource_name=self.function_name,
            arn_format=cdk.ArnFormat.COLON_RESOURCE_NAME,
        )
        self.policy = iam.ManagedPolicy(
            self,
            "Policy",
            description=f"cdk-trn {purpose}: the custom resource's function",
            roles=[self.role],
            statements=[
                iam.PolicyStatement(
                    sid="WriteOwnLogs",
                    actions=["logs:CreateLogStream", "logs:PutLogEvents"],
                    # The log group's Arn attribute ends in ":*", which covers its streams.
                    resources=[self.log_group.log_group_arn],
                ),
                iam.PolicyStatement(
                    sid="ContinueWaitingInANewInvocation",
                    actions=["lambda:InvokeFunction"],
                    resources=[own_arn],
                ),
                *send_dead_letters(self.dead_letters, encryption_key),
                *network_interface_statements(stack, vpc, subnet, security_group),
                *statements,
            ],
        )
        code = ("deploy_time",) if subpackage == "deploy_time" else ("deploy_time", subpackage)
        code = (*code, *extra_subpackages)
        self.function = lambda_.Function(
            self,
            "Function",
            function_name=self.function_name,
            runtime=lambda_.Runtime.PYTHON_3_14,
            architecture=lambda_.Architecture.ARM_64,
            handler=DRIVER,
            code=runtime_lambda_code(*code),
            role=self.role.without_policy_updates(),
            timeout=handler_timeout,
            memory_size=256,
            log_group=self.log_group,
            description=f"cdk-trn {purpose}: custom resource (on-event, then is-complete polls)",
            environment=DeployTimeSettings(
                handler_module=handler_module,
                purpose=purpose,
                query_interval_seconds=int(query_interval.to_seconds()),
                total_timeout_seconds=int(total_timeout.to_seconds()),
            ).to_environment(),
            vpc=vpc,
            vpc_subnets=ec2.SubnetSelection(subnets=[subnet]),
            security_groups=[security_group],
            dead_letter_queue=self.dead_letters,
            retry_attempts=0,
            max_event_age=cdk.Duration.hours(1),
            reserved_concurrent_executions=reserved_concurrency,
        )
        # Lambda checks the queue and network-interface permissions when it creates the function.
        self.function.node.add_dependency(self.policy)
        #: Every policy the custom resource needs attached before it runs.
        self.policies: tuple[iam.ManagedPolicy, ...] = (self.policy,)
        self._acknowledge_wildcards(stack, wildcard_reason, wildcard_resources)
        if reserved_concurrency is None:
            acknowledge_deploy_time_functions(self, purpose)
        drop_implied_depends_on(self)

    def _acknowledge_wildcards(
        self, stack: cdk.Stack, reason: str | None, resources: Sequence[str]
    ) -> None:
        if resources and not reason:
            raise invalid("wildcard_reason", reason, "a reason for the wildcard_resources")
        own = (
            "ec2:DescribeNetworkInterfaces and ec2:DescribeSubnets support no resource-level "
            "permission (Resource '*'); the network interfaces Lambda creates for the function "
            "are limited to its subnet and security group, and get their ids at run time "
            "(network-interface/*); deleting or re-addressing them is granted on every interface "
            "id, the form the Lambda developer guide requires for DeleteNetworkInterface so the "
            "function keeps its VPC access."
        )
        shares_star = "*" in resources
        acknowledge_wildcards(
            self.policy,
            f"{own} {reason}" if shares_star else own,
            resources=["*", network_interface_arns(stack)],
        )
        others = [r for r in resources if r != "*"]
        if others:
            assert reason is not None
            acknowledge_wildcards(self.policy, reason, resources=others)

    @staticmethod
    def _validate(
        reserved: int | None,
        total: cdk.Duration,
        interval: cdk.Duration,
        handler_timeout: cdk.Duration,
    ) -> None:
        if reserved is not None and (
            isinstance(reserved, bool) or not isinstance(reserved, int) or not 1 <= reserved <= 1000
        ):
            raise invalid("reserved_concurrency", reserved, "None or 1 to 1000")
        longest = MAX_SERVICE_TIMEOUT.minus(SERVICE_TIMEOUT_MARGIN).to_seconds()
        if not 60 <= total.to_seconds() <= longest:
            raise invalid(
                "total_timeout",
                f"{total.to_seconds():g} seconds",
                f"from 60 to {longest:g} seconds (CloudFormation waits at most an hour for a "
                f"custom resource, less {SERVICE_TIMEOUT_MARGIN.to_minutes():g} minutes for our "
                "own timeout message)",
            )
        if not 5 <= interval.to_seconds() <= 300:
            raise invalid("query_interval", f"{interval.to_seconds():g} seconds", "5 to 300")
        seconds = handler_timeout.to_seconds()
        if not interval.to_seconds() + _HANDOVER_SECONDS <= seconds <= 900:
            raise invalid(
                "handler_timeout",
                f"{seconds:g} seconds",
                f"from query_interval + {_HANDOVER_SECONDS} s to 900 s (Lambda's longest)",
            )

    @property
    def service_token(self) -> str:
        return self.function.function_arn

    def metric_failures(self, *, period: cdk.Duration | None = None) -> cloudwatch.Metric:
        """FAILED answers to CloudFormation (sum per ``period``, default 5 minutes). The driver
        answers a handler's exception itself, so Lambda's Errors metric does not count them: a
        metric filter on the function's log group counts the driver's failure mark."""
        if self.log_group.node.try_find_child("FailureCount") is None:
            self.log_group.add_metric_filter(
                "FailureCount",
                filter_pattern=logs.FilterPattern.literal(f'"{DEPLOY_TIME_FAILURE_MARK}"'),
                metric_namespace=METRICS_NAMESPACE_DEPLOY_TIME,
                metric_name=self.function_name,
                metric_value="1",
                default_value=0,
            )
        return cloudwatch.Metric(
            namespace=METRICS_NAMESPACE_DEPLOY_TIME,
            metric_name=self.function_name,
            statistic="Sum",
            period=period or cdk.Duration.minutes(5),
        )

    def custom_resource(
        self,
        scope: Construct,
        id: str,
        *,
        resource_type: str,
        properties: Mapping[str, Any],
        service_timeout: cdk.Duration | None = None,
    ) -> cdk.CustomResource:
        """A custom resource served by this provider, run once the function may do its work and
        the VPC's endpoints exist.

        :param service_timeout: CloudFormation's own limit (its backstop when no answer comes).
            Default: the provider's total timeout plus :data:`SERVICE_TIMEOUT_MARGIN`.
        """
        service_timeout = service_timeout or self.total_timeout.plus(SERVICE_TIMEOUT_MARGIN)
        if service_timeout.to_seconds() > MAX_SERVICE_TIMEOUT.to_seconds():
            raise invalid(
                "service_timeout", f"{service_timeout.to_seconds():g} seconds", "at most 3600"
            )
        resource = cdk.CustomResource(
            scope,
            id,
            service_token=self.service_token,
            resource_type=resource_type,
            service_timeout=service_timeout,
            properties=dict(properties),
        )
        resource.node.add_dependency(*self.policies)
        # CloudFormation's first request must already run under retry_attempts=0 and the
        # maximum event age: with Lambda's defaults (2 retries) a timed-out invocation would
        # start the work twice.
        invoke_config = self.function.node.try_find_child("EventInvokeConfig")
        if invoke_config is not None:
            resource.node.add_dependency(invoke_config)
        if self.endpoints:  # one jsii call for all of them, not two per endpoint
            resource.node.add_dependency(*self.endpoints)
        return resource


def network_interface_arns(stack: cdk.Stack) -> str:
    """Every network interface of the account in the stack's region."""
    return stack.format_arn(service="ec2", resource="network-interface", resource_name="*")


def network_interface_statements(
    stack: cdk.Stack, vpc: ec2.IVpc, subnet: ec2.ISubnet, group: ec2.ISecurityGroup
) -> list[iam.PolicyStatement]:
    """What Lambda needs of the function's role to connect it to ``subnet``: the actions of
    AWSLambdaVPCAccessExecutionRole (v3) besides logs.

    Creating an interface is scoped to ``subnet`` and ``group`` (the three resource types
    CreateNetworkInterface authorizes). The Lambda developer guide ("Giving Lambda functions
    access to resources in an Amazon VPC") warns that a function may lose its VPC access unless
    ``ec2:DeleteNetworkInterface`` is granted on a specific interface id or on all resource ids
    (its example: ``arn:aws:ec2:<region>:<account>:*/*``). Delete, Assign and Unassign act on
    network interfaces only, so ``network-interface/*`` is that same grant, with no condition key
    Lambda's own permission check might not evaluate. ``ec2:DescribeNetworkInterfaces`` works
    only on ``*`` (same page)."""
    subnet_arn = stack.format_arn(service="ec2", resource="subnet", resource_name=subnet.subnet_id)
    return [
        iam.PolicyStatement(
            sid="CreateNetworkInterfacesInTheSubnet",
            actions=["ec2:CreateNetworkInterface"],
            resources=[
                network_interface_arns(stack),
                subnet_arn,
                stack.format_arn(
                    service="ec2", resource="security-group", resource_name=group.security_group_id
                ),
            ],
        ),
        iam.PolicyStatement(
            sid="ManageTheFunctionsNetworkInterfaces",
            actions=[
                "ec2:DeleteNetworkInterface",
                "ec2:AssignPrivateIpAddresses",
                "ec2:UnassignPrivateIpAddresses",
            ],
            resources=[network_interface_arns(stack)],
        ),
        iam.PolicyStatement(
            sid="DescribeNetworkInterfacesAndSubnets",
            actions=["ec2:DescribeNetworkInterfaces", "ec2:DescribeSubnets"],
            resources=["*"],
        ),
    ]


def dead_letter_queue(scope: Construct, id: str, encryption_key: kms.IKey) -> sqs.Queue:
    """The dead-letter queue of a function invoked asynchronously: encrypted with
    ``encryption_key``, TLS only, events kept 14 days (SQS's longest)."""
    return sqs.Queue(
        scope,
        id,
        encryption=sqs.QueueEncryption.KMS,
        encryption_master_key=encryption_key,
        enforce_ssl=True,
        retention_period=cdk.Duration.days(14),
    )


def send_dead_letters(queue: sqs.IQueue, encryption_key: kms.IKey) -> list[iam.PolicyStatement]:
    """What a function's role needs to deliver failed events to ``queue`` (Lambda checks
    ``sqs:SendMessage`` when the function is created)."""
    return [
        iam.PolicyStatement(actions=["sqs:SendMessage"], resources=[queue.queue_arn]),
        iam.PolicyStatement(
            actions=["kms:GenerateDataKey", "kms:Decrypt"], resources=[encryption_key.key_arn]
        ),
    ]
