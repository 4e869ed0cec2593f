"""The region's S3 prefix list is looked up once for the default app, in the storage stack that
owns the VPC and its S3 gateway endpoint; the later stacks' deploy-time functions name it."""

from __future__ import annotations

import json


def _lookups(template: dict) -> list[str]:
    return [
        k for k, r in template["Resources"].items() if r["Type"] == "Custom::CdkTrnS3PrefixList"
    ]


def test_one_lookup_for_the_app_in_the_storage_stack(default_app):
    default, templates = default_app.default, default_app.templates()
    found = {name: _lookups(t) for name, t in templates.items()}
    assert (
        found[default.storage_stack.stack_name]
        and len(found[default.storage_stack.stack_name]) == 1
    )
    assert all(not v for k, v in found.items() if k != default.storage_stack.stack_name)


def test_later_stacks_reach_s3_by_the_storage_stacks_prefix_list(default_app):
    default, templates = default_app.default, default_app.templates()
    for stack in (default.cluster_stack, default.vault_stack):
        template = templates[stack.stack_name]
        resources = template["Resources"].values()
        inline = [
            rule
            for r in resources
            if r["Type"] == "AWS::EC2::SecurityGroup"
            for rule in r["Properties"].get("SecurityGroupEgress", [])
        ]
        standalone = [
            r["Properties"] for r in resources if r["Type"] == "AWS::EC2::SecurityGroupEgress"
        ]
        egress = [rule for rule in inline + standalone if "DestinationPrefixListId" in rule]
        assert egress, stack.stack_name
        for rule in egress:
            assert (rule["FromPort"], rule["ToPort"], rule["IpProtocol"]) == (443, 443, "tcp")
            # A cross-stack import of the storage stack's lookup result.
            assert "Fn::ImportValue" in json.dumps(rule["DestinationPrefixListId"])
