"""TrainingBuckets and the storage key: encryption, logging, lifecycle, key policy, grants."""

from __future__ import annotations

import aws_cdk as cdk
import pytest
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk.assertions import Annotations, Match, Template

from cdk_trn.errors import CdkTrnError
from cdk_trn.storage import TrainingBuckets


def logical_id(construct) -> str:
    stack = cdk.Stack.of(construct)
    return stack.resolve(stack.get_logical_id(construct.node.default_child or construct))


@pytest.fixture(scope="module")
def granted():
    app = cdk.App()
    stack = cdk.Stack(app, "Storage", env=cdk.Environment(region="us-east-2"))
    buckets = TrainingBuckets(stack, "Buckets")
    cluster = cdk.Stack(app, "Cluster", env=cdk.Environment(region="us-east-2"))
    reader = iam.Role(cluster, "Reader", assumed_by=iam.ServicePrincipal("ec2.amazonaws.com"))
    writer = iam.Role(cluster, "Writer", assumed_by=iam.ServicePrincipal("ec2.amazonaws.com"))
    read_grant = buckets.grant_read(reader)
    write_grant = buckets.grant_read_write(writer)
    return {
        "read_grant": read_grant,
        "write_grant": write_grant,
        "buckets": buckets,
        "template": Template.from_stack(stack),
        "cluster": Template.from_stack(cluster),
        "read_policy": buckets.node.find_child("NodeReadPolicy"),
        "write_policy": buckets.node.find_child("NodeReadWritePolicy"),
        "reader": reader,
        "writer": writer,
        "stacks": (stack, cluster),
    }


def test_data_buckets_use_sse_kms_with_the_storage_key_and_bucket_keys(granted):
    buckets, template = granted["buckets"], granted["template"]
    key_arn = {"Fn::GetAtt": [logical_id(buckets.encryption_key), "Arn"]}
    for bucket in (buckets.dataset_bucket, buckets.checkpoint_bucket):
        props = template.to_json()["Resources"][logical_id(bucket)]["Properties"]
        assert props["BucketEncryption"]["ServerSideEncryptionConfiguration"] == [
            {
                "BucketKeyEnabled": True,
                "ServerSideEncryptionByDefault": {
                    "KMSMasterKeyID": key_arn,
                    "SSEAlgorithm": "aws:kms",
                },
            }
        ]


def test_data_buckets_are_private_versioned_and_log_to_the_access_log_bucket(granted):
    buckets, template = granted["buckets"], granted["template"]
    log_bucket = {"Ref": logical_id(buckets.access_log_bucket)}
    for bucket, prefix in (
        (buckets.dataset_bucket, "datasets/"),
        (buckets.checkpoint_bucket, "checkpoints/"),
    ):
        props = template.to_json()["Resources"][logical_id(bucket)]["Properties"]
        assert props["VersioningConfiguration"] == {"Status": "Enabled"}
        assert props["PublicAccessBlockConfiguration"] == {
            "BlockPublicAcls": True,
            "BlockPublicPolicy": True,
            "IgnorePublicAcls": True,
            "RestrictPublicBuckets": True,
        }
        assert props["LoggingConfiguration"] == {
            "DestinationBucketName": log_bucket,
            "LogFilePrefix": prefix,
        }


def test_every_bucket_denies_requests_without_tls(granted):
    buckets, template = granted["buckets"], granted["template"]
    for bucket in (buckets.dataset_bucket, buckets.checkpoint_bucket, buckets.access_log_bucket):
        template.has_resource_properties(
            "AWS::S3::BucketPolicy",
            {
                "Bucket": {"Ref": logical_id(bucket)},
                "PolicyDocument": {
                    "Statement": Match.array_with(
                        [
                            Match.object_like(
                                {
                                    "Effect": "Deny",
                                    "Action": "s3:*",
                                    "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                                }
                            )
                        ]
                    )
                },
            },
        )


def test_access_log_bucket_uses_sse_s3_and_admits_only_s3_log_delivery(granted):
    buckets, template = granted["buckets"], granted["template"]
    resources = template.to_json()["Resources"]
    props = resources[logical_id(buckets.access_log_bucket)]["Properties"]
    assert props["BucketEncryption"]["ServerSideEncryptionConfiguration"] == [
        {"ServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}
    ]
    assert props["VersioningConfiguration"] == {"Status": "Enabled"}
    assert "AccessControl" not in props
    template.has_resource_properties(
        "AWS::S3::BucketPolicy",
        {
            "Bucket": {"Ref": logical_id(buckets.access_log_bucket)},
            "PolicyDocument": {
                "Statement": Match.array_with(
                    [
                        Match.object_like(
                            {
                                "Effect": "Allow",
                                "Principal": {"Service": "logging.s3.amazonaws.com"},
                                "Action": "s3:PutObject",
                                "Condition": {
                                    "ArnLike": {
                                        "aws:SourceArn": {
                                            "Fn::GetAtt": [
                                                logical_id(buckets.dataset_bucket),
                                                "Arn",
                                            ]
                                        }
                                    },
                                    "StringEquals": {
                                        "aws:SourceAccount": {"Ref": "AWS::AccountId"}
                                    },
                                },
                            }
                        )
                    ]
                )
            },
        },
    )


def test_checkpoint_bucket_expires_noncurrent_versions_after_30_days(granted):
    buckets, template = granted["buckets"], granted["template"]
    props = template.to_json()["Resources"][logical_id(buckets.checkpoint_bucket)]["Properties"]
    rules = props["LifecycleConfiguration"]["Rules"]
    assert {"NoncurrentDays": 30} in [r.get("NoncurrentVersionExpiration") for r in rules]


def test_storage_key_rotates_and_is_retained(granted):
    buckets, template = granted["buckets"], granted["template"]
    resource = template.to_json()["Resources"][logical_id(buckets.encryption_key)]
    assert resource["Properties"]["EnableKeyRotation"] is True
    assert resource["DeletionPolicy"] == "Retain"


def test_key_policy_lets_only_fsx_s3_access_roles_use_the_key_and_only_through_s3(granted):
    buckets, template = granted["buckets"], granted["template"]
    statements = template.to_json()["Resources"][logical_id(buckets.encryption_key)]["Properties"][
        "KeyPolicy"
    ]["Statement"]
    open_statements = [s for s in statements if s["Principal"] == {"AWS": "*"}]
    assert len(open_statements) == 1
    (fsx,) = open_statements
    assert fsx["Condition"]["StringEquals"] == {
        "kms:CallerAccount": {"Ref": "AWS::AccountId"},
        "kms:ViaService": "s3.us-east-2.amazonaws.com",
    }
    pattern = fsx["Condition"]["ArnLike"]["aws:PrincipalArn"]["Fn::Join"][1][-1]
    assert pattern.endswith(
        ":role/aws-service-role/s3.data-source.lustre.fsx.amazonaws.com/"
        "AWSServiceRoleForFSxS3Access_fs-*"
    )
    assert not any("*" in action for action in fsx["Action"])


def test_grants_are_managed_policies_attached_from_the_role_side(granted):
    stack, cluster = granted["stacks"]
    assert stack in cluster.dependencies
    assert stack.dependencies == []
    granted["cluster"].has_resource_properties(
        "AWS::IAM::Role",
        {
            "ManagedPolicyArns": [
                {"Fn::ImportValue": Match.string_like_regexp("NodeReadWritePolicy")}
            ]
        },
    )


def test_grants_return_the_granted_statements(granted):
    for name in ("read_grant", "write_grant"):
        grant = granted[name]
        assert isinstance(grant, iam.Grant)
        assert grant.success
        assert len(grant.principal_statements) == (3 if name == "read_grant" else 5)


def test_a_second_grant_adds_no_statement_twice():
    stack = cdk.Stack(cdk.App(), "Storage", env=cdk.Environment(region="us-east-2"))
    buckets = TrainingBuckets(stack, "Buckets")
    role = iam.Role(stack, "Reader", assumed_by=iam.ServicePrincipal("ec2.amazonaws.com"))
    buckets.grant_read(role)
    buckets.grant_read(role)
    policy = buckets.node.find_child("NodeReadPolicy")
    assert len(_statements(Template.from_stack(stack), policy)) == 3


def _statements(template: Template, policy: iam.ManagedPolicy) -> list[dict]:
    return template.to_json()["Resources"][logical_id(policy)]["Properties"]["PolicyDocument"][
        "Statement"
    ]


def test_grants_name_every_action_without_wildcards(granted):
    for policy in (granted["read_policy"], granted["write_policy"]):
        for statement in _statements(granted["template"], policy):
            actions = statement["Action"]
            actions = [actions] if isinstance(actions, str) else actions
            assert not any("*" in a for a in actions), statement


def test_read_grant_cannot_write_and_read_write_grant_writes_only_checkpoints(granted):
    buckets, template = granted["buckets"], granted["template"]
    read_actions = {
        a
        for s in _statements(template, granted["read_policy"])
        for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])
    }
    assert "s3:PutObject" not in read_actions
    assert "kms:GenerateDataKey" not in read_actions
    write = [
        s for s in _statements(template, granted["write_policy"]) if "s3:PutObject" in s["Action"]
    ]
    assert write[0]["Resource"] == {
        "Fn::Join": ["", [{"Fn::GetAtt": [logical_id(buckets.checkpoint_bucket), "Arn"]}, "/*"]]
    }


def test_key_use_in_grants_is_limited_to_calls_through_s3(granted):
    for policy in (granted["read_policy"], granted["write_policy"]):
        (kms_statement,) = [
            s for s in _statements(granted["template"], policy) if "kms:Decrypt" in s["Action"]
        ]
        assert kms_statement["Condition"] == {
            "StringEquals": {"kms:ViaService": "s3.us-east-2.amazonaws.com"}
        }


def test_an_imported_key_is_used_and_a_warning_says_its_policy_was_not_changed():
    app = cdk.App()
    stack = cdk.Stack(app, "Imported", env=cdk.Environment(region="us-east-2"))
    key = kms.Key.from_key_arn(
        stack, "Key", "arn:aws:kms:us-east-2:111111111111:key/11111111-2222-3333-4444-555555555555"
    )
    buckets = TrainingBuckets(stack, "Buckets", encryption_key=key)
    assert buckets.encryption_key is key
    Template.from_stack(stack).resource_count_is("AWS::KMS::Key", 0)
    Annotations.from_stack(stack).has_warning(
        "/Imported/Buckets", Match.string_like_regexp("storage key is imported")
    )


def test_buckets_and_their_key_are_deleted_only_when_destroy_on_delete_is_named():
    stack = cdk.Stack(cdk.App(), "Disposable", env=cdk.Environment(region="us-east-2"))
    TrainingBuckets(
        stack,
        "Buckets",
        destroy_on_delete=True,
        noncurrent_checkpoint_retention=cdk.Duration.days(7),
        access_log_retention=cdk.Duration.days(90),
    )
    template = Template.from_stack(stack)
    for kind in ("AWS::S3::Bucket", "AWS::KMS::Key"):
        for resource in template.find_resources(kind).values():
            assert resource["DeletionPolicy"] == "Delete", kind
    template.has_resource_properties(
        "AWS::S3::Bucket",
        {
            "LifecycleConfiguration": {
                "Rules": Match.array_with(
                    [Match.object_like({"NoncurrentVersionExpiration": {"NoncurrentDays": 7}})]
                )
            }
        },
    )


@pytest.mark.parametrize(
    ("props", "message"),
    [
        (
            {"noncurrent_checkpoint_retention": cdk.Duration.days(0)},
            "noncurrent_checkpoint_retention must be a cdk.Duration of whole days from 1",
        ),
        (
            {"noncurrent_dataset_retention": 30},
            "noncurrent_dataset_retention must be a cdk.Duration of whole days",
        ),
        (
            {"access_log_retention": cdk.Duration.hours(36)},
            "access_log_retention must be a cdk.Duration of whole days",
        ),
        ({"destroy_on_delete": "yes"}, "destroy_on_delete must be True or False"),
    ],
)
def test_bad_bucket_props_are_refused_before_any_resource(props, message):
    app = cdk.App()
    stack = cdk.Stack(app, "Bad", env=cdk.Environment(region="us-east-2"))
    with pytest.raises(CdkTrnError, match=message):
        TrainingBuckets(stack, "Buckets", **props)
    assert stack.node.try_find_child("Buckets") is None


# -- existing buckets -----------------------------------------------------------------------------

KEY_ARN = "arn:aws:kms:us-east-2:123456789012:key/0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9"
IMPORTED = {
    "dataset_bucket_name": "trn-storage-datasets-1a2b3c",
    "checkpoint_bucket_name": "trn-storage-checkpoints-4d5e6f",
    "encryption_key_arn": KEY_ARN,
}


def test_existing_buckets_are_granted_like_new_ones_without_creating_a_bucket_or_key():
    stack = cdk.Stack(cdk.App(), "Later", env=cdk.Environment(region="us-east-2"))
    buckets = TrainingBuckets.from_attributes(
        stack, "Buckets", **IMPORTED, access_log_bucket_name="trn-storage-logs-7a8b9c"
    )
    role = iam.Role(stack, "Nodes", assumed_by=iam.ServicePrincipal("ec2.amazonaws.com"))
    grant = buckets.grant_read_write(role)
    assert grant.success and len(grant.principal_statements) == 5
    template = Template.from_stack(stack)
    for kind in ("AWS::S3::Bucket", "AWS::KMS::Key", "AWS::S3::BucketPolicy"):
        template.resource_count_is(kind, 0)
    statements = _statements(template, buckets.node.find_child("NodeReadWritePolicy"))
    writes = [s for s in statements if "s3:PutObject" in s["Action"]]
    assert writes[0]["Resource"] == {
        "Fn::Join": [
            "",
            ["arn:", {"Ref": "AWS::Partition"}, ":s3:::trn-storage-checkpoints-4d5e6f/*"],
        ]
    }
    (key_statement,) = [s for s in statements if "kms:Decrypt" in s["Action"]]
    assert key_statement["Resource"] == KEY_ARN
    assert buckets.access_log_bucket is not None
    assert stack.resolve(buckets.dataset_bucket.bucket_name) == "trn-storage-datasets-1a2b3c"


@pytest.mark.parametrize(
    ("props", "message"),
    [
        ({"dataset_bucket_name": "Data_Sets"}, "Later/Buckets: dataset_bucket_name must be an S3"),
        ({"checkpoint_bucket_name": "ab"}, "checkpoint_bucket_name must be an S3 bucket name"),
        ({"access_log_bucket_name": "-logs"}, "access_log_bucket_name must be an S3 bucket name"),
        ({"encryption_key_arn": "alias/aws/s3"}, "encryption_key_arn must be a KMS key ARN"),
    ],
)
def test_bad_existing_bucket_attributes_are_refused(props, message):
    stack = cdk.Stack(cdk.App(), "Later", env=cdk.Environment(region="us-east-2"))
    with pytest.raises(CdkTrnError, match=message):
        TrainingBuckets.from_attributes(stack, "Buckets", **{**IMPORTED, **props})
    assert stack.node.try_find_child("Buckets") is None
