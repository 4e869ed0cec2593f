"""``python -m cdk_trn.compliance DIR``: exit 0 on a clean assembly, 1 on any open finding or any
cfn-lint error or warning, with the findings and the acknowledgment reasons in its table."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.cdk_trn.compliance.conftest import run_module
from tests.cdk_trn.compliance.sample_app import EFA_REASON


def check(directory):
    return run_module("cdk_trn.compliance", str(directory))


@pytest.fixture(scope="module")
def clean_run(clean):
    return check(clean.outdir)


@pytest.fixture(scope="module")
def broken_run(broken):
    return check(broken.outdir)


def copy_of(clean, tmp_path):
    target = tmp_path / "cdk.out"
    shutil.copytree(clean.outdir, target)
    return target


def edit_json(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_clean_assembly_exits_zero(clean_run):
    assert clean_run.returncode == 0, clean_run.stdout[-3000:]


def test_clean_assembly_table_shows_each_acknowledgment_with_its_reason(clean_run):
    rows = [line for line in clean_run.stdout.splitlines() if line.startswith("acknowledged")]
    assert len(rows) == 3 and all(row.endswith(EFA_REASON) for row in rows)
    assert all("Clean/EfaSelfIn" in row for row in rows)


def test_clean_assembly_is_linted_in_its_stack_region(clean_run):
    assert "Clean [us-east-2]: 0 errors, 0 warnings" in clean_run.stdout


def test_broken_assembly_exits_one(broken_run):
    assert broken_run.returncode == 1


def test_broken_assembly_table_names_rule_and_resource_of_open_findings(broken_run):
    rows = [line.split() for line in broken_run.stdout.splitlines() if line.startswith("OPEN")]
    assert ["OPEN", "error", "AwsSolutions", "AwsSolutions-EC23", "Clean/OpenSsh"] in [
        row[:5] for row in rows
    ]


def test_cfn_lint_error_alone_exits_one(clean, tmp_path):
    assembly = copy_of(clean, tmp_path)

    def wrong_instance_type(template):
        data = template["Resources"]["NodeLaunchTemplate"]["Properties"]["LaunchTemplateData"]
        data["InstanceType"] = "trn2.96xlarge"

    edit_json(assembly / "Clean.template.json", wrong_instance_type)
    done = check(assembly)
    assert done.returncode == 1
    assert "Clean [us-east-2]: 1 errors, 0 warnings" in done.stdout


def test_cfn_lint_warning_alone_exits_one(clean, tmp_path):
    assembly = copy_of(clean, tmp_path)
    edit_json(
        assembly / "Clean.template.json",
        lambda t: t.setdefault("Parameters", {}).update(Unused={"Type": "String"}),
    )
    done = check(assembly)
    assert done.returncode == 1
    assert "W2001" in done.stdout


def test_region_comes_from_the_manifest_environment(clean, tmp_path):
    assembly = copy_of(clean, tmp_path)
    edit_json(
        assembly / "manifest.json",
        lambda m: m["artifacts"]["Clean"].update(environment="aws://111111111111/eu-west-1"),
    )
    done = check(assembly)
    assert done.returncode == 1
    assert "Clean [eu-west-1]: 1 errors" in done.stdout


def test_assembly_without_validation_report_exits_one(clean, tmp_path):
    assembly = copy_of(clean, tmp_path)
    (assembly / "validation-report.json").unlink()
    done = check(assembly)
    assert done.returncode == 1
    assert "No validation report" in done.stdout


def test_directory_that_is_not_an_assembly_exits_two(tmp_path):
    done = check(tmp_path)
    assert done.returncode == 2
    assert "no manifest.json" in done.stderr


def test_each_cfn_lint_silence_is_listed_with_its_reason(clean, tmp_path):
    target = copy_of(clean, tmp_path)
    reason = "the reason recorded beside the silence by silence_cfn_lint"
    silenced = []

    def silence(template):
        logical_id, resource = next(iter(template["Resources"].items()))
        resource.setdefault("Metadata", {}).update(
            {
                "cfn-lint": {"config": {"ignore_checks": ["W3005"]}},
                "cdk-trn:acknowledged": {"W3005": reason},
            }
        )
        silenced.append(logical_id)

    edit_json(target / "Clean.template.json", silence)
    result = check(target)
    assert result.returncode == 0, result.stdout[-3000:]
    assert f"silenced cfn-lint W3005 on Clean/{silenced[0]}: {reason}" in result.stdout
