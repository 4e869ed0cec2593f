"""The CodeBuild buildspec that turns a Docker build context into a measured enclave image (EIF).

Runs on the Amazon Linux 2023 CodeBuild image in privileged mode (``nitro-cli build-enclave``
drives the Docker daemon). ``EIF_BUCKET`` and ``EIF_PREFIX`` come from the custom-resource handler
(``handler.py``) per build, with ``SOURCE_BUCKET``/``SOURCE_KEY``: the zipped build context
(a CDK asset), which the build fetches itself. Output: ``s3://$EIF_BUCKET/$EIF_PREFIX/enclave.eif``
and, written last so that its presence means the EIF is complete, ``measurements.json``: the JSON
that ``nitro-cli build-enclave`` prints (``{"Measurements": {"HashAlgorithm", "PCR0", ...}}``).
Paths under /tmp are inside the build's own short-lived container.
"""

from __future__ import annotations

import shlex
from typing import Any

DOCKER_TAG = "cdk-trn-enclave:build"
_SOURCE_DIR = "/tmp/enclave-source"  # noqa: S108 - inside the build's own container

# nitro-cli prints progress lines before the JSON document; keep the document only.
_EXTRACT_MEASUREMENTS = (
    'python3 -c \'import json; text = open("build-output.txt").read(); '
    'doc = json.loads(text[text.index("{"):]); m = doc["Measurements"]; '
    '[print(k, m[k]) for k in ("PCR0", "PCR1", "PCR2")]; '
    'json.dump(doc, open("measurements.json", "w"), indent=2)\''
)


def eif_buildspec(dockerfile: str = "Dockerfile") -> dict[str, Any]:
    """The buildspec as an object for ``codebuild.BuildSpec.from_object``.

    ``dockerfile``: path of the Dockerfile inside the build context.
    """
    dockerfile_path = shlex.quote(f"{_SOURCE_DIR}/{dockerfile}")
    return {
        "version": "0.2",
        "env": {
            "shell": "bash",
            # nitro-cli keeps intermediate files here (the default needs a nitro-cli host layout).
            "variables": {"NITRO_CLI_ARTIFACTS": "/tmp/nitro-cli-artifacts"},  # noqa: S108
        },
        "phases": {
            "install": {
                "on-failure": "ABORT",
                "commands": [
                    "dnf install -y aws-nitro-enclaves-cli aws-nitro-enclaves-cli-devel",
                    "nitro-cli --version",
                ],
            },
            "build": {
                "on-failure": "ABORT",
                "commands": [
                    'test -n "$SOURCE_BUCKET" && test -n "$SOURCE_KEY"',
                    'test -n "$EIF_BUCKET" && test -n "$EIF_PREFIX"',
                    f'aws s3 cp "s3://$SOURCE_BUCKET/$SOURCE_KEY" {_SOURCE_DIR}.zip',
                    f"mkdir -p {_SOURCE_DIR}",
                    f"unzip -q {_SOURCE_DIR}.zip -d {_SOURCE_DIR}",
                    'mkdir -p /var/log/nitro_enclaves "$NITRO_CLI_ARTIFACTS"',
                    f"docker build --pull --file {dockerfile_path} --tag {DOCKER_TAG} "
                    f"{_SOURCE_DIR}",
                    f"nitro-cli build-enclave --docker-uri {DOCKER_TAG} "
                    "--output-file enclave.eif > build-output.txt",
                    _EXTRACT_MEASUREMENTS,
                    'aws s3 cp enclave.eif "s3://$EIF_BUCKET/$EIF_PREFIX/enclave.eif"',
                    'aws s3 cp measurements.json "s3://$EIF_BUCKET/$EIF_PREFIX/measurements.json"',
                ],
            },
        },
    }
