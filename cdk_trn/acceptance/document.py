"""The SSM Command documents of the acceptance run: the suite on one node, or as a Slurm job.

Two launchers, one per kind of cluster. On a cluster with a ``SlurmScheduler`` the run is a Slurm
job like any user's: the Slurm document (``slurm_acceptance_document``, script
``cdk_trn_runtime/acceptance/submit_suite.sh``) runs on the controller only, writes the job script
``cdk_trn_runtime/acceptance/acceptance.sbatch`` (embedded here at synth, base64) to the shared file
system, submits it with ``sbatch --parsable -N <nodes> --exclusive`` as the job user, waits for it
and uploads the results. On a cluster without a scheduler the node document below runs on every
node.

The node document:

Owns the document's parameters (each with an ``allowedPattern``: Run Command substitutes
``{{ Parameter }}`` into the script text, so the patterns are what keeps a parameter from becoming
shell code) and its script: remove any acceptance container a stopped run left behind (they are
labelled ``cdk-trn-acceptance=1``), check the node's Neuron and EFA device counts, log in to ECR
(through the VPC endpoints), pull the image, run it under ``torchrun`` with host networking, the
Neuron and EFA devices, unlimited locked memory and the compile cache mounted, then upload
``rank-*.json``, ``summary.json`` and the node's log to ``<ResultsUri><NodeRank>/`` and remove the
container whatever the outcome (also on TERM).
The parameters are the contract's messages (``cdk_trn_runtime.contract.acceptance``:
``NodeCommand``, ``SlurmCommand``), which the custom-resource handler's launchers fill.
"""

from __future__ import annotations

import base64
from typing import Any

from aws_cdk import aws_ssm as ssm
from constructs import Construct

from cdk_trn._runtime import runtime_file
from cdk_trn_runtime.contract import ACCEPTANCE_BUSY_EXIT, REFRESH_DRAIN_REASON
from cdk_trn_runtime.contract.acceptance import (
    ACCEPTANCE_NOT_READY_EXIT,
    CONTROL_DIR,
    LIST_SUFFIX,
    REAPER_REFRESH_MARKER,
    REAPER_UNIT,
    REPORT_NO_REAPER_RULE,
    REPORT_SUFFIX,
    RUN_NODES_KEY,
    NodeCommand,
    SlurmCommand,
    key_of,
)

#: The container's entrypoint, ``python -m cdk_trn_runtime.suite``; torchrun replaces it.
SUITE_MODULE = "cdk_trn_runtime.suite"
#: Where the suite writes inside the container; mounted from the node's work directory.
CONTAINER_RESULTS_DIR = "/results"
#: Label on every acceptance container, so that a later run finds one a stopped run left behind.
CONTAINER_LABEL = "cdk-trn-acceptance=1"

#: name -> (description, allowedPattern). Every value is a string (Run Command's only type here);
#: the handler fills them from the same message (``NodeCommand``).
DOCUMENT_PARAMETERS: dict[str, tuple[str, str]] = NodeCommand.document_parameters()
#: The Slurm launcher's parameters (same rules); the handler fills them (``SlurmCommand``).
SLURM_DOCUMENT_PARAMETERS: dict[str, tuple[str, str]] = SlurmCommand.document_parameters()
#: Run Command's placeholder of the execution timeout, the step's own timeout too.
_TIMEOUT_PLACEHOLDER = "{{ " + key_of(NodeCommand, "execution_timeout") + " }}"


def acceptance_script() -> str:
    """The node script (``cdk_trn_runtime/acceptance/run_suite.sh``, shellchecked like every
    runtime script), with ``{{ Parameter }}`` placeholders for Run Command to fill."""
    return (
        runtime_file("acceptance", "run_suite.sh")
        .read_text(encoding="utf-8")
        .replace("__RESULTS_DIR__", CONTAINER_RESULTS_DIR)
        .replace("__SUITE_MODULE__", SUITE_MODULE)
        .replace("__CONTAINER_LABEL__", CONTAINER_LABEL)
    )


def job_script() -> str:
    """The Slurm job script (``cdk_trn_runtime/acceptance/acceptance.sbatch``)."""
    return runtime_file("acceptance", "acceptance.sbatch").read_text(encoding="utf-8")


def submit_script() -> str:
    """The controller script (``cdk_trn_runtime/acceptance/submit_suite.sh``) with the job script
    embedded as one base64 line (no ``{{`` can reach Run Command from it) and the contract's
    names it shares with the handler and the reaper."""
    encoded = base64.b64encode(job_script().encode("utf-8")).decode("ascii")
    text = runtime_file("acceptance", "submit_suite.sh").read_text(encoding="utf-8")
    for marker, value in (
        ("__SBATCH_BASE64__", encoded),
        ("__REAPER_REFRESH_MARKER__", REAPER_REFRESH_MARKER),
        ("__REAPER_UNIT__", REAPER_UNIT),
        ("__REPORT_NO_REAPER_RULE__", REPORT_NO_REAPER_RULE),
        ("__LIST_SUFFIX__", LIST_SUFFIX),
        ("__REPORT_SUFFIX__", REPORT_SUFFIX),
        ("__RUN_NODES_KEY__", RUN_NODES_KEY),
        ("__CONTROL_DIR__", CONTROL_DIR),
        ("__BUSY_EXIT__", str(ACCEPTANCE_BUSY_EXIT)),
        ("__NOT_READY_EXIT__", str(ACCEPTANCE_NOT_READY_EXIT)),
        ("__REFRESH_REASON__", REFRESH_DRAIN_REASON),
    ):
        text = text.replace(marker, value)
    return text


def slurm_document_content() -> dict[str, Any]:
    """Content of the Slurm launcher's Command document (runs on the controller only)."""
    return _content(
        "cdk-trn: submit the Neuron acceptance suite as a Slurm job from the controller, wait "
        "for it, and upload its results from the shared file system to S3.",
        SLURM_DOCUMENT_PARAMETERS,
        "submitAcceptanceJob",
        submit_script(),
    )


def document_content() -> dict[str, Any]:
    """Content of the node document (schemaVersion 2.2, one aws:runShellScript step)."""
    return _content(
        "cdk-trn: run the Neuron acceptance suite on one node of the training cluster under "
        "torchrun, and upload its results to S3.",
        DOCUMENT_PARAMETERS,
        "runAcceptanceSuite",
        acceptance_script(),
    )


def _content(
    description: str, parameters: dict[str, tuple[str, str]], step: str, script: str
) -> dict[str, Any]:
    return {
        "schemaVersion": "2.2",
        "description": description,
        "parameters": {
            name: {"type": "String", "description": text, "allowedPattern": pattern}
            for name, (text, pattern) in parameters.items()
        },
        "mainSteps": [
            {
                "action": "aws:runShellScript",
                "name": step,
                "precondition": {"StringEquals": ["platformType", "Linux"]},
                "inputs": {
                    "runCommand": script.splitlines(),
                    "timeoutSeconds": _TIMEOUT_PLACEHOLDER,
                },
            }
        ],
    }


def acceptance_document(scope: Construct, id: str, *, slurm: bool = False) -> ssm.CfnDocument:
    """The document as a stack resource (the Slurm launcher's when ``slurm``). L1: there is no
    L2 for SSM documents.

    Unnamed, so CloudFormation names it and replaces it (under a new name, which the handler
    treats as a changed run) when the content changes.
    """
    return ssm.CfnDocument(
        scope,
        id,
        content=slurm_document_content() if slurm else document_content(),
        document_type="Command",
        document_format="JSON",
        target_type="/AWS::EC2::Instance",
    )
