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

_SCRIPT = r"""#!/bin/bash
[ -n "${BASH_VERSION:-}" ] || exec /bin/bash "$0" "$@"
set -euo pipefail
shopt -s nullglob

IMAGE_URI='{{ ImageUri }}'
REGION='{{ Region }}'
RUN_ID='{{ RunId }}'
NODE_RANK='{{ NodeRank }}'
LOCAL_ADDR='{{ LocalAddress }}'
NODES='{{ Nodes }}'
PROCS_PER_NODE='{{ ProcsPerNode }}'
RDZV_HOST='{{ RendezvousHost }}'
RDZV_PORT='{{ RendezvousPort }}'
COMM_PORT='{{ NeuronCommPort }}'
RESULTS_URI='{{ ResultsUri }}'
CACHE_DIR='{{ CompileCacheDir }}'
EXPECTED_NEURON='{{ ExpectedNeuronDevices }}'
EXPECTED_EFA='{{ ExpectedEfaDevices }}'
SUITE_ARGS='{{ SuiteArgs }}'

OUT_DIR="${CDK_TRN_ACCEPTANCE_ROOT:-/var/lib/cdk-trn/acceptance}/${RUN_ID}/${NODE_RANK}"
LOG_FILE="${OUT_DIR}/node-${NODE_RANK}.log"
DEST="${RESULTS_URI}${NODE_RANK}/"
mkdir -p "${OUT_DIR}" "${CACHE_DIR}"
: > "${LOG_FILE}"

log() { echo "cdk-trn acceptance node ${NODE_RANK}: $*" | tee -a "${LOG_FILE}" >&2; }

# A run that Run Command timed out or cancelled can leave its container running, holding the
# Neuron devices; no acceptance container may outlive its run.
leftover="$(docker ps -aq --filter label=__CONTAINER_LABEL__)"
if [ -n "${leftover}" ]; then
  log "removing containers left by an earlier run: ${leftover//$'\n'/ }"
  echo "${leftover}" | xargs -r docker rm -f >/dev/null
fi

CONTAINER=""
remove_container() {
  if [ -n "${CONTAINER}" ]; then docker rm --force "${CONTAINER}" >/dev/null 2>&1 || true; fi
}
upload_results() {
  aws s3 cp --region "${REGION}" --recursive --only-show-errors "${OUT_DIR}/" "${DEST}" \
    || echo "cdk-trn acceptance node ${NODE_RANK}: upload to ${DEST} failed" >&2
}
finish() {
  remove_container
  upload_results
}
# The container goes and the results (and the log) are uploaded whatever the outcome; the script
# keeps its exit status. TERM/INT (a cancel or timeout) exit through the same EXIT trap.
trap finish EXIT
trap 'log "stopped by a signal"; exit 143' TERM INT

neuron_devices=(/dev/neuron[0-9]*)
efa_devices=(/dev/infiniband/uverbs[0-9]*)
if [ "${#neuron_devices[@]}" -ne "${EXPECTED_NEURON}" ]; then
  log "found ${#neuron_devices[@]} Neuron devices, expected ${EXPECTED_NEURON}"
  exit 3
fi
if [ "${#efa_devices[@]}" -ne "${EXPECTED_EFA}" ]; then
  log "found ${#efa_devices[@]} EFA devices, expected ${EXPECTED_EFA}"
  exit 3
fi
device_args=()
efa_env=()
if [ "${EXPECTED_EFA}" -gt 0 ]; then
  efa_env=(--env FI_PROVIDER=efa --env FI_EFA_USE_DEVICE_RDMA=1 --env FI_EFA_FORK_SAFE=1)
fi
for device in "${neuron_devices[@]}" /dev/infiniband/*; do
  if [ -c "${device}" ]; then device_args+=(--device "${device}"); fi
done

REGISTRY="${IMAGE_URI%%/*}"
case "${REGISTRY}" in
  *.dkr.ecr.*)
    aws ecr get-login-password --region "${REGION}" \
      | docker login --username AWS --password-stdin "${REGISTRY}" >/dev/null
    ;;
esac
docker pull --quiet "${IMAGE_URI}" >>"${LOG_FILE}"
case "${REGISTRY}" in *.dkr.ecr.*) docker logout "${REGISTRY}" >/dev/null || true ;; esac

CONTAINER="cdk-trn-acceptance-${RUN_ID}-${NODE_RANK}"
remove_container
log "starting ${IMAGE_URI}: ${NODES} nodes x ${PROCS_PER_NODE} processes," \
  "rendezvous ${RDZV_HOST}:${RDZV_PORT}"
status=0
# SUITE_ARGS is a word list, left unquoted on purpose; its allowedPattern excludes globs, quotes
# and every other shell metacharacter.
# shellcheck disable=SC2086
# The node's own environment (EFA, logical NeuronCore config, UltraServer ids) from its bootstrap.
node_env=()
if [ -r /etc/cdk-trn/env ]; then node_env=(--env-file /etc/cdk-trn/env); fi
# In the background, so that a TERM interrupts `wait` and the trap removes the container at once.
docker run --rm --name "${CONTAINER}" --label __CONTAINER_LABEL__ \
  --network host --ipc host --cap-add IPC_LOCK \
  --ulimit memlock=-1:-1 --ulimit nofile=65536:65536 \
  "${device_args[@]}" \
  "${node_env[@]}" \
  --volume "${OUT_DIR}:__RESULTS_DIR__" \
  --volume "${CACHE_DIR}:${CACHE_DIR}" \
  "${efa_env[@]}" \
  --env NEURON_RT_ROOT_COMM_ID="${RDZV_HOST}:${COMM_PORT}" \
  --env NEURON_COMPILE_CACHE_URL="${CACHE_DIR}" \
  --entrypoint torchrun \
  "${IMAGE_URI}" \
  --nnodes "${NODES}" --nproc-per-node "${PROCS_PER_NODE}" --node-rank "${NODE_RANK}" \
  --rdzv-backend c10d --rdzv-endpoint "${RDZV_HOST}:${RDZV_PORT}" --rdzv-id "${RUN_ID}" \
  --local-addr "${LOCAL_ADDR}" \
  -m __SUITE_MODULE__ run --out-dir __RESULTS_DIR__ --run-id "${RUN_ID}" \
  --node "${LOCAL_ADDR}" --cache-dir "${CACHE_DIR}" \
  ${SUITE_ARGS} \
  >>"${LOG_FILE}" 2>&1 &
wait "$!" || status=$?
# Run Command keeps about 24,000 characters of output; the whole log goes to S3. On failure the
# tail goes to stderr, where the handler takes the reason from.
if [ "${status}" -ne 0 ]; then
  tail -n 25 "${LOG_FILE}" >&2
  log "the suite exited with status ${status}; log: ${DEST}node-${NODE_RANK}.log"
else
  tail -n 40 "${LOG_FILE}"
fi
exit "${status}"
"""


def acceptance_script() -> str:
    """The node script, with ``{{ Parameter }}`` placeholders for Run Command to fill."""
    return (
        _SCRIPT.replace("__RESULTS_DIR__", CONTAINER_RESULTS_DIR)
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
