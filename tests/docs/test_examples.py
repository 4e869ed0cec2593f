"""The examples of the README and docs/ run as written: every Python block that builds an app
synthesizes, and what it shows is in its templates."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _apps() -> list[tuple[str, str]]:
    blocks = []
    for page in PAGES:
        for number, block in enumerate(re.findall(r"```python\n(.*?)```", page.read_text(), re.S)):
            if "cdk.App()" in block and "app.synth()" not in block and "..." not in block:
                blocks.append((f"{page.relative_to(ROOT)}#{number}", block))
    return blocks


APPS = _apps()


def _synth(block: str) -> dict[str, dict]:
    namespace: dict = {}
    exec(block, namespace)  # noqa: S102
    assembly = namespace["app"].synth()
    return {stack.stack_name: stack.template for stack in assembly.stacks}


def _types(template: dict) -> set[str]:
    return {r["Type"] for r in template["Resources"].values()}


def test_the_readme_and_the_configuration_page_have_apps_to_run():
    names = {name.split("#")[0] for name, _ in APPS}
    assert {"README.md", "docs/configuration.md"} <= names


@pytest.mark.parametrize(("name", "block"), APPS, ids=[name for name, _ in APPS])
def test_example_synthesizes(name, block):
    templates = _synth(block)
    assert templates
    types = set().union(*(_types(t) for t in templates.values()))
    assert "AWS::AutoScaling::AutoScalingGroup" in types, name


def test_your_own_stack_carries_the_outputs_cdk_trn_reads():
    from cdk_trn_runtime.cli.aws import REQUIRED_OUTPUTS
    from cdk_trn_runtime.contract import OUTPUT_DOC_JOB_COMPLETIONS, OUTPUT_NODE_GROUP

    block = next(b for n, b in APPS if n.startswith("README.md") and "SlurmScheduler(" in b)
    outputs = _synth(block)["Training"]["Outputs"]
    assert {*REQUIRED_OUTPUTS, OUTPUT_NODE_GROUP, OUTPUT_DOC_JOB_COMPLETIONS} <= set(outputs)


def test_the_importers_example_builds_a_cluster_on_the_imported_file_system():
    block = next(b for _, b in APPS if "TrainingFileSystem.from_attributes" in b)
    template = _synth(block)["SecondCluster"]
    assert not _types(template) & {"AWS::FSx::FileSystem", "AWS::EC2::VPC", "AWS::EC2::Subnet"}
    assert any(
        r["Type"] == "AWS::EC2::SecurityGroupIngress"
        and r["Properties"]["GroupId"] == "sg-0123456789abcdef0"
        for r in template["Resources"].values()
    )
