"""The storage constructs beside the foundation's network and cluster, in two stacks.

Checks what only the combination shows: the cluster stack depends on the storage stack and never
the reverse, both templates pass cfn-lint, and no AwsSolutions finding points at storage.
"""

from __future__ import annotations

import json
from pathlib import Path

import aws_cdk as cdk
import cdk_nag
import pytest
from aws_cdk.assertions import Match, Template

from cdk_trn.cluster import TrainiumCluster
from cdk_trn.network import TrainingNetwork
from cdk_trn.storage import (
    TrainingBuckets,
    TrainingFileSystem,
    default_data_repository_associations,
)
from tests.cdk_trn.storage.stacks import REGION, unacknowledged_findings
from tests.support.cfn import lint_findings

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def composed(tmp_path_factory):
    outdir = str(tmp_path_factory.mktemp("storage-cluster"))
    app = cdk.App(outdir=outdir)
    cdk.Validations.of(app).add_plugins(cdk_nag.AwsSolutionsChecks(app))
    env = cdk.Environment(region=REGION)
    storage = cdk.Stack(app, "storage", env=env)
    network = TrainingNetwork(storage, "Network", availability_zone="use2-az3")
    buckets = TrainingBuckets(storage, "Buckets")
    fs = TrainingFileSystem(
        storage,
        "Fsx",
        network=network,
        encryption_key=buckets.encryption_key,
        data_repository_associations=default_data_repository_associations(buckets),
    )
    cluster_stack = cdk.Stack(app, "cluster", env=env)
    cluster = TrainiumCluster(cluster_stack, "Cluster", network=network, file_system=fs)
    buckets.grant_read_write(cluster.role)
    try:
        app.synth()
    except RuntimeError as error:  # cdk-nag 3 fails the synth on findings of other constructs
        assert "ValidationFailed" in str(error)
    # The templates are written before validation runs, so they are there either way.
    templates = {
        name: json.loads((Path(outdir) / f"{name}.template.json").read_text())
        for name in ("storage", "cluster")
    }
    return storage, cluster_stack, cluster, fs, templates, outdir


def test_cluster_stack_depends_on_storage_and_not_the_reverse(composed):
    storage, cluster_stack, *_ = composed
    assert storage in cluster_stack.dependencies
    assert storage.dependencies == []


def test_both_templates_pass_cfn_lint(composed):
    *_, templates, _ = composed
    for name, template in templates.items():
        assert lint_findings(template, REGION) == [], name


def test_no_aws_solutions_finding_points_at_a_storage_construct(composed):
    *_, outdir = composed
    ours = [
        f
        for f in unacknowledged_findings(outdir)
        if " storage/Buckets/" in f or " storage/Fsx/" in f
    ]
    assert ours == []


def test_cluster_nodes_reach_the_file_system_on_lustre_ports_only(composed):
    *_, templates, _ = composed
    template = Template.from_json(templates["cluster"])
    ingress = template.find_resources(
        "AWS::EC2::SecurityGroupIngress",
        {
            "Properties": {
                "GroupId": {"Fn::ImportValue": Match.string_like_regexp("FsxSecurityGroup")}
            }
        },
    )
    assert sorted(
        (r["Properties"]["IpProtocol"], r["Properties"]["FromPort"], r["Properties"]["ToPort"])
        for r in ingress.values()
    ) == [("tcp", 988, 988), ("tcp", 1018, 1023)]
