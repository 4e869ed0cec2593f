"""Every launch template's user data stays within cdk-trn's budget (12 KiB raw, EC2 allows 16 KiB)
with every deploy-time value resolved to its longest realistic value, so that the next variable
never breaks a deploy. Measured on the synthesized templates of the default app with the longest
prefix it accepts (31 characters), not on unresolved ``${Token[...]}`` strings."""

from __future__ import annotations

import base64
import re
from typing import Any

import aws_cdk as cdk
import pytest

from cdk_trn._boot import USER_DATA_BUDGET_BYTES
from stacks import build_default_app
from stacks.config import AppConfig

#: The longest values CloudFormation can put where the templates refer to something.
PSEUDO = {
    "AWS::AccountId": "123456789012",
    "AWS::Region": "us-isof-southeast-1",  # the longest region name
    "AWS::Partition": "aws-iso-f",
    "AWS::URLSuffix": "csp.hci.ic.gov.example",
    "AWS::StackName": "s" * 64,
    "AWS::StackId": "arn:aws-iso-f:cloudformation:us-isof-southeast-1:123456789012:stack/"
    + "s" * 64
    + "/01234567-89ab-cdef-0123-456789abcdef",
    "AWS::NoValue": "",
}
#: A name CloudFormation generates (<stack name>-<logical id>-<13 random characters>).
GENERATED_NAME = "s" * 64 + "-" + "L" * 64 + "-" + "R" * 13
_ARN_PREFIX = f"arn:{PSEUDO['AWS::Partition']}:svc:{PSEUDO['AWS::Region']}:123456789012:"
LONGEST_ARN = _ARN_PREFIX + "resource/" + GENERATED_NAME
LONGEST = {
    # What Ref returns, per resource type (anything else: a generated name).
    "AWS::S3::Bucket": "b" * 63,
    "AWS::KMS::Key": "01234567-89ab-cdef-0123-456789abcdef",
    "AWS::SecretsManager::Secret": LONGEST_ARN + "-AbCdEf",
    "AWS::IAM::InstanceProfile": GENERATED_NAME,
}


def _resolve(value: Any, resources: dict[str, Any]) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, list):
        raise AssertionError(f"a list where a string belongs: {value}")
    ((fn, arg),) = value.items()
    if fn == "Ref":
        if arg in PSEUDO:
            return PSEUDO[arg]
        if arg not in resources:  # a parameter: SSM parameter types resolve to an AMI id etc.
            return "p" * 128
        return LONGEST.get(resources[arg]["Type"], GENERATED_NAME)
    if fn == "Fn::GetAtt":
        return LONGEST_ARN if arg[1].endswith("Arn") else GENERATED_NAME
    if fn == "Fn::Join":
        separator, parts = arg
        return separator.join(_resolve(part, resources) for part in parts)
    if fn == "Fn::Sub":
        text, variables = (arg, {}) if isinstance(arg, str) else arg

        def substitute(match: re.Match[str]) -> str:
            name = match.group(1)
            if name in variables:
                return _resolve(variables[name], resources)
            if "." in name:
                return _resolve({"Fn::GetAtt": name.split(".", 1)}, resources)
            return _resolve({"Ref": name}, resources)

        return re.sub(r"\$\{([^}!]+)\}", substitute, text)
    if fn == "Fn::Base64":
        return _resolve(arg, resources)
    if fn == "Fn::ImportValue":
        return LONGEST_ARN
    if fn == "Fn::Select":
        index, items = arg
        if isinstance(items, dict) and "Fn::Split" in items:
            separator, text = items["Fn::Split"]
            return _resolve(text, resources).split(separator)[int(index)]
        return _resolve(items[int(index)], resources)
    raise AssertionError(f"no worst case for {fn}: {arg}")


@pytest.fixture(scope="module")
def launch_templates() -> dict[str, str]:
    """Each launch template's user data, resolved to its longest, by stack and logical id."""
    app = cdk.App()
    prefix = "p" + "abcdefghijklmnopqrstuvwxyz0123"  # 31 characters, the longest accepted
    build_default_app(app, AppConfig(prefix=prefix, fsx_efa=True))
    assembly = app.synth()
    found = {}
    for stack in assembly.stacks:
        resources = stack.template.get("Resources", {})
        for logical_id, resource in resources.items():
            if resource["Type"] != "AWS::EC2::LaunchTemplate":
                continue
            user_data = resource["Properties"]["LaunchTemplateData"].get("UserData")
            if user_data is not None:
                found[f"{stack.stack_name}/{logical_id}"] = _resolve(user_data, resources)
    return found


def test_the_node_controller_and_vault_host_templates_are_measured(launch_templates):
    kinds = {
        "node": "node_bootstrap.sh",
        "controller": "controller_bootstrap.sh",
        "vault host": "host_bootstrap.sh",
    }
    for kind, entry in kinds.items():
        assert any(f"CDK_TRN_BOOT_ENTRY={entry}" in u for u in launch_templates.values()), kind


def test_every_user_data_fits_the_budget_with_every_token_at_its_longest(launch_templates):
    sizes = {name: len(text.encode()) for name, text in launch_templates.items()}
    assert all(size <= USER_DATA_BUDGET_BYTES for size in sizes.values()), sizes
    # EC2 counts the base64 form against 16 KiB when the API call carries it that way.
    assert all(len(base64.b64encode(t.encode())) <= 16 * 1024 for t in launch_templates.values())


def test_no_token_is_left_unresolved(launch_templates):
    for name, text in launch_templates.items():
        assert "${Token[" not in text and "Fn::" not in text, name
