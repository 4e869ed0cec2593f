"""Builders for the ``cdk-trn`` AWS tests: real boto3 clients behind botocore Stubbers (every
request and response is checked against the service's API model; no network), a clock the
command's waits move, and the stack, group and SSM answers of a deployed cluster."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import boto3
from botocore.stub import Stubber

from cdk_trn_runtime.cli import remote
from cdk_trn_runtime.cli.aws import DELIVERY_TIMEOUT_SECONDS, Aws
from cdk_trn_runtime.contract import (
    OUTPUT_CLUSTER_NAME,
    OUTPUT_CONTROLLER_GROUP,
    OUTPUT_JOB_USER,
    OUTPUT_SHARED_ROOT,
    OUTPUT_SLURM_CLUSTER,
    SLURM_CONTROLLER_CONTAINER,
)

REGION = "us-east-2"
STACK = "trn-cluster"
GROUP = "trn-cluster-SlurmController-1A2B3C4D5E6F"
INSTANCE = "i-0123456789abcdef0"
COMMAND = "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0"
NOW = dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=dt.UTC)
CLUSTER_NAME = "trn-cluster"
OUTPUTS = {
    OUTPUT_CLUSTER_NAME: CLUSTER_NAME,
    OUTPUT_CONTROLLER_GROUP: GROUP,
    OUTPUT_JOB_USER: "trn",
    OUTPUT_SHARED_ROOT: "/fsx",
    OUTPUT_SLURM_CLUSTER: "trn",
}
CONTROLLER = remote.Controller(
    instance_id=INSTANCE,
    container=SLURM_CONTROLLER_CONTAINER,
    job_user="trn",
    shared_root="/fsx",
    slurm_cluster="trn",
    cluster_name=CLUSTER_NAME,
)


@dataclass
class FakeClock:
    """Monotonic time that only the command's sleeps move; the sleeps are recorded."""

    now: float = 1000.0
    sleeps: list[float] = field(default_factory=list)

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@dataclass
class StubbedAws:
    aws: Aws
    cloudformation: Stubber
    autoscaling: Stubber
    ssm: Stubber
    s3: Stubber
    clock: FakeClock
    sent_documents: list[Any] = field(default_factory=list)

    def assert_all_called(self) -> None:
        for stubber in (self.cloudformation, self.autoscaling, self.ssm, self.s3):
            stubber.assert_no_pending_responses()

    # --- CloudFormation and Auto Scaling ----------------------------------------------------

    def stack(self, outputs: dict[str, str] | None = None, stack: str = STACK) -> None:
        self.cloudformation.add_response(
            "describe_stacks",
            {
                "Stacks": [
                    {
                        "StackName": stack,
                        "CreationTime": NOW,
                        "StackStatus": "CREATE_COMPLETE",
                        "Outputs": [
                            {"OutputKey": k, "OutputValue": v}
                            for k, v in (OUTPUTS if outputs is None else outputs).items()
                        ],
                    }
                ]
            },
            {"StackName": stack},
        )

    def no_stack(self, stack: str = STACK) -> None:
        self.cloudformation.add_client_error(
            "describe_stacks",
            service_error_code="ValidationError",
            service_message=f"Stack with id {stack} does not exist",
            http_status_code=400,
            expected_params={"StackName": stack},
        )

    def group(self, instances: list[tuple[str, str]] | None = None, name: str = GROUP) -> None:
        members = [(INSTANCE, "InService")] if instances is None else instances
        self.autoscaling.add_response(
            "describe_auto_scaling_groups",
            {
                "AutoScalingGroups": [
                    {
                        "AutoScalingGroupName": name,
                        "MinSize": 1,
                        "MaxSize": 1,
                        "DesiredCapacity": 1,
                        "DefaultCooldown": 300,
                        "AvailabilityZones": ["us-east-2c"],
                        "HealthCheckType": "EC2",
                        "CreatedTime": NOW,
                        "Instances": [
                            {
                                "InstanceId": instance,
                                "AvailabilityZone": "us-east-2c",
                                "LifecycleState": state,
                                "HealthStatus": "Healthy",
                                "ProtectedFromScaleIn": False,
                            }
                            for instance, state in members
                        ],
                    }
                ]
            },
            {"AutoScalingGroupNames": [name]},
        )

    def cluster(self) -> None:
        self.stack()
        self.group()

    # --- SSM ----------------------------------------------------------------------------------

    def send(
        self,
        invocation: tuple[str, dict[str, str]] | None,
        comment: str,
        timeout: int = 120,
        cluster: str = CLUSTER_NAME,
    ) -> None:
        """SendCommand of the document of the cluster named ``cluster`` for ``invocation`` (any,
        when None): never AWS-RunShellScript, which the stubbed request would not match."""
        from botocore.stub import ANY

        from cdk_trn_runtime.contract import researcher_document

        document: Any = ANY
        parameters: Any = ANY
        if invocation is not None:
            action, values = invocation
            document = researcher_document(cluster, action)
            parameters = {name: [value] for name, value in values.items()}
        self.ssm.add_response(
            "send_command",
            {"Command": {"CommandId": COMMAND, "DocumentName": "cdk-trn-document"}},
            {
                "InstanceIds": [INSTANCE],
                "DocumentName": document,
                "Parameters": parameters,
                "TimeoutSeconds": DELIVERY_TIMEOUT_SECONDS,
                "Comment": comment,
            },
        )
        self.sent_documents.append(document)

    def invocation(self, status: str, code: int = 0, stdout: str = "", stderr: str = "") -> None:
        response: dict[str, Any] = {
            "CommandId": COMMAND,
            "InstanceId": INSTANCE,
            "Status": status,
            "ResponseCode": code if status not in ("Pending", "InProgress") else -1,
            "StandardOutputContent": stdout,
            "StandardErrorContent": stderr,
        }
        self.ssm.add_response(
            "get_command_invocation", response, {"CommandId": COMMAND, "InstanceId": INSTANCE}
        )

    def invocation_not_yet(self) -> None:
        self.ssm.add_client_error(
            "get_command_invocation",
            service_error_code="InvocationDoesNotExist",
            http_status_code=400,
            expected_params={"CommandId": COMMAND, "InstanceId": INSTANCE},
        )

    def run(
        self,
        invocation: tuple[str, dict[str, str]] | None,
        comment: str,
        stdout: str = "",
        **kw: Any,
    ) -> None:
        """One remote command that succeeds at the first poll."""
        self.send(invocation, comment)
        self.invocation("Success", 0, stdout, **kw)


def stubbed_aws() -> StubbedAws:
    clock = FakeClock()
    aws = Aws(
        cloudformation=boto3.client("cloudformation", region_name=REGION),
        autoscaling=boto3.client("autoscaling", region_name=REGION),
        ssm=boto3.client("ssm", region_name=REGION),
        s3=boto3.client("s3", region_name=REGION),
        region=REGION,
        sleep=clock.sleep,
        monotonic=clock.monotonic,
        now=lambda: NOW,
    )
    stubs = StubbedAws(
        aws=aws,
        cloudformation=Stubber(aws.cloudformation),
        autoscaling=Stubber(aws.autoscaling),
        ssm=Stubber(aws.ssm),
        s3=Stubber(aws.s3),
        clock=clock,
    )
    for stubber in (stubs.cloudformation, stubs.autoscaling, stubs.ssm, stubs.s3):
        stubber.activate()
    return stubs
