"""A node below threshold on a Slurm cluster, against stubbed AWS clients. The summary is written
by the job user's run, so any job of that user can forge it: a node is replaced only if Slurm
allocated it to the run's job (the controller writes the job's nodes to S3 after it, as root),
and only once Slurm reports it drained without a job (a drain-only command that writes each
node's state and jobs to S3); a node in the run that a user's job took since stays drained and
is named, never terminated."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.stub import ANY

from cdk_trn_runtime.acceptance import common, slurm_launcher
from cdk_trn_runtime.contract import CLUSTER_TAG
from cdk_trn_runtime.contract.acceptance import RUN_NODES_KEY
from tests.cdk_trn_runtime.acceptance.handler_doubles import (
    BUCKET,
    CLUSTER,
    DOCUMENT,
    RUN_ID,
    load_handler,
    summary,
    text_body,
)
from tests.cdk_trn_runtime.acceptance.test_slurm_launcher import (
    CONTROLLER,
    slurm_is_complete_event,
    slurm_properties,
    stub_controller_group,
    stub_controller_instance,
    stub_failed_invocation,
    stub_status,
    stub_summary,
)

handler = load_handler()

SLOW = ("i-0aaaaaaaaaaaaaaaa", "10.64.0.9")  # rank 3 of summary(slow_rank=3)
OTHER = "10.64.0.12"
#: A node running someone's job, never part of the run.
VICTIM = ("i-0eeeeeeeeeeeeeeee", "10.64.7.77")
DRAIN_COMMAND = "dddddddd-2222-3333-4444-000000000000"


def forged(address: str) -> dict[str, Any]:
    """A summary a job of the job user could write: a node-local failure of ``address``."""
    return {
        "schema_version": 1,
        "run_id": RUN_ID,
        "passed": False,
        "failures": [{"check": "gemm_numerics", "node": address, "message": "forged by a job"}],
        "figures": {},
    }


def stub_failed_run(aws, document: dict[str, Any], ran_on: str | None) -> None:
    """The job failed; its summary is ``document``; the controller wrote the job's nodes
    ``ran_on`` (comma-separated here) to S3 (no such object when None). The handler reads no
    node list from the command's output, which the job's log shares."""
    stub_status(aws, "Failed")
    stub_failed_invocation(aws, 1, stderr=None)
    stub_summary(aws, document)
    key = f"acceptance-runs/{RUN_ID}/{RUN_NODES_KEY}"
    if ran_on is None:
        aws.s3.add_client_error(
            "get_object",
            service_error_code="NoSuchKey",
            http_status_code=404,
            expected_params={"Bucket": BUCKET, "Key": key},
        )
    else:
        aws.s3.add_response(
            "get_object",
            text_body("".join(a + "\n" for a in ran_on.split(",") if a)),
            {"Bucket": BUCKET, "Key": key},
        )


def stub_found(aws, node: tuple[str, str]) -> None:
    aws.ec2.add_response(
        "describe_instances",
        {"Reservations": [{"Instances": [{"InstanceId": node[0], "PrivateIpAddress": node[1]}]}]},
        {
            "Filters": [
                {"Name": "private-ip-address", "Values": [node[1]]},
                {"Name": f"tag:{CLUSTER_TAG}", "Values": [CLUSTER]},
                {"Name": "tag:aws:autoscaling:groupName", "Values": [ANY]},
            ]
        },
    )


def stub_drain_sent(aws, address: str) -> None:
    stub_controller_group(aws, [CONTROLLER.instance_id])
    stub_controller_instance(aws)
    props = common.parse_properties(slurm_properties())
    # The list goes through the run's results prefix, not an SSM parameter.
    aws.s3.add_response(
        "put_object",
        {},
        {
            "Bucket": BUCKET,
            "Key": f"acceptance-runs/{RUN_ID}/control/drain-replace.addresses",
            "Body": f"{address}\n".encode(),
            "ContentType": "text/plain",
        },
    )
    aws.ssm.add_response(
        "send_command",
        {"Command": {"CommandId": DRAIN_COMMAND}},
        {
            "InstanceIds": [CONTROLLER.instance_id],
            "DocumentName": DOCUMENT,
            "Parameters": {
                **slurm_launcher.slurm_command_parameters(props, RUN_ID, "us-east-2"),
                "DrainList": ["control/drain-replace"],
                "DrainFor": ["replace"],
            },
            "TimeoutSeconds": common.DELIVERY_TIMEOUT_SECONDS,
            "Comment": ANY,
        },
    )


def stub_drain_report(aws, lines: list[str]) -> None:
    aws.ssm.add_response(
        "list_command_invocations",
        {
            "CommandInvocations": [
                {
                    "CommandId": DRAIN_COMMAND,
                    "InstanceId": CONTROLLER.instance_id,
                    "Status": "Success",
                    "StatusDetails": "Success",
                    "CommandPlugins": [{"Name": "submitAcceptanceJob", "Status": "Success"}],
                }
            ]
        },
        {"CommandId": DRAIN_COMMAND, "InstanceId": CONTROLLER.instance_id, "Details": True},
    )
    # The report is read from S3 (SSM cuts a command's output at 24,000 characters).
    aws.s3.add_response(
        "get_object",
        text_body("".join(line + "\n" for line in lines)),
        {"Bucket": BUCKET, "Key": f"acceptance-runs/{RUN_ID}/control/drain-replace.report"},
    )


def drained(aws) -> dict[str, Any]:
    """The first is_complete: the slow node of the run is drained; the next event."""
    stub_failed_run(aws, summary(slow_rank=3), f"{OTHER},{SLOW[1]}")
    stub_found(aws, SLOW)
    stub_drain_sent(aws, SLOW[1])
    result = handler.is_complete(slurm_is_complete_event(), clients=aws.clients)
    assert result["IsComplete"] is False
    # Nothing is marked Unhealthy before Slurm has said the node is drained without a job.
    assert [n["InstanceId"] for n in result["AcceptanceRun"]["ReplaceDrain"]["Nodes"]] == [SLOW[0]]
    return {**slurm_is_complete_event(), "AcceptanceRun": result["AcceptanceRun"]}


def test_a_node_of_the_run_slurm_reports_drained_without_a_job_is_replaced(aws):
    ev = drained(aws)
    stub_drain_report(aws, [f"cdk-trn refresh: {SLOW[1]} ip-10-64-0-9 drained -"])
    aws.autoscaling.add_response(
        "set_instance_health",
        {},
        {"InstanceId": SLOW[0], "HealthStatus": "Unhealthy", "ShouldRespectGracePeriod": False},
    )
    result = handler.is_complete(ev, clients=aws.clients)
    assert result["IsComplete"] is False
    state = result["AcceptanceRun"]
    assert state["Replacing"] is True
    assert state["Round"] == 1
    assert [r["InstanceId"] for r in state["Replaced"]] == [SLOW[0]]
    assert "ReplaceDrain" not in state


def test_a_node_of_the_run_slurm_reports_busy_is_not_marked_unhealthy(aws):
    ev = drained(aws)
    # A user's job landed on it between the run and the drain: drained, but still running it.
    stub_drain_report(aws, [f"cdk-trn refresh: {SLOW[1]} ip-10-64-0-9 draining 77"])
    with pytest.raises(common.AcceptanceRunError) as error:
        handler.is_complete(ev, clients=aws.clients)  # no set_instance_health stub
    reason = str(error.value)
    assert f"{SLOW[0]} ({SLOW[1]}) below threshold" in reason
    assert "not replaced: Slurm reports it draining, jobs 77; left drained in Slurm" in reason
    assert "gemm_fraction_of_peak" in reason  # the run's own failure, still said


def test_a_node_slurm_does_not_report_is_not_marked_unhealthy(aws):
    ev = drained(aws)
    stub_drain_report(aws, [])
    with pytest.raises(common.AcceptanceRunError, match="Slurm did not report it"):
        handler.is_complete(ev, clients=aws.clients)


def test_a_summary_naming_a_node_outside_the_run_replaces_nothing(aws):
    # The attack: a job of the job user overwrote summary.json naming a busy node's address.
    stub_failed_run(aws, forged(VICTIM[1]), f"{SLOW[1]},{OTHER}")
    # No describe_instances, no drain, no set_instance_health: the run fails, naming what the
    # results say.
    with pytest.raises(common.AcceptanceRunError) as error:
        handler.is_complete(slurm_is_complete_event(), clients=aws.clients)
    assert "forged by a job" in str(error.value)


def test_without_slurms_node_list_nothing_is_replaced(aws):
    # The controller wrote no list of the job's nodes: nothing is replaced.
    stub_failed_run(aws, summary(slow_rank=3), None)
    with pytest.raises(common.AcceptanceRunError, match="gemm_fraction_of_peak"):
        handler.is_complete(slurm_is_complete_event(), clients=aws.clients)


def test_an_empty_node_list_replaces_nothing(aws):
    # Slurm did not say which nodes the job had: the controller wrote an empty list.
    stub_failed_run(aws, summary(slow_rank=3), "")
    with pytest.raises(common.AcceptanceRunError, match="gemm_fraction_of_peak"):
        handler.is_complete(slurm_is_complete_event(), clients=aws.clients)


def test_the_run_nodes_list_is_read_strictly():
    parse = slurm_launcher.parse_run_nodes
    assert parse("x\n") == set()
    assert parse("") == set()
    assert parse("10.0.0.1\n10.0.0.2\n") == {"10.0.0.1", "10.0.0.2"}
    assert parse("10.0.0.1\n$(x)\n10.0.0.300\n10.0.0.2,10.0.0.3\n") == {"10.0.0.1"}
