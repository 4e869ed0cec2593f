"""Custom-resource handler: the id of the region's S3 managed prefix list.

Security groups reach the S3 gateway endpoint by the AWS-managed prefix list
``com.amazonaws.<region>.s3``, whose id (``pl-...``) differs per region and has no CloudFormation
attribute, so it is looked up during the deploy. Read-only; Delete makes no call. Served by
:mod:`cdk_trn_runtime.deploy_time.driver` (``on_event`` only: nothing to wait for).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cdk_trn_runtime.contract.deploy_time import PrefixListAttributes
from cdk_trn_runtime.deploy_time.clients import bounded_client


class PrefixListError(Exception):
    """The prefix list was not found; the message is the status reason."""


def prefix_list_name(region: str) -> str:
    return f"com.amazonaws.{region}.s3"


def on_event(event: Mapping[str, Any], context: Any = None, *, ec2: Any = None) -> dict[str, Any]:
    if event["RequestType"] == "Delete":
        return {"PhysicalResourceId": event["PhysicalResourceId"]}
    if ec2 is None:
        ec2 = bounded_client("ec2")
    name = prefix_list_name(str(ec2.meta.region_name))
    found = ec2.describe_managed_prefix_lists(
        Filters=[{"Name": "prefix-list-name", "Values": [name]}]
    ).get("PrefixLists", [])
    if len(found) != 1:
        raise PrefixListError(f"expected one managed prefix list named {name}, found {len(found)}")
    prefix_list_id = str(found[0]["PrefixListId"])
    data = PrefixListAttributes(prefix_list_id=prefix_list_id).to_properties()
    return {"PhysicalResourceId": name, "Data": data}
