"""The custom-resource handlers against stubbed AWS clients (botocore Stubber on real clients,
so every request and response is checked against the service's API model; no network)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from botocore.stub import ANY

from cdk_trn_runtime.acceptance import common, replacement, report, ssm_launcher
from tests.cdk_trn_runtime.acceptance.handler_doubles import (
    ASG,
    BUCKET,
    CLUSTER,
    DOCUMENT,
    IMAGE,
    NODES,
    NOW,
    RUN_ID,
    NodeDouble,
    body,
    commands,
    event,
    invocation,
    is_complete_event,
    list_commands_params,
    list_params,
    load_handler,
    properties,
    run_state,
    stub_no_summary,
    stub_summary,
    summary,
    summary_key,
)

handler = load_handler()


def stub_group(aws, instance_ids, state="InService"):
    aws.autoscaling.add_response(
        "describe_auto_scaling_groups",
        {
            "AutoScalingGroups": [
                {
                    "AutoScalingGroupName": ASG,
                    "MinSize": len(instance_ids),
                    "MaxSize": len(instance_ids),
                    "DesiredCapacity": len(instance_ids),
                    "DefaultCooldown": 300,
                    "AvailabilityZones": ["us-east-2c"],
                    "HealthCheckType": "EC2",
                    "CreatedTime": "2026-11-25T17:00:00Z",
                    "Instances": [
                        {
                            "InstanceId": i,
                            "AvailabilityZone": "us-east-2c",
                            "LifecycleState": state,
                            "HealthStatus": "Healthy",
                            "ProtectedFromScaleIn": False,
                        }
                        for i in instance_ids
                    ],
                }
            ]
        },
        {"AutoScalingGroupNames": [ASG]},
    )


def stub_instances(aws, nodes, cluster=CLUSTER):
    aws.ec2.add_response(
        "describe_instances",
        {
            "Reservations": [
                {
                    "Instances": [
                        {
                            "InstanceId": n.instance_id,
                            "PrivateIpAddress": n.ip,
                            "Tags": [{"Key": "cdk-trn:cluster", "Value": cluster}],
                        }
                        for n in nodes
                    ]
                }
            ]
        },
        {"InstanceIds": sorted(n.instance_id for n in nodes)},
    )


def stub_send(aws, node, rank, run_id=ANY):
    aws.ssm.add_response(
        "send_command",
        {"Command": {"CommandId": node.command_id}},
        {
            "InstanceIds": [node.instance_id],
            "DocumentName": DOCUMENT,
            "Parameters": ANY,
            "TimeoutSeconds": common.DELIVERY_TIMEOUT_SECONDS,
            "Comment": ANY,
        },
    )


def marker_key(properties_=None):
    fingerprint = common.run_fingerprint(properties_ or properties())
    return f"acceptance-runs/_passed/{fingerprint}.json"


def stub_marker_written(aws):
    aws.s3.add_response(
        "put_object",
        {},
        {"Bucket": BUCKET, "Key": marker_key(), "Body": ANY, "ContentType": "application/json"},
    )


def stub_no_marker(aws, properties_):
    aws.s3.add_client_error(
        "get_object",
        service_error_code="NoSuchKey",
        http_status_code=404,
        expected_params={"Bucket": BUCKET, "Key": marker_key(properties_)},
    )


# --- on_event -----------------------------------------------------------------------------------


def test_create_sends_the_document_to_every_node_with_node_0_the_lowest_address(aws):
    stub_group(aws, [n.instance_id for n in NODES])
    stub_instances(aws, NODES)
    for rank, node in enumerate(NODES):
        stub_send(aws, node, rank)

    result = handler.on_event(event("Create"), clients=aws.clients)

    run_id = result["PhysicalResourceId"]
    assert run_id.startswith("acceptancerunresource-")
    state = result["AcceptanceRun"]
    assert [(n["rank"], n["instance_id"]) for n in state["Commands"]] == [
        (0, "i-0bbbbbbbbbbbbbbbb"),  # "10.64.0.12" sorts before "10.64.0.9", as in torch's c10d
        (1, "i-0aaaaaaaaaaaaaaaa"),
    ]
    assert state["Deadline"] == NOW + 3240
    assert result["Data"]["ResultsUri"] == f"s3://{BUCKET}/acceptance-runs/{run_id}/"


def test_command_parameters_name_the_rendezvous_node_and_this_nodes_rank(aws):
    props = common.parse_properties(properties())
    nodes = ssm_launcher.rank_nodes([common.Node(0, n.instance_id, n.ip) for n in NODES])
    params = ssm_launcher.command_parameters(props, RUN_ID, nodes[1], nodes[0], "us-east-2")
    assert params["NodeRank"] == ["1"]
    assert params["LocalAddress"] == ["10.64.0.9"]
    assert params["RendezvousHost"] == ["10.64.0.12"]
    assert params["ImageUri"] == [IMAGE]
    assert params["ResultsUri"] == [f"s3://{BUCKET}/acceptance-runs/{RUN_ID}/"]
    assert params["ExecutionTimeout"] == ["3240"]


def test_create_fails_when_the_group_has_fewer_nodes_than_expected(aws):
    stub_group(aws, [NODES[0].instance_id])
    with pytest.raises(common.AcceptanceRunError, match="has 1 InService instances, expected 2"):
        handler.on_event(event("Create"), clients=aws.clients)


def test_create_refuses_an_instance_without_the_cluster_tag(aws):
    stub_group(aws, [n.instance_id for n in NODES])
    stub_instances(aws, NODES, cluster="another-cluster")
    with pytest.raises(common.AcceptanceRunError, match="not tagged cdk-trn:cluster=test-cluster"):
        handler.on_event(event("Create"), clients=aws.clients)


def test_send_failure_names_the_node_and_cancels_commands_already_sent(aws):
    stub_group(aws, [n.instance_id for n in NODES])
    stub_instances(aws, NODES)
    stub_send(aws, NODES[0], 0)
    aws.ssm.add_client_error(
        "send_command", service_error_code="InvalidInstanceId", service_message="not managed"
    )
    aws.ssm.add_response(
        "cancel_command",
        {},
        {"CommandId": NODES[0].command_id, "InstanceIds": [NODES[0].instance_id]},
    )
    with pytest.raises(common.AcceptanceRunError) as error:
        handler.on_event(event("Create"), clients=aws.clients)
    message = str(error.value)
    assert "node 1 (i-0aaaaaaaaaaaaaaaa, 10.64.0.9)" in message
    assert "InvalidInstanceId" in message and "SSM agent" in message


def test_update_with_an_unchanged_run_reuses_the_previous_run_without_aws_calls(aws):
    old = properties()
    new = properties(ExportedFigures=["gemm_fraction_of_peak"], RunTimeoutSeconds="6000")
    result = handler.on_event(
        event(
            "Update",
            PhysicalResourceId=RUN_ID,
            OldResourceProperties=old,
            ResourceProperties=new,
        ),
        clients=aws.clients,
    )
    assert result["PhysicalResourceId"] == RUN_ID
    assert result["AcceptanceRun"] == {"Run": RUN_ID, "Reused": True}


def test_update_with_a_new_image_starts_a_new_run(aws):
    stub_no_marker(aws, properties(ImageUri=IMAGE[:-64] + "b" * 64))
    stub_group(aws, [n.instance_id for n in NODES])
    stub_instances(aws, NODES)
    for rank, node in enumerate(NODES):
        stub_send(aws, node, rank)
    result = handler.on_event(
        event(
            "Update",
            PhysicalResourceId=RUN_ID,
            OldResourceProperties=properties(),
            ResourceProperties=properties(ImageUri=IMAGE[:-64] + "b" * 64),
        ),
        clients=aws.clients,
    )
    assert result["PhysicalResourceId"] != RUN_ID
    assert result["AcceptanceRun"]["Reused"] is False


def test_rollback_to_properties_that_passed_reuses_that_run_without_sending(aws):
    failed_update = properties(ImageUri=IMAGE[:-64] + "b" * 64)
    aws.s3.add_response(
        "get_object",
        body({"run_id": "acceptancerunresource-aaaaaaaaaaaa", "passed_at": NOW - 7200}),
        {"Bucket": BUCKET, "Key": marker_key(properties())},
    )
    result = handler.on_event(
        event(
            "Update",
            PhysicalResourceId="acceptancerunresource-bbbbbbbbbbbb",
            OldResourceProperties=failed_update,
            ResourceProperties=properties(),
        ),
        clients=aws.clients,
    )
    assert result["PhysicalResourceId"] == "acceptancerunresource-aaaaaaaaaaaa"
    assert result["AcceptanceRun"]["Reused"] is True


def test_run_ids_differ_per_request_and_fit_every_place_they_are_used():
    first = common.make_run_id(event("Create"))
    second = common.make_run_id(event("Create", RequestId="another-request"))
    assert first != second
    import re

    assert re.fullmatch(r"[a-z0-9][a-z0-9-]{0,62}", first)


def test_delete_succeeds_without_any_aws_call(aws):
    result = handler.on_event(event("Delete", PhysicalResourceId=RUN_ID), clients=aws.clients)
    assert result == {"PhysicalResourceId": RUN_ID}
    assert handler.is_complete(event("Delete", PhysicalResourceId=RUN_ID), clients=aws.clients) == {
        "IsComplete": True
    }


# --- is_complete ------------------------------------------------------------------------------


def stub_statuses(aws, *statuses, started=NOW - 600):
    """One ListCommands page with each node's command status (in NODES order)."""
    aws.ssm.add_response(
        "list_commands",
        commands(dict(zip(NODES, statuses, strict=True))),
        list_commands_params(started),
    )


def stub_failed_invocation(aws, node, *, code, finished):
    aws.ssm.add_response(
        "list_command_invocations",
        invocation(node, "Failed", code=code, finished=finished),
        list_params(node),
    )


def stub_cancel(aws, node):
    aws.ssm.add_response(
        "cancel_command", {}, {"CommandId": node.command_id, "InstanceIds": [node.instance_id]}
    )


def test_success_returns_the_figures_as_strings_and_records_the_pass(aws):
    stub_statuses(aws, "Success", "Success")
    stub_summary(aws, summary())
    stub_marker_written(aws)

    result = handler.is_complete(is_complete_event(), clients=aws.clients)

    assert result["IsComplete"] is True
    data = result["Data"]
    assert data["gemm_fraction_of_peak"] == "0.7196"
    assert data["gemm_bf16_tflops_per_chip"] == "480"  # 120 TFLOPS per device x 4 devices
    assert data["allreduce_busbw_gbps"] == "32.21"
    assert data["train_tokens_per_s"] == "8192"
    assert data["compile_seconds"] == "95.5"
    assert data["RunId"] == RUN_ID
    assert all(isinstance(v, str) for v in data.values())


def test_running_nodes_before_the_deadline_mean_not_complete(aws):
    stub_statuses(aws, "InProgress", "Pending")
    assert handler.is_complete(is_complete_event(), clients=aws.clients) == {"IsComplete": False}


def test_a_command_ssm_does_not_list_yet_counts_as_pending(aws):
    aws.ssm.add_response(
        "list_commands", commands({NODES[0]: "InProgress"}), list_commands_params()
    )
    assert handler.is_complete(is_complete_event(), clients=aws.clients) == {"IsComplete": False}


def test_threshold_failure_fails_with_the_figure_the_node_and_the_rank(aws):
    # The run took 40 minutes: a node's boot and another run no longer fit before the deadline.
    started = NOW - 2400
    stub_statuses(aws, "Failed", "Failed", started=started)
    for node in NODES:
        stub_failed_invocation(aws, node, code=1, finished=NOW - 30)
    stub_summary(aws, summary(slow_rank=3))

    with pytest.raises(common.AcceptanceRunError) as error:
        handler.is_complete(
            is_complete_event(AcceptanceRun=run_state(started=started)), clients=aws.clients
        )

    reason = str(error.value)
    assert reason.startswith(f"acceptance run {RUN_ID} failed: gemm_fraction_of_peak 0.2399")
    assert "(threshold 0.5)" in reason
    assert "node 1 (i-0aaaaaaaaaaaaaaaa, 10.64.0.9) rank 3" in reason
    assert reason.endswith(f"Results: s3://{BUCKET}/acceptance-runs/{RUN_ID}/")
    assert len(reason) <= common.REASON_LIMIT


def test_handler_rechecks_thresholds_even_when_the_suite_passed(aws):
    stub_statuses(aws, "Success", "Success")
    stub_summary(aws, summary())
    strict = copy.deepcopy(is_complete_event())
    strict["ResourceProperties"]["Checks"].append(
        {"Figure": "allreduce_busbw_gbps", "Min": "50", "Unit": "GB/s"}
    )
    with pytest.raises(
        common.AcceptanceRunError, match=r"allreduce_busbw_gbps 32.21 GB/s < min 50"
    ):
        handler.is_complete(strict, clients=aws.clients)


def test_one_node_failing_fails_with_its_exit_code_and_last_error_line(aws):
    stub_statuses(aws, "InProgress", "Failed")
    stub_failed_invocation(aws, NODES[1], code=3, finished=NOW - 400)
    stub_cancel(aws, NODES[0])
    stub_no_summary(aws)
    aws.ssm.add_response(
        "get_command_invocation",
        {
            "CommandId": NODES[1].command_id,
            "InstanceId": NODES[1].instance_id,
            "Status": "Failed",
            "ResponseCode": 3,
            "StandardErrorContent": "docker: noise\n"
            "cdk-trn acceptance node 1: found 15 EFA devices, expected 16\n"
            "=============================================\n",
        },
        {"CommandId": NODES[1].command_id, "InstanceId": NODES[1].instance_id},
    )

    with pytest.raises(common.AcceptanceRunError) as error:
        handler.is_complete(is_complete_event(), clients=aws.clients)

    reason = str(error.value)
    assert "node 1 (i-0aaaaaaaaaaaaaaaa, 10.64.0.9) command Failed, exit code 3" in reason
    assert reason.split("exit code 3: ")[1].startswith("cdk-trn acceptance node 1: found 15 EFA")


def test_a_fresh_node_failure_waits_for_the_others_to_stop(aws):
    stub_statuses(aws, "InProgress", "Failed")
    stub_failed_invocation(aws, NODES[1], code=1, finished=NOW - 20)
    assert handler.is_complete(is_complete_event(), clients=aws.clients) == {"IsComplete": False}


def test_past_the_deadline_the_run_fails_naming_the_nodes_still_running(aws):
    late = is_complete_event(AcceptanceRun=run_state(started=NOW - 3300))
    stub_statuses(aws, "Success", "InProgress", started=NOW - 3300)
    stub_cancel(aws, NODES[1])
    with pytest.raises(common.AcceptanceRunError) as error:
        handler.is_complete(late, clients=aws.clients)
    reason = str(error.value)
    assert "timed out after 55 min (limit 54 min)" in reason
    assert "node 1 (i-0aaaaaaaaaaaaaaaa, 10.64.0.9) InProgress" in reason
    assert "node 0" not in reason


def test_missing_results_fail_the_run_although_every_node_succeeded(aws):
    stub_statuses(aws, "Success", "Success")
    stub_no_summary(aws)
    with pytest.raises(common.AcceptanceRunError) as error:
        handler.is_complete(is_complete_event(), clients=aws.clients)
    assert "results are missing" in str(error.value)
    assert f"s3://{BUCKET}/{summary_key()}" in str(error.value)


def test_a_summary_under_another_node_is_found_by_listing_the_run(aws):
    stub_statuses(aws, "Success", "Success")
    aws.s3.add_client_error(
        "get_object",
        service_error_code="NoSuchKey",
        http_status_code=404,
        expected_params={"Bucket": BUCKET, "Key": summary_key()},
    )
    aws.s3.add_response(
        "list_objects_v2",
        {
            "Contents": [
                {"Key": f"acceptance-runs/{RUN_ID}/1/rank-2.json"},
                {"Key": summary_key(1)},
            ]
        },
        {"Bucket": BUCKET, "Prefix": f"acceptance-runs/{RUN_ID}/"},
    )
    aws.s3.add_response("get_object", body(summary()), {"Bucket": BUCKET, "Key": summary_key(1)})
    stub_marker_written(aws)
    assert handler.is_complete(is_complete_event(), clients=aws.clients)["IsComplete"] is True


def test_a_summary_of_another_run_or_world_size_fails(aws):
    stub_statuses(aws, "Success", "Success")
    stale = summary()
    stale["run_id"] = "acceptancerunresource-ffffffffffff"
    stale["world_size"] = 2
    stub_summary(aws, stale)
    with pytest.raises(common.AcceptanceRunError) as error:
        handler.is_complete(is_complete_event(), clients=aws.clients)
    assert "not acceptancerunresource-0123456789ab" in str(error.value)
    assert "world size 2 != expected 4" in str(error.value)


def test_reused_run_returns_the_previous_figures(aws):
    stub_summary(aws, summary())
    reused = is_complete_event(AcceptanceRun={"Run": RUN_ID, "Reused": True})
    data = handler.is_complete(reused, clients=aws.clients)["Data"]
    assert data["gemm_fraction_of_peak"] == "0.7196"


def test_reused_run_with_expired_results_still_succeeds(aws):
    stub_no_summary(aws)
    reused = is_complete_event(AcceptanceRun={"Run": RUN_ID, "Reused": True})
    data = handler.is_complete(reused, clients=aws.clients)["Data"]
    assert data["gemm_fraction_of_peak"] == "n/a"


def test_a_long_list_of_failures_is_cut_to_the_reason_limit():
    props = common.parse_properties(properties())
    problems = [f"check_{i} 0.1 fraction (threshold 0.5) on node {i}" for i in range(200)]
    reason = report.failure_reason(RUN_ID, problems, props)
    assert len(reason) <= common.REASON_LIMIT
    assert "more)" in reason
    assert reason.endswith(f"/acceptance-runs/{RUN_ID}/")


def test_handler_imports_only_what_the_lambda_python_runtime_ships():
    import ast

    from tests.cdk_trn_runtime.acceptance.handler_doubles import load_handler

    tree = ast.parse(Path(load_handler().__file__).read_text())
    imported = {
        ((node.module or "") if isinstance(node, ast.ImportFrom) else alias.name).split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    }
    assert imported <= {
        "__future__",
        "hashlib",
        "json",
        "logging",
        "re",
        "time",
        "collections",
        "dataclasses",
        "typing",
        "boto3",
        "botocore",
        "cdk_trn_runtime",
    }


# --- a node below threshold is replaced and the run repeated, within the resource's hour -----


def stub_set_unhealthy(aws, instance_id):
    aws.autoscaling.add_response(
        "set_instance_health",
        {},
        {"InstanceId": instance_id, "HealthStatus": "Unhealthy", "ShouldRespectGracePeriod": False},
    )


def _failed_run_with_one_slow_node(aws, started=NOW - 600):
    stub_statuses(aws, "Failed", "Failed", started=started)
    for node in NODES:
        stub_failed_invocation(aws, node, code=1, finished=NOW - 30)
    stub_summary(aws, summary(slow_rank=3))  # rank 3 is on node 1 (10.64.0.9)


def test_a_node_below_threshold_is_marked_unhealthy_instead_of_failing_the_deploy(aws):
    _failed_run_with_one_slow_node(aws)
    stub_set_unhealthy(aws, NODES[1].instance_id)
    result = handler.is_complete(is_complete_event(), clients=aws.clients)
    assert result["IsComplete"] is False
    state = result["AcceptanceRun"]
    assert state["Replacing"] is True
    assert state["Round"] == 1
    [replaced] = state["Replaced"]
    assert (replaced["InstanceId"], replaced["Host"]) == (NODES[1].instance_id, NODES[1].ip)
    assert "24.0% of the 166.75 TFLOPS peak" in replaced["Problems"]


def test_the_run_waits_for_the_successor_then_runs_again_on_the_new_group(aws):
    _failed_run_with_one_slow_node(aws)
    stub_set_unhealthy(aws, NODES[1].instance_id)
    state = handler.is_complete(is_complete_event(), clients=aws.clients)["AcceptanceRun"]
    successor = NodeDouble("i-0cccccccccccccccc", "10.64.0.20", NODES[1].command_id)
    # Within a boot's time: still waiting, even with the successor InService.
    aws.clock.now = NOW + 600
    stub_group(aws, [NODES[0].instance_id, successor.instance_id])
    waiting = handler.is_complete(is_complete_event(AcceptanceRun=state), clients=aws.clients)
    assert waiting["IsComplete"] is False
    assert "AcceptanceRun" not in waiting
    # After it: the run starts again, as <run id>-r1, on the group's current nodes.
    aws.clock.now = NOW + common.NODE_BOOT_SECONDS + 60
    stub_group(aws, [NODES[0].instance_id, successor.instance_id])
    stub_group(aws, [NODES[0].instance_id, successor.instance_id])
    stub_instances(aws, [NODES[0], successor])
    stub_send(aws, NODES[0], 0)
    stub_send(aws, successor, 1)
    again = handler.is_complete(is_complete_event(AcceptanceRun=state), clients=aws.clients)
    assert again["IsComplete"] is False
    assert again["AcceptanceRun"]["AttemptId"] == f"{RUN_ID}-r1"
    assert again["AcceptanceRun"]["Replacing"] is False
    assert {n["instance_id"] for n in again["AcceptanceRun"]["Commands"]} == {
        NODES[0].instance_id,
        successor.instance_id,
    }


def test_past_the_bound_the_deploy_fails_naming_the_replaced_node_and_the_new_figures(aws):
    state = {
        **run_state(),
        "Round": replacement.MAX_REPLACEMENT_ROUNDS,
        "Replaced": [
            {"InstanceId": "i-0dddddddddddddddd", "Host": "10.64.0.7", "Problems": "HBM 0.31"}
        ],
    }
    _failed_run_with_one_slow_node(aws)
    with pytest.raises(common.AcceptanceRunError) as error:
        handler.is_complete(is_complete_event(AcceptanceRun=state), clients=aws.clients)
    reason = str(error.value)
    assert "replaced i-0dddddddddddddddd (10.64.0.7): HBM 0.31" in reason
    assert "gemm_fraction_of_peak 0.2399" in reason
    assert "node 1 (i-0aaaaaaaaaaaaaaaa, 10.64.0.9) rank 3" in reason


def test_replacement_plan_takes_only_node_local_failures_on_some_nodes():
    def failing(check, node):
        return {"check": check, "node": node, "message": check}

    assert replacement.replacement_plan(
        {"failures": [failing("gemm_fraction_of_peak", "10.0.0.1")]}, 2
    ) == {"10.0.0.1": [failing("gemm_fraction_of_peak", "10.0.0.1")]}
    # A collective, training or compilation failure is not a node's: fail at once.
    assert (
        replacement.replacement_plan(
            {
                "failures": [
                    failing("gemm_fraction_of_peak", "10.0.0.1"),
                    failing("training_loss", "10.0.0.2"),
                ]
            },
            2,
        )
        is None
    )
    # Every node below threshold: the cause is not one node (an image, a driver).
    assert (
        replacement.replacement_plan(
            {
                "failures": [
                    failing("hbm_fraction_of_peak", "10.0.0.1"),
                    failing("hbm_fraction_of_peak", "10.0.0.2"),
                ]
            },
            2,
        )
        is None
    )
    assert (
        replacement.replacement_plan({"failures": [failing("gemm_numerics", "unknown")]}, 2) is None
    )


def test_a_round_fits_only_when_a_boot_and_a_run_as_long_as_the_last_end_by_the_deadline():
    boot = common.NODE_BOOT_SECONDS
    assert replacement.replacement_fits(0, 600, 600 + boot + 600)
    assert not replacement.replacement_fits(0, 600, 600 + boot + 599)


def test_the_passing_figures_name_the_image_tested(aws):
    stub_statuses(aws, "Success", "Success")
    stub_summary(aws, summary())
    stub_marker_written(aws)
    data = handler.is_complete(is_complete_event(), clients=aws.clients)["Data"]
    assert data["ImageUri"] == IMAGE
