"""``cdk-trn vault-key`` and ``cdk-trn verify``: an auditor's checks of signed checkpoints with
nothing but the stacks' outputs and credentials to read them.

What to expect comes from CloudFormation (``DescribeStacks``): the enclave image's PCR0 and the
KMS key from the vault stack's outputs, the cluster's name from the cluster stack's. Where the
vault is comes from the SSM parameter the vault stack names. The verification itself is
``cdk_trn_runtime.provenance``'s (``public-key`` and ``verify --vault``), with those values: the
attestation document must chain to the AWS Nitro root, carry a fresh nonce, the PCR0, the key and
the KMS key, or nothing is printed and the command fails naming the check.

A laptop cannot reach the vault's private address, so by default the attestation answer is
relayed by a cluster node (SSM ``SendCommand`` runs ``curl`` there; the vault admits the nodes):
the node sees only the nonce and the answer, which is checked here, so it need not be trusted.
``--vault-url`` asks the vault directly instead (from inside the VPC, or through a port forward).
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import sys
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from cdk_trn_runtime.cli.aws import Aws, CliError, in_service_instance, run_document, stack_outputs
from cdk_trn_runtime.contract import (
    OUTPUT_CLUSTER_NAME,
    OUTPUT_NODE_GROUP,
    OUTPUT_VAULT_IMAGE_PCR0,
    OUTPUT_VAULT_KEY_ARN,
    OUTPUT_VAULT_URL_PARAMETER,
    researcher_document,
)

#: The vault stack outputs the commands need.
REQUIRED_VAULT_OUTPUTS = (
    OUTPUT_VAULT_IMAGE_PCR0,
    OUTPUT_VAULT_KEY_ARN,
    OUTPUT_VAULT_URL_PARAMETER,
)
#: Seconds the relaying node may take (curl itself gives up after RELAY_CURL_SECONDS).
RELAY_TIMEOUT_SECONDS = 60
RELAY_CURL_SECONDS = 20
_STEP = re.compile(r"(\d+)$")


def default_vault_stack(cluster_stack: str) -> str:
    """The default app's vault stack beside ``<prefix>-cluster``: ``<prefix>-vault``."""
    return cluster_stack.removesuffix("-cluster") + "-vault"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--vault-stack",
        default=None,
        help="the vault's CloudFormation stack (default: the cluster stack's name with -vault "
        "for -cluster, e.g. trn-vault)",
    )
    parser.add_argument(
        "--vault-url",
        default=None,
        help="ask the vault at this URL directly (inside the VPC or through a port forward) "
        "instead of relaying through a cluster node",
    )


@dataclass(frozen=True)
class Expected:
    """What the stacks say the vault and its signatures must be."""

    pcr0: str
    kms_key_arn: str
    url: str
    cluster_name: str | None
    relay_instance: str | None


def expected_values(aws: Aws, args: argparse.Namespace) -> Expected:
    vault_stack = args.vault_stack or default_vault_stack(args.stack)
    outputs = stack_outputs(aws, vault_stack)
    missing = [key for key in REQUIRED_VAULT_OUTPUTS if not outputs.get(key)]
    if missing:
        raise CliError(
            f"stack {vault_stack} has no output {', '.join(missing)}: is it a cdk-trn vault "
            "stack (-c enclaveVault=true) of this version? Name it with --vault-stack"
        )
    cluster_outputs = stack_outputs(aws, args.stack)
    url = args.vault_url or _vault_url(aws, outputs[OUTPUT_VAULT_URL_PARAMETER])
    relay = None
    if not args.vault_url:
        group = cluster_outputs.get(OUTPUT_NODE_GROUP)
        if not group:
            raise CliError(
                f"stack {args.stack} has no output {OUTPUT_NODE_GROUP} (a node to relay the "
                "vault's attestation through); give --vault-url to ask the vault directly"
            )
        relay = in_service_instance(aws, group, what="node")
    cluster_name = cluster_outputs.get(OUTPUT_CLUSTER_NAME) or None
    if cluster_name is None:
        print(
            f"cdk-trn: warning: stack {args.stack} has no output {OUTPUT_CLUSTER_NAME}; the "
            "manifest's cluster is not compared",
            file=sys.stderr,
        )
    return Expected(
        pcr0=outputs[OUTPUT_VAULT_IMAGE_PCR0],
        kms_key_arn=outputs[OUTPUT_VAULT_KEY_ARN],
        url=url,
        cluster_name=cluster_name,
        relay_instance=relay,
    )


def _vault_url(aws: Aws, parameter: str) -> str:
    try:
        value = str(aws.ssm.get_parameter(Name=parameter)["Parameter"]["Value"]).strip()
    except ClientError as error:
        detail = error.response.get("Error", {})
        raise CliError(
            f"cannot read the vault's URL from {parameter}: {detail.get('Code')} "
            f"{detail.get('Message')}"
        ) from None
    if not re.fullmatch(r"https?://[A-Za-z0-9.\-\[\]:]+/?", value):
        raise CliError(f"{parameter} holds no vault URL ({value!r}): no vault host has started yet")
    return value.rstrip("/")


def relay_invocation(url: str, nonce: bytes) -> tuple[str, dict[str, str]]:
    """The node-side relay (the cluster's ``relay`` document): fetch ``/v1/attestation`` for
    ``nonce`` and print the answer."""
    encoded = urllib.parse.quote(base64.b64encode(nonce).decode(), safe="")
    return ("relay", {"VaultUrl": url, "Nonce": encoded})


def relay_script(url: str, nonce: bytes) -> str:
    """:func:`relay_invocation` as the node runs it."""
    from cdk_trn_runtime.cli.documents import command_documents, render  # noqa: PLC0415

    action, values = relay_invocation(url, nonce)
    docs = command_documents(container="unused", job_user="unused", shared_root="/unused")
    return render(docs[action], values)


def relayed_fetch(aws: Aws, instance_id: str, cluster_name: str) -> Any:
    """An attestation fetcher for ``provenance``: the node runs the cluster's ``relay``
    document (:func:`relay_invocation`)."""
    from cdk_trn_runtime.vault.client import VaultError  # noqa: PLC0415

    def fetch(url: str, nonce: bytes) -> dict[str, Any]:
        action, values = relay_invocation(url, nonce)
        result = run_document(
            aws,
            instance_id,
            researcher_document(cluster_name, action),
            values,
            comment="cdk-trn vault attestation relay",
            timeout_seconds=RELAY_TIMEOUT_SECONDS,
        )
        if not result.ok:
            detail = (result.stderr or result.stdout).strip()
            raise VaultError(
                0,
                "relay_failed",
                f"node {instance_id} could not fetch {url}/v1/attestation "
                f"({result.status}, exit {result.exit_code}): {detail}",
            )
        try:
            answer = json.loads(result.stdout)
        except ValueError as error:
            raise VaultError(0, "relay_failed", f"the answer is not JSON: {error}") from None
        if not isinstance(answer, dict):
            raise VaultError(0, "relay_failed", "the relayed answer is not a JSON object")
        return answer

    return fetch


def _provenance(aws: Aws, expected: Expected, argv: list[str]) -> int:
    from cdk_trn_runtime.provenance.cli import main as provenance_main  # noqa: PLC0415

    attestation = [
        "--vault",
        expected.url,
        "--pcr0",
        expected.pcr0,
        "--kms-key-arn",
        expected.kms_key_arn,
    ]
    fetch = None
    if expected.relay_instance:
        if not expected.cluster_name:
            raise CliError("the cluster stack names no cluster: cannot find its relay document")
        fetch = relayed_fetch(aws, expected.relay_instance, expected.cluster_name)
    return provenance_main([*argv, *attestation], fetch_attestation=fetch)


def cmd_vault_key(aws: Aws, args: argparse.Namespace) -> int:
    """Print the vault's attested public key (PEM)."""
    return _provenance(aws, expected_values(aws, args), ["public-key"])


def cmd_verify(aws: Aws, args: argparse.Namespace) -> int:
    """Verify a checkpoint directory against its manifest with the attested key."""
    directory: Path = args.checkpoint
    if not directory.is_dir():
        raise CliError(f"{directory}: no such checkpoint directory", 2)
    manifest: Path = args.manifest or directory.resolve().with_name(
        directory.resolve().name + ".manifest.json"
    )
    if not manifest.is_file():
        raise CliError(f"{manifest}: no signed manifest (give --manifest)", 2)
    if not args.run_id and not getattr(args, "any_run", False):
        raise CliError(
            "name the run the checkpoint must belong to (--run-id), or accept any run of the "
            "cluster explicitly (--any-run)",
            2,
        )
    step = args.step
    if step is None:
        match = _STEP.search(directory.resolve().name)
        step = int(match.group(1)) if match else None
    expected = expected_values(aws, args)
    if not expected.cluster_name:
        raise CliError("the stack outputs name no cluster: cannot check whose checkpoint this is")
    argv = ["verify", str(manifest), str(directory), "--cluster", expected.cluster_name]
    if step is not None:
        argv += ["--step", str(step)]
    argv += ["--run-id", args.run_id] if args.run_id else ["--any-run"]
    if args.path:
        argv += ["--path", args.path]
    return _provenance(aws, expected, argv)
