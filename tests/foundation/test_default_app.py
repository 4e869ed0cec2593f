"""The default app (app.py + stacks/): compliant, lint-clean, stateful parts retained."""

import json

import aws_cdk as cdk
import pytest

from cdk_trn.compliance import enable_compliance, synth_checked
from stacks import build_default_app
from stacks.config import AppConfig
from tests.cfn import lint_findings


@pytest.fixture(scope="module")
def default_app():
    app = cdk.App()
    enable_compliance(app)
    default = build_default_app(app, AppConfig())
    report = synth_checked(app)
    assembly = app.synth()
    return default, report, assembly


def template(assembly, stack):
    return assembly.get_stack_by_name(stack.stack_name).template


def test_every_pack_has_no_unacknowledged_finding(default_app):
    _, report, _ = default_app
    assert report.unacknowledged == []
    assert {"AwsSolutions", "TrainiumChecks"} <= set(report.by_pack())


def test_every_acknowledgment_gives_a_specific_reason(default_app):
    _, report, _ = default_app
    assert report.acknowledged
    assert all(len(f.reason or "") >= 40 for f in report.acknowledged)


def test_both_templates_are_cfn_lint_clean_in_their_region(default_app):
    default, _, assembly = default_app
    assert default.vault_stack is not None
    for stack in (default.storage_stack, default.cluster_stack, default.vault_stack):
        assert lint_findings(template(assembly, stack), "us-east-2") == []


def test_stateful_resources_are_retained(default_app):
    default, _, assembly = default_app
    resources = template(assembly, default.storage_stack)["Resources"]
    stateful = {"AWS::KMS::Key", "AWS::S3::Bucket", "AWS::FSx::FileSystem"}
    kept = {k: r.get("DeletionPolicy") for k, r in resources.items() if r["Type"] in stateful}
    assert kept and set(kept.values()) == {"Retain"}, kept
    assert default.storage_stack.termination_protection


def test_cluster_stack_can_go_without_touching_storage(default_app):
    default, _, _ = default_app
    assert default.storage_stack in default.cluster_stack.dependencies
    assert default.cluster_stack not in default.storage_stack.dependencies


def test_cluster_figures_are_stack_outputs(default_app):
    default, _, assembly = default_app
    outputs = template(assembly, default.cluster_stack)["Outputs"]
    assert outputs["PeakBf16Pflops"]["Value"] == "21.34"
    assert outputs["TrainiumChips"]["Value"] == "32"
    assert outputs["EfaTbps"]["Value"] == "6.4"


def test_nodes_mount_the_file_system_and_reach_it_on_lustre_ports_only(default_app):
    default, _, assembly = default_app
    assert default.cluster.compile_cache_path == "/fsx/neuron-compile-cache"
    resources = template(assembly, default.cluster_stack)["Resources"]
    nodes = default.cluster_stack.resolve(default.cluster.security_group.security_group_id)
    egress = [
        r["Properties"]
        for r in resources.values()
        if r["Type"] == "AWS::EC2::SecurityGroupEgress" and r["Properties"]["GroupId"] == nodes
    ]
    lustre = sorted(
        (e["FromPort"], e["ToPort"]) for e in egress if e.get("FromPort") in (988, 1018)
    )
    assert lustre == [(988, 988), (1018, 1023)]


def test_vault_lives_apart_from_the_nodes_it_serves(default_app):
    # Nodes may signal any resource of their own stack; the vault hosts are not in it.
    default, _, assembly = default_app
    cluster_types = {
        r["Type"] for r in template(assembly, default.cluster_stack)["Resources"].values()
    }
    vault_resources = template(assembly, default.vault_stack)["Resources"].values()
    assert "AWS::KMS::Key" in {r["Type"] for r in vault_resources}
    assert not any("EnclaveVault" in path for path in _paths(default.cluster_stack))
    assert "AWS::AutoScaling::AutoScalingGroup" in cluster_types


def _paths(stack):
    return [c.node.path for c in stack.node.find_all()]


def test_vault_publishes_its_url_where_the_cluster_lets_its_nodes_read_without_a_reference(
    default_app,
):
    default, _, assembly = default_app
    cluster_template = template(assembly, default.cluster_stack)
    vault_template = template(assembly, default.vault_stack)
    name = f"/cdk-trn/{default.cluster.cluster_name}/vault-url"
    (parameter,) = [
        r["Properties"]
        for r in vault_template["Resources"].values()
        if r["Type"] == "AWS::SSM::Parameter" and r["Properties"]["Name"] == name
    ]
    assert parameter["Type"] == "String"
    reads = [
        st
        for r in cluster_template["Resources"].values()
        if r["Type"] in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy")
        for st in r["Properties"]["PolicyDocument"]["Statement"]
        if st.get("Sid") == "ReadEnclaveVaultUrl"
    ]
    assert len(reads) == 1
    assert json.dumps(reads[0]["Resource"]).endswith(f':parameter{name}"]]}}')
    # The cluster stack names the vault's parameter without referring to the vault stack.
    assert default.vault_stack.stack_name not in json.dumps(cluster_template)
    assert default.vault_stack not in default.cluster_stack.dependencies
    outputs = vault_template["Outputs"]
    assert outputs["VaultUrlParameter"]["Value"] == {
        "Ref": next(
            k
            for k, r in vault_template["Resources"].items()
            if r["Type"] == "AWS::SSM::Parameter" and r["Properties"]["Name"] == name
        )
    }
    assert {"VaultImagePcr0", "VaultKeyArn"} <= set(outputs)
    assert cluster_template["Outputs"]["ClusterName"]["Value"] == default.cluster.cluster_name
