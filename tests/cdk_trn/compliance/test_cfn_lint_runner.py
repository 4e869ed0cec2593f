"""lint_template: cfn-lint's errors and warnings for one template in one region."""

from __future__ import annotations

import json

from cdk_trn.compliance import lint_template
from cdk_trn.compliance.cfn_lint_runner import ignored_checks


def instance_template(instance_type="trn2.48xlarge"):
    return {
        "Resources": {
            "Node": {
                "Type": "AWS::EC2::Instance",
                "Properties": {"InstanceType": instance_type, "ImageId": "ami-0123456789abcdef0"},
            }
        }
    }


def test_template_valid_in_its_region_has_no_issue():
    assert lint_template(instance_template(), "us-east-2") == []


def test_instance_type_not_offered_in_the_region_is_an_error():
    [issue] = lint_template(instance_template(), "eu-west-1")
    assert (issue.level, issue.path) == ("error", "Resources/Node/Properties/InstanceType")


def test_unused_parameter_is_a_warning():
    template = instance_template()
    template["Parameters"] = {"Unused": {"Type": "String"}}
    [issue] = lint_template(template, "us-east-2")
    assert (issue.rule_id, issue.level) == ("W2001", "warning")


def test_template_can_be_given_as_a_file(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps(instance_template("trn2.96xlarge")))
    assert [i.level for i in lint_template(path, "us-east-2")] == ["error"]


def test_checks_silenced_in_resource_metadata_are_listed_with_their_reason():
    template = instance_template("trn2u.48xlarge")
    template["Resources"]["Node"]["Metadata"] = {
        "cfn-lint": {"config": {"ignore_checks": ["E3628"]}},
        "cdk-trn:acknowledged": {"E3628": "sold only as Capacity Blocks"},
    }
    assert lint_template(template, "us-east-2") == []
    assert ignored_checks(template) == [("Node", "E3628", "sold only as Capacity Blocks")]
