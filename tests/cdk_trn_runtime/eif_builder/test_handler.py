"""The EIF build custom-resource handler against botocore's Stubber (real API models)."""

from __future__ import annotations

import io
import json
import subprocess
from collections.abc import Iterator

import botocore.session
import pytest
from botocore.response import StreamingBody
from botocore.stub import ANY, Stubber

from cdk_trn_runtime.eif_builder import handler
from cdk_trn_runtime.eif_builder.buildspec import eif_buildspec

PROJECT = "VaultEifBuildProject-abc123"
BUILD_ID = f"{PROJECT}:0f6a5b9e-1234-4e1f-9a1b-6c2d3e4f5a6b"
PROPS = {
    "ServiceToken": "arn:aws:lambda:us-east-2:111111111111:function:framework-onEvent",
    "ProjectName": PROJECT,
    "SourceBucket": "cdk-hnb659fds-assets-111111111111-us-east-2",
    "SourceKey": "0431ee67.zip",
    "OutputBucket": "vault-state-bucket",
    "OutputPrefix": "eif/0431ee67",
}
PCRS = {"PCR0": "a1" * 48, "PCR1": "b2" * 48, "PCR2": "c3" * 48}


def _client(service: str):
    return botocore.session.get_session().create_client(
        service,
        region_name="us-east-2",
        aws_access_key_id="test-double",
        aws_secret_access_key="test-double",
    )


@pytest.fixture
def codebuild() -> Iterator[tuple[object, Stubber]]:
    client = _client("codebuild")
    with Stubber(client) as stubber:
        yield client, stubber
        stubber.assert_no_pending_responses()


@pytest.fixture
def s3() -> Iterator[tuple[object, Stubber]]:
    client = _client("s3")
    with Stubber(client) as stubber:
        yield client, stubber
        stubber.assert_no_pending_responses()


def _event(request: str, **extra) -> dict:
    event = {
        "RequestType": request,
        "RequestId": "5d2f0c54-1e6a-4f3b-9c6e-0123456789ab",
        "ResourceProperties": dict(PROPS),
        "LogicalResourceId": "VaultEifBuildResource",
        "StackId": "arn:aws:cloudformation:us-east-2:111111111111:stack/VaultStack/guid",
    }
    event.update(extra)
    return event


def _build(status: str, **extra) -> dict:
    return {"builds": [{"id": BUILD_ID, "buildStatus": status, **extra}]}


def _body(document: dict | bytes) -> StreamingBody:
    data = document if isinstance(document, bytes) else json.dumps(document).encode()
    return StreamingBody(io.BytesIO(data), len(data))


def test_create_starts_the_build_on_the_exact_source_and_output_prefix(codebuild):
    client, stubber = codebuild
    stubber.add_response(
        "start_build",
        {"build": {"id": BUILD_ID, "buildStatus": "IN_PROGRESS"}},
        {
            "projectName": PROJECT,
            "environmentVariablesOverride": [
                {"name": "SOURCE_BUCKET", "value": PROPS["SourceBucket"], "type": "PLAINTEXT"},
                {"name": "SOURCE_KEY", "value": PROPS["SourceKey"], "type": "PLAINTEXT"},
                {"name": "EIF_BUCKET", "value": PROPS["OutputBucket"], "type": "PLAINTEXT"},
                {"name": "EIF_PREFIX", "value": PROPS["OutputPrefix"], "type": "PLAINTEXT"},
            ],
            "idempotencyToken": "5d2f0c54-1e6a-4f3b-9c6e-0123456789ab",
        },
    )
    result = handler.on_event(_event("Create"), codebuild=client)
    assert result == {"PhysicalResourceId": BUILD_ID, "Data": {"BuildId": BUILD_ID}}


def test_update_starts_a_new_build_and_so_a_new_physical_id(codebuild):
    client, stubber = codebuild
    new_id = f"{PROJECT}:11111111-2222-4333-8444-555555555555"
    stubber.add_response(
        "start_build",
        {"build": {"id": new_id}},
        {
            "projectName": PROJECT,
            "environmentVariablesOverride": ANY,
            "idempotencyToken": ANY,
        },
    )
    result = handler.on_event(_event("Update", PhysicalResourceId=BUILD_ID), codebuild=client)
    assert result["PhysicalResourceId"] == new_id


def test_running_build_is_not_complete(codebuild):
    client, stubber = codebuild
    stubber.add_response(
        "batch_get_builds", _build("IN_PROGRESS", currentPhase="BUILD"), {"ids": [BUILD_ID]}
    )
    event = _event("Create", PhysicalResourceId=BUILD_ID, Data={"BuildId": BUILD_ID})
    assert handler.is_complete(event, codebuild=client) == {
        "IsComplete": False,
        "Status": f"EIF build {BUILD_ID} in phase BUILD",
    }


def test_succeeded_build_returns_pcrs_and_eif_key_from_measurements_json(codebuild, s3):
    cb_client, cb_stubber = codebuild
    s3_client, s3_stubber = s3
    cb_stubber.add_response("batch_get_builds", _build("SUCCEEDED"), {"ids": [BUILD_ID]})
    nitro_cli_output = {
        "Measurements": {
            "HashAlgorithm": "Sha384 { ... }",
            **{k: v.upper() for k, v in PCRS.items()},
        }
    }
    s3_stubber.add_response(
        "get_object",
        {"Body": _body(nitro_cli_output)},
        {"Bucket": PROPS["OutputBucket"], "Key": "eif/0431ee67/measurements.json"},
    )
    result = handler.is_complete(
        _event("Create", PhysicalResourceId=BUILD_ID), codebuild=cb_client, s3=s3_client
    )
    assert result == {
        "IsComplete": True,
        "Data": {
            **PCRS,
            "EifBucket": PROPS["OutputBucket"],
            "EifKey": "eif/0431ee67/enclave.eif",
            "BuildId": BUILD_ID,
        },
    }


def test_failed_build_raises_with_the_failing_phase_message_and_logs(codebuild):
    client, stubber = codebuild
    stubber.add_response(
        "batch_get_builds",
        _build(
            "FAILED",
            phases=[
                {"phaseType": "INSTALL", "phaseStatus": "SUCCEEDED"},
                {
                    "phaseType": "BUILD",
                    "phaseStatus": "FAILED",
                    "contexts": [
                        {
                            "statusCode": "COMMAND_EXECUTION_ERROR",
                            "message": "Error while executing command: docker build ... "
                            "Reason: exit status 1",
                        }
                    ],
                },
            ],
            logs={"deepLink": "https://console.aws.amazon.com/cloudwatch/home#logEvent:x"},
        ),
        {"ids": [BUILD_ID]},
    )
    with pytest.raises(handler.EifBuildError) as raised:
        handler.is_complete(_event("Create", PhysicalResourceId=BUILD_ID), codebuild=client)
    message = str(raised.value)
    assert f"EIF build {BUILD_ID} FAILED in phase BUILD" in message
    assert "docker build" in message and "exit status 1" in message
    assert "logs: https://console.aws.amazon.com/cloudwatch" in message


def test_succeeded_build_with_malformed_measurements_raises_a_readable_error(codebuild, s3):
    cb_client, cb_stubber = codebuild
    s3_client, s3_stubber = s3
    cb_stubber.add_response("batch_get_builds", _build("SUCCEEDED"), {"ids": [BUILD_ID]})
    s3_stubber.add_response(
        "get_object",
        {"Body": _body({"Measurements": {"PCR0": "0" * 96, "PCR1": "b2" * 48, "PCR2": "c3" * 48}})},
        {"Bucket": PROPS["OutputBucket"], "Key": "eif/0431ee67/measurements.json"},
    )
    with pytest.raises(
        handler.EifBuildError, match=r"PCR0 .* must be 96 hex characters .*not all zeros"
    ):
        handler.is_complete(
            _event("Create", PhysicalResourceId=BUILD_ID), codebuild=cb_client, s3=s3_client
        )


def test_succeeded_build_without_measurements_object_names_the_object(codebuild, s3):
    cb_client, cb_stubber = codebuild
    s3_client, s3_stubber = s3
    cb_stubber.add_response("batch_get_builds", _build("SUCCEEDED"), {"ids": [BUILD_ID]})
    s3_stubber.add_client_error("get_object", "NoSuchKey", http_status_code=404)
    with pytest.raises(
        handler.EifBuildError, match=r"s3://vault-state-bucket/eif/0431ee67/measurements.json"
    ):
        handler.is_complete(
            _event("Create", PhysicalResourceId=BUILD_ID), codebuild=cb_client, s3=s3_client
        )


def test_delete_stops_a_still_running_build_and_keeps_the_physical_id(codebuild):
    client, stubber = codebuild
    stubber.add_response("batch_get_builds", _build("IN_PROGRESS"), {"ids": [BUILD_ID]})
    stubber.add_response("stop_build", {"build": {"id": BUILD_ID}}, {"id": BUILD_ID})
    result = handler.on_event(_event("Delete", PhysicalResourceId=BUILD_ID), codebuild=client)
    assert result == {"PhysicalResourceId": BUILD_ID}


def test_delete_succeeds_even_when_codebuild_fails(codebuild):
    client, stubber = codebuild
    stubber.add_client_error("batch_get_builds", "AccessDeniedException", http_status_code=400)
    result = handler.on_event(_event("Delete", PhysicalResourceId=BUILD_ID), codebuild=client)
    assert result == {"PhysicalResourceId": BUILD_ID}


def test_delete_of_a_create_that_never_started_a_build_calls_nothing(codebuild):
    client, _ = codebuild  # no stubbed responses: any call would fail the test
    request_id = "5d2f0c54-1e6a-4f3b-9c6e-0123456789ab"
    result = handler.on_event(_event("Delete", PhysicalResourceId=request_id), codebuild=client)
    assert result == {"PhysicalResourceId": request_id}


def test_delete_is_complete_at_once(codebuild):
    client, _ = codebuild
    event = _event("Delete", PhysicalResourceId=BUILD_ID)
    assert handler.is_complete(event, codebuild=client) == {"IsComplete": True}


def test_create_without_output_prefix_names_the_missing_property(codebuild):
    client, _ = codebuild
    event = _event("Create")
    del event["ResourceProperties"]["OutputPrefix"]
    with pytest.raises(
        handler.EifBuildError, match=r"EIF build properties: OutputPrefix is missing"
    ):
        handler.on_event(event, codebuild=client)


def test_buildspec_builds_the_given_dockerfile_in_the_whole_context():
    commands = eif_buildspec("enclave/Dockerfile")["phases"]["build"]["commands"]
    assert (
        "docker build --pull --file /tmp/enclave-source/enclave/Dockerfile "
        "--tag cdk-trn-enclave:build /tmp/enclave-source"
    ) in commands


def test_buildspec_builds_with_nitro_cli_and_writes_measurements_last():
    commands = eif_buildspec()["phases"]["build"]["commands"]
    text = "\n".join(commands)
    assert "nitro-cli build-enclave --docker-uri" in text
    assert "--debug-mode" not in text
    assert commands[-1].startswith("aws s3 cp measurements.json")
    assert commands[-2].startswith("aws s3 cp enclave.eif")
    install = eif_buildspec()["phases"]["install"]["commands"]
    assert "dnf install -y aws-nitro-enclaves-cli aws-nitro-enclaves-cli-devel" in install


def test_buildspec_keeps_only_the_json_document_nitro_cli_prints(tmp_path):
    commands = eif_buildspec()["phases"]["build"]["commands"]
    (extract,) = [c for c in commands if "build-output.txt" in c and c.startswith("python3")]
    (tmp_path / "build-output.txt").write_text(
        "Start building the Enclave Image...\nEnclave Image successfully created.\n"
        + json.dumps({"Measurements": {"HashAlgorithm": "Sha384 { ... }", **PCRS}}, indent=2)
    )
    subprocess.run(["bash", "-c", extract], cwd=tmp_path, check=True, capture_output=True)
    written = json.loads((tmp_path / "measurements.json").read_text())
    assert written["Measurements"]["PCR0"] == PCRS["PCR0"]
