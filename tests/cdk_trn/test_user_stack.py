"""A stack of a user's own, under another name than the default app's, composing the constructs:
it carries every output ``cdk-trn`` reads (the list is the CLI's own), and the CLI's discovery
finds the cluster in it. One cluster and one scheduler per stack, a scheduler in its cluster's
stack: synth errors naming both constructs."""

from __future__ import annotations

import aws_cdk as cdk
import pytest
from aws_cdk.assertions import Template

from cdk_trn import (
    ClusterDashboard,
    Preflight,
    SlurmScheduler,
    TrainingBuckets,
    TrainingFileSystem,
    TrainingNetwork,
    TrainiumCluster,
)
from cdk_trn.errors import CdkTrnError
from cdk_trn_runtime import contract
from cdk_trn_runtime.cli.aws import CLUSTER_STACK_OUTPUTS, find_controller
from cdk_trn_runtime.cli.remote import Controller
from tests.cdk_trn_runtime.cli.aws_doubles import INSTANCE, stubbed_aws

STACK = "team-a-training"
CLUSTER = "team-a"


def compose(stack: cdk.Stack) -> tuple[TrainiumCluster, SlurmScheduler]:
    network = TrainingNetwork(stack, "Net", availability_zone="use2-az3")
    buckets = TrainingBuckets(stack, "Data")
    fsx = TrainingFileSystem(
        stack,
        "Shared",
        network=network,
        storage_capacity_gib=1200,
        encryption_key=buckets.encryption_key,
    )
    cluster = TrainiumCluster(
        stack,
        "Trainium",
        network=network,
        file_system=fsx,
        cluster_name=CLUSTER,
        hourly_price=40.0,
    )
    scheduler = SlurmScheduler(stack, "Scheduler", cluster=cluster)
    scheduler.researcher_access.allow_code_archives(buckets.dataset_bucket, scheduler.role)
    return cluster, scheduler


@pytest.fixture(scope="module")
def user_stack() -> tuple[cdk.Stack, TrainiumCluster, dict]:
    stack = cdk.Stack(cdk.App(), STACK, env=cdk.Environment(region="us-east-2"))
    cluster, _ = compose(stack)
    return stack, cluster, Template.from_stack(stack).to_json()["Outputs"]


def test_the_constructs_a_user_composes_come_from_cdk_trn():
    import cdk_trn

    for construct in (SlurmScheduler, Preflight, ClusterDashboard):
        assert construct.__name__ in cdk_trn.__all__


def test_the_user_stack_has_every_output_the_cli_reads(user_stack):
    _, _, outputs = user_stack
    missing = [key for key in CLUSTER_STACK_OUTPUTS if key not in outputs]
    assert missing == []
    assert outputs[contract.OUTPUT_CLUSTER_NAME]["Value"] == CLUSTER
    assert outputs[contract.OUTPUT_JOB_USER]["Value"] == contract.SLURM_JOB_USER
    assert outputs[contract.OUTPUT_SHARED_ROOT]["Value"] == "/fsx"
    assert outputs[contract.OUTPUT_NODE_HOURLY_PRICE]["Value"] == "40"


def test_the_cli_finds_the_cluster_in_the_user_stack(user_stack, monkeypatch):
    stack, _, outputs = user_stack
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test-double-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-double-secret")
    # What DescribeStacks would answer once deployed: literal values as synthesized, references
    # (group names, document names) as the names CloudFormation would give them.
    deployed = {
        key: value if isinstance(value, str) else f"{STACK}-{key}"
        for key, output in outputs.items()
        for value in [stack.resolve(output["Value"])]
    }
    stubs = stubbed_aws()
    stubs.stack(deployed, stack=STACK)
    stubs.group(name=deployed[contract.OUTPUT_CONTROLLER_GROUP])
    assert find_controller(stubs.aws, STACK) == Controller(
        instance_id=INSTANCE,
        container=contract.SLURM_CONTROLLER_CONTAINER,
        job_user=contract.SLURM_JOB_USER,
        shared_root="/fsx",
        slurm_cluster=contract.SLURM_DEFAULT_CLUSTER_NAME,
        cluster_name=CLUSTER,
    )
    stubs.assert_all_called()


def test_the_outputs_are_the_constructs_own_under_their_contract_keys(user_stack):
    stack, cluster, _ = user_stack
    (scheduler,) = [c for c in stack.node.children if isinstance(c, SlurmScheduler)]
    assert set(cluster.outputs) == {contract.OUTPUT_CLUSTER_NAME, contract.OUTPUT_NODE_HOURLY_PRICE}
    for key, output in {**cluster.outputs, **scheduler.outputs}.items():
        assert stack.resolve(output.logical_id) == key


def test_a_second_cluster_in_the_stack_is_an_error_naming_both():
    stack = cdk.Stack(cdk.App(), STACK, env=cdk.Environment(region="us-east-2"))
    network = TrainingNetwork(stack, "Net", availability_zone="use2-az3")
    TrainiumCluster(stack, "First", network=network)
    with pytest.raises(CdkTrnError) as raised:
        TrainiumCluster(stack, "Second", network=network)
    message = str(raised.value)
    assert f"{STACK}/Second" in message and f"{STACK}/First" in message
    assert "one TrainiumCluster per stack" in message


def test_a_scheduler_outside_its_clusters_stack_is_an_error_naming_both():
    app = cdk.App()
    env = cdk.Environment(region="us-east-2")
    stack = cdk.Stack(app, STACK, env=env)
    cluster, _ = compose(stack)
    other = cdk.Stack(app, "elsewhere", env=env)
    with pytest.raises(CdkTrnError) as raised:
        SlurmScheduler(other, "Scheduler", cluster=cluster)
    message = str(raised.value)
    assert "elsewhere/Scheduler" in message and cluster.node.path in message
    assert "must be in its cluster's stack" in message
