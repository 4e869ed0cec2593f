"""cfn-lint (us-east-2) and cdk-nag AwsSolutions on stacks built from the storage constructs."""

from __future__ import annotations

import aws_cdk as cdk
import cdk_nag
from aws_cdk import aws_iam as iam

from cdk_trn.storage import MetadataConfiguration
from tests.cdk_trn.storage.stacks import REGION, storage_stack, unacknowledged_findings
from tests.support.cfn import lint_findings


def test_default_storage_template_passes_cfn_lint_in_us_east_2():
    under_test = storage_stack()
    template = under_test.app.synth().get_stack_by_name("Storage").template
    assert lint_findings(template, REGION) == []


def test_efa_storage_template_passes_cfn_lint_in_us_east_2():
    under_test = storage_stack(
        efa_enabled=True,
        metadata_configuration=MetadataConfiguration.user_provisioned(12000),
        target_throughput_gbps=12,
        daily_automatic_backup_start_time="03:30",
        weekly_maintenance_start_time="7:04:00",
    )
    template = under_test.app.synth().get_stack_by_name("Storage").template
    assert lint_findings(template, REGION) == []


def test_storage_and_a_granted_node_role_have_no_unacknowledged_aws_solutions_finding(tmp_path):
    outdir = str(tmp_path)
    app = cdk.App(outdir=outdir)
    cdk.Validations.of(app).add_plugins(cdk_nag.AwsSolutionsChecks(app))
    under_test = storage_stack(app=app)
    cluster = cdk.Stack(app, "Cluster", env=cdk.Environment(region=REGION))
    role = iam.Role(cluster, "NodeRole", assumed_by=iam.ServicePrincipal("ec2.amazonaws.com"))
    under_test.buckets.grant_read_write(role)
    under_test.buckets.grant_read(role)
    try:
        app.synth()
    except RuntimeError as error:
        # cdk-nag 3 fails the synth with ValidationFailed; the report says which rules.
        assert "ValidationFailed" in str(error)
    assert unacknowledged_findings(outdir) == []
    assert lint_findings(app.synth().get_stack_by_name("Cluster").template, REGION) == []
