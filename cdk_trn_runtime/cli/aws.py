"""The AWS side of ``cdk-trn``: find the cluster's controller from its stack, run a script there.

Three APIs, through clients the caller passes in (tests pass real clients behind botocore's
Stubber): CloudFormation ``DescribeStacks`` for the stack's outputs, Auto Scaling
``DescribeAutoScalingGroups`` for the controller instance, and SSM ``SendCommand`` /
``GetCommandInvocation`` to run a script on it. No SSH and no open port: SSM only.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

from cdk_trn_runtime.cli.remote import Controller
from cdk_trn_runtime.contract import (
    OUTPUT_CLUSTER_NAME,
    OUTPUT_CODE_ARCHIVE_BUCKET,
    OUTPUT_CONTROLLER_GROUP,
    OUTPUT_DOC_JOB_COMPLETIONS,
    OUTPUT_JOB_USER,
    OUTPUT_NODE_GROUP,
    OUTPUT_NODE_HOURLY_PRICE,
    OUTPUT_SHARED_ROOT,
    OUTPUT_SLURM_CLUSTER,
    SLURM_CONTROLLER_CONTAINER,
)

#: Outputs of the cluster stack every command needs (it finds the controller by them).
REQUIRED_OUTPUTS = (
    OUTPUT_CLUSTER_NAME,
    OUTPUT_CONTROLLER_GROUP,
    OUTPUT_JOB_USER,
    OUTPUT_SHARED_ROOT,
    OUTPUT_SLURM_CLUSTER,
)
#: Every output of the cluster stack a command reads: the required ones, the node group (``cost``,
#: the vault commands' relay), the job completions document (``cost``), one node's hourly price
#: (``cost``; absent when unknown) and the code archive bucket (``submit --code``; absent unless
#: the scheduler allows code archives). TrainiumCluster and SlurmScheduler publish them, in
#: whatever stack they are composed.
CLUSTER_STACK_OUTPUTS = (
    *REQUIRED_OUTPUTS,
    OUTPUT_NODE_GROUP,
    OUTPUT_DOC_JOB_COMPLETIONS,
    OUTPUT_NODE_HOURLY_PRICE,
    OUTPUT_CODE_ARCHIVE_BUCKET,
)
_DONE = frozenset({"Success", "Failed", "Cancelled", "TimedOut", "DeliveryTimedOut"})
#: Seconds SSM may take to deliver a command to the controller (the API's minimum is 30).
DELIVERY_TIMEOUT_SECONDS = 60
#: Polling of GetCommandInvocation: first wait, growth factor, longest wait.
POLL_FIRST_SECONDS = 0.5
POLL_FACTOR = 2.0
POLL_MAX_SECONDS = 4.0


class CliError(Exception):
    """A failure to report in one message, with the exit status the command ends with."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class Aws:
    """The clients and clocks the command uses; tests build one from stubbed clients."""

    cloudformation: Any
    autoscaling: Any
    ssm: Any
    region: str
    s3: Any = None
    profile: str | None = None
    sleep: Callable[[float], None] = time.sleep
    monotonic: Callable[[], float] = time.monotonic
    now: Callable[[], dt.datetime] = field(default=lambda: dt.datetime.now(dt.UTC))

    @classmethod
    def from_session(cls, profile: str | None, region: str | None) -> Aws:
        import boto3
        from botocore.exceptions import ProfileNotFound

        try:
            session = boto3.Session(profile_name=profile, region_name=region)
        except ProfileNotFound as error:
            raise CliError(str(error)) from None
        if not session.region_name:
            raise CliError("no AWS region: pass --region or set AWS_REGION (or a profile's region)")
        return cls(
            cloudformation=session.client("cloudformation"),
            autoscaling=session.client("autoscaling"),
            ssm=session.client("ssm"),
            s3=session.client("s3"),
            region=session.region_name,
            profile=profile,
        )


@dataclass(frozen=True)
class RemoteResult:
    """How a script ended on the controller."""

    command_id: str
    status: str
    exit_code: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.status == "Success"


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def _message(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Message", error))


def stack_outputs(aws: Aws, stack: str) -> dict[str, str]:
    """The stack's outputs, by key."""
    try:
        response = aws.cloudformation.describe_stacks(StackName=stack)
    except ClientError as error:
        if "does not exist" in _message(error):
            raise CliError(
                f"stack {stack} does not exist in {aws.region}: deploy the cluster first, or "
                "name it with --stack and --region"
            ) from None
        raise CliError(f"cannot read stack {stack}: {_message(error)}") from None
    stacks = response.get("Stacks", [])
    if not stacks:
        raise CliError(f"stack {stack} does not exist in {aws.region}")
    return {o["OutputKey"]: o.get("OutputValue", "") for o in stacks[0].get("Outputs", [])}


def find_controller(aws: Aws, stack: str, outputs: dict[str, str] | None = None) -> Controller:
    """The cluster's Slurm controller: the stack's outputs (read unless given), then its group's
    InService instance."""
    outputs = stack_outputs(aws, stack) if outputs is None else outputs
    missing = [key for key in REQUIRED_OUTPUTS if not outputs.get(key)]
    if missing:
        raise CliError(
            f"stack {stack} has no output {', '.join(missing)}: is it a cdk-trn cluster stack "
            "deployed with the Slurm scheduler (-c scheduler=none leaves it out)?"
        )
    group = outputs[OUTPUT_CONTROLLER_GROUP]
    return Controller(
        instance_id=controller_instance(aws, group),
        container=SLURM_CONTROLLER_CONTAINER,
        job_user=outputs[OUTPUT_JOB_USER],
        shared_root=outputs[OUTPUT_SHARED_ROOT],
        slurm_cluster=outputs[OUTPUT_SLURM_CLUSTER],
        cluster_name=outputs[OUTPUT_CLUSTER_NAME],
    )


def controller_instance(aws: Aws, group: str) -> str:
    """The InService instance of the controller's Auto Scaling group (a group of one)."""
    return in_service_instance(aws, group, what="controller")


def in_service_instance(aws: Aws, group: str, *, what: str) -> str:
    """An InService instance of ``group`` (healthy first, then by id); ``what`` names it in
    errors."""
    try:
        response = aws.autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[group])
    except ClientError as error:
        raise CliError(f"cannot read Auto Scaling group {group}: {_message(error)}") from None
    groups = response.get("AutoScalingGroups", [])
    if not groups:
        raise CliError(f"the {what}'s Auto Scaling group {group} does not exist")
    instances = groups[0].get("Instances", [])
    in_service = sorted(
        (i for i in instances if i.get("LifecycleState") == "InService"),
        key=lambda i: (i.get("HealthStatus") != "Healthy", i["InstanceId"]),
    )
    if not in_service:
        seen = ", ".join(f"{i['InstanceId']} {i.get('LifecycleState')}" for i in instances)
        raise CliError(
            f"no InService {what} in Auto Scaling group {group} "
            f"({seen or 'no instances'}): it may be starting or being replaced; see "
            f"aws autoscaling describe-scaling-activities --auto-scaling-group-name {group}"
        )
    return str(in_service[0]["InstanceId"])


def run_document(
    aws: Aws,
    instance_id: str,
    document: str,
    parameters: dict[str, str],
    *,
    comment: str,
    timeout_seconds: int,
) -> RemoteResult:
    """Run the cluster's SSM Command ``document`` (``cdk_trn_runtime/cli/documents.py``; never
    AWS-RunShellScript) with ``parameters`` on the instance and wait for it.

    Polls GetCommandInvocation with a growing wait until the command ends, for at most
    ``timeout_seconds`` plus the delivery time; past that, :class:`CliError` names the command so
    its result can still be looked up.
    """
    try:
        sent = aws.ssm.send_command(
            InstanceIds=[instance_id],
            DocumentName=document,
            Parameters={name: [value] for name, value in parameters.items()},
            TimeoutSeconds=DELIVERY_TIMEOUT_SECONDS,
            Comment=comment[:100],
        )
    except ClientError as error:
        hint = (
            " (is its SSM agent registered? check the SSM VPC endpoints and the instance role)"
            if _code(error) == "InvalidInstanceId"
            else ""
        )
        if _code(error) == "InvalidDocument":
            hint = f" (is {document} deployed? update the cluster stack)"
        raise CliError(
            f"cannot send {document} to {instance_id}: {_message(error)}{hint}"
        ) from None
    command_id = str(sent["Command"]["CommandId"])
    deadline = aws.monotonic() + timeout_seconds + DELIVERY_TIMEOUT_SECONDS
    wait = POLL_FIRST_SECONDS
    status = "Pending"
    while True:
        aws.sleep(wait)
        wait = min(wait * POLL_FACTOR, POLL_MAX_SECONDS)
        try:
            invocation = aws.ssm.get_command_invocation(
                CommandId=command_id, InstanceId=instance_id
            )
        except ClientError as error:
            # Right after SendCommand the invocation may not exist yet.
            if _code(error) != "InvocationDoesNotExist":
                raise CliError(f"cannot read SSM command {command_id}: {_message(error)}") from None
        else:
            status = str(invocation.get("Status", ""))
            if status in _DONE:
                return RemoteResult(
                    command_id=command_id,
                    status=status,
                    exit_code=int(invocation.get("ResponseCode", -1)),
                    stdout=str(invocation.get("StandardOutputContent", "")),
                    stderr=str(invocation.get("StandardErrorContent", "")),
                )
        if aws.monotonic() >= deadline:
            raise CliError(
                f"no result from the controller {instance_id} after {timeout_seconds} s "
                f"(SSM command {command_id}, status {status}); see aws ssm "
                f"get-command-invocation --command-id {command_id} --instance-id {instance_id}",
                exit_code=124,
            )


def failure_message(result: RemoteResult, what: str) -> str:
    """One message for a remote script that did not succeed: the remote stderr, else status."""
    detail = result.stderr.strip() or result.stdout.strip()
    head = f"{what} failed on the controller ({result.status}, exit {result.exit_code})"
    return f"{head}:\n{detail}" if detail else head


def exit_code(result: RemoteResult) -> int:
    """The command's exit status for a failed remote script: the script's own when it has one."""
    return result.exit_code if 0 < result.exit_code < 256 else 1


def session_argv(
    aws: Aws, instance_id: str, document: str, *, aws_cli: str = "aws"
) -> Sequence[str]:
    """``aws ssm start-session`` with the cluster's Session ``document``, whose command is fixed
    (a login shell as the job user): no free-form command is ever sent."""
    argv = [
        aws_cli,
        "ssm",
        "start-session",
        "--target",
        instance_id,
        "--document-name",
        document,
        "--region",
        aws.region,
    ]
    if aws.profile:
        argv += ["--profile", aws.profile]
    return argv
