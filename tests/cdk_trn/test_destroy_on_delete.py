"""``destroy_on_delete``: every public construct that creates a stateful resource (data, keys, log
groups, file systems, parameters holding data) retains it by default and deletes it only when the
opt-out is named, with the same semantics everywhere.

The constructs under test are the ``Construct`` subclasses of ``cdk_trn.__all__``: one with no
builder below fails, so a new public construct cannot skip the rule unnoticed. Every one is built
into one stack per setting; a resource belongs to the nearest exported construct above it (the
events topic inside ``TrainiumCluster`` belongs to ``ClusterEventsTopic``, which follows its own
entry). What an exported non-construct creates when an owner binds it (``EnclaveImage``'s build,
``NeuronTrainingImage``'s asset) lands in the owner's scope and is judged with the owner.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from typing import Any

import aws_cdk as cdk
import pytest
from constructs import Construct, IConstruct

import cdk_trn
from cdk_trn import (
    AcceptanceRun,
    Capacity,
    ClusterDashboard,
    ClusterEventsTopic,
    EfaSecurityGroup,
    EnclaveImage,
    EnclaveKeyVault,
    Preflight,
    ResearcherAccess,
    SlurmScheduler,
    TrainingBuckets,
    TrainingFileSystem,
    TrainingNetwork,
    TrainiumCluster,
)
from cdk_trn.errors import CdkTrnError
from tests.support.cfn import template_of

REGION = "us-east-2"

#: Resource types that hold state: losing one loses data, keys (and all they encrypt) or logs.
STATEFUL = frozenset(
    {
        "AWS::KMS::Key",
        "AWS::Logs::LogGroup",
        "AWS::S3::Bucket",
        "AWS::FSx::FileSystem",
        "AWS::FSx::DataRepositoryAssociation",
        "AWS::EFS::FileSystem",
        "AWS::SecretsManager::Secret",
        "AWS::SSM::Parameter",
        "AWS::DynamoDB::Table",
    }
)

#: Deleted with the stack whatever ``destroy_on_delete`` says, by (owner, id under the owner).
#: Each is checked below: nothing retained refers to it.
ALWAYS_DELETED = {
    ("ClusterEventsTopic", "Key"): "encrypts only the topic's messages while SNS delivers them "
    "(SNS keeps none at rest; no queue, archive or log group uses it); deleted with the topic",
    ("SlurmScheduler", "AuthKeyEncryption"): "encrypts only the munge key below",
    ("SlurmScheduler", "AuthKey"): "the munge key: a new deploy generates a new one and every "
    "daemon reads it at boot",
}

#: SSM parameters whose value the system writes again: nothing is lost with them.
DERIVED_PARAMETERS = {
    ("SlurmScheduler", "ControllerAddress"): "written by the controller at each boot",
    ("SlurmScheduler", "ClusterDocument"): "rendered from the template at each deploy",
    ("EnclaveKeyVault", "UrlParameter"): "written by the vault hosts at each start",
}

#: Exported classes that are not constructs but create resources when an owner binds them.
BOUND_BY = {"EnclaveImage": "EnclaveKeyVault", "NeuronTrainingImage": "SlurmScheduler"}


def _exported_constructs() -> dict[str, type[Construct]]:
    return {
        name: obj
        for name in cdk_trn.__all__
        if inspect.isclass(obj := getattr(cdk_trn, name)) and issubclass(obj, Construct)
    }


EXPORTED = _exported_constructs()

Builder = Callable[[cdk.Stack, dict[str, Any], dict[str, Any]], Construct]

#: How each exported construct is built: (stack, what was built so far, its opt-out props).
#: In dependency order.
BUILDERS: dict[str, Builder] = {
    "TrainingNetwork": lambda s, b, o: TrainingNetwork(s, "Net", availability_zone="use2-az3", **o),
    "TrainingBuckets": lambda s, b, o: TrainingBuckets(s, "Data", **o),
    "TrainingFileSystem": lambda s, b, o: TrainingFileSystem(
        s, "Fsx", network=b["TrainingNetwork"], storage_capacity_gib=1200, **o
    ),
    "TrainiumCluster": lambda s, b, o: TrainiumCluster(
        s,
        "Cluster",
        network=b["TrainingNetwork"],
        file_system=b["TrainingFileSystem"],
        nodes=2,
        **o,
    ),
    "SlurmScheduler": lambda s, b, o: SlurmScheduler(s, "Slurm", cluster=b["TrainiumCluster"], **o),
    "AcceptanceRun": lambda s, b, o: AcceptanceRun(
        s, "Acceptance", cluster=b["TrainiumCluster"], **o
    ),
    "ClusterDashboard": lambda s, b, o: ClusterDashboard(
        s,
        "Dashboard",
        cluster=b["TrainiumCluster"],
        scheduler=b["SlurmScheduler"],
        acceptance=b["AcceptanceRun"],
        **o,
    ),
    "Preflight": lambda s, b, o: Preflight(
        s,
        "Preflight",
        network=b["TrainingNetwork"],
        instance_type="trn2.48xlarge",
        nodes=2,
        capacity=Capacity.on_demand(),
        **o,
    ),
    "EnclaveKeyVault": lambda s, b, o: EnclaveKeyVault(
        s,
        "Vault",
        network=b["TrainingNetwork"],
        clients=[b["TrainiumCluster"]],
        image=EnclaveImage.bundled(),
        **o,
    ),
    "EfaSecurityGroup": lambda s, b, o: EfaSecurityGroup(
        s, "Efa", vpc=b["TrainingNetwork"].vpc, **o
    ),
    "ResearcherAccess": lambda s, b, o: ResearcherAccess(
        s, "Access", cluster_name="mine", job_user="trn", shared_root="/fsx", **o
    ),
    "ClusterEventsTopic": lambda s, b, o: ClusterEventsTopic(s, "Events", display_name="mine", **o),
}


def _takes_opt_out(cls: type) -> bool:
    return "destroy_on_delete" in inspect.signature(cls.__init__).parameters


class Built:
    """Every exported construct in one stack, each with ``destroy_on_delete=destroy`` where it
    takes the prop; the template and each stateful resource's owner."""

    def __init__(self, destroy: bool) -> None:
        self.stack = cdk.Stack(cdk.App(), "Mine", env=cdk.Environment(region=REGION))
        built: dict[str, Any] = {}
        for name, build in BUILDERS.items():
            opt = {"destroy_on_delete": destroy} if _takes_opt_out(EXPORTED[name]) else {}
            built[name] = build(self.stack, built, opt)
        self.resources: dict[str, dict[str, Any]] = template_of(self.stack).to_json()["Resources"]
        #: logical id -> (owner's exported class name or None, id just under the owner, path
        #: under the owner)
        self.owner: dict[str, tuple[str | None, str, str]] = {}
        for element in self.stack.node.find_all():
            if isinstance(element, cdk.CfnResource):
                self.owner[self.stack.get_logical_id(element)] = _owner(element)

    def stateful(self) -> Iterator[tuple[str, str | None, str, str, dict[str, Any]]]:
        """(logical id, owner, id under the owner, path under the owner, resource) of each
        stateful resource."""
        for logical_id, resource in self.resources.items():
            if resource["Type"] in STATEFUL and logical_id in self.owner:
                owner, child, path = self.owner[logical_id]
                if (owner, child) not in DERIVED_PARAMETERS:
                    yield logical_id, owner, child, path, resource


def _owner(element: IConstruct) -> tuple[str | None, str, str]:
    exported = tuple(EXPORTED.values())
    scopes = element.node.scopes
    depth = next(
        (d for d in range(len(scopes) - 2, 0, -1) if isinstance(scopes[d], exported)), 1
    )  # scopes[0] is the app, scopes[1] the stack
    under = [s.node.id for s in scopes[depth + 1 :]]
    owner = type(scopes[depth]).__name__ if depth > 1 else None
    return owner, under[0], "/".join(under)


def _policies(resource: dict[str, Any]) -> tuple[str, str]:
    return resource.get("DeletionPolicy", "Delete"), resource.get("UpdateReplacePolicy", "Delete")


@pytest.fixture(scope="module")
def retained() -> Built:
    return Built(destroy=False)


@pytest.fixture(scope="module")
def destroyed() -> Built:
    return Built(destroy=True)


def test_every_exported_construct_is_built_here():
    assert set(BUILDERS) == set(EXPORTED)


def test_every_exported_class_that_binds_resources_is_judged_with_an_owner():
    binders = {
        name
        for name in cdk_trn.__all__
        if inspect.isclass(obj := getattr(cdk_trn, name))
        and name not in EXPORTED
        and callable(getattr(obj, "bind", None))
    }
    assert binders == set(BOUND_BY)
    assert set(BOUND_BY.values()) <= set(EXPORTED)


def test_every_stateful_resource_belongs_to_an_exported_construct(retained: Built):
    """A stack-level singleton holding state would escape every owner's rule."""
    assert [path for _, owner, _, path, _ in retained.stateful() if owner is None] == []


@pytest.mark.parametrize("name", sorted(EXPORTED))
def test_by_default_what_a_construct_keeps_is_retained(retained: Built, name: str):
    owned = {
        path: _policies(resource)
        for _, owner, child, path, resource in retained.stateful()
        if owner == name and (owner, child) not in ALWAYS_DELETED
    }
    assert {c: p for c, p in owned.items() if p != ("Retain", "Retain")} == {}
    if owned:
        assert _takes_opt_out(EXPORTED[name]), f"{name} creates {sorted(owned)}"


@pytest.mark.parametrize("name", sorted(EXPORTED))
def test_with_destroy_on_delete_nothing_a_construct_created_is_retained(
    destroyed: Built, name: str
):
    owned = {
        path: _policies(resource)
        for _, owner, _, path, resource in destroyed.stateful()
        if owner == name
    }
    assert {c: p for c, p in owned.items() if p != ("Delete", "Delete")} == {}


def test_the_exceptions_are_the_only_resources_deleted_by_default(retained: Built):
    deleted = {
        (owner, child)
        for _, owner, child, _, resource in retained.stateful()
        if _policies(resource) != ("Retain", "Retain")
    }
    assert deleted == set(ALWAYS_DELETED)


def _references(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        if set(value) == {"Ref"}:
            yield value["Ref"]
        elif set(value) == {"Fn::GetAtt"}:
            yield value["Fn::GetAtt"][0]
        else:
            for v in value.values():
                yield from _references(v)
    elif isinstance(value, list):
        for v in value:
            yield from _references(v)


def test_nothing_retained_refers_to_a_stateful_resource_deleted_with_the_stack(retained: Built):
    """A retained log group or bucket under a deleted key could no longer be read: the keys that
    are always deleted (and any other) encrypt nothing that outlives them."""
    resources = retained.resources
    deleted = {
        logical_id for logical_id, _, _, _, r in retained.stateful() if _policies(r)[0] == "Delete"
    }
    assert deleted, "the exceptions above exist"
    dangling = {
        (logical_id, target)
        for logical_id, r in resources.items()
        if _policies(r)[0] == "Retain"
        for target in _references(r.get("Properties", {}))
        if target in deleted
    }
    assert dangling == set()


def test_destroy_on_delete_must_be_a_bool():
    stack = cdk.Stack(cdk.App(), "Mine", env=cdk.Environment(region=REGION))
    network = TrainingNetwork(stack, "Net", availability_zone="use2-az3")
    with pytest.raises(CdkTrnError, match="destroy_on_delete must be True or False"):
        Preflight(
            stack,
            "Preflight",
            network=network,
            instance_type="trn2.48xlarge",
            nodes=2,
            capacity=Capacity.on_demand(),
            destroy_on_delete="yes",  # type: ignore[arg-type]
        )
    with pytest.raises(CdkTrnError, match="destroy_on_delete must be True or False"):
        cluster = TrainiumCluster(stack, "Cluster", network=network, nodes=2)
        AcceptanceRun(stack, "Run", cluster=cluster, destroy_on_delete=1)  # type: ignore[arg-type]
