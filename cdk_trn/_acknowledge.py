"""The one way cdk-trn acknowledges a compliance finding on a construct.

aws-cdk-lib (2.275) records ``Validations.of(c).acknowledge(...)`` as construct metadata keyed by
a *qualified* id, ``<plugin namespace>::<rule id>``; an id without a namespace is filed under
``Annotation::``. That choice decides where the acknowledgment ends up (checked by experiment):

* ``AwsSolutions::AwsSolutions-IAM5`` reaches CDK's own suppression step, which moves the finding
  into ``suppressedViolations`` of ``validation-report.json`` together with the reason and the
  construct path it was acknowledged at. This is what the compliance summary counts.
* ``AwsSolutions-IAM5`` is consumed inside cdk-nag (it strips ``Annotation::``), so the finding
  vanishes without a trace in the report: no reason, no count.

So :func:`acknowledge` takes the short rule id users know (``AwsSolutions-IAM5``,
``NIST.800.53.R5-IAMNoInlinePolicy``, ``TRN3``, granular ``AwsSolutions-IAM5[Resource::*]``) and
writes the qualified form; ids that already name a namespace are kept as given.
"""

from __future__ import annotations

import re

import aws_cdk as cdk
from constructs import IConstruct

from cdk_trn.errors import invalid

#: cdk-nag 3 pack names (each pack's ``name`` is also its rule-id prefix) and ours.
PACK_NAMESPACES = (
    "AwsSolutions",
    "HIPAA.Security",
    "NIST.800.53.R4",
    "NIST.800.53.R5",
    "PCI.DSS.321",
    "Serverless",
    "TrainiumChecks",
)
#: aws-cdk-lib's built-in template validation plugin ("CloudFormation Validate"), ids like W2508.
CFN_VALIDATE_NAMESPACE = "CloudFormation-Validate"
MIN_REASON_LENGTH = 20


def qualified_rule_id(rule_id: str) -> str:
    """The ``<namespace>::<rule>`` id that makes CDK record the acknowledgment in its report."""
    head = rule_id.split("[", 1)[0]  # granular findings may contain '::' inside the brackets
    if "::" in head:
        return rule_id
    if re.fullmatch(r"TRN\d+", head):
        return f"TrainiumChecks::TrainiumChecks-{rule_id}"
    for namespace in PACK_NAMESPACES:
        if head.startswith(namespace + "-"):
            return f"{namespace}::{rule_id}"
    if re.fullmatch(r"[EWI]\d{4}", head):
        return f"{CFN_VALIDATE_NAMESPACE}::{rule_id}"
    return rule_id


def acknowledge(construct: IConstruct, rule_id: str, reason: str) -> None:
    """Acknowledge ``rule_id`` on ``construct`` (and its children) with a specific ``reason``."""
    if len(reason.strip()) < MIN_REASON_LENGTH:
        raise invalid(
            f"reason (acknowledging {rule_id})",
            reason,
            f"a specific reason of at least {MIN_REASON_LENGTH} characters",
        )
    cdk.Validations.of(construct).acknowledge(
        cdk.Acknowledgment(id=qualified_rule_id(rule_id), reason=reason)
    )


#: The regulated packs (NIST 800-53 R5, HIPAA Security, PCI DSS 3.2.1) share rule names.
REGULATED_PACKS = ("NIST.800.53.R5", "HIPAA.Security", "PCI.DSS.321")


def acknowledge_regulated(construct: IConstruct, rule: str, reason: str) -> None:
    """Acknowledge ``<pack>-<rule>`` for each regulated pack (one reason for all); a pack without
    that rule never reports it, so its acknowledgment stays unused."""
    for pack in REGULATED_PACKS:
        acknowledge(construct, f"{pack}-{rule}", reason)


def acknowledge_deploy_time_functions(construct: IConstruct, purpose: str) -> None:
    """Acknowledge the regulated packs' Lambda rules on a custom resource's functions.

    ``construct`` is the custom resource's scope (its ``Provider`` and handler functions);
    ``purpose`` says what the functions do, for the reasons.
    """
    acknowledge_regulated(
        construct,
        "LambdaInsideVPC",
        f"deploy-time handler ({purpose}) that calls only AWS control-plane APIs and never "
        "touches training data; it runs outside the isolated node subnet, which has no route to "
        "those APIs' endpoints",
    )
    acknowledge_regulated(
        construct,
        "LambdaDLQ",
        f"deploy-time handler ({purpose}) invoked synchronously by the CloudFormation "
        "custom-resource framework, which reports every failure to CloudFormation; a dead-letter "
        "queue would never receive an event",
    )
    acknowledge_regulated(
        construct,
        "LambdaConcurrency",
        f"deploy-time handler ({purpose}) that runs a few times per deploy; reserved concurrency "
        "would only take capacity from the account's pool",
    )
    acknowledge_regulated(
        construct,
        "IAMNoInlinePolicy",
        f"aws-cdk-lib's custom-resource framework ({purpose}) writes its roles' policies inline, "
        "each scoped to this custom resource's functions and the resources it manages",
    )
