"""The SSM Command document that runs the acceptance suite on one node.

Owns the document's parameters (each with an ``allowedPattern``: Run Command substitutes
``{{ Parameter }}`` into the script text, so the patterns are what keeps a parameter from becoming
shell code) and its script: remove any acceptance container a stopped run left behind (they are
labelled ``cdk-trn-acceptance=1``), check the node's Neuron and EFA device counts, log in to ECR
(through the VPC endpoints), pull the image, run it under ``torchrun`` with host networking, the
Neuron and EFA devices, unlimited locked memory and the compile cache mounted, then upload
``rank-*.json``, ``summary.json`` and the node's log to ``<ResultsUri><NodeRank>/`` and remove the
container whatever the outcome (also on TERM).
The custom-resource handler fills the parameters (``handler/acceptance_handler.py``,
``command_parameters``); a test keeps the two lists equal.
"""

from __future__ import annotations

from typing import Any

from aws_cdk import aws_ssm as ssm
from constructs import Construct

from cdk_trn._runtime import runtime_file

#: The container's entrypoint, ``python -m cdk_trn_runtime.suite``; torchrun replaces it.
SUITE_MODULE = "cdk_trn_runtime.suite"
#: Where the suite writes inside the container; mounted from the node's work directory.
CONTAINER_RESULTS_DIR = "/results"
#: Label on every acceptance container, so that a later run finds one a stopped run left behind.
CONTAINER_LABEL = "cdk-trn-acceptance=1"

_INT = "^[0-9]{1,6}$"

#: name -> (description, allowedPattern). Every value is a string (Run Command's only type here).
DOCUMENT_PARAMETERS: dict[str, tuple[str, str]] = {
    "ImageUri": (
        "Image of the acceptance suite (ECR repository URI with tag or digest)",
        r"^[a-z0-9.-]+(:[0-9]+)?/[a-z0-9._/-]+(:[A-Za-z0-9._-]{1,128}|@sha256:[a-f0-9]{64})$",
    ),
    "Region": (
        "Region of the image registry and the results bucket",
        r"^[a-z]{2}(-[a-z]+)+-[0-9]$",
    ),
    "RunId": (
        "Run id: S3 prefix, torchrun rendezvous id, container name",
        r"^[a-z0-9][a-z0-9-]{0,62}$",
    ),
    "NodeRank": ("Rank of this node (0 hosts the rendezvous)", _INT),
    "LocalAddress": (
        "Private IPv4 address of this node (orders the c10d rendezvous)",
        r"^[0-9]{1,3}(\.[0-9]{1,3}){3}$",
    ),
    "Nodes": ("Number of nodes in the run", _INT),
    "ProcsPerNode": ("Worker processes per node", _INT),
    "RendezvousHost": ("Private IPv4 address of node 0", r"^[0-9]{1,3}(\.[0-9]{1,3}){3}$"),
    "RendezvousPort": ("TCP port of the torchrun c10d rendezvous on node 0", _INT),
    "NeuronCommPort": ("TCP port of NEURON_RT_ROOT_COMM_ID on node 0", _INT),
    "ResultsUri": (
        "s3:// prefix of the run; this node uploads to <ResultsUri><NodeRank>/",
        r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/[A-Za-z0-9_./-]*/$",
    ),
    "CompileCacheDir": (
        "Persistent Neuron compile cache directory on the node (FSx when mounted)",
        r"^/[A-Za-z0-9._/-]{1,255}$",
    ),
    "ExpectedNeuronDevices": ("Neuron devices (/dev/neuron*) the node must have", _INT),
    "ExpectedEfaDevices": ("EFA devices (/dev/infiniband/uverbs*) the node must have", _INT),
    "SuiteArgs": (
        "Extra arguments of 'cdk_trn_runtime.suite run' (peaks, thresholds, sizes)",
        r"^[A-Za-z0-9 ._=,:/-]{0,2000}$",
    ),
    "ExecutionTimeout": ("Seconds before the node's run is stopped", _INT),
}


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


def document_content() -> dict[str, Any]:
    """Content of the Command document (schemaVersion 2.2, one aws:runShellScript step)."""
    return {
        "schemaVersion": "2.2",
        "description": "cdk-trn: run the Neuron acceptance suite on one node of the training "
        "cluster under torchrun, and upload its results to S3.",
        "parameters": {
            name: {"type": "String", "description": description, "allowedPattern": pattern}
            for name, (description, pattern) in DOCUMENT_PARAMETERS.items()
        },
        "mainSteps": [
            {
                "action": "aws:runShellScript",
                "name": "runAcceptanceSuite",
                "precondition": {"StringEquals": ["platformType", "Linux"]},
                "inputs": {
                    "runCommand": acceptance_script().splitlines(),
                    "timeoutSeconds": "{{ ExecutionTimeout }}",
                },
            }
        ],
    }


def acceptance_document(scope: Construct, id: str) -> ssm.CfnDocument:
    """The document as a stack resource. L1: there is no L2 for SSM documents.

    Unnamed, so CloudFormation names it and replaces it (under a new name, which the handler
    treats as a changed run) when the content changes.
    """
    return ssm.CfnDocument(
        scope,
        id,
        content=document_content(),
        document_type="Command",
        document_format="JSON",
        target_type="/AWS::EC2::Instance",
    )
