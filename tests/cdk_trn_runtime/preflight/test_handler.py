"""The preflight handler against stubbed AWS clients (botocore Stubber on real ec2,
service-quotas and lambda clients, so every request and response is checked against the API
model; no network), served by the deploy-time driver as on Lambda. Each refusal must name its
fix."""

from __future__ import annotations

import datetime as dt
import functools
import json
import types
from dataclasses import dataclass, field
from typing import Any

import boto3
import pytest
from botocore.stub import ANY, Stubber

from cdk_trn_runtime.deploy_time import driver
from cdk_trn_runtime.preflight import handler

REGION = "us-east-2"
AZ = "use2-az3"
TYPE = "trn2.48xlarge"
CR_A = "cr-0123456789abcdef0"
CR_B = "cr-0fedcba9876543210"
NOW = dt.datetime(2026, 11, 29, 12, 0, tzinfo=dt.UTC)
FUNCTION_ARN = f"arn:aws:lambda:{REGION}:123456789012:function:preflight"


@dataclass
class RecordedResponses:
    """Test double for the driver's PUT to the response URL: records what would go to
    CloudFormation."""

    calls: list[dict[str, Any]] = field(default_factory=list)

    def __call__(self, url: str, body: bytes, *, timeout: float) -> int:
        answer = json.loads(body)
        self.calls.append(
            {
                "status": answer["Status"],
                "reason": answer["Reason"],
                "physical_id": answer["PhysicalResourceId"],
                "data": answer["Data"],
            }
        )
        return 200

    @property
    def only(self) -> dict[str, Any]:
        assert len(self.calls) == 1, self.calls
        return self.calls[0]


@dataclass
class FakeClock:
    """A clock the test moves; ``sleep`` advances it."""

    now: dt.datetime = NOW
    slept: list[float] = field(default_factory=list)

    def __call__(self) -> dt.datetime:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += dt.timedelta(seconds=seconds)


@dataclass
class StubbedAws:
    clients: handler.Clients
    ec2: Stubber
    quotas: Stubber
    lambda_: Stubber
    clock: FakeClock
    clients_lambda: Any = None


@pytest.fixture
def aws(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test-double-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-double-secret")
    ec2 = boto3.client("ec2", region_name=REGION)
    quotas = boto3.client("service-quotas", region_name=REGION)
    lambda_ = boto3.client("lambda", region_name=REGION)
    clock = FakeClock()
    stubs = StubbedAws(
        handler.Clients(ec2=ec2, quotas=quotas, now=clock),
        Stubber(ec2),
        Stubber(quotas),
        Stubber(lambda_),
        clock,
        lambda_,
    )
    for stub in (stubs.ec2, stubs.quotas, stubs.lambda_):
        stub.activate()
    yield stubs
    for stub in (stubs.ec2, stubs.quotas, stubs.lambda_):
        stub.assert_no_pending_responses()


def event(request_type="Create", **overrides) -> dict[str, Any]:
    props = {
        "ServiceToken": FUNCTION_ARN,
        "InstanceType": TYPE,
        "AvailabilityZone": AZ,
        "Nodes": "2",
        "VcpusPerNode": "192",
        "Capacity": "on-demand",
        "ReservationIds": [],
        "WaitForCapacityBlock": "false",
    }
    props.update(overrides)
    result = {
        "RequestType": request_type,
        "ResponseURL": "https://cloudformation-custom-resource-response.example/test-double",
        "StackId": f"arn:aws:cloudformation:{REGION}:123456789012:stack/trn-cluster/guid",
        "RequestId": "request-1",
        "LogicalResourceId": "Preflight",
        "ResourceType": "Custom::TrnPreflight",
        "ResourceProperties": props,
    }
    if request_type != "Create":
        result["PhysicalResourceId"] = "Preflight-preflight"
    return result


SETTINGS = driver.Settings(
    handler_module="cdk_trn_runtime.preflight.handler",
    query_interval=handler.POLL_SECONDS,
    total_timeout=handler.WAIT_BUDGET.total_seconds(),
    purpose="preflight",
)


def run(aws: StubbedAws, ev: dict[str, Any], remaining_ms: int = 600_000) -> RecordedResponses:
    """Serve ``ev`` as the function would: the driver around the handler, whose clients are the
    stubbed ones (a handler module double binding them)."""
    responses = RecordedResponses()
    bound = types.SimpleNamespace(
        on_event=functools.partial(handler.on_event, clients=aws.clients),
        is_complete=functools.partial(handler.is_complete, clients=aws.clients),
    )
    runtime = driver.Runtime(
        lambda_client=aws.clients_lambda,
        clock=lambda: aws.clock.now.timestamp(),
        sleep=aws.clock.sleep,
        put=responses,
    )
    driver.run(ev, bound, SETTINGS, driver.Invocation(FUNCTION_ARN, lambda: remaining_ms), runtime)
    return responses


def stub_offerings(aws: StubbedAws, zones: list[str]) -> None:
    aws.ec2.add_response(
        "describe_instance_type_offerings",
        {
            "InstanceTypeOfferings": [
                {"InstanceType": TYPE, "LocationType": "availability-zone-id", "Location": z}
                for z in zones
            ]
        },
        {
            "LocationType": "availability-zone-id",
            "Filters": [{"Name": "instance-type", "Values": [TYPE]}],
        },
    )


def stub_quota(aws: StubbedAws, value: float) -> None:
    aws.quotas.add_response(
        "get_service_quota",
        {
            "Quota": {
                "ServiceCode": "ec2",
                "QuotaCode": "L-2C3B7624",
                "QuotaName": "Running On-Demand Trn instances",
                "Value": value,
            }
        },
        {"ServiceCode": "ec2", "QuotaCode": "L-2C3B7624"},
    )


def trn_instance(
    vcpus: int = 192, *, cluster: str | None = None, lifecycle: str | None = None
) -> dict[str, Any]:
    value: dict[str, Any] = {
        "InstanceId": "i-0123456789abcdef0",
        "InstanceType": TYPE,
        "CpuOptions": {"CoreCount": vcpus // 2, "ThreadsPerCore": 2},
        "Tags": [{"Key": "cdk-trn:cluster", "Value": cluster}] if cluster else [],
    }
    if lifecycle:
        value["InstanceLifecycle"] = lifecycle
    return value


def stub_running(aws: StubbedAws, instances: list[dict[str, Any]]) -> None:
    aws.ec2.add_response(
        "describe_instances",
        {"Reservations": [{"Instances": instances}] if instances else []},
        {
            "Filters": [
                {"Name": "instance-type", "Values": ["trn*"]},
                {"Name": "instance-state-name", "Values": ["pending", "running"]},
            ]
        },
    )


def reservation(rid=CR_A, **overrides) -> dict[str, Any]:
    value: dict[str, Any] = {
        "CapacityReservationId": rid,
        "InstanceType": TYPE,
        "AvailabilityZoneId": AZ,
        "AvailabilityZone": "us-east-2c",
        "TotalInstanceCount": 2,
        "AvailableInstanceCount": 2,
        "State": "active",
        "ReservationType": "capacity-block",
        "StartDate": NOW - dt.timedelta(hours=1),
        "EndDate": NOW + dt.timedelta(days=2),
    }
    value.update(overrides)
    return value


def stub_reservations(aws: StubbedAws, ids: list[str], found: list[dict[str, Any]]) -> None:
    aws.ec2.add_response(
        "describe_capacity_reservations",
        {"CapacityReservations": found},
        {"CapacityReservationIds": ids},
    )


def block_event(ids=(CR_A,), **overrides) -> dict[str, Any]:
    return event(Capacity="capacity-block", ReservationIds=list(ids), **overrides)


# --- on-demand ----------------------------------------------------------------------------------


def test_on_demand_passes_when_offered_and_the_quota_holds_every_node(aws):
    stub_offerings(aws, ["use2-az1", AZ])
    stub_quota(aws, 384.0)
    stub_running(aws, [])
    result = run(aws, event()).only
    assert result["status"] == "SUCCESS"
    assert result["physical_id"] == "Preflight-preflight"
    assert "2 x trn2.48xlarge in use2-az3" in result["data"]["Summary"]


SUBNET = "subnet-0123456789abcdef0"


def stub_subnet(aws: StubbedAws, zone_id: str | None) -> None:
    if zone_id is None:
        aws.ec2.add_client_error(
            "describe_subnets",
            service_error_code="InvalidSubnetID.NotFound",
            expected_params={"SubnetIds": [SUBNET]},
        )
        return
    aws.ec2.add_response(
        "describe_subnets",
        {"Subnets": [{"SubnetId": SUBNET, "AvailabilityZoneId": zone_id, "VpcId": "vpc-1"}]},
        {"SubnetIds": [SUBNET]},
    )


def test_an_imported_subnet_in_the_az_passes_on_to_the_other_checks(aws):
    stub_subnet(aws, AZ)
    stub_offerings(aws, [AZ])
    stub_quota(aws, 384.0)
    stub_running(aws, [])
    assert run(aws, event(SubnetId=SUBNET)).only["status"] == "SUCCESS"


def test_an_imported_subnet_in_another_az_refuses_naming_both_azs(aws):
    stub_subnet(aws, "use2-az1")
    result = run(aws, event(SubnetId=SUBNET)).only
    assert result["status"] == "FAILED"
    assert f"subnet {SUBNET} is in AZ use2-az1, not {AZ}" in result["reason"]
    assert "availabilityZone=use2-az1" in result["reason"]


def test_an_imported_subnet_that_does_not_exist_refuses(aws):
    stub_subnet(aws, None)
    result = run(aws, event(SubnetId=SUBNET)).only
    assert result["status"] == "FAILED"
    assert f"subnet {SUBNET} does not exist" in result["reason"]


def test_type_not_offered_in_the_az_names_the_azs_that_offer_it(aws):
    stub_offerings(aws, ["use2-az1", "use2-az2"])
    result = run(aws, event()).only
    assert result["status"] == "FAILED"
    assert "not offered in AZ use2-az3" in result["reason"]
    assert (
        "Fix: set availabilityZone to an AZ id that offers it: use2-az1, use2-az2"
        in (result["reason"])
    )


def test_type_offered_nowhere_in_the_region_says_to_change_region(aws):
    stub_offerings(aws, [])
    reason = run(aws, event()).only["reason"]
    assert "not offered in any AZ of us-east-2" in reason
    assert "Fix: deploy to a region that offers it" in reason


def test_quota_below_nodes_times_vcpus_refuses_with_the_increase_command(aws):
    stub_offerings(aws, [AZ])
    stub_quota(aws, 192.0)
    stub_running(aws, [])
    result = run(aws, event()).only
    assert result["status"] == "FAILED"
    assert "need 384 vCPUs" in result["reason"]
    assert "L-2C3B7624 (Running On-Demand Trn instances)" in result["reason"]
    assert "is 192 vCPUs" in result["reason"]
    assert (
        "request-service-quota-increase --service-code ec2 --quota-code L-2C3B7624 "
        "--desired-value 384 --region us-east-2" in result["reason"]
    )
    assert "set nodes to 1 or fewer" in result["reason"]


def test_zero_quota_without_an_applied_value_reads_the_aws_default(aws):
    stub_offerings(aws, [AZ])
    aws.quotas.add_client_error(
        "get_service_quota",
        service_error_code="NoSuchResourceException",
        expected_params={"ServiceCode": "ec2", "QuotaCode": "L-2C3B7624"},
    )
    aws.quotas.add_response(
        "get_aws_default_service_quota",
        {"Quota": {"QuotaCode": "L-2C3B7624", "Value": 0.0}},
        {"ServiceCode": "ec2", "QuotaCode": "L-2C3B7624"},
    )
    stub_running(aws, [])
    reason = run(aws, event()).only["reason"]
    assert "is 0 vCPUs" in reason
    assert "set nodes to" not in reason
    assert "Fix: request an increase" in reason


def test_running_trn_vcpus_plus_the_new_nodes_above_the_quota_refuse(aws):
    # 384 vCPUs of quota would hold 2 nodes, but another trn2 already runs in the region.
    stub_offerings(aws, [AZ])
    stub_quota(aws, 384.0)
    stub_running(aws, [trn_instance(192)])
    result = run(aws, event()).only
    assert result["status"] == "FAILED"
    assert "need 384 vCPUs" in result["reason"]
    assert (
        "is 384 vCPUs, of which 192 are used by Trn instances already running" in (result["reason"])
    )
    assert "--desired-value 576" in result["reason"]
    assert "stop Trn instances you no longer need; set nodes to 1 or fewer" in result["reason"]


def test_own_nodes_capacity_block_and_spot_instances_do_not_use_the_quota(aws):
    stub_offerings(aws, [AZ])
    stub_quota(aws, 384.0)
    stub_running(
        aws,
        [
            trn_instance(192, cluster="trn-cluster"),
            trn_instance(192, lifecycle="capacity-block"),
            trn_instance(192, lifecycle="spot"),
        ],
    )
    result = run(aws, event(ClusterName="trn-cluster")).only
    assert result["status"] == "SUCCESS", result["reason"]


def stub_endpoint_services(aws: StubbedAws, offered: dict[str, list[str]]) -> None:
    names = [f"com.amazonaws.{REGION}.{n}" for n in offered]
    aws.ec2.add_response(
        "describe_vpc_endpoint_services",
        {
            "ServiceDetails": [
                {"ServiceName": f"com.amazonaws.{REGION}.{n}", "AvailabilityZoneIds": zones}
                for n, zones in offered.items()
            ]
        },
        {"ServiceNames": names},
    )


def test_an_endpoint_service_not_offered_in_the_az_refuses_naming_it(aws):
    stub_endpoint_services(aws, {"ssm": [AZ, "use2-az1"], "ecr.dkr": ["use2-az1"]})
    result = run(aws, event(EndpointServices=["ssm", "ecr.dkr"])).only
    assert result["status"] == "FAILED"
    assert "endpoint service(s) ecr.dkr are not offered in AZ use2-az3" in result["reason"]
    assert f"--service-names com.amazonaws.{REGION}.ecr.dkr" in result["reason"]


def test_endpoint_services_offered_in_the_az_pass_on_to_the_other_checks(aws):
    stub_endpoint_services(aws, {"ssm": [AZ]})
    stub_reservations(aws, [CR_A], [reservation()])
    result = run(aws, block_event(EndpointServices=["ssm"])).only
    assert result["status"] == "SUCCESS"


def test_a_denied_call_fails_with_the_error_instead_of_hanging(aws):
    aws.ec2.add_client_error(
        "describe_instance_type_offerings",
        service_error_code="UnauthorizedOperation",
        service_message="not authorized",
    )
    result = run(aws, event()).only
    assert result["status"] == "FAILED"
    assert "UnauthorizedOperation" in result["reason"]
    assert "Fix: check the preflight function's permissions" in result["reason"]


# --- reservations and blocks -------------------------------------------------------------------


def test_an_active_block_with_room_for_every_node_passes_without_a_quota_check(aws):
    stub_reservations(aws, [CR_A], [reservation()])
    result = run(aws, block_event()).only
    assert result["status"] == "SUCCESS"
    assert CR_A in result["data"]["Summary"]


def test_a_block_passes_with_the_time_its_group_goes_to_zero_35_minutes_before_its_end(aws):
    end = NOW + dt.timedelta(days=2)
    stub_reservations(aws, [CR_A], [reservation(EndDate=end)])
    data = run(aws, block_event()).only["data"]
    assert data["ScaleToZeroAt"] == "2026-12-01T11:25:00Z"


def test_a_block_ending_before_the_deploy_could_finish_refuses(aws):
    stub_reservations(aws, [CR_A], [reservation(EndDate=NOW + dt.timedelta(minutes=80))])
    reason = run(aws, block_event()).only["reason"]
    assert "goes to zero at 2026-11-29 12:45 UTC, before this deploy could finish" in reason
    assert "Fix: buy a block that lasts longer" in reason


def test_several_blocks_go_to_zero_before_the_earliest_end(aws):
    found = [
        reservation(CR_A, EndDate=NOW + dt.timedelta(days=3), TotalInstanceCount=1),
        reservation(CR_B, EndDate=NOW + dt.timedelta(days=1), TotalInstanceCount=1),
    ]
    found = [{**r, "AvailableInstanceCount": 1} for r in found]
    stub_reservations(aws, [CR_A, CR_B], found)
    data = run(aws, block_event(ids=(CR_A, CR_B))).only["data"]
    assert data["ScaleToZeroAt"] == "2026-11-30T11:25:00Z"


GROUP_ARN = f"arn:aws:resource-groups:{REGION}:123456789012:group/trn-cluster-blocks"


def stub_groups(aws: StubbedAws, rid: str, groups: list[str]) -> None:
    aws.ec2.add_response(
        "get_groups_for_capacity_reservation",
        {"CapacityReservationGroups": [{"GroupArn": g, "OwnerId": "123456789012"} for g in groups]},
        {"CapacityReservationId": rid},
    )


def ultraserver_event(**overrides) -> dict[str, Any]:
    return event(
        Capacity="ultraserver-block",
        ReservationIds=[CR_A, CR_B],
        InstanceType="trn2u.48xlarge",
        Nodes="8",
        ReservationGroupArn=GROUP_ARN,
        **overrides,
    )


def ultraserver_blocks() -> list[dict[str, Any]]:
    return [
        reservation(rid, InstanceType="trn2u.48xlarge", TotalInstanceCount=4)
        | {"AvailableInstanceCount": 4}
        for rid in (CR_A, CR_B)
    ]


def test_ultraserver_blocks_outside_the_nodes_resource_group_refuse_naming_them(aws):
    stub_reservations(aws, [CR_A, CR_B], ultraserver_blocks())
    stub_groups(aws, CR_A, [GROUP_ARN])
    stub_groups(aws, CR_B, [])
    result = run(aws, ultraserver_event()).only
    assert result["status"] == "FAILED"
    assert f"{CR_B} not in the resource group {GROUP_ARN}" in result["reason"]
    assert CR_A not in result["reason"].split("not in the resource group")[0]


def test_ultraserver_blocks_in_the_nodes_resource_group_pass(aws):
    stub_reservations(aws, [CR_A, CR_B], ultraserver_blocks())
    stub_groups(aws, CR_A, [GROUP_ARN])
    stub_groups(aws, CR_B, ["arn:aws:resource-groups:us-east-2:123456789012:group/x", GROUP_ARN])
    assert run(aws, ultraserver_event()).only["status"] == "SUCCESS"


def test_a_missing_reservation_refuses_with_how_to_find_the_id(aws):
    aws.ec2.add_client_error(
        "describe_capacity_reservations",
        service_error_code="InvalidCapacityReservationId.NotFound",
        service_message=f"The capacity reservation ID '{CR_A}' does not exist",
        expected_params={"CapacityReservationIds": [CR_A]},
    )
    reason = run(aws, block_event()).only["reason"]
    assert f"capacity reservation {CR_A} not found in us-east-2" in reason
    assert "Fix: check the id with 'aws ec2 describe-capacity-reservations --region us-east-2'" in (
        reason
    )


def test_a_reservation_for_another_type_names_the_type_to_set(aws):
    stub_reservations(aws, [CR_A], [reservation(InstanceType="trn1.32xlarge")])
    reason = run(aws, block_event()).only["reason"]
    assert f"{CR_A} reserves trn1.32xlarge, not trn2.48xlarge" in reason
    assert "Fix: set instanceType to trn1.32xlarge" in reason


def test_a_reservation_in_another_az_names_the_az_to_set(aws):
    stub_reservations(aws, [CR_A], [reservation(AvailabilityZoneId="use2-az1")])
    reason = run(aws, block_event()).only["reason"]
    assert f"{CR_A} is in AZ use2-az1, not use2-az3" in reason
    assert "Fix: set availabilityZone to use2-az1" in reason


def test_fewer_available_instances_than_nodes_refuses_on_create(aws):
    stub_reservations(aws, [CR_A], [reservation(TotalInstanceCount=2, AvailableInstanceCount=1)])
    reason = run(aws, block_event()).only["reason"]
    assert "can hold 1 x trn2.48xlarge (1 of 2 are in use), fewer than nodes = 2" in reason
    assert "Fix: set nodes to 1 or fewer" in reason


def test_an_update_counts_the_clusters_own_running_nodes_as_usable(aws):
    # On Update our two nodes already run in the block: available 0, total 2.
    stub_reservations(aws, [CR_A], [reservation(AvailableInstanceCount=0)])
    assert run(aws, block_event(request_type="Update")).only["status"] == "SUCCESS"


def test_a_block_smaller_than_nodes_refuses_on_update_too(aws):
    stub_reservations(aws, [CR_A], [reservation(TotalInstanceCount=2, AvailableInstanceCount=0)])
    reason = run(aws, block_event(request_type="Update", Nodes="4")).only["reason"]
    assert "can hold 2 x trn2.48xlarge, fewer than nodes = 4" in reason


@pytest.mark.parametrize("state", ["expired", "cancelled", "payment-failed"])
def test_a_block_that_can_no_longer_launch_says_to_buy_a_new_one(aws, state):
    stub_reservations(aws, [CR_A], [reservation(State=state, AvailableInstanceCount=0)])
    reason = run(aws, block_event()).only["reason"]
    assert f"{CR_A} is {state} and can no longer launch instances" in reason
    assert "Fix: buy a new capacity block and pass its id" in reason


def test_a_reservation_still_pending_says_to_deploy_once_active(aws):
    found = reservation(State="payment-pending", ReservationType="default")
    stub_reservations(aws, [CR_A], [found])
    reason = run(aws, event(Capacity="reservation", ReservationIds=[CR_A])).only["reason"]
    assert f"{CR_A} is payment-pending, not active yet" in reason
    assert "Fix: deploy again once" in reason


def test_a_block_in_its_last_30_minutes_refuses(aws):
    stub_reservations(aws, [CR_A], [reservation(EndDate=NOW + dt.timedelta(minutes=20))])
    reason = run(aws, block_event()).only["reason"]
    assert "30 minutes before its end" in reason
    assert "Fix: buy a new block" in reason


def test_a_capacity_block_passed_as_a_plain_reservation_names_the_capacity_to_set(aws):
    stub_reservations(aws, [CR_A], [reservation()])
    reason = run(aws, event(Capacity="reservation", ReservationIds=[CR_A])).only["reason"]
    assert "is a capacity block" in reason
    assert "Fix: set capacity to capacity-block" in reason


def test_a_plain_reservation_passed_as_a_block_names_the_capacity_to_set(aws):
    stub_reservations(aws, [CR_A], [reservation(ReservationType="default")])
    reason = run(aws, block_event()).only["reason"]
    assert "is an On-Demand Capacity Reservation, not a capacity block" in reason
    assert "Fix: set capacity to reservation" in reason


def test_ultraserver_blocks_are_counted_together(aws):
    found = [
        reservation(
            CR_A, InstanceType="trn2u.48xlarge", TotalInstanceCount=4, AvailableInstanceCount=4
        ),
        reservation(
            CR_B, InstanceType="trn2u.48xlarge", TotalInstanceCount=4, AvailableInstanceCount=4
        ),
    ]
    stub_reservations(aws, [CR_A, CR_B], found)
    ev = event(
        Capacity="ultraserver-block",
        ReservationIds=[CR_A, CR_B],
        InstanceType="trn2u.48xlarge",
        Nodes="8",
    )
    assert run(aws, ev).only["status"] == "SUCCESS"


# --- a block that starts later ------------------------------------------------------------------


def scheduled(start: dt.datetime) -> dict[str, Any]:
    return reservation(State="scheduled", StartDate=start, EndDate=start + dt.timedelta(days=1))


def test_a_block_that_starts_later_says_when_and_offers_waiting(aws):
    stub_reservations(aws, [CR_A], [scheduled(NOW + dt.timedelta(hours=3, minutes=20))])
    reason = run(aws, block_event()).only["reason"]
    assert f"capacity block {CR_A} starts at 2026-11-29 15:20 UTC (in 3 h 20 min)" in reason
    assert "Fix: deploy after 2026-11-29 15:20 UTC" in reason
    assert "wait_for_capacity_block=True" in reason


def test_waiting_for_a_block_beyond_the_custom_resource_hour_refuses_with_when_to_retry(aws):
    stub_reservations(aws, [CR_A], [scheduled(NOW + dt.timedelta(hours=2))])
    reason = run(aws, block_event(WaitForCapacityBlock="true")).only["reason"]
    assert "later than the 55 minutes a deploy can wait" in reason
    assert "Fix: deploy again after 2026-11-29 13:05 UTC" in reason


def test_waiting_polls_until_the_block_is_active_then_passes(aws):
    start = NOW + dt.timedelta(minutes=2)
    stub_reservations(aws, [CR_A], [scheduled(start)])  # on_event
    stub_reservations(aws, [CR_A], [scheduled(start)])  # the first poll, at once
    stub_reservations(aws, [CR_A], [reservation(StartDate=start)])  # a minute later
    responses = run(aws, block_event(WaitForCapacityBlock="true"))
    assert responses.only["status"] == "SUCCESS"
    assert f"in {CR_A}" in responses.only["data"]["Summary"]
    assert aws.clock.slept == [60]


def test_a_wait_longer_than_the_invocation_is_handed_to_a_new_invocation(aws):
    stub_reservations(aws, [CR_A], [scheduled(NOW + dt.timedelta(minutes=40))])
    stub_reservations(aws, [CR_A], [scheduled(NOW + dt.timedelta(minutes=40))])
    ev = block_event(WaitForCapacityBlock="true")
    # The payload's exact form is the driver's (tested with it).
    aws.lambda_.add_response(
        "invoke",
        {"StatusCode": 202},
        {"FunctionName": FUNCTION_ARN, "InvocationType": "Event", "Payload": ANY},
    )
    responses = run(aws, ev, remaining_ms=100_000)
    assert responses.calls == []  # the next invocation answers CloudFormation


def test_a_continued_wait_keeps_the_first_deadline(aws):
    stub_reservations(aws, [CR_A], [scheduled(NOW + dt.timedelta(minutes=10))])
    ev = block_event(WaitForCapacityBlock="true")
    first_deadline = NOW + dt.timedelta(minutes=5)
    resource = {k: v for k, v in ev.items() if k != "ResponseURL"}
    resource.update(
        PhysicalResourceId="Preflight-preflight",
        Data={},
        Preflight={"Deadline": first_deadline.isoformat(), "Passed": False},
    )
    ev[driver.CONTINUATION_KEY] = {
        "Resource": resource,
        "Started": (NOW - dt.timedelta(minutes=50)).timestamp(),
        "Deadline": first_deadline.timestamp(),
    }
    reason = run(aws, ev).only["reason"]
    assert "later than the 55 minutes" in reason


def test_the_constructs_wait_and_poll_are_the_handlers():
    from cdk_trn import preflight

    assert preflight.WAIT_BUDGET.to_seconds() == handler.WAIT_BUDGET.total_seconds()
    assert preflight.POLL_SECONDS == handler.POLL_SECONDS


# --- protocol -----------------------------------------------------------------------------------


def test_delete_makes_no_aws_call_and_succeeds(aws):
    result = run(aws, event("Delete")).only
    assert result == {
        "status": "SUCCESS",
        "reason": "",
        "physical_id": "Preflight-preflight",
        "data": {},
    }


def test_malformed_properties_fail_with_a_reason(aws):
    result = run(aws, event(Nodes="two")).only
    assert result["status"] == "FAILED"
    assert "preflight properties are malformed" in result["reason"]


def test_an_az_name_is_resolved_to_its_id_in_the_deploying_account(aws):
    aws.ec2.add_response(
        "describe_availability_zones",
        {"AvailabilityZones": [{"ZoneName": "us-east-2c", "ZoneId": AZ}]},
        {"ZoneNames": ["us-east-2c"]},
    )
    stub_offerings(aws, [AZ])
    stub_quota(aws, 384.0)
    stub_running(aws, [])
    result = run(aws, event(AvailabilityZone="us-east-2c")).only
    assert result["status"] == "SUCCESS", result
    assert f"2 x trn2.48xlarge in {AZ}" in result["data"]["Summary"]
