#!/bin/bash
# cdk-trn acceptance: run the Neuron acceptance suite on one node under torchrun, upload results.
# The body of the SSM Command document cdk_trn/acceptance/document.py defines (one
# aws:runShellScript step). Run Command substitutes the double-brace parameter placeholders below
# (every parameter has an allowedPattern, which is what keeps a value from becoming shell code);
# document.py replaces the double-underscore markers at synth with names the construct and the
# suite share.
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
# The node's own environment (EFA, logical NeuronCore config, UltraServer ids) from its bootstrap.
node_env=()
if [ -r /etc/cdk-trn/env ]; then node_env=(--env-file /etc/cdk-trn/env); fi
# In the background, so that a TERM interrupts `wait` and the trap removes the container at once.
# SUITE_ARGS is a word list, left unquoted on purpose; its allowedPattern excludes globs, quotes
# and every other shell metacharacter.
# shellcheck disable=SC2086
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
