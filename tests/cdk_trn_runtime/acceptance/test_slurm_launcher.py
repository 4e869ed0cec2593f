"""The handlers' Slurm launcher against stubbed AWS clients (botocore Stubber, no network): the
command goes to the controller only, is polled, and its outcome (success, a failed job, a suite
that failed a threshold, the deadline) becomes the resource's result."""

from __future__ import annotations

import copy
import datetime as dt

import pytest
from botocore.stub import ANY

from cdk_trn.acceptance.document import SLURM_DOCUMENT_PARAMETERS
from cdk_trn_runtime.acceptance import common, slurm_launcher
from cdk_trn_runtime.contract import CLUSTER_TAG, SLURM_CONTROLLER_CONTAINER
from tests.cdk_trn_runtime.acceptance.handler_doubles import (
    BUCKET,
    CLUSTER,
    DOCUMENT,
    IMAGE,
    NOW,
    RUN_ID,
    NodeDouble,
    event,
    list_commands_params,
    load_handler,
    properties,
    stub_no_pass_marker,
    stub_no_summary,
    stub_node_group,
    stub_summary,
    summary,
)

handler = load_handler()

CONTROLLER_GROUP = "Test-SlurmController-9Z8Y7X6W5V4U"
CONTROLLER = NodeDouble(
    "i-0ccccccccccccccccc", "10.64.0.200", "99999999-2222-3333-4444-000000000000"
)
RUNS_DIR = "/fsx/home/trn/acceptance"


def slurm_properties(**overrides):
    return properties(
        Launcher="slurm",
        ControllerGroupName=CONTROLLER_GROUP,
        Partition="trn",
        JobUser="trn",
        ControllerContainer=SLURM_CONTROLLER_CONTAINER,
        RunsDir=RUNS_DIR,
        **overrides,
    )


def slurm_state(started: float = NOW - 600) -> dict:
    return {
        "Run": RUN_ID,
        "Reused": False,
        "StartedAt": started,
        "Deadline": started + 3240,
        "Commands": [
            {
                "rank": 0,
                "instance_id": CONTROLLER.instance_id,
                "private_ip": CONTROLLER.ip,
                "command_id": CONTROLLER.command_id,
                "kind": "controller",
            }
        ],
    }


def slurm_is_complete_event(started: float = NOW - 600) -> dict:
    return event(
        "Create",
        ResourceProperties=slurm_properties(),
        PhysicalResourceId=RUN_ID,
        Data={"RunId": RUN_ID},
        AcceptanceRun=slurm_state(started),
    )


def stub_controller_group(aws, instance_ids):
    aws.autoscaling.add_response(
        "describe_auto_scaling_groups",
        {
            "AutoScalingGroups": [
                {
                    "AutoScalingGroupName": CONTROLLER_GROUP,
                    "MinSize": 1,
                    "MaxSize": 1,
                    "DesiredCapacity": 1,
                    "DefaultCooldown": 300,
                    "AvailabilityZones": ["us-east-2c"],
                    "HealthCheckType": "EC2",
                    "CreatedTime": "2026-11-25T17:00:00Z",
                    "Instances": [
                        {
                            "InstanceId": i,
                            "AvailabilityZone": "us-east-2c",
                            "LifecycleState": "InService",
                            "HealthStatus": "Healthy",
                            "ProtectedFromScaleIn": False,
                        }
                        for i in instance_ids
                    ],
                }
            ]
        },
        {"AutoScalingGroupNames": [CONTROLLER_GROUP]},
    )


def stub_controller_instance(aws, cluster=CLUSTER):
    aws.ec2.add_response(
        "describe_instances",
        {
            "Reservations": [
                {
                    "Instances": [
                        {
                            "InstanceId": CONTROLLER.instance_id,
                            "PrivateIpAddress": CONTROLLER.ip,
                            "Tags": [{"Key": CLUSTER_TAG, "Value": cluster}],
                        }
                    ]
                }
            ]
        },
        {"InstanceIds": [CONTROLLER.instance_id]},
    )


def stub_status(aws, status, started=NOW - 600):
    aws.ssm.add_response(
        "list_commands",
        {
            "Commands": [
                {
                    "CommandId": CONTROLLER.command_id,
                    "DocumentName": DOCUMENT,
                    "InstanceIds": [CONTROLLER.instance_id],
                    "Status": status,
                    "StatusDetails": status,
                }
            ]
        },
        list_commands_params(started),
    )


def stub_failed_invocation(aws, code, stderr):
    aws.ssm.add_response(
        "list_command_invocations",
        {
            "CommandInvocations": [
                {
                    "CommandId": CONTROLLER.command_id,
                    "InstanceId": CONTROLLER.instance_id,
                    "Status": "Failed",
                    "StatusDetails": "Failed",
                    "CommandPlugins": [
                        {
                            "Name": "submitAcceptanceJob",
                            "Status": "Failed",
                            "ResponseCode": code,
                            "ResponseFinishDateTime": dt.datetime.fromtimestamp(
                                NOW - 30, tz=dt.UTC
                            ),
                        }
                    ],
                }
            ]
        },
        {"CommandId": CONTROLLER.command_id, "InstanceId": CONTROLLER.instance_id, "Details": True},
    )
    if stderr is not None:
        aws.ssm.add_response(
            "get_command_invocation",
            {
                "CommandId": CONTROLLER.command_id,
                "InstanceId": CONTROLLER.instance_id,
                "Status": "Failed",
                "ResponseCode": code,
                "StandardErrorContent": stderr,
            },
            {"CommandId": CONTROLLER.command_id, "InstanceId": CONTROLLER.instance_id},
        )


# --- on_event -----------------------------------------------------------------------------------


def test_create_sends_one_command_to_the_controller_only(aws):
    stub_controller_group(aws, [CONTROLLER.instance_id])
    stub_controller_instance(aws)
    aws.ssm.add_response(
        "send_command",
        {"Command": {"CommandId": CONTROLLER.command_id}},
        {
            "InstanceIds": [CONTROLLER.instance_id],
            "DocumentName": DOCUMENT,
            "Parameters": ANY,
            "TimeoutSeconds": common.DELIVERY_TIMEOUT_SECONDS,
            "Comment": ANY,
        },
    )

    result = handler.on_event(
        event("Create", ResourceProperties=slurm_properties()), clients=aws.clients
    )

    state = result["AcceptanceRun"]
    assert state["Commands"] == [
        {
            "rank": 0,
            "instance_id": CONTROLLER.instance_id,
            "private_ip": CONTROLLER.ip,
            "command_id": CONTROLLER.command_id,
            "kind": "controller",
        }
    ]
    assert state["Deadline"] == NOW + 3240
    assert result["Data"]["ResultsUri"] == f"s3://{BUCKET}/acceptance-runs/{state['Run']}/"


def test_slurm_parameters_fill_the_slurm_document_and_match_its_patterns():
    import re

    props = common.parse_properties(slurm_properties())
    params = slurm_launcher.slurm_command_parameters(props, RUN_ID, "us-east-2")
    assert set(params) == set(SLURM_DOCUMENT_PARAMETERS)
    for name, (value,) in params.items():
        assert re.fullmatch(SLURM_DOCUMENT_PARAMETERS[name][1], value), (name, value)
    assert params["Nodes"] == ["2"]
    assert params["JobUser"] == ["trn"]
    assert params["ControllerContainer"] == [SLURM_CONTROLLER_CONTAINER]
    assert params["RunsDir"] == [RUNS_DIR]
    assert params["ResultsUri"] == [f"s3://{BUCKET}/acceptance-runs/{RUN_ID}/"]


def test_a_controller_group_without_exactly_one_instance_fails_before_sending(aws):
    stub_controller_group(aws, [])
    with pytest.raises(common.AcceptanceRunError, match="has 0 InService instances, expected 1"):
        handler.on_event(
            event("Create", ResourceProperties=slurm_properties()), clients=aws.clients
        )


def test_a_controller_without_the_cluster_tag_gets_no_command(aws):
    stub_controller_group(aws, [CONTROLLER.instance_id])
    stub_controller_instance(aws, cluster="another-cluster")
    with pytest.raises(common.AcceptanceRunError, match=f"not tagged {CLUSTER_TAG}={CLUSTER}"):
        handler.on_event(
            event("Create", ResourceProperties=slurm_properties()), clients=aws.clients
        )


def test_send_failure_names_the_controller(aws):
    stub_controller_group(aws, [CONTROLLER.instance_id])
    stub_controller_instance(aws)
    aws.ssm.add_client_error(
        "send_command", service_error_code="InvalidInstanceId", service_message="not registered"
    )
    with pytest.raises(common.AcceptanceRunError) as error:
        handler.on_event(
            event("Create", ResourceProperties=slurm_properties()), clients=aws.clients
        )
    reason = str(error.value)
    assert f"Slurm controller {CONTROLLER.instance_id} failed: InvalidInstanceId" in reason


def test_slurm_properties_are_required_with_the_slurm_launcher():
    props = slurm_properties()
    del props["ControllerGroupName"]
    with pytest.raises(common.AcceptanceRunError, match="ControllerGroupName is missing"):
        common.parse_properties(props)
    with pytest.raises(common.AcceptanceRunError, match="Launcher 'k8s'"):
        common.parse_properties(properties(Launcher="k8s"))


def test_switching_the_launcher_is_a_new_run():
    assert common.run_changed(properties(), slurm_properties())


# --- is_complete --------------------------------------------------------------------------------


def test_a_job_still_queued_or_running_is_not_complete(aws):
    stub_status(aws, "InProgress")
    assert handler.is_complete(slurm_is_complete_event(), clients=aws.clients) == {
        "IsComplete": False
    }


def test_a_completed_job_returns_the_figures_and_records_the_pass(aws):
    stub_status(aws, "Success")
    stub_summary(aws, summary())
    aws.s3.add_response(
        "put_object",
        {},
        {
            "Bucket": BUCKET,
            "Key": f"acceptance-runs/_passed/{common.run_fingerprint(slurm_properties())}.json",
            "Body": ANY,
            "ContentType": "application/json",
        },
    )
    result = handler.is_complete(slurm_is_complete_event(), clients=aws.clients)
    assert result["IsComplete"] is True
    assert result["Data"]["gemm_bf16_tflops_per_chip"] == "480"
    assert result["Data"]["WorldSize"] == "4"


def test_a_threshold_failure_names_the_figure_the_host_and_the_rank(aws):
    # 40 minutes in: no time for a replacement round, so the run fails naming the node.
    stub_status(aws, "Failed", started=NOW - 2400)
    stub_failed_invocation(aws, 1, stderr=None)
    stub_summary(aws, summary(slow_rank=3))
    with pytest.raises(common.AcceptanceRunError) as error:
        handler.is_complete(slurm_is_complete_event(started=NOW - 2400), clients=aws.clients)
    reason = str(error.value)
    assert reason.startswith(f"acceptance run {RUN_ID} failed: gemm_fraction_of_peak 0.2399")
    # Slurm chose the nodes: the results name them by address.
    assert "host 10.64.0.9 rank 3" in reason
    assert "controller" not in reason


def test_a_failed_job_without_results_reports_the_jobs_last_telling_line(aws):
    stub_status(aws, "Failed")
    stub_no_summary(aws)
    stub_failed_invocation(
        aws,
        1,
        stderr="cdk-trn acceptance: Slurm job 42 ended in state FAILED with exit code 3:0; log: x\n"
        "--- node 1: /fsx/home/trn/acceptance/r/results/1/node-1.log (last lines)\n"
        "acceptance: error: node ip-10-64-0-9 has 15 EFA devices, expected 16\n"
        "acceptance.sbatch: the suite exited with status 3\n",
    )
    with pytest.raises(common.AcceptanceRunError) as error:
        handler.is_complete(slurm_is_complete_event(), clients=aws.clients)
    reason = str(error.value)
    assert f"the Slurm job (controller {CONTROLLER.instance_id}, {CONTROLLER.ip})" in reason
    assert "exit code 1: acceptance: error: node ip-10-64-0-9 has 15 EFA devices" in reason


def test_a_job_the_controller_gave_up_on_reports_its_state(aws):
    stub_status(aws, "Failed")
    stub_no_summary(aws)
    stub_failed_invocation(
        aws,
        124,
        stderr="cdk-trn acceptance: Slurm job 42 still PENDING Resources after 3150 s; "
        "cancelled (results so far: s3://b/p/)\n",
    )
    with pytest.raises(common.AcceptanceRunError) as error:
        handler.is_complete(slurm_is_complete_event(), clients=aws.clients)
    assert "exit code 124: cdk-trn acceptance: Slurm job 42 still PENDING Resources" in str(
        error.value
    )


def test_past_the_deadline_the_controller_command_is_cancelled(aws):
    late = slurm_is_complete_event(started=NOW - 3300)
    stub_status(aws, "InProgress", started=NOW - 3300)
    aws.ssm.add_response(
        "cancel_command",
        {},
        {"CommandId": CONTROLLER.command_id, "InstanceIds": [CONTROLLER.instance_id]},
    )
    with pytest.raises(common.AcceptanceRunError) as error:
        handler.is_complete(late, clients=aws.clients)
    reason = str(error.value)
    assert "timed out after 55 min (limit 54 min)" in reason
    assert f"the Slurm job (controller {CONTROLLER.instance_id}, {CONTROLLER.ip}) InProgress" in (
        reason
    )


def test_state_from_before_the_launcher_field_still_loads():
    old = copy.deepcopy(slurm_state()["Commands"][0])
    del old["kind"]
    assert common.Node(**old).kind == "node"


# --- an image change on a busy cluster never blocks the update ---------------------------------


def test_a_busy_cluster_fails_the_run_at_once_naming_the_image(aws):
    stub_status(aws, "Failed")
    stub_failed_invocation(aws, handler.ACCEPTANCE_BUSY_EXIT, stderr=None)
    with pytest.raises(common.AcceptanceRunError) as error:
        handler.is_complete(slurm_is_complete_event(), clients=aws.clients)
    reason = str(error.value)
    assert "not started: 2 idle nodes of partition" in reason
    assert "never queues behind them" in reason
    assert f"Image: {IMAGE}" in reason
    assert "when_busy='report'" in reason


def test_a_busy_cluster_with_when_busy_report_completes_and_says_the_run_did_not_run(aws):
    stub_status(aws, "Failed")
    stub_failed_invocation(aws, handler.ACCEPTANCE_BUSY_EXIT, stderr=None)
    event = slurm_is_complete_event()
    event["ResourceProperties"]["WhenBusy"] = "report"
    result = handler.is_complete(event, clients=aws.clients)
    assert result["IsComplete"] is True
    assert result["Data"]["Passed"] == "not-run: cluster busy"
    assert result["Data"]["ImageUri"] == IMAGE


# A node below threshold on a Slurm cluster: tests/cdk_trn_runtime/acceptance/test_replacement.py.


NEW_IMAGE = IMAGE[:-64] + "b" * 64


def stub_node_group_versions(aws, versions: dict[str, str], current: str = "7"):
    stub_node_group(aws, [(i, v, "InService") for i, v in versions.items()], current)


def image_update(**overrides):
    return event(
        "Update",
        PhysicalResourceId=RUN_ID,
        OldResourceProperties=slurm_properties(),
        ResourceProperties=slurm_properties(ImageUri=NEW_IMAGE, **overrides),
    )


def test_an_image_change_on_refreshed_nodes_runs_and_names_the_image(aws):
    stub_no_pass_marker(aws)
    stub_node_group_versions(aws, {"i-0aaaaaaaaaaaaaaaa": "7", "i-0bbbbbbbbbbbbbbbb": "7"})
    stub_controller_group(aws, [CONTROLLER.instance_id])
    stub_controller_instance(aws)
    aws.ssm.add_response(
        "send_command",
        {"Command": {"CommandId": CONTROLLER.command_id}},
        {
            "InstanceIds": [CONTROLLER.instance_id],
            "DocumentName": DOCUMENT,
            "Parameters": ANY,
            "TimeoutSeconds": common.DELIVERY_TIMEOUT_SECONDS,
            "Comment": ANY,
        },
    )
    result = handler.on_event(image_update(), clients=aws.clients)
    assert result["AcceptanceRun"]["Commands"][0]["kind"] == "controller"
