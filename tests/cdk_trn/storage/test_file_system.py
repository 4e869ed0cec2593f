"""TrainingFileSystem: the synthesized file system, associations, security group and inputs."""

from __future__ import annotations

from typing import Any

import aws_cdk as cdk
import pytest
from aws_cdk import aws_ec2 as ec2
from aws_cdk.assertions import Match, Template

from cdk_trn.errors import CdkTrnError
from cdk_trn.storage import (
    DataRepositoryAssociation,
    DeploymentType,
    MetadataConfiguration,
    TrainingFileSystem,
)
from tests.cdk_trn.storage.stacks import network, storage_stack


@pytest.fixture(scope="module")
def default():
    under_test = storage_stack()
    return under_test, Template.from_stack(under_test.stack)


@pytest.fixture(scope="module")
def efa():
    under_test = storage_stack(
        efa_enabled=True, metadata_configuration=MetadataConfiguration.automatic()
    )
    return under_test, Template.from_stack(under_test.stack)


def logical_id(construct) -> str:
    stack = cdk.Stack.of(construct)
    return stack.resolve(stack.get_logical_id(construct.node.default_child or construct))


def group_ref(group: ec2.ISecurityGroup) -> dict[str, Any]:
    return {"Fn::GetAtt": [logical_id(group), "GroupId"]}


def ingress_rules_into(template: Template, group: ec2.ISecurityGroup) -> set[tuple]:
    rules = template.find_resources("AWS::EC2::SecurityGroupIngress")
    return {
        (
            r["Properties"]["IpProtocol"],
            r["Properties"].get("FromPort"),
            r["Properties"].get("ToPort"),
            str(r["Properties"].get("SourceSecurityGroupId") or r["Properties"].get("CidrIp")),
        )
        for r in rules.values()
        if r["Properties"]["GroupId"] == group_ref(group)
    }


# -- the file system ----------------------------------------------------------------------------


def test_file_system_is_persistent_2_lustre_2_15_encrypted_with_a_customer_managed_key(default):
    under_test, template = default
    key_id = logical_id(under_test.buckets.encryption_key)
    template.has_resource_properties("AWS::KMS::Key", {"EnableKeyRotation": True})
    template.has_resource_properties(
        "AWS::FSx::FileSystem",
        {
            "FileSystemType": "LUSTRE",
            "FileSystemTypeVersion": "2.15",
            "StorageType": "SSD",
            "StorageCapacity": 1200,
            "KmsKeyId": {"Ref": key_id},
            "SubnetIds": ["subnet-0123456789abcdef0"],
            "LustreConfiguration": Match.object_like(
                {"DeploymentType": "PERSISTENT_2", "PerUnitStorageThroughput": 250}
            ),
        },
    )
    assert template.to_json()["Resources"][key_id]["Type"] == "AWS::KMS::Key"


def test_file_system_compresses_with_lz4_and_keeps_daily_backups_for_7_days(default):
    _, template = default
    template.has_resource_properties(
        "AWS::FSx::FileSystem",
        {
            "LustreConfiguration": Match.object_like(
                {
                    "DataCompressionType": "LZ4",
                    "AutomaticBackupRetentionDays": 7,
                    "CopyTagsToBackups": True,
                    "EfaEnabled": Match.absent(),
                    "MetadataConfiguration": Match.absent(),
                }
            )
        },
    )


def test_file_system_associations_buckets_and_keys_are_retained_on_delete(default):
    _, template = default
    for resource_type in (
        "AWS::FSx::FileSystem",
        "AWS::FSx::DataRepositoryAssociation",
        "AWS::S3::Bucket",
        "AWS::KMS::Key",
    ):
        resources = template.find_resources(resource_type)
        assert resources, resource_type
        for name, resource in resources.items():
            assert resource.get("DeletionPolicy") == "Retain", name
            assert resource.get("UpdateReplacePolicy") == "Retain", name


def test_default_associations_import_datasets_and_export_checkpoints(default):
    under_test, template = default
    fs_ref = {"Ref": logical_id(under_test.file_system.file_system)}
    template.resource_count_is("AWS::FSx::DataRepositoryAssociation", 2)
    template.has_resource_properties(
        "AWS::FSx::DataRepositoryAssociation",
        {
            "FileSystemId": fs_ref,
            "FileSystemPath": "/datasets",
            "DataRepositoryPath": {
                "Fn::Join": [
                    "",
                    ["s3://", {"Ref": logical_id(under_test.buckets.dataset_bucket)}, "/"],
                ]
            },
            "BatchImportMetaDataOnCreate": True,
            "S3": {"AutoImportPolicy": {"Events": ["NEW", "CHANGED", "DELETED"]}},
        },
    )
    template.has_resource_properties(
        "AWS::FSx::DataRepositoryAssociation",
        {
            "FileSystemId": fs_ref,
            "FileSystemPath": "/checkpoints",
            "DataRepositoryPath": {
                "Fn::Join": [
                    "",
                    ["s3://", {"Ref": logical_id(under_test.buckets.checkpoint_bucket)}, "/"],
                ]
            },
            "S3": {"AutoExportPolicy": {"Events": ["NEW", "CHANGED", "DELETED"]}},
        },
    )


def test_file_system_exposes_mount_facts_and_size(default):
    under_test, _ = default
    fs = under_test.file_system
    stack = under_test.stack
    assert fs.mount_path == "/fsx"
    assert stack.resolve(fs.dns_name) == {"Fn::GetAtt": [logical_id(fs.file_system), "DNSName"]}
    assert stack.resolve(fs.mount_name) == {
        "Fn::GetAtt": [logical_id(fs.file_system), "LustreMountName"]
    }
    assert fs.efa_enabled is False
    assert fs.deployment_type is DeploymentType.PERSISTENT_2
    assert (fs.storage_capacity_gib, fs.per_unit_storage_throughput) == (1200, 250)
    # 1200 GiB / 1024 x 250 MB/s/TiB = 292.97 MB/s.
    assert fs.throughput_gbps == pytest.approx(0.29296875)
    assert fs.throughput_per_node_gbps(2) == pytest.approx(0.146484375)
    assert fs.encryption_key is under_test.buckets.encryption_key


# -- network access -----------------------------------------------------------------------------


def test_fsx_security_group_admits_only_lustre_ports_from_clients_and_itself(default):
    under_test, template = default
    fsx_group = under_test.file_system.security_group
    own = str(group_ref(fsx_group))
    clients = str(group_ref(under_test.client_group))
    assert ingress_rules_into(template, fsx_group) == {
        ("tcp", 988, 988, clients),
        ("tcp", 1018, 1023, clients),
        ("tcp", 988, 988, own),
        ("tcp", 1018, 1023, own),
    }
    group = template.to_json()["Resources"][logical_id(fsx_group)]
    assert "SecurityGroupIngress" not in group["Properties"]


def test_clients_accept_lustre_ports_from_the_file_system(default):
    under_test, template = default
    fsx_group = str(group_ref(under_test.file_system.security_group))
    assert ingress_rules_into(template, under_test.client_group) == {
        ("tcp", 988, 988, fsx_group),
        ("tcp", 1018, 1023, fsx_group),
    }


def test_connections_have_no_default_port_so_clients_go_through_allow_clients(default):
    under_test, _ = default
    assert under_test.file_system.connections.default_port is None


def test_client_rules_for_a_cluster_in_another_stack_live_in_that_stack():
    app = cdk.App()
    under_test = storage_stack(app=app)
    cluster = cdk.Stack(app, "Cluster", env=cdk.Environment(region="us-east-2"))
    vpc = network(cluster).vpc
    nodes = ec2.SecurityGroup(cluster, "Nodes", vpc=vpc, description="Test double of node group")
    under_test.file_system.allow_clients(nodes)
    storage_template = Template.from_stack(under_test.stack)
    cluster_template = Template.from_stack(cluster)
    # Storage stays independent of the cluster: only the default test client appears there.
    assert len(storage_template.find_resources("AWS::EC2::SecurityGroupIngress")) == 6
    assert under_test.stack in cluster.dependencies
    assert under_test.stack.dependencies == []
    cluster_template.has_resource_properties(
        "AWS::EC2::SecurityGroupIngress",
        {
            "GroupId": {"Fn::ImportValue": Match.string_like_regexp("FsxSecurityGroup")},
            "SourceSecurityGroupId": {"Fn::GetAtt": [logical_id(nodes), "GroupId"]},
            "FromPort": 1018,
            "ToPort": 1023,
            "IpProtocol": "tcp",
        },
    )


def test_efa_file_system_enables_efa_with_a_metadata_configuration(efa):
    _, template = efa
    template.has_resource_properties(
        "AWS::FSx::FileSystem",
        {
            "LustreConfiguration": Match.object_like(
                {
                    "DeploymentType": "PERSISTENT_2",
                    "EfaEnabled": True,
                    "MetadataConfiguration": {"Mode": "AUTOMATIC"},
                }
            )
        },
    )


def test_efa_security_group_allows_all_traffic_to_and_from_itself_and_clients(efa):
    under_test, template = efa
    fsx_group = under_test.file_system.security_group
    own = group_ref(fsx_group)
    assert ingress_rules_into(template, fsx_group) == {
        ("-1", None, None, str(own)),
        ("-1", None, None, str(group_ref(under_test.client_group))),
    }
    template.has_resource_properties(
        "AWS::EC2::SecurityGroupEgress",
        {"GroupId": own, "DestinationSecurityGroupId": own, "IpProtocol": "-1"},
    )


def self_rules(template: Template, group: ec2.ISecurityGroup) -> set[str]:
    """Logical ids of the group's rules whose other side is the group itself."""
    own = group_ref(group)
    found = set()
    for kind, other in (
        ("AWS::EC2::SecurityGroupIngress", "SourceSecurityGroupId"),
        ("AWS::EC2::SecurityGroupEgress", "DestinationSecurityGroupId"),
    ):
        for logical, rule in template.find_resources(kind).items():
            if rule["Properties"]["GroupId"] == own and rule["Properties"].get(other) == own:
                found.add(logical)
    return found


@pytest.mark.parametrize("variant", ["default", "efa"])
def test_file_system_waits_for_every_self_rule_of_its_security_group(variant, request):
    under_test, template = request.getfixturevalue(variant)
    rules = self_rules(template, under_test.file_system.security_group)
    # Lustre: 988 and 1018-1023 in; EFA: all traffic in and out.
    assert len(rules) == 2
    (file_system,) = template.find_resources("AWS::FSx::FileSystem").values()
    assert rules <= set(file_system.get("DependsOn", []))


# -- sizing ---------------------------------------------------------------------------------------


def test_target_throughput_chooses_capacity_and_tier():
    under_test = storage_stack(target_throughput_gbps=2.0)
    fs = under_test.file_system
    assert (fs.storage_capacity_gib, fs.per_unit_storage_throughput) == (2400, 1000)
    assert "2400 GiB" in fs.sizing_choice.rationale
    Template.from_stack(under_test.stack).has_resource_properties(
        "AWS::FSx::FileSystem",
        {
            "StorageCapacity": 2400,
            "LustreConfiguration": Match.object_like({"PerUnitStorageThroughput": 1000}),
        },
    )


def test_without_a_key_the_file_system_gets_its_own_rotating_retained_key():
    app = cdk.App()
    stack = cdk.Stack(app, "Solo", env=cdk.Environment(region="us-east-2"))
    fs = TrainingFileSystem(
        stack,
        "Fsx",
        network=network(stack),
        daily_automatic_backup_start_time="03:30",
        weekly_maintenance_start_time="7:04:00",
    )
    template = Template.from_stack(stack)
    template.has_resource(
        "AWS::KMS::Key", {"Properties": {"EnableKeyRotation": True}, "DeletionPolicy": "Retain"}
    )
    template.has_resource_properties(
        "AWS::FSx::FileSystem",
        {
            "KmsKeyId": {"Ref": logical_id(fs.encryption_key)},
            "LustreConfiguration": Match.object_like(
                {"DailyAutomaticBackupStartTime": "03:30", "WeeklyMaintenanceStartTime": "7:04:00"}
            ),
        },
    )
    template.resource_count_is("AWS::FSx::DataRepositoryAssociation", 0)


# -- bad input ------------------------------------------------------------------------------------


def build(**props: Any) -> cdk.Stack:
    """Build a bare file system; on failure, also prove no resource was created first."""
    app = cdk.App()
    stack = cdk.Stack(app, "Bad", env=cdk.Environment(region="us-east-2"))
    net = network(stack)
    try:
        TrainingFileSystem(stack, "Fsx", network=net, **props)
    except CdkTrnError:
        assert stack.node.try_find_child("Fsx") is None
        raise
    return stack


def repo(path: str = "/data", s3: str = "s3://bucket/prefix/") -> DataRepositoryAssociation:
    return DataRepositoryAssociation(path, s3)


def test_capacity_1000_gib_is_refused():
    with pytest.raises(
        CdkTrnError,
        match=r"storage_capacity_gib must be 1200, 2400 or a multiple of 2400 GiB, got 1000",
    ):
        build(storage_capacity_gib=1000)


def test_throughput_300_is_refused_for_persistent_2():
    with pytest.raises(
        CdkTrnError,
        match=r"per_unit_storage_throughput must be 125, 250, 500 or 1000 MB/s/TiB for "
        r"PERSISTENT_2, got 300",
    ):
        build(per_unit_storage_throughput=300)


def test_persistent_2_throughput_is_refused_for_persistent_1():
    with pytest.raises(CdkTrnError, match=r"50, 100 or 200 MB/s/TiB for PERSISTENT_1, got 250"):
        build(deployment_type="PERSISTENT_1", per_unit_storage_throughput=250)


def test_efa_without_persistent_2_is_refused():
    with pytest.raises(
        CdkTrnError, match=r"efa_enabled must be False for PERSISTENT_1 .*PERSISTENT_2"
    ):
        build(deployment_type=DeploymentType.PERSISTENT_1, efa_enabled=True)


def test_efa_without_metadata_configuration_is_refused():
    with pytest.raises(
        CdkTrnError, match=r"efa_enabled must be False unless metadata_configuration is set"
    ):
        build(efa_enabled=True)


def test_metadata_configuration_is_refused_for_persistent_1():
    with pytest.raises(CdkTrnError, match=r"metadata_configuration must be unset for PERSISTENT_1"):
        build(deployment_type="PERSISTENT_1", metadata_configuration=MetadataConfiguration())


def test_scratch_deployment_is_refused():
    with pytest.raises(CdkTrnError, match=r"deployment_type must be PERSISTENT_2 or PERSISTENT_1"):
        build(deployment_type="SCRATCH_2")


def test_more_than_8_associations_are_refused():
    with pytest.raises(
        CdkTrnError,
        match=r"data_repository_associations must be at most 8 per file system, "
        r"got '9 associations'",
    ):
        build(data_repository_associations=[repo(f"/d{i}") for i in range(9)])


def test_8_associations_are_accepted():
    stack = build(data_repository_associations=[repo(f"/d{i}") for i in range(8)])
    Template.from_stack(stack).resource_count_is("AWS::FSx::DataRepositoryAssociation", 8)


def test_a_file_system_path_without_leading_slash_is_refused():
    with pytest.raises(
        CdkTrnError,
        match=r"file_system_path must be a directory starting with '/', got 'datasets'",
    ):
        repo("datasets")


def test_an_s3_path_without_s3_scheme_is_refused():
    with pytest.raises(
        CdkTrnError,
        match=r"data_repository_path must be an S3 location starting with 's3://'.*got "
        r"'arn:aws:s3:::bucket'",
    ):
        repo(s3="arn:aws:s3:::bucket")


def test_duplicate_file_system_paths_are_refused():
    with pytest.raises(CdkTrnError, match=r"file_system_path must be unique.*got '/data'"):
        build(data_repository_associations=[repo(), repo()])


def test_the_root_path_must_be_the_only_association():
    with pytest.raises(CdkTrnError, match=r"must be the only association.*got '/'"):
        build(data_repository_associations=[repo("/"), repo("/other")])


def test_unknown_events_are_refused():
    with pytest.raises(
        CdkTrnError, match=r"import_events must be each one of NEW, CHANGED, DELETED"
    ):
        DataRepositoryAssociation("/data", "s3://b/", import_events=("CREATED",))  # type: ignore[arg-type]


def test_target_throughput_with_an_explicit_capacity_is_refused():
    with pytest.raises(CdkTrnError, match=r"set either the target or those two"):
        build(target_throughput_gbps=2.0, storage_capacity_gib=2400)


def test_the_file_system_is_deleted_only_when_destroy_on_delete_is_named():
    stack = build(
        destroy_on_delete=True,
        automatic_backup_retention=cdk.Duration.days(0),
        data_repository_associations=[repo()],
    )
    template = Template.from_stack(stack)
    for kind in ("AWS::FSx::FileSystem", "AWS::FSx::DataRepositoryAssociation", "AWS::KMS::Key"):
        (resource,) = template.find_resources(kind).values()
        assert resource["DeletionPolicy"] == "Delete", kind
    template.has_resource_properties(
        "AWS::FSx::FileSystem",
        {"LustreConfiguration": Match.object_like({"AutomaticBackupRetentionDays": 0})},
    )


def test_destroy_on_delete_must_be_a_bool():
    with pytest.raises(CdkTrnError, match=r"destroy_on_delete must be True or False"):
        build(destroy_on_delete="yes")


@pytest.mark.parametrize(
    ("props", "message"),
    [
        (
            {"automatic_backup_retention": cdk.Duration.days(91)},
            "automatic_backup_retention must be a cdk.Duration of whole days from 0 to 90",
        ),
        (
            {"automatic_backup_retention": 7},
            "automatic_backup_retention must be a cdk.Duration of whole days",
        ),
        (
            {"daily_automatic_backup_start_time": "3:30"},
            "daily_automatic_backup_start_time must be HH:MM",
        ),
        (
            {"weekly_maintenance_start_time": "8:00:00"},
            "weekly_maintenance_start_time must be d:HH:MM",
        ),
        ({"data_compression": "GZIP"}, "data_compression must be LZ4 or NONE"),
        ({"mount_path": "fsx"}, "mount_path must be an absolute directory"),
        ({"mount_path": "/"}, "mount_path must be an absolute directory"),
        ({"mount_path": "/fsx'$(touch${IFS}/tmp/x)'"}, "mount_path must be an absolute directory"),
        ({"mount_path": "/fsx data"}, "mount_path must be an absolute directory"),
    ],
)
def test_other_bad_props_are_refused_with_the_prop_named(props, message):
    with pytest.raises(CdkTrnError, match=message):
        build(**props)


@pytest.mark.parametrize("iops", [1000, 13000, 204000, None])
def test_user_provisioned_metadata_iops_must_be_a_documented_value(iops):
    with pytest.raises(CdkTrnError, match=r"metadata_configuration.iops must be 1500, 3000, 6000"):
        MetadataConfiguration(mode="USER_PROVISIONED", iops=iops)  # type: ignore[arg-type]


def test_automatic_metadata_mode_takes_no_iops():
    with pytest.raises(
        CdkTrnError, match=r"metadata_configuration.iops must be unset in AUTOMATIC"
    ):
        MetadataConfiguration(iops=3000)
