"""An image change on running nodes (issue 21, item 4), against stubbed AWS clients: the nodes on
an earlier launch template are drained in Slurm; only those Slurm reports drained without a job
are marked Unhealthy (their group replaces them); the run waits for their successors and runs
on the nodes of the current launch template only; a busy node is never replaced here (the
controller's reaper does it when its jobs end) and never waited for; when none could be
refreshed the run fails at once naming the nodes and their jobs, or reports not-run."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.stub import ANY

from cdk_trn_runtime.acceptance import common, refresh, slurm_launcher
from cdk_trn_runtime.contract import CLUSTER_TAG
from cdk_trn_runtime.contract.acceptance import ACCEPTANCE_NOT_READY_EXIT, REPORT_NO_REAPER_RULE
from tests.cdk_trn_runtime.acceptance.handler_doubles import (
    ASG,
    BUCKET,
    CLUSTER,
    DOCUMENT,
    IMAGE,
    NOW,
    REGION,
    body,
    event,
    load_handler,
    stub_no_pass_marker,
    stub_node_group,
    summary,
    summary_key,
    text_body,
)
from tests.cdk_trn_runtime.acceptance.test_slurm_launcher import (
    CONTROLLER,
    slurm_properties,
    stub_controller_group,
    stub_controller_instance,
    stub_failed_invocation,
    stub_status,
)

handler = load_handler()

NEW_IMAGE = IMAGE[:-64] + "b" * 64
#: Stale nodes (launch template version 6) and their successors (version 7), id -> address.
OLD_A = ("i-0aaaaaaaaaaaaaaaa", "10.64.0.9")
OLD_B = ("i-0bbbbbbbbbbbbbbbb", "10.64.0.12")
NEW_C = ("i-0cccccccccccccccc", "10.64.0.20")
NEW_D = ("i-0dddddddddddddddd", "10.64.0.21")
DRAIN_COMMAND = "dddddddd-2222-3333-4444-000000000000"


def image_update(**overrides: Any) -> dict[str, Any]:
    return event(
        "Update",
        PhysicalResourceId="previous-run",
        OldResourceProperties=slurm_properties(),
        ResourceProperties=slurm_properties(ImageUri=NEW_IMAGE, **overrides),
    )


def stub_group(aws, instances: list[tuple[tuple[str, str], str, str]], current: str = "7"):
    """The node group: (node, launch template version, lifecycle state) per instance."""
    stub_node_group(aws, [(node[0], version, state) for node, version, state in instances], current)


def stub_addresses(aws, *nodes: tuple[str, str]):
    aws.ec2.add_response(
        "describe_instances",
        {
            "Reservations": [
                {
                    "Instances": [
                        {
                            "InstanceId": i,
                            "PrivateIpAddress": ip,
                            "Tags": [{"Key": CLUSTER_TAG, "Value": CLUSTER}],
                        }
                        for i, ip in nodes
                    ]
                }
            ]
        },
        {"InstanceIds": [i for i, _ in nodes]},
    )


def props_of(ev):
    return common.parse_properties(ev["ResourceProperties"])


def stub_list_written(aws, ev, stem: str, addresses: list[str], run_id: str | None = None):
    """The handler writes a node list under the run's results prefix (no SSM size limit)."""
    aws.s3.add_response(
        "put_object",
        {},
        {
            "Bucket": BUCKET,
            "Key": f"acceptance-runs/{run_id or common.make_run_id(ev)}/{stem}.addresses",
            "Body": "".join(a + "\n" for a in addresses).encode(),
            "ContentType": "text/plain",
        },
    )


def stub_drain_sent(aws, ev, addresses: str, drain_for: str, run_id: str | None = None):
    stub_controller_group(aws, [CONTROLLER.instance_id])
    stub_controller_instance(aws)
    run_id = run_id or common.make_run_id(ev)
    stub_list_written(aws, ev, f"control/drain-{drain_for}", addresses.split(","), run_id)
    aws.ssm.add_response(
        "send_command",
        {"Command": {"CommandId": DRAIN_COMMAND}},
        {
            "InstanceIds": [CONTROLLER.instance_id],
            "DocumentName": DOCUMENT,
            "Parameters": {
                **slurm_launcher.slurm_command_parameters(props_of(ev), run_id, REGION),
                "DrainList": [f"control/drain-{drain_for}"],
                "DrainFor": [drain_for],
            },
            "TimeoutSeconds": common.DELIVERY_TIMEOUT_SECONDS,
            "Comment": ANY,
        },
    )


IN_SERVICE = [(OLD_A, "6", "InService"), (OLD_B, "6", "InService")]


def stub_drain_report(
    aws, lines: list[str], drain_for: str = "refresh-if-idle", group=IN_SERVICE, ev=None
):
    """The drain command succeeded and wrote ``lines`` (the controller's refresh report) under
    the run's prefix; when it names a replaceable node, the handler looks up the group."""
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
    run_id = common.make_run_id(ev or image_update())
    aws.s3.add_response(
        "get_object",
        text_body("".join(line + "\n" for line in lines)),
        {
            "Bucket": BUCKET,
            "Key": f"acceptance-runs/{run_id}/control/drain-{drain_for}.report",
        },
    )
    text = "".join(line + "\n" for line in lines)
    if any(n.replaceable for n in refresh.parse_refresh_report(text).values()):
        stub_group(aws, group)


def stub_marked_unhealthy(aws, instance_id: str):
    aws.autoscaling.add_response(
        "set_instance_health",
        {},
        {"InstanceId": instance_id, "HealthStatus": "Unhealthy", "ShouldRespectGracePeriod": False},
    )


def stub_run_sent(aws, ev, *nodes: tuple[str, str]):
    """The run goes to the controller with exactly these nodes' addresses."""
    stub_addresses(aws, *nodes)
    stub_controller_group(aws, [CONTROLLER.instance_id])
    stub_controller_instance(aws)
    run_id = common.make_run_id(ev)
    stub_list_written(aws, ev, "control/nodes", [ip for _, ip in nodes])
    aws.ssm.add_response(
        "send_command",
        {"Command": {"CommandId": CONTROLLER.command_id}},
        {
            "InstanceIds": [CONTROLLER.instance_id],
            "DocumentName": DOCUMENT,
            "Parameters": slurm_launcher.slurm_command_parameters(
                props_of(ev), run_id, REGION, nodes=len(nodes), node_list="control/nodes"
            ),
            "TimeoutSeconds": common.DELIVERY_TIMEOUT_SECONDS,
            "Comment": ANY,
        },
    )


def stub_passed(aws, ev, world: int):
    run_id = common.make_run_id(ev)
    stub_status(aws, "Success", started=NOW)
    aws.s3.add_response(
        "get_object",
        body(summary(world=world, run_id=run_id)),
        {"Bucket": BUCKET, "Key": summary_key(run_id=run_id)},
    )
    aws.s3.add_response(
        "put_object", {}, {"Bucket": BUCKET, "Key": ANY, "Body": ANY, "ContentType": ANY}
    )


def poll(aws, ev) -> tuple[dict[str, Any], dict[str, Any]]:
    """One is_complete call; the next event carries its state as the driver hands it on."""
    result = handler.is_complete(ev, clients=aws.clients)
    if "AcceptanceRun" in result:
        ev = {**ev, "AcceptanceRun": result["AcceptanceRun"]}
    return result, ev


def start(aws, ev, drain_for="refresh-if-idle") -> dict[str, Any]:
    stub_no_pass_marker(aws)
    stub_group(aws, [(OLD_A, "6", "InService"), (OLD_B, "6", "InService")])
    stub_addresses(aws, OLD_A, OLD_B)
    stub_drain_sent(aws, ev, f"{OLD_A[1]},{OLD_B[1]}", drain_for)
    started = handler.on_event(ev, clients=aws.clients)
    assert started["AcceptanceRun"]["Refresh"]["Phase"] == "draining"
    return {**ev, **started}


def test_idle_stale_nodes_are_replaced_and_the_run_waits_for_their_successors_only(aws):
    ev = start(aws, image_update())

    # Both drained without a job: marked Unhealthy, so the group replaces them.
    stub_drain_report(
        aws,
        [
            "cdk-trn acceptance: drained ip-10-64-0-9 (10.64.0.9)",
            "cdk-trn refresh: 10.64.0.9 ip-10-64-0-9 drained -",
            "cdk-trn refresh: 10.64.0.12 ip-10-64-0-12 drained -",
        ],
    )
    stub_marked_unhealthy(aws, OLD_A[0])
    stub_marked_unhealthy(aws, OLD_B[0])
    result, ev = poll(aws, ev)
    assert result["IsComplete"] is False

    # The successors are launching: wait.
    stub_group(
        aws,
        [(OLD_A, "6", "Terminating"), (OLD_B, "6", "Terminating"), (NEW_C, "7", "Pending")],
    )
    result, ev = poll(aws, ev)
    assert result == {"IsComplete": False, "Status": ANY}

    # InService on the current version: the run goes to exactly those two.
    stub_group(aws, [(NEW_C, "7", "InService"), (NEW_D, "7", "InService")])
    stub_run_sent(aws, ev, NEW_C, NEW_D)
    result, ev = poll(aws, ev)
    assert result["IsComplete"] is False

    # Not yet idle in Slurm (still booting): the document says so, the handler tries again.
    stub_status(aws, "Failed", started=NOW)
    stub_failed_invocation(aws, ACCEPTANCE_NOT_READY_EXIT, stderr=None)
    result, ev = poll(aws, ev)
    assert result["IsComplete"] is False
    stub_group(aws, [(NEW_C, "7", "InService"), (NEW_D, "7", "InService")])
    stub_run_sent(aws, ev, NEW_C, NEW_D)
    result, ev = poll(aws, ev)

    stub_passed(aws, ev, world=4)
    result, ev = poll(aws, ev)
    assert result["IsComplete"] is True
    assert result["Data"]["Passed"] == "true"
    assert result["Data"]["ImageUri"] == NEW_IMAGE
    assert result["Data"]["RanOn"] == f"{NEW_C[0]},{NEW_D[0]}"
    assert result["Data"]["AwaitingRefresh"] == ""


def test_a_busy_stale_node_is_never_replaced_and_the_run_does_not_wait_for_it(aws):
    ev = start(aws, image_update())
    stub_drain_report(
        aws,
        [
            "cdk-trn refresh: 10.64.0.9 ip-10-64-0-9 drained -",
            # Drained so no new job lands, but still running two: left to the reaper.
            "cdk-trn refresh: 10.64.0.12 ip-10-64-0-12 draining 41,42",
        ],
    )
    stub_marked_unhealthy(aws, OLD_A[0])  # only A: a call for B has no stub and would fail
    result, ev = poll(aws, ev)
    assert [r["InstanceId"] for r in result["AcceptanceRun"]["Refresh"]["Refreshed"]] == [OLD_A[0]]

    # B keeps its jobs on version 6; the run needs one node on version 7, not B.
    stub_group(aws, [(OLD_B, "6", "InService"), (NEW_C, "7", "InService")])
    stub_run_sent(aws, ev, NEW_C)
    result, ev = poll(aws, ev)
    assert result["IsComplete"] is False

    stub_passed(aws, ev, world=2)  # one node x 2 processes
    result, ev = poll(aws, ev)
    assert result["IsComplete"] is True
    assert result["Data"]["WorldSize"] == "2"
    assert result["Data"]["RanOn"] == NEW_C[0]
    assert result["Data"]["AwaitingRefresh"] == f"{OLD_B[0]} (ip-10-64-0-12, draining, jobs 41,42)"


ALL_BUSY = [
    "cdk-trn refresh: 10.64.0.9 ip-10-64-0-9 allocated 7",
    "cdk-trn refresh: 10.64.0.12 ip-10-64-0-12 mixed 41,42",
]


def test_with_every_stale_node_busy_the_run_fails_at_once_naming_the_nodes_and_jobs(aws):
    ev = start(aws, image_update())
    stub_drain_report(aws, ALL_BUSY)
    with pytest.raises(common.AcceptanceRunError) as error:
        poll(aws, ev)  # no set_instance_health stub: nothing is marked Unhealthy
    reason = str(error.value)
    assert f"the image changed to {NEW_IMAGE}" in reason
    assert f"{OLD_A[0]} (ip-10-64-0-9, allocated, jobs 7)" in reason
    assert f"{OLD_B[0]} (ip-10-64-0-12, mixed, jobs 41,42)" in reason
    assert "never terminates a node that runs a job" in reason
    assert "when_busy='report'" in reason


def test_with_every_stale_node_busy_and_report_the_update_goes_on_and_says_so(aws):
    # With report every stale node is drained (DrainFor=refresh): each is refreshed by the
    # controller's reaper when its jobs end, since the update keeps the new template.
    ev = start(aws, image_update(WhenBusy="report"), drain_for="refresh")
    stub_drain_report(
        aws,
        [
            "cdk-trn refresh: 10.64.0.9 ip-10-64-0-9 draining 7",
            "cdk-trn refresh: 10.64.0.12 ip-10-64-0-12 draining 41,42",
        ],
        drain_for="refresh",
        ev=ev,
    )
    result, _ = poll(aws, ev)
    assert result["IsComplete"] is True
    assert result["Data"]["Passed"] == "not-run: nodes busy"
    assert result["Data"]["ImageUri"] == NEW_IMAGE
    assert "jobs 41,42" in result["Data"]["AwaitingRefresh"]


def test_a_refreshed_node_taken_by_a_users_job_fails_the_run_instead_of_queueing(aws):
    ev = start(aws, image_update())
    stub_drain_report(
        aws,
        [
            "cdk-trn refresh: 10.64.0.9 ip-10-64-0-9 drained -",
            "cdk-trn refresh: 10.64.0.12 ip-10-64-0-12 drained -",
        ],
    )
    stub_marked_unhealthy(aws, OLD_A[0])
    stub_marked_unhealthy(aws, OLD_B[0])
    _, ev = poll(aws, ev)
    stub_group(aws, [(NEW_C, "7", "InService"), (NEW_D, "7", "InService")])
    stub_run_sent(aws, ev, NEW_C, NEW_D)
    _, ev = poll(aws, ev)
    stub_status(aws, "Failed", started=NOW)
    stub_failed_invocation(
        aws,
        handler.ACCEPTANCE_BUSY_EXIT,
        stderr="cdk-trn acceptance: cluster busy: users' jobs hold ip-10-64-0-21 (allocated) of "
        "the run's nodes; the run does not queue behind them\n",
    )
    with pytest.raises(common.AcceptanceRunError) as error:
        poll(aws, ev)
    assert "users' jobs took refreshed nodes" in str(error.value)
    assert "ip-10-64-0-21 (allocated)" in str(error.value)


def test_a_refresh_that_does_not_fit_the_run_time_fails_before_draining_anything(aws):
    # 25 minutes: a boot (15) and a run at least as long do not fit.
    ev = image_update(RunTimeoutSeconds="1500")
    stub_no_pass_marker(aws)
    stub_group(aws, [(OLD_A, "6", "InService"), (OLD_B, "6", "InService")])
    with pytest.raises(common.AcceptanceRunError, match="does not fit the run's 25 min"):
        handler.on_event(ev, clients=aws.clients)


def test_the_refresh_report_is_read_strictly():
    report = refresh.parse_refresh_report(
        "cdk-trn acceptance: drained ip-1 (10.0.0.1)\n"
        "cdk-trn refresh: 10.0.0.1 ip-1 drained -\n"
        "cdk-trn refresh: 10.0.0.2 ip-2 drained* -\n"
        "cdk-trn refresh: 10.0.0.3 ip-3 draining 5\n"
        "cdk-trn refresh: 10.0.0.4 ip-4 drained 6\n"
        "cdk-trn refresh: 10.0.0.5 - absent -\n"
        "cdk-trn refresh: garbage\n"
    )
    assert {a: n.replaceable for a, n in report.items()} == {
        "10.0.0.1": True,
        "10.0.0.2": True,
        "10.0.0.3": False,
        "10.0.0.4": False,  # drained but a job listed: never replaced
        "10.0.0.5": False,
    }


# --- idle scale-in: nodes stopped in Standby ------------------------------------------------------


def stub_left_standby(aws, instance_id: str):
    aws.autoscaling.add_response(
        "exit_standby",
        {},
        {"InstanceIds": [instance_id], "AutoScalingGroupName": ASG},
    )


def test_a_node_stopped_in_standby_on_the_earlier_template_is_stale_and_replaced(aws):
    # Idle scale-in stopped B in Standby: Slurm would start it again as it is, on the old image.
    # Auto Scaling replaces an Unhealthy instance only InService, so B returns to service first.
    ev = image_update()
    stub_no_pass_marker(aws)
    stub_group(aws, [(OLD_A, "6", "InService"), (OLD_B, "6", "Standby")])
    stub_addresses(aws, OLD_A, OLD_B)
    stub_drain_sent(aws, ev, f"{OLD_A[1]},{OLD_B[1]}", "refresh-if-idle")
    ev = {**ev, **handler.on_event(ev, clients=aws.clients)}
    stub_drain_report(
        aws,
        [
            "cdk-trn refresh: 10.64.0.9 ip-10-64-0-9 drained -",
            "cdk-trn refresh: 10.64.0.12 ip-10-64-0-12 drained~ -",
        ],
        group=[(OLD_A, "6", "InService"), (OLD_B, "6", "Standby")],
    )
    stub_marked_unhealthy(aws, OLD_A[0])
    stub_left_standby(aws, OLD_B[0])
    stub_marked_unhealthy(aws, OLD_B[0])
    result, ev = poll(aws, ev)
    assert result["AcceptanceRun"]["RunNodes"] == 2
    assert [r["InstanceId"] for r in result["AcceptanceRun"]["Refresh"]["Refreshed"]] == [
        OLD_A[0],
        OLD_B[0],
    ]


def test_with_only_a_standby_node_on_the_earlier_template_the_run_does_not_go_to_any_idle(aws):
    # No InService node is stale, but the stopped one would be started for the run as it is.
    ev = image_update()
    stub_no_pass_marker(aws)
    stub_group(aws, [(NEW_C, "7", "InService"), (OLD_B, "6", "Standby")])
    stub_addresses(aws, OLD_B)
    stub_drain_sent(aws, ev, OLD_B[1], "refresh-if-idle")
    started = handler.on_event(ev, clients=aws.clients)
    assert started["AcceptanceRun"]["Refresh"]["Stale"] == [
        {"InstanceId": OLD_B[0], "Host": OLD_B[1]}
    ]


def test_a_successor_stopped_by_idle_scale_in_while_waiting_still_counts(aws):
    # The run needs 2 nodes of version 7; D was stopped in Standby while C booted: Slurm starts
    # it for the run's job, so the wait does not run to the deadline.
    ev = start(aws, image_update())
    stub_drain_report(
        aws,
        [
            "cdk-trn refresh: 10.64.0.9 ip-10-64-0-9 drained -",
            "cdk-trn refresh: 10.64.0.12 ip-10-64-0-12 drained -",
        ],
    )
    stub_marked_unhealthy(aws, OLD_A[0])
    stub_marked_unhealthy(aws, OLD_B[0])
    _, ev = poll(aws, ev)
    stub_group(aws, [(NEW_C, "7", "InService"), (NEW_D, "7", "Standby")])
    stub_run_sent(aws, ev, NEW_C, NEW_D)
    result, ev = poll(aws, ev)
    assert result["AcceptanceRun"]["Refresh"]["Ran"] == [NEW_C[0], NEW_D[0]]


# --- a controller booted before the reaper's refresh rule ---------------------------------


def test_without_the_reapers_rule_busy_nodes_are_named_undrained_with_what_to_do(aws):
    ev = start(aws, image_update())
    stub_drain_report(
        aws,
        [
            REPORT_NO_REAPER_RULE,
            "cdk-trn refresh: 10.64.0.9 ip-10-64-0-9 drained -",
            "cdk-trn refresh: 10.64.0.12 ip-10-64-0-12 mixed 41,42",
        ],
    )
    stub_marked_unhealthy(aws, OLD_A[0])
    _, ev = poll(aws, ev)
    stub_group(aws, [(OLD_B, "6", "InService"), (NEW_C, "7", "InService")])
    stub_run_sent(aws, ev, NEW_C)
    _, ev = poll(aws, ev)
    stub_passed(aws, ev, world=2)
    result, _ = poll(aws, ev)
    awaiting = result["Data"]["AwaitingRefresh"]
    assert awaiting.startswith(f"{OLD_B[0]} (ip-10-64-0-12, mixed, jobs 41,42) not drained")
    assert "replace the controller instance" in awaiting


# --- size: a 1024-node cluster --------------------------------------------------------------------


def test_a_refresh_of_1024_nodes_goes_through_s3_and_reports_every_node(aws):
    stale = [(f"i-0{n:016x}", f"10.64.{n // 250}.{n % 250 + 1}") for n in range(1024)]
    ev = image_update(Nodes="1024")
    stub_no_pass_marker(aws)
    stub_group(aws, [(node, "6", "InService") for node in stale])
    stub_addresses(aws, *stale)
    stub_drain_sent(aws, ev, ",".join(ip for _, ip in stale), "refresh-if-idle")
    ev = {**ev, **handler.on_event(ev, clients=aws.clients)}
    lines = [f"cdk-trn refresh: {ip} ip-{ip.replace('.', '-')} drained -" for _, ip in stale]
    assert len("".join(line + "\n" for line in lines)) > 24_000  # past SSM's output limit
    stub_drain_report(aws, lines, group=[(node, "6", "InService") for node in stale], ev=ev)
    for instance_id, _ in stale:
        stub_marked_unhealthy(aws, instance_id)
    result, _ = poll(aws, ev)
    assert len(result["AcceptanceRun"]["Refresh"]["Refreshed"]) == 1024
    assert result["AcceptanceRun"]["Refresh"]["Waiting"] == []


def test_node_lists_of_any_size_fit_the_documents_parameters():
    import re

    from cdk_trn.acceptance.document import SLURM_DOCUMENT_PARAMETERS

    props = props_of(image_update(Nodes="1024"))
    params = slurm_launcher.slurm_command_parameters(
        props, "run-1", REGION, nodes=1024, node_list=slurm_launcher.NODE_LIST_STEM
    )
    params.update(
        slurm_launcher.slurm_command_parameters(
            props, "run-1", REGION, drain_list=slurm_launcher.drain_list_stem("refresh")
        )
    )
    for name, (value,) in params.items():
        assert re.fullmatch(SLURM_DOCUMENT_PARAMETERS[name][1], value), (name, value)


# --- a rollback after a refresh -------------------------------------------------------------------


def rollback_event() -> dict[str, Any]:
    """CloudFormation rolls the image back: the previous properties as an Update."""
    return event(
        "Update",
        PhysicalResourceId="failed-run",
        OldResourceProperties=slurm_properties(ImageUri=NEW_IMAGE),
        ResourceProperties=slurm_properties(),
    )


def stub_pass_marker(aws, run_id: str = "previous-run"):
    aws.s3.add_response("get_object", body({"run_id": run_id}))


def test_a_rollback_reuses_the_passed_run_and_drains_the_rejected_images_nodes(aws):
    # The failed update refreshed A into C (version 7); the rollback puts the group back on 6.
    ev = rollback_event()
    stub_pass_marker(aws)
    stub_group(aws, [(NEW_C, "7", "InService"), (OLD_B, "6", "InService")], current="6")
    stub_addresses(aws, NEW_C)
    stub_drain_sent(aws, ev, NEW_C[1], "refresh-by-reaper", run_id="previous-run")
    stub_group(aws, [(NEW_C, "7", "InService"), (OLD_B, "6", "InService")], current="6")
    started = handler.on_event(ev, clients=aws.clients)
    assert started["PhysicalResourceId"] == "previous-run"
    assert NEW_C[0] in started["AcceptanceRun"]["AwaitingRefresh"]


def test_a_rollback_whose_drain_fails_still_succeeds(aws):
    ev = rollback_event()
    stub_pass_marker(aws)
    aws.autoscaling.add_client_error("describe_auto_scaling_groups", "Throttling")
    started = handler.on_event(ev, clients=aws.clients)
    assert started["PhysicalResourceId"] == "previous-run"
    assert "not drained for refresh" in started["AcceptanceRun"]["AwaitingRefresh"]
