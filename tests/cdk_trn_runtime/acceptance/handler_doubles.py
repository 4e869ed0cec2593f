"""Builders for the handler tests: the handler loaded as Lambda loads it, stubbed AWS clients,
CloudFormation events, and summaries made by the container's own summary code."""

from __future__ import annotations

import datetime as dt
import importlib.util
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3
from botocore.response import StreamingBody
from botocore.stub import Stubber

from cdk_trn_runtime.acceptance import common

ROOT = Path(__file__).resolve().parents[3]
REGION = "us-east-2"
RUN_ID = "acceptancerunresource-0123456789ab"
ASG = "Test-ClusterNodes-1A2B3C4D5E6F"
CLUSTER = "test-cluster"
DOCUMENT = "Test-AcceptanceDocument-a1b2c3d4e5f6"
BUCKET = "test-acceptance-results"
IMAGE = (
    "123456789012.dkr.ecr.us-east-2.amazonaws.com/"
    "cdk-hnb659fds-container-assets-123456789012-us-east-2:" + "a" * 64
)
NOW = 1_800_000_000.0


def load_handler() -> ModuleType:
    """The handler module, as the Lambda runtime imports it."""
    return importlib.import_module("cdk_trn_runtime.acceptance.handler")


def container_summary_module() -> ModuleType:
    """The container's ``cdk_trn_runtime.suite.summary`` (plain Python, no torch)."""
    import cdk_trn_runtime.suite.summary as summary

    return summary


@dataclass
class FakeClock:
    """A clock the test moves by hand."""

    now: float = NOW

    def __call__(self) -> float:
        return self.now


@dataclass
class StubbedAws:
    """Real boto3 clients behind botocore Stubbers: every call is checked against the API model."""

    clients: Any
    ssm: Stubber
    autoscaling: Stubber
    ec2: Stubber
    s3: Stubber
    clock: FakeClock = field(default_factory=FakeClock)

    def assert_all_called(self) -> None:
        for stubber in (self.ssm, self.autoscaling, self.ec2, self.s3):
            stubber.assert_no_pending_responses()


def stubbed_aws() -> StubbedAws:
    """The handlers' clients (``common.Clients``), each behind an active Stubber."""
    clock = FakeClock()
    clients = common.Clients(
        ssm=boto3.client("ssm", region_name=REGION),
        autoscaling=boto3.client("autoscaling", region_name=REGION),
        ec2=boto3.client("ec2", region_name=REGION),
        s3=boto3.client("s3", region_name=REGION),
        clock=clock,
    )
    stubs = StubbedAws(
        clients=clients,
        ssm=Stubber(clients.ssm),
        autoscaling=Stubber(clients.autoscaling),
        ec2=Stubber(clients.ec2),
        s3=Stubber(clients.s3),
        clock=clock,
    )
    for stubber in (stubs.ssm, stubs.autoscaling, stubs.ec2, stubs.s3):
        stubber.activate()
    return stubs


# --- CloudFormation ------------------------------------------------------------------------


def properties(**overrides: Any) -> dict[str, Any]:
    """Resource properties as CloudFormation delivers them: every scalar a string."""
    props: dict[str, Any] = {
        "ServiceToken": "arn:aws:lambda:us-east-2:123456789012:function:Test-Provider",
        "AutoScalingGroupName": ASG,
        "ClusterName": CLUSTER,
        "Nodes": "2",
        "ProcsPerNode": "2",
        "DevicesPerChip": "4",
        "DocumentName": DOCUMENT,
        "ImageUri": IMAGE,
        "ResultsBucket": BUCKET,
        "ResultsPrefix": "acceptance-runs/",
        "CompileCacheDir": "/fsx/neuron-compile-cache",
        "SuiteArgs": "--peak-bf16-tflops 166.75 --peak-hbm-gbps 725 --min-gemm-fraction 0.5",
        "RendezvousPort": "29400",
        "NeuronCommPort": "46820",
        "ExpectedNeuronDevices": "16",
        "ExpectedEfaDevices": "16",
        "RunTimeoutSeconds": "3240",
        "Checks": [
            {"Figure": "gemm_fraction_of_peak", "Min": "0.5", "Unit": "fraction"},
            {"Figure": "hbm_fraction_of_peak", "Min": "0.5", "Unit": "fraction"},
            {"Figure": "graph_compilations_after_warmup", "Max": "0", "Unit": "count"},
        ],
        "ExportedFigures": [
            "gemm_bf16_tflops_per_chip",
            "gemm_fraction_of_peak",
            "allreduce_busbw_gbps",
            "train_tokens_per_s",
            "compile_seconds",
        ],
        "ConfigHash": "c" * 64,
    }
    props.update(overrides)
    return props


def event(request_type: str, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "RequestType": request_type,
        "ServiceToken": "arn:aws:lambda:us-east-2:123456789012:function:Test-Provider",
        "ResponseURL": "https://cloudformation-custom-resource-response-useast2.s3.amazonaws.com/x",
        "StackId": "arn:aws:cloudformation:us-east-2:123456789012:stack/Test/0a1b2c3d",
        "RequestId": "5d1f7a9e-0000-4000-8000-000000000001",
        "LogicalResourceId": "AcceptanceRunResource",
        "ResourceType": "Custom::TrnAcceptanceRun",
        "ResourceProperties": properties(),
    }
    out.update(extra)
    return out


@dataclass(frozen=True)
class NodeDouble:
    instance_id: str
    ip: str
    command_id: str


#: Two nodes, listed here in rendezvous order (sorted by private IP string).
NODES = (
    NodeDouble("i-0bbbbbbbbbbbbbbbb", "10.64.0.12", "11111111-2222-3333-4444-000000000000"),
    NodeDouble("i-0aaaaaaaaaaaaaaaa", "10.64.0.9", "11111111-2222-3333-4444-000000000001"),
)


def run_state(started: float = NOW - 600) -> dict[str, Any]:
    """What on_event hands to is_complete for a run on ``NODES``."""
    return {
        "Run": RUN_ID,
        "Reused": False,
        "StartedAt": started,
        "Deadline": started + 3240,
        "Commands": [
            {
                "rank": r,
                "instance_id": n.instance_id,
                "private_ip": n.ip,
                "command_id": n.command_id,
            }
            for r, n in enumerate(NODES)
        ],
    }


def is_complete_event(**extra: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "PhysicalResourceId": RUN_ID,
        "Data": {"RunId": RUN_ID},
        "AcceptanceRun": run_state(),
    }
    fields.update(extra)
    return event("Create", **fields)


# --- SSM / S3 responses ----------------------------------------------------------------------


def invocation(node: NodeDouble, status: str, *, code: int = 0, finished: float | None = None):
    plugin: dict[str, Any] = {"Name": "runAcceptanceSuite", "Status": status}
    if status not in ("Pending", "InProgress", "Delayed"):
        plugin["ResponseCode"] = code
        plugin["ResponseFinishDateTime"] = dt.datetime.fromtimestamp(
            finished if finished is not None else NOW - 30, tz=dt.UTC
        )
    return {
        "CommandInvocations": [
            {
                "CommandId": node.command_id,
                "InstanceId": node.instance_id,
                "Status": status,
                "StatusDetails": status,
                "CommandPlugins": [plugin],
            }
        ]
    }


def commands(statuses: dict[NodeDouble, str]) -> dict[str, Any]:
    """A ListCommands page: one command per node, as on_event sent them."""
    return {
        "Commands": [
            {
                "CommandId": node.command_id,
                "DocumentName": DOCUMENT,
                "InstanceIds": [node.instance_id],
                "Status": status,
                "StatusDetails": status,
            }
            for node, status in statuses.items()
        ]
    }


def list_commands_params(started: float = NOW - 600) -> dict[str, Any]:
    since = dt.datetime.fromtimestamp(started - 300, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "Filters": [
            {"key": "DocumentName", "value": DOCUMENT},
            {"key": "InvokedAfter", "value": since},
        ],
        "MaxResults": 50,
    }


def list_params(node: NodeDouble) -> dict[str, Any]:
    return {"CommandId": node.command_id, "InstanceId": node.instance_id, "Details": True}


def summary_key(node_rank: int = 0, run_id: str = RUN_ID) -> str:
    return f"acceptance-runs/{run_id}/{node_rank}/summary.json"


def text_body(text: str) -> dict[str, Any]:
    """A ``get_object`` answer holding ``text``."""
    data = text.encode()
    return {"Body": StreamingBody(io.BytesIO(data), len(data)), "ContentLength": len(data)}


def stub_summary(aws: StubbedAws, document: Any) -> None:
    aws.s3.add_response("get_object", body(document), {"Bucket": BUCKET, "Key": summary_key()})


def stub_no_summary(aws: StubbedAws) -> None:
    aws.s3.add_client_error(
        "get_object",
        service_error_code="NoSuchKey",
        http_status_code=404,
        expected_params={"Bucket": BUCKET, "Key": summary_key()},
    )
    aws.s3.add_response(
        "list_objects_v2",
        {"Contents": [], "KeyCount": 0},
        {"Bucket": BUCKET, "Prefix": f"acceptance-runs/{RUN_ID}/"},
    )


def stub_node_group(
    aws: StubbedAws, instances: list[tuple[str, str, str]], current: str = "7"
) -> None:
    """The node group on launch template version ``current``: (instance id, its launch template
    version, its lifecycle state) per instance."""
    from botocore.stub import ANY

    template = {"LaunchTemplateId": "lt-0123"}
    aws.autoscaling.add_response(
        "describe_auto_scaling_groups",
        {
            "AutoScalingGroups": [
                {
                    "AutoScalingGroupName": "nodes-group",
                    "MinSize": 2,
                    "MaxSize": 2,
                    "DesiredCapacity": 2,
                    "DefaultCooldown": 300,
                    "AvailabilityZones": ["us-east-2c"],
                    "HealthCheckType": "EC2",
                    "CreatedTime": "2026-11-25T17:00:00Z",
                    "LaunchTemplate": {**template, "Version": current},
                    "Instances": [
                        {
                            "InstanceId": instance_id,
                            "AvailabilityZone": "us-east-2c",
                            "LifecycleState": state,
                            "HealthStatus": "Healthy",
                            "ProtectedFromScaleIn": False,
                            "LaunchTemplate": {**template, "Version": version},
                        }
                        for instance_id, version, state in instances
                    ],
                }
            ]
        },
        {"AutoScalingGroupNames": [ANY]},
    )


def stub_no_pass_marker(aws: StubbedAws) -> None:
    """No run passed with these properties before (the rollback check finds no marker)."""
    aws.s3.add_client_error("get_object", service_error_code="NoSuchKey", http_status_code=404)


def body(document: Any) -> dict[str, Any]:
    data = json.dumps(document).encode()
    return {"Body": StreamingBody(io.BytesIO(data), len(data)), "ContentLength": len(data)}


# --- summaries made by the container's code -------------------------------------------------------

PEAK_TFLOPS_PER_DEVICE = 166.75
PEAK_HBM_GBPS_PER_DEVICE = 725.0


def rank_result(
    rank: int, world: int, node_ip: str, *, tflops: float = 120.0, run_id: str = RUN_ID
) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "run_id": run_id,
        "rank": rank,
        "world_size": world,
        "local_rank": rank % 2,
        "node": node_ip,
        "platform": "NEURON",
        "discovery": {},
        "gemm": [
            {
                "m": 8192,
                "n": 8192,
                "k": 8192,
                "seconds": 2 * 8192**3 / (tflops * 1e12),
                "tflops": tflops,
                "fraction_of_peak": tflops / PEAK_TFLOPS_PER_DEVICE,
                "numerics": {"checked": True, "rel_error": 0.004},
            }
        ],
        "hbm_copy": {"gbps": 600.0, "fraction_of_peak": 600.0 / PEAK_HBM_GBPS_PER_DEVICE},
        "collectives": [
            {
                "op": op,
                "size_bytes": 1 << 30,
                "seconds": 0.05,
                "algbw_gbps": 21.47,
                "busbw_gbps": 32.21,
                "correct": True,
            }
            for op in ("all_reduce", "all_gather")
        ],
        "training": {
            "loss_drop_fraction": 0.41,
            "first_loss": 6.93,
            "last_loss": 4.09,
            "tokens_per_s": 2048.0,
            "step_ms": 62.5,
            "compilations_after_warmup": 0,
            "measured_steps": 17,
        },
        "compile": {"compile_seconds": 95.5, "compilations": 14},
        "compile_cache": {"new_compilations_with_warm_cache": 0, "dir": "/fsx/cache"},
        "errors": {},
        "failures": [],
    }


def summary(
    *, slow_rank: int | None = None, world: int = 4, run_id: str = RUN_ID
) -> dict[str, Any]:
    """A summary for ``world`` ranks on ``NODES`` (2 per node), built by the container's code."""
    module = container_summary_module()
    from cdk_trn_runtime.suite.thresholds import Thresholds

    results = [
        rank_result(
            rank,
            world,
            NODES[rank // 2].ip,
            tflops=40.0 if rank == slow_rank else 120.0,
            run_id=run_id,
        )
        for rank in range(world)
    ]
    thresholds = Thresholds(
        peak_bf16_tflops=PEAK_TFLOPS_PER_DEVICE, peak_hbm_gbps=PEAK_HBM_GBPS_PER_DEVICE
    )
    return module.build_summary(results, thresholds, run_id=run_id, world_size=world)
