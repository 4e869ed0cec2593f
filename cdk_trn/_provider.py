"""The one deploy-time custom-resource provider of cdk-trn (internal).

Used by ``AcceptanceRun`` and the enclave image build (``EifBuild``): two Python handlers
(on-event and is-complete) in ``cdk_trn_runtime.<subpackage>``, behind aws-cdk-lib's
``custom_resources.Provider`` and its waiter state machine. Decided once, here:

* Permissions: every function runs as a role of ours whose only permissions are one customer
  managed policy (no inline policy, no ``AWSLambdaBasicExecutionRole``): write its own log group,
  plus what the caller lists. The framework's roles are closed to CDK's grants
  (``without_policy_updates``); what the framework may do is in our policies too. The one
  exception is the waiter state machine's role, which the Provider builds itself.
* Logs: one log group per function and one for the waiter, encrypted with the caller's KMS key,
  retained, with one retention type (``logs.RetentionDays``).
* Runtime: Python 3.14 on arm64, code from ``cdk_trn._runtime.runtime_lambda_code``.
* No reserved concurrency unless asked for: reserving it fails the deploy in accounts whose
  Lambda concurrency limit is low (new accounts), for functions that run a few times per deploy.
* Ordering: the custom resource runs only once every policy is attached (managed policies attach
  beside the roles, so nothing else orders them); the ``DependsOn`` edges a ``GetAtt`` already
  implies are dropped by ``cdk_trn.compliance.drop_implied_depends_on``.
* The regulated packs' Lambda rules are acknowledged once, in
  :func:`acknowledge_deploy_time_functions`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import aws_cdk as cdk
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_sqs as sqs
from aws_cdk import aws_stepfunctions as sfn
from aws_cdk import custom_resources as cr
from constructs import Construct, IConstruct

from cdk_trn._runtime import runtime_lambda_code
from cdk_trn.compliance.acknowledge import (
    acknowledge,
    acknowledge_regulated,
    acknowledge_wildcards,
)
from cdk_trn.compliance.depends_on import drop_implied_depends_on
from cdk_trn.errors import invalid


def acknowledge_deploy_time_functions(
    construct: IConstruct,
    purpose: str,
    *,
    framework_inline_policies: bool = True,
    synchronous_functions: bool = True,
) -> None:
    """Acknowledge the regulated packs' Lambda rules on a custom resource's functions.

    ``construct`` is the custom resource's scope (its provider and handler functions);
    ``purpose`` says what the functions do, for the reasons; ``framework_inline_policies``:
    whether aws-cdk-lib's provider framework (which writes inline policies) is part of it;
    ``synchronous_functions``: whether it has functions invoked synchronously (without a
    dead-letter queue).
    """
    acknowledge_regulated(
        construct,
        "LambdaInsideVPC",
        f"deploy-time handler ({purpose}) that calls only AWS control-plane APIs and never "
        "touches training data; it runs outside the isolated node subnet, which has no route to "
        "those APIs' endpoints",
    )
    if synchronous_functions:
        acknowledge_regulated(
            construct,
            "LambdaDLQ",
            f"deploy-time handler ({purpose}) invoked synchronously (by the provider framework "
            "or its waiter state machine), which reports every failure to CloudFormation; a "
            "dead-letter queue receives only failed asynchronous events, so it would never "
            "receive one (the function CloudFormation invokes asynchronously has one)",
        )
    acknowledge_regulated(
        construct,
        "LambdaConcurrency",
        f"deploy-time handler ({purpose}) that runs a few times per deploy; reserved concurrency "
        "would only take capacity from the account's pool, and fails the deploy in accounts "
        "whose Lambda concurrency limit is low",
    )
    if not framework_inline_policies:
        return
    acknowledge_regulated(
        construct,
        "IAMNoInlinePolicy",
        f"aws-cdk-lib's custom-resource framework ({purpose}) writes its roles' policies inline, "
        "each scoped to this custom resource's functions and the resources it manages",
    )


class DeployTimeProvider(Construct):
    """On-event and is-complete handlers behind a ``custom_resources.Provider``.

    :param purpose: what the handlers do, for descriptions and acknowledgment reasons.
    :param subpackage: the ``cdk_trn_runtime`` subpackage holding the handler module.
    :param handler_module: the module, e.g. ``cdk_trn_runtime.acceptance.handler``; its
        ``on_event`` and ``is_complete`` functions are the handlers.
    :param on_event_statements: what the on-event handler may do besides writing its logs.
    :param is_complete_statements: what the is-complete handler may do besides writing its logs.
    :param encryption_key: KMS key of every log group (must allow CloudWatch Logs).
    :param total_timeout: how long the framework waits for is-complete.
    :param query_interval: how often is-complete is called.
    :param handler_timeout: each handler invocation's timeout. Default: 1 minute.
    :param log_retention: retention of every log group. Default: one year.
    :param reserved_concurrency: reserved concurrent executions of each function. Default: none
        (reserving fails the deploy in accounts with a low Lambda concurrency limit).
    """

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        purpose: str,
        subpackage: str,
        handler_module: str,
        on_event_statements: Sequence[iam.PolicyStatement],
        is_complete_statements: Sequence[iam.PolicyStatement],
        encryption_key: kms.IKey,
        total_timeout: cdk.Duration,
        query_interval: cdk.Duration,
        handler_timeout: cdk.Duration | None = None,
        log_retention: logs.RetentionDays = logs.RetentionDays.ONE_YEAR,
        reserved_concurrency: int | None = None,
    ) -> None:
        super().__init__(scope, id)
        if reserved_concurrency is not None and (
            isinstance(reserved_concurrency, bool)
            or not isinstance(reserved_concurrency, int)
            or not 1 <= reserved_concurrency <= 1000
        ):
            raise invalid("reserved_concurrency", reserved_concurrency, "None or 1 to 1000")
        self.purpose = purpose
        self._key = encryption_key
        self._retention = log_retention
        self._reserved = reserved_concurrency
        handler_timeout = handler_timeout or cdk.Duration.minutes(1)

        self.on_event, self.on_event_policy = self._handler(
            "OnEvent", f"{handler_module}.on_event", subpackage, handler_timeout,
            on_event_statements,
        )  # fmt: skip
        self.is_complete, self.is_complete_policy = self._handler(
            "IsComplete", f"{handler_module}.is_complete", subpackage, handler_timeout,
            is_complete_statements,
        )  # fmt: skip

        #: CloudFormation invokes the framework's on-event function asynchronously: an event
        #: that fails every retry lands here instead of vanishing.
        self.dead_letters = dead_letter_queue(self, "DeadLetters", encryption_key)
        framework_logs = self._log_group("FrameworkLogs")
        waiter_logs = self._log_group("WaiterLogs")
        on_event_role = self._role("FrameworkOnEventRole", "the framework's on-event function")
        wait_role = self._role("FrameworkWaitRole", "the framework's is-complete and timeout")
        self.provider = cr.Provider(
            self,
            "Provider",
            on_event_handler=self.on_event,
            is_complete_handler=self.is_complete,
            query_interval=query_interval,
            total_timeout=total_timeout,
            log_group=framework_logs,
            framework_on_event_role=on_event_role.without_policy_updates(),
            framework_complete_and_timeout_role=wait_role.without_policy_updates(),
            disable_waiter_state_machine_logging=False,
            waiter_state_machine_log_options=cr.LogOptions(
                destination=waiter_logs,
                level=sfn.LogLevel.ALL,
                # The waiter's input carries CloudFormation's pre-signed response URL.
                include_execution_data=False,
            ),
        )
        waiter = self._waiter()
        self.framework_on_event_policy = iam.ManagedPolicy(
            self,
            "FrameworkOnEventPolicy",
            description=f"cdk-trn {purpose}: the provider framework's on-event function",
            roles=[on_event_role],
            statements=[
                _write_logs(framework_logs),
                _invoke(self.on_event),
                iam.PolicyStatement(
                    actions=["states:StartExecution"], resources=[waiter.state_machine_arn]
                ),
                *send_dead_letters(self.dead_letters, encryption_key),
            ],
        )
        self.framework_wait_policy = iam.ManagedPolicy(
            self,
            "FrameworkWaitPolicy",
            description=f"cdk-trn {purpose}: the provider framework's is-complete and timeout "
            "functions",
            roles=[wait_role],
            statements=[_write_logs(framework_logs), _invoke(self.is_complete)],
        )
        #: Every policy the custom resource needs attached before it runs.
        self.policies: tuple[iam.ManagedPolicy, ...] = (
            self.on_event_policy,
            self.is_complete_policy,
            self.framework_on_event_policy,
            self.framework_wait_policy,
        )
        framework_functions = [
            c for c in self.provider.node.find_all() if isinstance(c, lambda_.Function)
        ]
        for function in framework_functions:
            # A framework function runs only once its role's policy is attached.
            role_arn = function.role.role_arn if function.role is not None else None
            policy = (
                self.framework_on_event_policy
                if cdk.Stack.of(self).resolve(role_arn)
                == cdk.Stack.of(self).resolve(on_event_role.role_arn)
                else self.framework_wait_policy
            )
            function.node.add_dependency(policy)
            self._reserve(function)
            if policy is self.framework_on_event_policy:
                _set_dead_letter_queue(function, self.dead_letters)
        self._acknowledge(waiter, framework_functions, wait_role)
        drop_implied_depends_on(self)

    @property
    def service_token(self) -> str:
        return self.provider.service_token

    def custom_resource(
        self,
        scope: Construct,
        id: str,
        *,
        resource_type: str,
        properties: Mapping[str, Any],
        service_timeout: cdk.Duration,
    ) -> cdk.CustomResource:
        """A custom resource served by this provider, run once every policy is attached."""
        resource = cdk.CustomResource(
            scope,
            id,
            service_token=self.service_token,
            resource_type=resource_type,
            service_timeout=service_timeout,
            properties=dict(properties),
        )
        resource.node.add_dependency(*self.policies)
        return resource

    # --- parts ----------------------------------------------------------------------------

    def _log_group(self, id: str) -> logs.LogGroup:
        return logs.LogGroup(
            self,
            id,
            retention=self._retention,
            encryption_key=self._key,
            removal_policy=cdk.RemovalPolicy.RETAIN,
        )

    def _role(self, id: str, what: str) -> iam.Role:
        return iam.Role(
            self,
            id,
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description=f"cdk-trn {self.purpose}: {what}",
        )

    def _handler(
        self,
        id: str,
        handler: str,
        subpackage: str,
        timeout: cdk.Duration,
        statements: Sequence[iam.PolicyStatement],
    ) -> tuple[lambda_.Function, iam.ManagedPolicy]:
        entry = handler.rsplit(".", 1)[1]
        log_group = self._log_group(f"{id}Logs")
        role = self._role(f"{id}Role", f"the {entry} handler")
        policy = iam.ManagedPolicy(
            self,
            f"{id}Policy",
            description=f"cdk-trn {self.purpose}: the {entry} handler",
            roles=[role],
            statements=[_write_logs(log_group), *statements],
        )
        function = lambda_.Function(
            self,
            id,
            runtime=lambda_.Runtime.PYTHON_3_14,
            architecture=lambda_.Architecture.ARM_64,
            handler=handler,
            code=runtime_lambda_code(subpackage),
            role=role.without_policy_updates(),
            timeout=timeout,
            memory_size=256,
            log_group=log_group,
            description=f"cdk-trn {self.purpose}: {entry}",
        )
        function.node.add_dependency(policy)
        self._reserve(function)
        return function, policy

    def _reserve(self, function: lambda_.Function) -> None:
        if self._reserved is None:
            return
        cfn_function = function.node.default_child
        assert isinstance(cfn_function, lambda_.CfnFunction)
        # L1: the Provider has no prop for the concurrency of its own functions.
        cfn_function.reserved_concurrent_executions = self._reserved

    def _waiter(self) -> cr.WaiterStateMachine:
        waiters = [c for c in self.provider.node.find_all() if isinstance(c, cr.WaiterStateMachine)]
        assert len(waiters) == 1, "a Provider with an is-complete handler has one waiter"
        return waiters[0]

    def _acknowledge(
        self,
        waiter: cr.WaiterStateMachine,
        framework_functions: list[lambda_.Function],
        wait_role: iam.Role,
    ) -> None:
        stack = cdk.Stack.of(self)
        acknowledge_wildcards(
            self.framework_on_event_policy,
            "The provider framework invokes the on-event handler by any version (<ARN>:*); "
            "that is this provider's one function.",
            resources=[f"{self.on_event.function_arn}:*"],
        )
        acknowledge_wildcards(
            self.framework_wait_policy,
            "The provider framework invokes the is-complete handler by any version (<ARN>:*); "
            "that is this provider's one function.",
            resources=[f"{self.is_complete.function_arn}:*"],
        )
        waited_on = [
            f
            for f in framework_functions
            if f.role is not None
            and stack.resolve(f.role.role_arn) == stack.resolve(wait_role.role_arn)
        ]
        acknowledge_wildcards(
            waiter,
            "Step Functions log delivery (logs:CreateLogDelivery and the others) supports no "
            "resource-level permission; the waiter invokes its own framework functions by any "
            "version (<ARN>:*) and nothing else.",
            resources=["*", *(f"{f.function_arn}:*" for f in waited_on)],
        )
        acknowledge(
            waiter,
            "AwsSolutions-SF2",
            "The CDK Provider framework's waiter state machine offers no X-Ray tracing option; "
            "it only polls the is-complete handler, whose own logs and the ALL-level state "
            "machine log cover each attempt.",
        )
        acknowledge_deploy_time_functions(self, self.purpose)


def dead_letter_queue(scope: Construct, id: str, encryption_key: kms.IKey) -> sqs.Queue:
    """The dead-letter queue of a function CloudFormation invokes asynchronously: encrypted with
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


def _set_dead_letter_queue(function: lambda_.Function, queue: sqs.IQueue) -> None:
    # L1: the Provider has no prop for its own functions' dead-letter queue.
    cfn_function = function.node.default_child
    assert isinstance(cfn_function, lambda_.CfnFunction)
    cfn_function.dead_letter_config = lambda_.CfnFunction.DeadLetterConfigProperty(
        target_arn=queue.queue_arn
    )


def _write_logs(log_group: logs.LogGroup) -> iam.PolicyStatement:
    # The log group's Arn attribute ends in ":*", which covers its streams.
    return iam.PolicyStatement(
        actions=["logs:CreateLogStream", "logs:PutLogEvents"], resources=[log_group.log_group_arn]
    )


def _invoke(function: lambda_.IFunction) -> iam.PolicyStatement:
    return iam.PolicyStatement(
        actions=["lambda:InvokeFunction"],
        resources=[function.function_arn, f"{function.function_arn}:*"],
    )
