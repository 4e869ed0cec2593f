"""The README's examples run as written."""

import re
from pathlib import Path

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def python_block_after(heading: str) -> str:
    section = README.split(heading, 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_constructs_example_synthesizes():
    namespace: dict = {}
    exec(python_block_after("## Using the constructs in your own stacks"), namespace)  # noqa: S102
    assembly = namespace["app"].synth()
    template = assembly.get_stack_by_name("Training").template
    types = {r["Type"] for r in template["Resources"].values()}
    assert {"AWS::FSx::FileSystem", "AWS::AutoScaling::AutoScalingGroup"} <= types


def test_readme_shows_the_two_commands_first():
    first_screen = README[:2500]
    assert "make synth" in first_screen and "make test" in first_screen


def test_importers_example_synthesizes_a_cluster_on_the_imported_file_system():
    namespace: dict = {}
    block = python_block_after("### A new cluster on a network and storage another app created")
    exec(block, namespace)  # noqa: S102
    template = namespace["app"].synth().get_stack_by_name("SecondCluster").template
    types = {r["Type"] for r in template["Resources"].values()}
    assert "AWS::AutoScaling::AutoScalingGroup" in types
    assert not types & {"AWS::FSx::FileSystem", "AWS::EC2::VPC", "AWS::EC2::Subnet"}
    assert any(
        r["Type"] == "AWS::EC2::SecurityGroupIngress"
        and r["Properties"]["GroupId"] == "sg-0123456789abcdef0"
        for r in template["Resources"].values()
    )
