"""Each message of the contract survives its wire: what a construct sends is what the runtime
parses (CloudFormation's strings, the cluster document's JSON, the user data's shell lines)."""

from __future__ import annotations

import dataclasses
import json
import shlex

import pytest

from cdk_trn_runtime.contract.boot import (
    PREFIX,
    ROLE_VARIABLES,
    ControllerBoot,
    LauncherVariables,
    NodeBoot,
)
from cdk_trn_runtime.contract.cluster_document import ClusterDocument, PowerSave
from cdk_trn_runtime.contract.eif import EifBuildProperties
from cdk_trn_runtime.contract.message import MessageError
from cdk_trn_runtime.contract.preflight import CapacityKind, PreflightProperties


def _as_cloudformation(properties: dict) -> dict:
    """What CloudFormation hands a handler: every scalar a string."""
    return json.loads(json.dumps(properties), parse_int=str, parse_float=str)


def test_preflight_properties_round_trip_through_cloudformation():
    sent = PreflightProperties(
        instance_type="trn2u.48xlarge",
        availability_zone="use2-az3",
        nodes=8,
        vcpus_per_node=192,
        capacity=CapacityKind.ULTRASERVER_BLOCK,
        reservation_ids=("cr-0123456789abcdef0", "cr-0fedcba9876543210"),
        wait_for_capacity_block=True,
        endpoint_services=("ssm", "ecr.dkr"),
        reservation_group_arn="arn:aws:resource-groups:us-east-2:1:group/g",
    )
    wire = sent.to_properties(strings=True)
    assert wire["Nodes"] == "8" and wire["WaitForCapacityBlock"] == "true"
    assert PreflightProperties.from_properties(_as_cloudformation(wire)) == sent


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"Capacity": "spot"}, "Capacity 'spot' is not valid: one of on-demand, reservation"),
        ({"ReservationIds": []}, "ReservationIds () is not valid: given exactly when"),
        ({"Capacity": "on-demand"}, "ReservationIds ('cr-1',) is not valid"),
        ({"WaitForCapacityBlock": "true", "Capacity": "reservation"}, "WaitForCapacityBlock"),
    ],
)
def test_a_bad_preflight_names_the_property(change, says):
    wire = {
        "InstanceType": "trn2.48xlarge",
        "AvailabilityZone": "use2-az3",
        "Nodes": "2",
        "VcpusPerNode": "192",
        "Capacity": "capacity-block",
        "ReservationIds": ["cr-1"],
    }
    with pytest.raises(MessageError, match="preflight properties: ") as error:
        PreflightProperties.from_properties({**wire, **change})
    assert says in str(error.value)


def test_eif_build_properties_refuse_an_empty_one_by_name():
    wire = EifBuildProperties("p", "b", "k", "o", "/eif/abc/").to_properties()
    assert EifBuildProperties.from_properties(wire).prefix == "eif/abc"
    with pytest.raises(MessageError, match="EIF build properties: SourceKey '' is not valid"):
        EifBuildProperties.from_properties({**wire, "SourceKey": ""})


def _document() -> ClusterDocument:
    return dataclasses.replace(
        ClusterDocument.build(
            nodes=2,
            shared_root="/fsx",
            node_cpus=192,
            node_real_memory_mib=1000,
            node_features=["trn2.48xlarge", "efa"],
        ),
        document_parameter="/cdk-trn/c/slurm-cluster-document",
        power_save=PowerSave(idle_seconds=1800, cluster_tag=("cdk-trn:cluster", "c"), region="r"),
    )


def test_the_cluster_document_round_trips_through_its_json_and_keeps_its_form():
    document = _document()
    text = json.dumps(document.to_properties(), sort_keys=True)
    assert ClusterDocument.from_properties(json.loads(text)) == document
    form = json.loads(text)
    # The form running controllers read: munge_socket null, lists, a nested power_save.
    assert form["munge_socket"] is None and form["srun_port_range"] == [60001, 63000]
    assert form["power_save"]["cluster_tag"] == ["cdk-trn:cluster", "c"]
    assert "controller_host" not in form


def test_a_bad_cluster_document_names_the_key():
    form = _document().to_properties()
    with pytest.raises(MessageError, match="cluster document: node_cpus 'many' is not valid"):
        ClusterDocument.from_properties({**form, "node_cpus": "many"})
    with pytest.raises(MessageError, match="cluster document power_save: cluster_tag"):
        ClusterDocument.from_properties(
            {**form, "power_save": {**form["power_save"], "cluster_tag": ["k"]}}
        )
    with pytest.raises(MessageError, match="controller_host is missing"):
        ClusterDocument.from_properties(form).controller()


def test_every_role_has_a_message_whose_variables_the_launcher_can_signal_with():
    from cdk_trn_runtime.node.bundle import ROLES

    assert set(ROLE_VARIABLES) == set(ROLES)
    for cls in (*ROLE_VARIABLES.values(), LauncherVariables):
        assert all(k.startswith(PREFIX) for k in cls.keys().values()), cls
    for cls in ROLE_VARIABLES.values():
        assert {"region", "stack", "resource"} <= set(cls.keys()), cls
    launcher = set(LauncherVariables.keys().values())
    assert all(not launcher & set(cls.keys().values()) for cls in ROLE_VARIABLES.values())


def _user_data_variables(user_data: str) -> dict[str, str]:
    lines = [line for line in user_data.splitlines() if line.startswith(PREFIX)]
    return dict(tuple(shlex.split(line)[0].split("=", 1)) for line in lines)


def test_the_node_and_controller_user_data_parse_back_into_their_messages():
    from cdk_trn.scheduler import SlurmScheduler
    from tests.cdk_trn_runtime.node.test_node_bootstrap import FileSystemStandIn
    from tests.support.stacks import cluster_stack

    stack, cluster = cluster_stack("trn2.48xlarge", file_system=FileSystemStandIn())
    scheduler = SlurmScheduler(stack, "Slurm", cluster=cluster)
    node = _user_data_variables(cluster._user_data())
    assert NodeBoot.from_environment(node) == cluster._boot_variables()
    assert node["CDK_TRN_FSX_EFA"] in ("0", "1")
    controller = _user_data_variables(scheduler._user_data())
    parsed = ControllerBoot.from_environment(controller)
    assert parsed == scheduler._boot_variables()
    assert parsed.slurm_spec.to_properties() == scheduler.slurm_cluster_document()
    assert LauncherVariables.from_environment(node).entry == "node_bootstrap.sh"
