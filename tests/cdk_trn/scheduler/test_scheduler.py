"""SlurmScheduler: the controller group of one, the munge key under a CMK, the Slurm security group
rules, the controller's user data and the validation errors."""

from __future__ import annotations

import json
import re

import aws_cdk as cdk
import pytest
from aws_cdk.assertions import Match, Template

from cdk_trn.catalog import HOST_SPECS
from cdk_trn.errors import CdkTrnError
from cdk_trn.scheduler import MIN_CONTROLLER_MEMORY_GIB, SlurmScheduler
from cdk_trn_runtime.slurm.document import HOST_DEFAULTS, max_node_count
from tests.cdk_trn_runtime.node.test_node_bootstrap import FileSystemStandIn
from tests.support.stacks import cluster_stack


def _scheduler(instance_type: str = "trn2.48xlarge", **props) -> tuple[cdk.Stack, SlurmScheduler]:
    stack, cluster = cluster_stack(instance_type, file_system=FileSystemStandIn())
    return stack, SlurmScheduler(stack, "Slurm", cluster=cluster, **props)


@pytest.fixture(scope="module")
def synth() -> tuple[SlurmScheduler, Template]:
    stack, scheduler = _scheduler()
    return scheduler, Template.from_stack(stack)


def test_controller_is_a_group_of_exactly_one_waiting_for_one_signal(synth):
    _, template = synth
    groups = template.find_resources(
        "AWS::AutoScaling::AutoScalingGroup", {"Properties": {"MinSize": "1", "MaxSize": "1"}}
    )
    [(_, group)] = groups.items()
    assert group["CreationPolicy"]["ResourceSignal"]["Count"] == 1


def test_controller_launch_template_requires_imdsv2_hop_one_and_encrypts_its_volume(synth):
    _, template = synth
    template.has_resource_properties(
        "AWS::EC2::LaunchTemplate",
        {
            "LaunchTemplateData": Match.object_like(
                {
                    "InstanceType": "m7i.xlarge",
                    "MetadataOptions": {"HttpTokens": "required", "HttpPutResponseHopLimit": 1},
                    "BlockDeviceMappings": [
                        Match.object_like(
                            {"Ebs": Match.object_like({"Encrypted": True, "VolumeSize": 100})}
                        )
                    ],
                }
            )
        },
    )


def test_munge_key_is_generated_under_a_rotating_customer_managed_key(synth):
    scheduler, template = synth
    key_id = cdk.Stack.of(scheduler).get_logical_id(scheduler.key.node.default_child)
    assert template.to_json()["Resources"][key_id]["Properties"]["EnableKeyRotation"] is True
    template.has_resource_properties(
        "AWS::SecretsManager::Secret",
        {
            "GenerateSecretString": Match.object_like({"PasswordLength": 128}),
            "KmsKeyId": {"Fn::GetAtt": [key_id, "Arn"]},
        },
    )
    secret = template.find_resources("AWS::SecretsManager::Secret")
    assert all("SecretString" not in r["Properties"] for r in secret.values())


def test_slurmctld_port_is_open_to_the_nodes_only(synth):
    scheduler, template = synth
    stack = cdk.Stack.of(scheduler)
    controller = stack.resolve(scheduler.security_group.security_group_id)
    nodes = stack.resolve(scheduler.cluster.security_group.security_group_id)
    rules = template.find_resources(
        "AWS::EC2::SecurityGroupIngress", {"Properties": {"FromPort": 6817}}
    )
    [(_, rule)] = rules.items()
    assert rule["Properties"]["GroupId"] == controller
    assert rule["Properties"]["SourceSecurityGroupId"] == nodes
    template.has_resource_properties(
        "AWS::EC2::SecurityGroupIngress",
        {"FromPort": 6818, "ToPort": 6818, "GroupId": nodes, "SourceSecurityGroupId": controller},
    )


def test_every_ingress_of_the_controller_comes_from_a_security_group(synth):
    scheduler, template = synth
    stack = cdk.Stack.of(scheduler)
    controller = stack.resolve(scheduler.security_group.security_group_id)
    group_id = controller["Fn::GetAtt"][0]
    group = template.to_json()["Resources"][group_id]
    assert "SecurityGroupIngress" not in group["Properties"]
    ingress = template.find_resources("AWS::EC2::SecurityGroupIngress")
    for rule in ingress.values():
        if rule["Properties"]["GroupId"] == controller:
            assert "SourceSecurityGroupId" in rule["Properties"]


def test_user_data_quotes_every_value_and_carries_no_key(synth):
    scheduler, _ = synth
    user_data = scheduler._user_data()
    header = [line for line in user_data.splitlines()[1:] if line.startswith("CDK_TRN_")]
    # The controller's 13 variables and the boot bundle's bucket, key, digest, entry and log group.
    assert len(scheduler._boot_variables().to_environment()) == 13
    assert len(header) == 13 + 5
    for line in header:
        name, _, value = line.partition("=")
        assert re.fullmatch(r"CDK_TRN_[A-Z0-9_]+", name), line
        assert value.startswith("'") or re.fullmatch(r"[\w@%+=:,./-]+", value), line
    assert "munge-key" not in user_data.lower().replace("munge.key", "")


def test_cluster_document_carries_the_catalog_and_shared_paths(synth):
    scheduler, _ = synth
    doc = scheduler.slurm_cluster_document()
    assert doc["node_cpus"] == 192
    assert doc["node_features"] == ["trn2.48xlarge", "efa"]
    assert doc["state_save_location"] == "/fsx/slurm/state"
    # Headroom: replacements register while dead nodes' records wait for the reaper.
    assert doc["max_node_count"] == max_node_count(2) == 10 and doc["max_nodes_per_job"] == 2
    assert doc["nodes"] == 2
    # Host keys carry the cloud's values (the twin sets its own).
    # Every one is sent but cred_expire, left out while unset (Slurm's default, 120 s).
    assert set(HOST_DEFAULTS) - set(doc) == {"cred_expire"}
    assert {k: doc.get(k) for k in HOST_DEFAULTS} == HOST_DEFAULTS
    [spec] = re.findall(r"^CDK_TRN_SLURM_SPEC='(.*)'$", scheduler._user_data(), re.M)
    assert json.loads(spec) == doc


def test_cluster_document_is_an_ssm_parameter_the_controller_alone_reads(synth):
    scheduler, template = synth
    name = "/cdk-trn/" + scheduler.cluster.cluster_name + "/slurm-cluster-document"
    assert scheduler.slurm_cluster_document()["document_parameter"] == name
    [parameter] = template.find_resources(
        "AWS::SSM::Parameter", {"Properties": {"Name": name}}
    ).values()
    assert json.loads(parameter["Properties"]["Value"]) == scheduler.slurm_cluster_document()
    stack = cdk.Stack.of(scheduler)
    logical = stack.get_logical_id(scheduler.cluster_document.node.default_child)
    readers = []
    for policy in template.find_resources("AWS::IAM::ManagedPolicy").values():
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            if logical in json.dumps(statement.get("Resource")):
                assert statement["Action"] == "ssm:GetParameter", statement
                readers.append(json.dumps(policy["Properties"].get("Roles")))
    assert readers and all("ControllerRole" in r for r in readers), readers


def test_controller_may_ask_which_instances_exist_and_what_they_run_and_nothing_more(synth):
    scheduler, template = synth
    stack = cdk.Stack.of(scheduler)
    role = stack.get_logical_id(scheduler.role.node.default_child)
    found = [
        statement
        for policy in template.find_resources("AWS::IAM::ManagedPolicy").values()
        if {"Ref": role} in policy["Properties"].get("Roles", [])
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]
        if "ec2:DescribeInstances" in json.dumps(statement["Action"])
    ]
    # The reaper's questions (is an instance of this cluster still at that address? does it run
    # its group's launch template version?), alone.
    assert found == [
        {
            "Action": [
                "autoscaling:DescribeAutoScalingGroups",
                "autoscaling:DescribeAutoScalingInstances",
                "ec2:DescribeInstances",
            ],
            "Effect": "Allow",
            "Resource": "*",
        }
    ]


def test_node_user_data_starts_slurmd_and_references_the_secret(synth):
    scheduler, _ = synth
    user_data = scheduler.cluster._user_data()
    assert "CDK_TRN_SLURM_FEATURES=trn2.48xlarge,efa" in user_data
    assert "CDK_TRN_SLURM_KEY_SECRET='${Token[" in user_data


def test_nodes_boot_after_the_controller(synth):
    scheduler, template = synth
    stack = cdk.Stack.of(scheduler)
    nodes = stack.get_logical_id(scheduler.cluster.auto_scaling_group)
    controller = stack.get_logical_id(scheduler.auto_scaling_group.node.default_child)
    assert controller in template.to_json()["Resources"][nodes]["DependsOn"]


def test_a_cluster_takes_one_scheduler_and_the_error_names_both():
    stack, scheduler = _scheduler()
    with pytest.raises(CdkTrnError, match="one SlurmScheduler per stack") as raised:
        SlurmScheduler(stack, "Second", cluster=scheduler.cluster)
    assert "Test/Second" in str(raised.value) and "Test/Slurm" in str(raised.value)


# --- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("props", "message"),
    [
        (
            {"controller_instance_type": "c7i.large"},
            r"Test/Slurm: controller_instance_type must be a type with at least 8 GiB .*"
            r"got 'c7i.large'",
        ),
        (
            {"controller_instance_type": "t2.nano"},
            r"Test/Slurm: controller_instance_type must be a host type of the catalog "
            r"\(cdk_trn.catalog.HOST_SPECS\), one of c6i.large, .*m7i.xlarge.*, got 't2.nano'",
        ),
        (
            # Graviton: the controller runs the x86_64 training image.
            {"controller_instance_type": "m7g.xlarge"},
            r"controller_instance_type must be a host type of the catalog .*, got 'm7g.xlarge'",
        ),
        (
            {"controller_instance_type": ["m7i.xlarge"]},
            r"controller_instance_type must be a host type .*, got \['m7i.xlarge'\]",
        ),
        ({"max_nodes_per_job": 3}, r"max_nodes_per_job must be from 1 to the cluster's 2 nodes"),
        ({"partition": "Trn;"}, r"partition must be 1-40 lower-case"),
        ({"controller_root_volume_gib": 10}, r"controller_root_volume_gib must be an integer"),
    ],
)
def test_bad_props_are_refused_naming_construct_prop_and_value(props, message):
    with pytest.raises(CdkTrnError, match=message):
        _scheduler(**props)


def test_trn2u_partition_that_splits_an_ultraserver_is_refused():
    stack, cluster = cluster_stack("trn2u.48xlarge", nodes=8, file_system=FileSystemStandIn())
    with pytest.raises(CdkTrnError, match="multiple of 4 .* never splits an UltraServer"):
        SlurmScheduler(stack, "Slurm", cluster=cluster, max_nodes_per_job=6)


def test_cluster_without_a_file_system_is_refused():
    stack, cluster = cluster_stack("trn2.48xlarge")
    with pytest.raises(CdkTrnError, match="cluster must have a file_system"):
        SlurmScheduler(stack, "Slurm", cluster=cluster)


@pytest.mark.parametrize("instance_type", ["c7i.xlarge", "m6i.large", "r7i.8xlarge"])
def test_a_catalog_host_with_enough_memory_runs_the_controller(instance_type):
    assert HOST_SPECS[instance_type].memory_gib >= MIN_CONTROLLER_MEMORY_GIB  # 8, 8 and 256 GiB
    _, scheduler = _scheduler(controller_instance_type=instance_type)
    assert scheduler.launch_template.instance_type is not None
    assert scheduler.launch_template.instance_type.to_string() == instance_type


def test_controller_renders_slurm_conf_from_the_synthesized_cluster_document(synth, tmp_path):
    """The document the construct writes at synth is what the runtime generator accepts: the
    controller's `python -m cdk_trn_runtime.slurm.config --spec ... --output ...` call."""
    import json
    import subprocess
    import sys

    scheduler, _ = synth
    document = dict(scheduler.slurm_cluster_document())
    document.update(controller_host="ip-10-0-0-5", controller_addr="cdk-trn-slurmctld")
    spec = tmp_path / "cluster.json"
    spec.write_text(json.dumps(document))
    out = tmp_path / "slurm.conf"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "cdk_trn_runtime.slurm.config",
            "--spec",
            str(spec),
            "--output",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    conf = out.read_text().splitlines()
    assert "SlurmctldHost=ip-10-0-0-5(cdk-trn-slurmctld)" in conf
    assert "SlurmctldParameters=enable_configless" in conf
    assert f"MaxNodeCount={document['max_node_count']}" in conf
    assert "SrunPortRange=60001-63000" in conf
    assert "Prolog=/opt/cdk-trn/cdk_trn_runtime/slurm/scripts/prolog.sh" in conf
    assert "HealthCheckProgram=/opt/cdk-trn/cdk_trn_runtime/slurm/scripts/healthcheck.sh" in conf
    # Jobs get the node environment (shared root, compile cache, region) from the TaskProlog.
    assert "TaskProlog=/opt/cdk-trn/cdk_trn_runtime/slurm/scripts/task_prolog.sh" in conf
    assert "SlurmUser=slurm" in conf and "SlurmdTimeout=180" in conf
    assert f"StateSaveLocation={document['state_save_location']}" in conf
    [partition] = [line for line in conf if line.startswith("PartitionName=")]
    assert "Nodes=ALL" in partition and "OverSubscribe=EXCLUSIVE" in partition
    assert f"MaxNodes={document['max_nodes_per_job']}" in partition


def test_generator_refuses_a_document_with_a_missing_key(tmp_path):
    import subprocess
    import sys

    spec = tmp_path / "cluster.json"
    spec.write_text('{"cluster_name": "trn"}')
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "cdk_trn_runtime.slurm.config",
            "--spec",
            str(spec),
            "--output",
            str(tmp_path / "x"),
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert "cluster document: shared_root is missing" in done.stderr


def test_construct_and_twin_build_the_cluster_document_with_one_function(synth, tmp_path):
    """The twin (cdk_trn_runtime.slurm.twin) and the construct share the document's keys; the
    twin changes host keys only."""
    from cdk_trn_runtime.slurm.twin.cluster import Twin

    scheduler, _ = synth
    construct = scheduler.slurm_cluster_document()
    twin = Twin(tmp_path / "twin").cluster_document(2)
    # cred_expire: the twin sets it (30 s), the cloud leaves it out (Slurm's default).
    assert set(construct) | {"cred_expire"} == set(twin) | {"document_parameter"}
    assert twin["max_node_count"] == construct["max_node_count"]  # both: 2 nodes
