"""Several UltraServer blocks (one reservation each) are targeted together through a Capacity
Reservation resource group; the default app reads them from context ``reservationIds``."""

from __future__ import annotations

import aws_cdk as cdk
import pytest

from cdk_trn.capacity import Capacity, CapacityKind
from cdk_trn.compliance import enable_compliance, lint_template, synth_checked
from cdk_trn.errors import CdkTrnError
from stacks import build_default_app
from stacks.config import AppConfig

CR_A = "cr-0123456789abcdef0"
CR_B = "cr-0fedcba9876543210"


def test_ultraserver_block_accepts_several_reservations():
    capacity = Capacity.ultraserver_block([CR_A, CR_B])
    assert capacity.kind is CapacityKind.ULTRASERVER_BLOCK
    assert capacity.reservation_ids == (CR_A, CR_B)
    assert capacity.targets_reservation_group
    assert capacity.reservation_id is None


def test_one_reservation_is_targeted_directly():
    capacity = Capacity.ultraserver_block(CR_A)
    assert capacity.reservation_id == CR_A
    assert not capacity.targets_reservation_group


@pytest.mark.parametrize(
    ("ids", "message"),
    [
        ([], "reservation_ids must be at least one capacity reservation id"),
        ([CR_A, CR_A], "reservation_ids must be distinct capacity reservation ids"),
        ([CR_A, "cr-b"], "reservation_ids must be a capacity reservation id"),
    ],
)
def test_bad_reservation_lists_are_refused(ids, message):
    with pytest.raises(CdkTrnError, match=message):
        Capacity.ultraserver_block(ids)


def test_reservation_ids_only_with_ultraserver_blocks():
    with pytest.raises(CdkTrnError, match="reservationIds must be set only with capacity"):
        Capacity.from_name("capacity-block", None, (CR_A, CR_B))
    with pytest.raises(CdkTrnError, match="reservationIds must be set only with capacity"):
        Capacity.from_name("ultraserver-block", CR_A, (CR_B,))


def test_context_reservation_ids_are_split_on_commas():
    app = cdk.App(context={"reservationIds": f"{CR_A}, {CR_B}"})
    assert AppConfig.from_context(app.node).reservation_ids == (CR_A, CR_B)


@pytest.fixture(scope="module")
def two_ultraservers():
    app = cdk.App(
        context={
            "instanceType": "trn2u.48xlarge",
            "capacity": "ultraserver-block",
            "reservationIds": f"{CR_A},{CR_B}",
            "nodes": "8",
        }
    )
    enable_compliance(app)
    default = build_default_app(app)
    report = synth_checked(app)
    stack = default.cluster_stack
    return stack, app.synth().get_stack_by_name(stack.stack_name).template, report


def _of_type(template, kind):
    return {k: r for k, r in template["Resources"].items() if r["Type"] == kind}


def test_launch_template_targets_a_resource_group_holding_both_reservations(two_ultraservers):
    _, template, _ = two_ultraservers
    groups = _of_type(template, "AWS::ResourceGroups::Group")
    assert len(groups) == 1
    ((group_id, group),) = groups.items()
    props = group["Properties"]
    # EC2's form for UltraServer Capacity Blocks (cb-group.html), not the On-Demand one.
    assert {
        "Type": "AWS::EC2::CapacityReservationPool",
        "Parameters": [
            {"Name": "instance-type", "Values": ["trn2u.48xlarge"]},
            {"Name": "reservation-type", "Values": ["capacity-block"]},
        ],
    } in props["Configuration"]
    assert {"Type": "AWS::EC2::CapacityReservationPool"} not in props["Configuration"]
    assert {
        "Type": "AWS::ResourceGroups::Generic",
        "Parameters": [
            {"Name": "allowed-resource-types", "Values": ["AWS::EC2::CapacityReservation"]}
        ],
    } in props["Configuration"]
    resources = [r["Fn::Join"][1][-1] for r in props["Resources"]]
    assert resources == [f":capacity-reservation/{CR_A}", f":capacity-reservation/{CR_B}"]
    # The nodes' launch template (the Slurm controller has its own, with no reservation).
    (data,) = [
        lt["Properties"]["LaunchTemplateData"]
        for lt in _of_type(template, "AWS::EC2::LaunchTemplate").values()
        if "InstanceMarketOptions" in lt["Properties"]["LaunchTemplateData"]
    ]
    assert data["CapacityReservationSpecification"] == {
        "CapacityReservationTarget": {
            "CapacityReservationResourceGroupArn": {"Fn::GetAtt": [group_id, "Arn"]}
        }
    }
    assert data["InstanceMarketOptions"] == {"MarketType": "capacity-block"}


def test_two_ultraservers_synthesize_clean(two_ultraservers):
    _, template, report = two_ultraservers
    assert report.unacknowledged == []
    assert lint_template(template, "us-east-2") == []


def test_the_preflight_checks_the_blocks_are_in_the_group_the_nodes_target(two_ultraservers):
    _, template, _ = two_ultraservers
    (group_id,) = _of_type(template, "AWS::ResourceGroups::Group")
    (preflight,) = _of_type(template, "Custom::TrnPreflight").values()
    assert preflight["Properties"]["ReservationGroupArn"] == {"Fn::GetAtt": [group_id, "Arn"]}
    assert preflight["Properties"]["ReservationIds"] == [CR_A, CR_B]


def test_the_nodes_group_goes_to_zero_at_the_time_the_preflight_read_from_the_blocks(
    two_ultraservers,
):
    _, template, _ = two_ultraservers
    (preflight_id,) = _of_type(template, "Custom::TrnPreflight")
    (action,) = _of_type(template, "AWS::AutoScaling::ScheduledAction").values()
    props = action["Properties"]
    assert (props["MinSize"], props["MaxSize"], props["DesiredCapacity"]) == (0, 0, 0)
    assert props["StartTime"] == {"Fn::GetAtt": [preflight_id, "ScaleToZeroAt"]}
    nodes = [
        k
        for k, r in _of_type(template, "AWS::AutoScaling::AutoScalingGroup").items()
        if "CreationPolicy" in r
        and r["Properties"].get("LaunchTemplate")
        and "InstanceMarketOptions"
        in str(template["Resources"][r["Properties"]["LaunchTemplate"]["LaunchTemplateId"]["Ref"]])
    ]
    assert props["AutoScalingGroupName"] == {"Ref": nodes[0]}
