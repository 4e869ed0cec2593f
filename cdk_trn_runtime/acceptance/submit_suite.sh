#!/bin/bash
# cdk-trn acceptance on a Slurm cluster: submit the suite as one Slurm job from the controller,
# wait for it, upload its results. The body of the SSM Command document that
# cdk_trn/acceptance/document.py defines for clusters with a SlurmScheduler; it runs as root on the
# controller instance, and every Slurm command runs in the controller's container as the job user
# (docker exec -u), exactly as `cdk-trn submit` does. Run Command substitutes the double-brace
# parameter placeholders (each has an allowedPattern, which keeps a value from becoming shell
# code); document.py replaces the double-underscore markers at synth (the job script, base64).
#
# The job (cdk_trn_runtime/acceptance/acceptance.sbatch) writes its results to the shared file
# system under RunsDir/RunId/results/<node index>/; this script uploads them to
# ResultsUri<node index>/, so the results have the same layout as the SSM launcher's.
# With NodeList the job runs on exactly the nodes whose addresses <ResultsUri><NodeList>.addresses
# lists, one a line (after an image refresh: the nodes on the current launch template); every one
# must be idle in Slurm (a powered-down idle node counts: Slurm resumes it for the job).
# Exit status: 0 the job COMPLETED; 69 the controller container is not running; 70 sbatch
# failed; 71 the job would wait behind users' jobs (never queued: fewer than Nodes idle nodes, a
# node of NodeList running a job, or still pending for lack of nodes after BUSY_SECONDS;
# cancelled); 72 a node of NodeList is not in Slurm yet or not idle for another reason (a
# successor still booting: the handler tries again); 124 the job did not end before the deadline
# (cancelled); 1 the job ended otherwise; 2 a list could not be read or the report written.
#
# After the job the job's nodes, as Slurm allocated them (squeue -t all, as Slurm's admin), are
# written by address, one a line, to <ResultsUri>__RUN_NODES_KEY__ (S3: a thousand addresses would
# crowd the job's log out of this command's output). The handler replaces a node below threshold
# only if it is among them: the results are written by the job user, so any job of that user can
# change them. The upload of the job's results leaves out control/, so no file the job writes can
# stand in for that list or a drain report.
#
# With DrainList nothing runs: acceptance jobs an earlier run left are cancelled (they are no
# user's), then the nodes whose addresses <ResultsUri><DrainList>.addresses lists are drained
# (DrainFor: replace, below threshold; refresh, an image refresh; refresh-if-idle, the same but
# only when one of them is idle; refresh-by-reaper, every one for the controller's reaper to
# replace) and each node's state and jobs after the drain are written, one line
# `cdk-trn refresh: <address> <node> <state> <job ids or ->` each, to
# <ResultsUri><DrainList>.report for the handler (S3, not this command's output, which SSM cuts
# at 24,000 characters). For a refresh, a node running a job is drained only when the installed
# reaper has the refresh rule (its marker line, __REAPER_REFRESH_MARKER__): else no one would
# replace it when its jobs end, so only idle nodes are drained (none with refresh-by-reaper) and
# the report says `__REPORT_NO_REAPER_RULE__`.
[ -n "${BASH_VERSION:-}" ] || exec /bin/bash "$0" "$@"
set -euo pipefail

REGION='{{ Region }}'
RUN_ID='{{ RunId }}'
NODES='{{ Nodes }}'
PROCS_PER_NODE='{{ ProcsPerNode }}'
PARTITION='{{ Partition }}'
JOB_USER='{{ JobUser }}'
CONTAINER='{{ ControllerContainer }}'
RUNS_DIR='{{ RunsDir }}'
RDZV_PORT='{{ RendezvousPort }}'
COMM_PORT='{{ NeuronCommPort }}'
RESULTS_URI='{{ ResultsUri }}'
CACHE_DIR='{{ CompileCacheDir }}'
EXPECTED_NEURON='{{ ExpectedNeuronDevices }}'
EXPECTED_EFA='{{ ExpectedEfaDevices }}'
SUITE_ARGS='{{ SuiteArgs }}'
TIMEOUT='{{ ExecutionTimeout }}'
DRAIN_LIST='{{ DrainList }}'
DRAIN_FOR='{{ DrainFor }}'
NODE_LIST='{{ NodeList }}'
POLL_SECONDS="${CDK_TRN_ACCEPTANCE_POLL_SECONDS:-15}"
BUSY_SECONDS="${CDK_TRN_ACCEPTANCE_BUSY_SECONDS:-120}"
BUSY_EXIT=__BUSY_EXIT__
NOT_READY_EXIT=__NOT_READY_EXIT__
REFRESH_REASON='__REFRESH_REASON__'
JOB_NAME=cdk-trn-acceptance
REAPER_UNIT="${CDK_TRN_REAPER_UNIT:-__REAPER_UNIT__}"

started=$(date +%s)
# Our own deadline comes before Run Command's (which kills without a trap), so that a job that
# waits or runs too long is cancelled, its partial results uploaded and the reason reported.
deadline=$((started + TIMEOUT - 90))
RUN_DIR="${RUNS_DIR}/${RUN_ID}"
OUT_DIR="${RUN_DIR}/results"
SCRIPT="${RUN_DIR}/acceptance.sbatch"

log() { echo "cdk-trn acceptance: $*" >&2; }
slurm() { docker exec -u "$JOB_USER" -w / "$CONTAINER" "$@"; }

# (docker ps, not docker inspect --format: Run Command would read its braces as a parameter.)
running=$(docker ps -q --filter "name=^${CONTAINER}\$" --filter status=running 2>/dev/null || true)
if [ -z "$running" ]; then
  log "the Slurm controller container $CONTAINER is not running on this instance" \
    "(see: docker ps -a; journalctl -u docker)"
  exit 69
fi

# A list the handler wrote under the run's prefix (one address a line), as words.
read_list() {
  local text
  text=$(aws s3 cp --region "$REGION" --only-show-errors "${RESULTS_URI}$1__LIST_SUFFIX__" -) || return 1
  grep -E '^[0-9]{1,3}(\.[0-9]{1,3}){3}$' <<<"$text" || true
}

# A run that an earlier deploy gave up on may still hold the nodes; it is no user's job either,
# so it must not count as one in a refresh report (cancelled before any drain).
leftover=$(slurm squeue -h --name="$JOB_NAME" --user="$JOB_USER" -o %i || true)
if [ -n "$leftover" ]; then
  log "cancelling acceptance jobs left by an earlier run: ${leftover//$'\n'/ }"
  slurm scancel --name="$JOB_NAME" --user="$JOB_USER" || true
  for _ in 1 2 3 4 5 6 7 8; do
    left=$(slurm squeue -h --name="$JOB_NAME" --user="$JOB_USER" -o %i 2>/dev/null || true)
    [ -n "$left" ] || break
    sleep "$POLL_SECONDS"
  done
fi

# A drain-only command: the handler is about to have these nodes replaced (below threshold, or
# on an earlier launch template after an image change), so no job may start on them meanwhile.
# As root in the controller's container (Slurm's admin).
if [ -n "$DRAIN_LIST" ]; then
  if ! addresses=$(read_list "$DRAIN_LIST") || [ -z "$addresses" ]; then
    log "no addresses to drain at ${RESULTS_URI}${DRAIN_LIST}__LIST_SUFFIX__"
    exit 2
  fi
  admin() { docker exec -u root -w / "$CONTAINER" "$@"; }
  # One listing (name, address, state) read into maps: a drain may name a thousand nodes.
  declare -A name_of=() state_of=()
  load_nodes() {
    local n a st
    name_of=() state_of=()
    while read -r n a st; do
      [ -n "$a" ] || continue
      name_of[$a]=$n
      state_of[$a]=$st
    done < <(admin sinfo -h -N -o '%N %o %T')
  }
  load_nodes
  # Idle (a powered-down idle node too): draining it ends no one's work.
  idle_at() { case "${state_of[$1]:-}" in idle | idle~) return 0 ;; *) return 1 ;; esac; }
  reason="cdk-trn acceptance: below threshold, being replaced"
  if [ "$DRAIN_FOR" != replace ]; then reason="$REFRESH_REASON"; fi
  # For a refresh, a busy node may be drained only when the installed reaper has the refresh
  # rule: else no one replaces it when its jobs end.
  rule=1
  if [ "$DRAIN_FOR" != replace ]; then
    reaper=$(sed -n 's|^ExecStart=[^ ]*bash \(/[^ ]*\).*|\1|p' "$REAPER_UNIT" 2>/dev/null || true)
    reaper=${reaper%%$'\n'*}
    if [ -z "$reaper" ] || ! grep -qxF '# __REAPER_REFRESH_MARKER__' "$reaper" 2>/dev/null; then
      rule=0
      log "the installed reaper (${reaper:-no $REAPER_UNIT}) has no image-refresh rule: busy" \
        "nodes are not drained (replace the controller, or drain them by hand)"
    fi
  fi
  drain=1
  if [ "$DRAIN_FOR" = refresh-if-idle ]; then
    # Drain none when none is idle: the deploy then fails, and a drain would only take busy
    # nodes from the users' next jobs.
    drain=0
    for addr in $addresses; do
      if idle_at "$addr"; then drain=1; fi
    done
  fi
  # A rollback's drain is for the reaper alone: without its rule, none.
  if [ "$DRAIN_FOR" = refresh-by-reaper ] && [ "$rule" = 0 ]; then drain=0; fi
  batch=()
  drain_batch() {
    [ "${#batch[@]}" -gt 0 ] || return 0
    local names
    names=$(IFS=,; echo "${batch[*]}")
    if admin scontrol update nodename="$names" state=drain reason="$reason"; then
      echo "cdk-trn acceptance: drained ${names}"
    else
      log "could not drain ${names}"
    fi
    batch=()
  }
  for addr in $addresses; do
    name=${name_of[$addr]:-}
    if [ -z "$name" ]; then
      log "no Slurm node at $addr to drain"
      continue
    fi
    if [ "$drain" = 1 ] && { [ "$rule" = 1 ] || idle_at "$addr"; }; then
      batch+=("$name")
      if [ "${#batch[@]}" -ge 64 ]; then drain_batch; fi
    fi
  done
  drain_batch
  # After the drain no new job can land on a drained node: what Slurm says now holds until the
  # node is replaced. Only a node that is drained (not draining) and has no job may be replaced
  # (a drained or idle node has none: Slurm is asked for the jobs of the others).
  load_nodes
  report=$(mktemp)
  if [ "$rule" = 0 ]; then echo '__REPORT_NO_REAPER_RULE__' >>"$report"; fi
  for addr in $addresses; do
    name=${name_of[$addr]:-}
    if [ -z "$name" ]; then
      echo "cdk-trn refresh: $addr - absent -" >>"$report"
      continue
    fi
    state=${state_of[$addr]:-unknown}
    jobs=""
    case "${state%[*~#!%\$@^-]}" in
      idle | drained) ;;
      *) jobs=$(admin squeue -h -w "$name" -o %i | paste -sd, -) ;;
    esac
    echo "cdk-trn refresh: $addr $name $state ${jobs:--}" >>"$report"
  done
  head -n 40 "$report"
  if ! aws s3 cp --region "$REGION" --only-show-errors "$report" \
    "${RESULTS_URI}${DRAIN_LIST}__REPORT_SUFFIX__"; then
    rm -f "$report"
    log "could not write the drain report to ${RESULTS_URI}${DRAIN_LIST}__REPORT_SUFFIX__"
    exit 2
  fi
  rm -f "$report"
  exit 0
fi

# Never queue behind users' jobs: an image change must not block on a busy cluster.
on_nodes=()
if [ -n "$NODE_LIST" ]; then
  if ! addresses=$(read_list "$NODE_LIST") || [ -z "$addresses" ]; then
    log "no node addresses at ${RESULTS_URI}${NODE_LIST}__LIST_SUFFIX__"
    exit 2
  fi
  listing=$(slurm sinfo -h -N -p "$PARTITION" -o '%N %o %T' 2>/dev/null || true)
  names=()
  busy=()
  waiting=()
  for addr in $addresses; do
    line=$(awk -v a="$addr" '$2 == a {print $1, $3; exit}' <<<"$listing")
    name=${line%% *}
    state=${line#* }
    case "$state" in
      '') waiting+=("$addr (not in Slurm yet)") ;;
      idle | idle~) names+=("$name") ;;
      allocated* | mixed* | completing*) busy+=("$name ($state)") ;;
      *) waiting+=("$name ($state)") ;;
    esac
  done
  if [ "${#busy[@]}" -gt 0 ]; then
    log "cluster busy: users' jobs hold ${busy[*]} of the run's nodes; the run does not queue" \
      "behind them"
    exit "$BUSY_EXIT"
  fi
  if [ "${#waiting[@]}" -gt 0 ]; then
    log "not ready: ${waiting[*]}"
    exit "$NOT_READY_EXIT"
  fi
  NODES=${#names[@]}
  on_nodes=(--nodelist "$(IFS=,; echo "${names[*]}")")
else
  idle=$(slurm sinfo -h -p "$PARTITION" -t idle -o %D 2>/dev/null | awk '{n += $1} END {print n + 0}')
  if [ "$idle" -lt "$NODES" ]; then
    log "cluster busy: $idle of the $NODES nodes the run needs are idle in partition $PARTITION" \
      "(users' jobs hold the others); the run does not queue behind them"
    exit "$BUSY_EXIT"
  fi
fi

slurm mkdir -p "$OUT_DIR"
# The job script, written by the job user onto the shared file system beside its results.
echo '__SBATCH_BASE64__' | docker exec -i -u "$JOB_USER" -w / "$CONTAINER" \
  sh -c 'base64 -d > "$1"' sh "$SCRIPT"

# The job's nodes by address, from Slurm (as its admin; squeue -t all still lists an ended job
# for MinJobAge), written to S3 for the handler: the only nodes a failure of this run may get
# replaced. Not this command's output, which SSM cuts at 24,000 characters.
report_run_nodes() {
  local admin=(docker exec -u root -w / "$CONTAINER") list names listing name addr found=() file
  list=$("${admin[@]}" squeue -h -t all -j "$JOB" -o %N 2>/dev/null | head -n 1 || true)
  if [ -n "$list" ] && names=$("${admin[@]}" scontrol show hostnames "$list" 2>/dev/null); then
    listing=$("${admin[@]}" sinfo -h -N -o '%N %o' 2>/dev/null || true)
    declare -A addr_of=()
    while read -r name addr _; do
      if [ -n "$addr" ]; then addr_of[$name]=$addr; fi
    done <<<"$listing"
    for name in $names; do
      addr=${addr_of[$name]:-}
      if [ -n "$addr" ]; then found+=("$addr"); fi
    done
  fi
  file=$(mktemp)
  if [ "${#found[@]}" -gt 0 ]; then printf '%s\n' "${found[@]}" >"$file"; fi
  if aws s3 cp --region "$REGION" --only-show-errors "$file" "${RESULTS_URI}__RUN_NODES_KEY__"; then
    echo "cdk-trn acceptance: job $JOB ran on ${#found[@]} nodes (${RESULTS_URI}__RUN_NODES_KEY__)"
  else
    log "could not write the job's nodes to ${RESULTS_URI}__RUN_NODES_KEY__: no node of this" \
      "run can be replaced"
  fi
  rm -f "$file"
}

JOB=""
finish() {
  local code=$?
  if [ -n "$JOB" ]; then
    # No-op when the job already ended; stops it when this script is stopped or gave up.
    slurm scancel "$JOB" >/dev/null 2>&1 || true
  fi
  if [ -d "$OUT_DIR" ]; then
    # Not control/: only this script writes there (the job's nodes, the drain reports).
    aws s3 cp --region "$REGION" --recursive --only-show-errors --no-follow-symlinks \
      --exclude '__CONTROL_DIR__*' "$OUT_DIR/" "$RESULTS_URI" \
      || log "upload of $OUT_DIR to $RESULTS_URI failed"
  fi
  if [ -n "$JOB" ] && [ -f "$RUN_DIR/slurm-$JOB.out" ]; then
    aws s3 cp --region "$REGION" --only-show-errors --no-follow-symlinks "$RUN_DIR/slurm-$JOB.out" \
      "${RESULTS_URI}slurm-$JOB.out" || true
  fi
  exit "$code"
}
trap finish EXIT
trap 'log "stopped by a signal"; exit 143' TERM INT

minutes=$(((TIMEOUT - 120) / 60))
if [ "$minutes" -lt 1 ]; then minutes=1; fi
# SUITE_ARGS is a word list, left unquoted on purpose; its allowedPattern excludes globs, quotes
# and every other shell metacharacter.
# shellcheck disable=SC2086
if ! submitted=$(docker exec -u "$JOB_USER" -w "$RUN_DIR" "$CONTAINER" \
  sbatch --parsable -N "$NODES" --exclusive --partition "$PARTITION" --job-name "$JOB_NAME" \
  "${on_nodes[@]}" --time "$minutes" --output "$RUN_DIR/slurm-%j.out" "$SCRIPT" \
  --run-id "$RUN_ID" --out-dir "$OUT_DIR" --procs-per-node "$PROCS_PER_NODE" \
  --rendezvous-port "$RDZV_PORT" --neuron-comm-port "$COMM_PORT" --cache-dir "$CACHE_DIR" \
  --expected-neuron-devices "$EXPECTED_NEURON" --expected-efa-devices "$EXPECTED_EFA" \
  -- ${SUITE_ARGS} 2>&1); then
  log "sbatch failed: ${submitted}"
  exit 70
fi
JOB=$(printf '%s\n' "$submitted" | tail -n 1)
JOB="${JOB%%;*}"
case "$JOB" in
  '' | *[!0-9]*) log "sbatch printed no job id: ${submitted}"; JOB=""; exit 70 ;;
esac
echo "cdk-trn acceptance: submitted Slurm job $JOB: $NODES nodes x $PROCS_PER_NODE processes," \
  "partition $PARTITION, results $OUT_DIR"

# squeue lists a job until it ended (no accounting database needed); scontrol then still knows
# its final state and exit code for MinJobAge (300 s by default), far longer than one poll.
last=""
while state=$(slurm squeue -h -j "$JOB" -o '%T %r' 2>/dev/null) && [ -n "$state" ]; do
  if [ "$state" != "$last" ]; then
    echo "cdk-trn acceptance: job $JOB $state after $(($(date +%s) - started)) s"
    last="$state"
  fi
  case "$state" in
    "PENDING Resources" | "PENDING Priority" | "PENDING ReqNodeNotAvail"*)
      if [ $(($(date +%s) - started)) -ge "$BUSY_SECONDS" ]; then
        log "cluster busy: Slurm job $JOB still $state after ${BUSY_SECONDS}s; cancelled, the" \
          "run does not queue behind users' jobs"
        exit "$BUSY_EXIT"
      fi
      ;;
  esac
  if [ "$(date +%s)" -ge "$deadline" ]; then
    report_run_nodes
    log "Slurm job $JOB still ${state} after $(($(date +%s) - started)) s; cancelled" \
      "(results so far: $RESULTS_URI)"
    exit 124
  fi
  sleep "$POLL_SECONDS"
done

report_run_nodes
info=$(slurm scontrol show job -o "$JOB" 2>/dev/null || true)
final=$(printf '%s\n' "$info" | sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p' | head -n 1)
exit_code=$(printf '%s\n' "$info" | sed -n 's/.* ExitCode=\([0-9:]*\).*/\1/p' | head -n 1)
job_log="$RUN_DIR/slurm-$JOB.out"
if [ "$final" = COMPLETED ]; then
  if [ -f "$job_log" ]; then tail -n 40 "$job_log"; fi
  exit 0
fi
# The reason first, then the job's own last lines: the handler reports the last telling line,
# which is the most specific one (the suite's FAILED line, torchrun's error, a device count).
log "Slurm job $JOB ended in state ${final:-unknown} with exit code ${exit_code:-unknown};" \
  "log: ${RESULTS_URI}slurm-$JOB.out"
if [ -f "$job_log" ]; then tail -n 25 "$job_log" >&2; fi
exit 1
