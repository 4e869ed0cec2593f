"""Bad input fails at synth with a message naming the prop, the value and what is allowed."""

import subprocess
import sys
from pathlib import Path

import aws_cdk as cdk
import pytest

from cdk_trn.capacity import Capacity
from cdk_trn.cluster import TrainiumCluster
from cdk_trn.errors import CdkTrnError
from cdk_trn.network import TrainingNetwork

ROOT = Path(__file__).resolve().parents[2]


def build(region="us-east-2", az="use2-az3", **props):
    app = cdk.App()
    stack = cdk.Stack(app, "Test", env=cdk.Environment(region=region))
    network = TrainingNetwork(stack, "Network", availability_zone=az)
    before = len(stack.node.find_all())
    try:
        TrainiumCluster(stack, "Cluster", network=network, **props)
    finally:
        # Nothing of the cluster exists when validation fails (only its empty scope).
        created = len(stack.node.find_all()) - before
        assert created <= 1


def expect_error(*fragments, **props):
    with pytest.raises(CdkTrnError) as error:
        build(**props)
    for fragment in fragments:
        assert fragment in str(error.value), str(error.value)


def test_unknown_instance_type():
    expect_error("instance_type", "'trn9.48xlarge'", "trn2.48xlarge", instance_type="trn9.48xlarge")


@pytest.mark.parametrize("nodes", [0, -1, 1025])
def test_node_count_out_of_range(nodes):
    expect_error("nodes", repr(nodes), "from 1 to 1024", nodes=nodes)


def test_ultraserver_nodes_not_a_multiple_of_four():
    expect_error(
        "nodes",
        "6",
        "multiple of 4",
        instance_type="trn2u.48xlarge",
        nodes=6,
        capacity=Capacity.ultraserver_block("cr-0123456789abcdef0"),
    )


def test_trn2u_without_an_ultraserver_capacity_block():
    expect_error("capacity", "UltraServer", "on-demand", instance_type="trn2u.48xlarge", nodes=4)


def test_ultraserver_block_with_a_non_ultraserver_type():
    expect_error(
        "instance_type",
        "trn2u.48xlarge",
        "'trn2.48xlarge'",
        capacity=Capacity.ultraserver_block("cr-0123456789abcdef0"),
    )


def test_capacity_block_plus_placement_group():
    with pytest.raises(CdkTrnError) as error:
        Capacity.capacity_block("cr-0123456789abcdef0", placement_group=True)
    assert "placement_group" in str(error.value) and "capacity block" in str(error.value)


def test_malformed_reservation_id():
    with pytest.raises(CdkTrnError, match="reservation_id must be a capacity reservation id"):
        Capacity.reservation("reservation-1")


@pytest.mark.parametrize("az", ["us-west-2a", "usw2-az1"])
def test_availability_zone_outside_the_region(az):
    with pytest.raises(CdkTrnError) as error:
        build(az=az)
    assert "availability_zone" in str(error.value) and "us-east-2" in str(error.value)


def test_availability_zone_that_is_not_an_az():
    with pytest.raises(CdkTrnError, match="availability_zone must be an Availability Zone id"):
        build(az="ohio")


def test_instance_type_not_offered_in_the_region():
    expect_error(
        "instance_type",
        "trn2.48xlarge",
        "eu-west-1",
        "us-east-2",
        region="eu-west-1",
        az="euw1-az1",
    )


def test_environment_agnostic_stack_is_rejected():
    app = cdk.App()
    stack = cdk.Stack(app, "Agnostic")
    network = TrainingNetwork(stack, "Network", availability_zone="use2-az3")
    with pytest.raises(CdkTrnError, match="region must be set"):
        TrainiumCluster(stack, "Cluster", network=network)


def test_app_reports_bad_context_without_a_traceback():
    result = subprocess.run(
        [sys.executable, "app.py"],
        cwd=ROOT,
        env={
            "PATH": "/usr/bin:/bin",
            "CDK_CONTEXT_JSON": '{"nodes": "two"}',
            "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20",
            "HOME": str(ROOT),
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "nodes must be an integer, got 'two'" in result.stderr
    assert "Traceback" not in result.stderr
