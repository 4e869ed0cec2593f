"""Custom-resource handler that builds an enclave image (EIF) with CodeBuild during the deploy.

Served by cdk-trn's deploy-time driver (``cdk_trn_runtime.deploy_time.driver``: on-event, then
is-complete polls). On Create/Update,
``on_event`` starts the CodeBuild project on the exact source object named in the properties
(``SOURCE_BUCKET``/``SOURCE_KEY``; the project has no CodeBuild source of its own), and
the build id becomes the physical resource id (every source change is a new build, so CloudFormation
deletes the old physical id after a successful update). ``is_complete`` polls the build; when it
succeeded it reads ``measurements.json`` (the JSON ``nitro-cli build-enclave`` prints) from S3 and
returns ``PCR0``, ``PCR1``, ``PCR2``, ``EifBucket`` and ``EifKey`` as attributes; when it failed it
raises with the failing phase and CodeBuild's own message, which CloudFormation shows as the reason.
Delete never fails: it stops a build that is still running (best effort) and keeps the EIF, which
lives in a retained bucket and may still be used by hosts during a rollback.

Resource properties, build variables and attributes: ``cdk_trn_runtime.contract.eif``. Plain Python
on boto3 only: this directory is the Lambda code asset.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from cdk_trn_runtime.contract.eif import (
    EIF_NAME,
    MEASUREMENTS_NAME,
    EifBuildAttributes,
    EifBuildEnvironment,
    EifBuildProperties,
)
from cdk_trn_runtime.contract.message import MessageError
from cdk_trn_runtime.deploy_time.clients import bounded_client

LOG = logging.getLogger()
LOG.setLevel(logging.INFO)

_PCR = re.compile(r"^[0-9a-fA-F]{96}$")
_RUNNING = {"IN_PROGRESS"}
_FAILED = {"FAILED", "FAULT", "TIMED_OUT", "STOPPED"}


class EifBuildError(RuntimeError):
    """The enclave image build did not produce a usable EIF; the message says why."""


def _client(name: str, given: Any) -> Any:
    if given is not None:
        return given
    return bounded_client(name)


def _props(event: dict[str, Any]) -> EifBuildProperties:
    try:
        return EifBuildProperties.from_properties(event.get("ResourceProperties", {}))
    except MessageError as error:
        raise EifBuildError(str(error)) from None


def on_event(
    event: dict[str, Any], context: Any = None, *, codebuild: Any = None
) -> dict[str, Any]:
    request = event["RequestType"]
    if request == "Delete":
        _stop_quietly(event.get("PhysicalResourceId", ""), codebuild)
        return {"PhysicalResourceId": event.get("PhysicalResourceId", "none")}
    props = _props(event)
    request_id = str(event.get("RequestId", ""))
    extra = {"idempotencyToken": request_id[:64]} if request_id else {}
    variables = EifBuildEnvironment(
        source_bucket=props.source_bucket,
        source_key=props.source_key,
        eif_bucket=props.output_bucket,
        eif_prefix=props.prefix,
    ).to_environment()
    response = _client("codebuild", codebuild).start_build(
        projectName=props.project_name,
        environmentVariablesOverride=[
            {"name": name, "value": value, "type": "PLAINTEXT"} for name, value in variables.items()
        ],
        **extra,  # a retried on-event call must not start a second build
    )
    build_id = response["build"]["id"]
    LOG.info("started EIF build %s for %s/%s", build_id, props.output_bucket, props.prefix)
    data = EifBuildAttributes(build_id=build_id).to_properties()
    return {"PhysicalResourceId": build_id, "Data": data}


def is_complete(
    event: dict[str, Any], context: Any = None, *, codebuild: Any = None, s3: Any = None
) -> dict[str, Any]:
    if event["RequestType"] == "Delete":
        return {"IsComplete": True}
    props = _props(event)
    build_id = event["PhysicalResourceId"]
    builds = _client("codebuild", codebuild).batch_get_builds(ids=[build_id])["builds"]
    if not builds:
        raise EifBuildError(f"EIF build {build_id} not found in project {props.project_name}")
    build = builds[0]
    status = build.get("buildStatus", "IN_PROGRESS")
    if status in _RUNNING:
        phase = build.get("currentPhase")
        LOG.info("EIF build %s still running (phase %s)", build_id, phase)
        # Named in the reason if the wait times out.
        return {"IsComplete": False, "Status": f"EIF build {build_id} in phase {phase}"}
    if status in _FAILED:
        raise EifBuildError(_failure_reason(build_id, status, build))
    if status != "SUCCEEDED":
        raise EifBuildError(f"EIF build {build_id} ended with unexpected status {status}")
    pcrs = _read_measurements(_client("s3", s3), props.output_bucket, props.prefix, build_id)
    attributes = EifBuildAttributes(
        build_id=build_id,
        pcr0=pcrs["PCR0"],
        pcr1=pcrs["PCR1"],
        pcr2=pcrs["PCR2"],
        eif_bucket=props.output_bucket,
        eif_key=f"{props.prefix}/{EIF_NAME}",
    )
    return {"IsComplete": True, "Data": attributes.to_properties()}


def _read_measurements(s3: Any, bucket: str, prefix: str, build_id: str) -> dict[str, str]:
    key = f"{prefix}/{MEASUREMENTS_NAME}"
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except Exception as error:
        raise EifBuildError(
            f"EIF build {build_id} succeeded but s3://{bucket}/{key} could not be read: {error}"
        ) from error
    try:
        measurements = json.loads(body)["Measurements"]
        pcrs = {name: str(measurements[name]).lower() for name in ("PCR0", "PCR1", "PCR2")}
    except (ValueError, KeyError, TypeError) as error:
        raise EifBuildError(
            f"s3://{bucket}/{key} is not nitro-cli build-enclave output with "
            f"Measurements.PCR0/PCR1/PCR2: {error!r}"
        ) from error
    for name, value in pcrs.items():
        if not _PCR.match(value) or set(value) == {"0"}:
            raise EifBuildError(
                f"{name} in s3://{bucket}/{key} must be 96 hex characters (SHA-384), not all "
                f"zeros, got {value!r}"
            )
    return pcrs


def _failure_reason(build_id: str, status: str, build: dict[str, Any]) -> str:
    failed = [p for p in build.get("phases", []) if p.get("phaseStatus") not in (None, "SUCCEEDED")]
    parts = [f"EIF build {build_id} {status}"]
    if failed:
        phase = failed[0]
        messages = "; ".join(
            c.get("message", "") for c in phase.get("contexts", []) if c.get("message")
        )
        parts.append(f"in phase {phase.get('phaseType')}" + (f": {messages}" if messages else ""))
    link = build.get("logs", {}).get("deepLink")
    if link:
        parts.append(f"logs: {link}")
    return " ".join(parts)


def _stop_quietly(build_id: str, codebuild: Any) -> None:
    """Stop a build still running when its resource is deleted; never raise (delete must pass)."""
    if ":" not in build_id:  # not a build id (e.g. a failed create never started one)
        return
    try:
        client = _client("codebuild", codebuild)
        builds = client.batch_get_builds(ids=[build_id]).get("builds", [])
        if builds and builds[0].get("buildStatus") in _RUNNING:
            client.stop_build(id=build_id)
            LOG.info("stopped EIF build %s on delete", build_id)
    except Exception:
        LOG.exception("could not stop EIF build %s on delete; ignored", build_id)
