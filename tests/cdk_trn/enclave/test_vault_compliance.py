"""The vault synthesizes clean: cfn-lint (us-east-2) and cdk-nag AwsSolutions, all image kinds."""

from __future__ import annotations

import json
from pathlib import Path

import aws_cdk as cdk
import cdk_nag
import pytest

from tests.cdk_trn.enclave.stacks import (
    REGION,
    nag_findings,
    vault_stack,
    write_build_context,
)
from tests.support.cfn import lint_findings

#: What this area owns in the test stack: the vault and the stack's deploy-time placement (the
#: S3 prefix-list lookup the vault's hosts use).
VAULT_PATHS = ("VaultStack/Vault/", "VaultStack/CdkTrnDeployTime")


def _synth_with_nag(image, out: Path):
    app = cdk.App(outdir=str(out))
    built = vault_stack(image, app=app, key_admins=["arn:aws:iam::111111111111:role/KeyAdmin"])
    cdk.Validations.of(app).add_plugins(cdk_nag.AwsSolutionsChecks(app))
    try:
        app.synth()
    except RuntimeError as error:
        # Findings outside the vault (the stand-in network) fail the synth too; the report says
        # which, and the assertion below looks at the vault's own.
        if "ValidationFailed" not in str(error) and "Validation failed" not in str(error):
            raise
    return built, out


@pytest.fixture(scope="module", params=["prebuilt", "signed", "directory"])
def synthesized(request, tmp_path_factory):
    image = request.param
    if image == "directory":
        image = write_build_context(tmp_path_factory.mktemp("enclave-context"))
    return _synth_with_nag(image, tmp_path_factory.mktemp(f"out-{request.param}"))


def test_vault_has_no_unacknowledged_cdk_nag_finding(synthesized):
    _, out = synthesized
    assert nag_findings(out, under=VAULT_PATHS) == []


def test_vault_template_has_no_cfn_lint_error_or_warning_in_us_east_2(synthesized):
    built, out = synthesized
    template = json.loads((out / built.stack.template_file).read_text())
    assert lint_findings(template, REGION) == []
