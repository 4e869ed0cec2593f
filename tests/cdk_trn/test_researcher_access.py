"""The cluster's cdk-trn documents (cdk_trn.researcher_access): one Command document per action
with a fixed script and validated parameters, a Session document with a fixed command; named as
the CLI names them; valid for cfn-lint."""

from __future__ import annotations

import re

import pytest
from aws_cdk.assertions import Template

from cdk_trn.scheduler import SlurmScheduler
from cdk_trn_runtime.cli.documents import command_documents, render
from cdk_trn_runtime.contract import RESEARCHER_ACTIONS, researcher_document
from tests.cdk_trn_runtime.node.test_node_bootstrap import FileSystemStandIn
from tests.support.cfn import lint_findings
from tests.support.stacks import cluster_stack

HOSTILE = ["'", "a'b", "x\ny", "\\", "$(id)", "`id`", "1; rm -rf /", "{{ x }}"]


@pytest.fixture(scope="module")
def documents() -> tuple[SlurmScheduler, dict[str, dict]]:
    stack, cluster = cluster_stack("trn2.48xlarge", file_system=FileSystemStandIn())
    scheduler = SlurmScheduler(stack, "Slurm", cluster=cluster)
    template = Template.from_stack(stack).to_json()
    found = {
        r["Properties"]["Name"]: r["Properties"]
        for r in template["Resources"].values()
        if r["Type"] == "AWS::SSM::Document"
    }
    assert lint_findings(dict(template), "us-east-2") == []
    return scheduler, found


def test_every_action_has_its_document_named_as_the_cli_names_it(documents):
    scheduler, found = documents
    expected = set(scheduler.researcher_access.document_names)
    assert set(found) == expected
    cluster = scheduler.researcher_access.cluster_name
    assert {researcher_document(cluster, a) for a in RESEARCHER_ACTIONS} < expected


def test_command_documents_run_fixed_scripts_whose_parameters_are_validated(documents):
    _, found = documents
    commands = [d for d in found.values() if d["DocumentType"] == "Command"]
    assert len(commands) == len(RESEARCHER_ACTIONS)
    for document in commands:
        content = document["Content"]
        [step] = content["mainSteps"]
        assert step["action"] == "aws:runShellScript"
        script = "\n".join(step["inputs"]["runCommand"])
        for name, spec in content["parameters"].items():
            pattern = spec["allowedPattern"]
            # Each parameter is used single-quoted only, and no value it admits leaves the quotes.
            assert script.count("{{ " + name + " }}") == script.count("'{{ " + name + " }}'") >= 1
            for value in HOSTILE:
                assert not re.search(pattern, value), (document["Name"], name, value)
        assert set(re.findall(r"\{\{ (\w+) \}\}", script)) == set(content["parameters"])


def test_the_session_document_opens_a_shell_as_the_job_user_only(documents):
    scheduler, found = documents
    [session] = [d for d in found.values() if d["DocumentType"] == "Session"]
    content = session["Content"]
    assert content["sessionType"] == "InteractiveCommands" and content["parameters"] == {}
    command = content["properties"]["linux"]["commands"]
    assert command.startswith(f"docker exec -it -u {scheduler.job_user} -w ")
    assert command.endswith("bash -l")


def test_render_refuses_what_the_patterns_refuse():
    docs = command_documents(container="c", job_user="trn", shared_root="/fsx")
    with pytest.raises(ValueError, match="JobId"):
        render(docs["cancel"], {"JobId": "1; reboot"})
    assert "job='12'" in render(docs["cancel"], {"JobId": "12"})
