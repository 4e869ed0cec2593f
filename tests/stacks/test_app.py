"""The default app (app.py + stacks/): compliant, lint-clean, stateful parts retained.

The app is the session's ``default_app`` (tests/support/default_app.py)."""

import json

from tests.support.cfn import lint_findings


def test_every_pack_has_no_unacknowledged_finding(default_app):
    report = default_app.report
    assert report.unacknowledged == []
    assert {"AwsSolutions", "TrainiumChecks"} <= set(report.by_pack())


def test_every_acknowledgment_gives_a_specific_reason(default_app):
    report = default_app.report
    assert report.acknowledged
    assert all(len(f.reason or "") >= 40 for f in report.acknowledged)


def test_both_templates_are_cfn_lint_clean_in_their_region(default_app):
    default, template = default_app.default, default_app.template
    assert default.vault_stack is not None
    for stack in (default.storage_stack, default.cluster_stack, default.vault_stack):
        assert lint_findings(template(stack), "us-east-2") == []


def test_stateful_resources_are_retained(default_app):
    default, template = default_app.default, default_app.template
    resources = template(default.storage_stack)["Resources"]
    stateful = {"AWS::KMS::Key", "AWS::S3::Bucket", "AWS::FSx::FileSystem"}
    kept = {k: r.get("DeletionPolicy") for k, r in resources.items() if r["Type"] in stateful}
    assert kept and set(kept.values()) == {"Retain"}, kept
    assert default.storage_stack.termination_protection


def test_cluster_stack_can_go_without_touching_storage(default_app):
    default = default_app.default
    assert default.storage_stack in default.cluster_stack.dependencies
    assert default.cluster_stack not in default.storage_stack.dependencies


def test_cluster_figures_are_stack_outputs(default_app):
    default, template = default_app.default, default_app.template
    outputs = template(default.cluster_stack)["Outputs"]
    assert outputs["PeakBf16Pflops"]["Value"] == "21.34"
    assert outputs["TrainiumChips"]["Value"] == "32"
    assert outputs["EfaTbps"]["Value"] == "6.4"


def test_nodes_mount_the_file_system_and_reach_it_on_lustre_ports_only(default_app):
    default, template = default_app.default, default_app.template
    assert default.cluster.compile_cache_path == "/fsx/neuron-compile-cache"
    resources = template(default.cluster_stack)["Resources"]
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
    default, template = default_app.default, default_app.template
    cluster_types = {r["Type"] for r in template(default.cluster_stack)["Resources"].values()}
    vault_resources = template(default.vault_stack)["Resources"].values()
    assert "AWS::KMS::Key" in {r["Type"] for r in vault_resources}
    assert not any("EnclaveVault" in path for path in _paths(default.cluster_stack))
    assert "AWS::AutoScaling::AutoScalingGroup" in cluster_types


def _paths(stack):
    return [c.node.path for c in stack.node.find_all()]


def test_vault_publishes_its_url_where_the_cluster_lets_its_nodes_read_without_a_reference(
    default_app,
):
    default, template = default_app.default, default_app.template
    cluster_template = template(default.cluster_stack)
    vault_template = template(default.vault_stack)
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
