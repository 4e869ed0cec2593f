# cdk-trn Slurm node checks, sourced by healthcheck.sh, prolog.sh and epilog.sh.
#
# Reads the node environment file (contract.SLURM_NODE_ENV_FILE, or $CDK_TRN_SLURM_ENV):
#   CDK_TRN_EXPECTED_NEURON_DEVICES  /dev/neuron* the node must have (0: a CPU node)
#   CDK_TRN_EXPECTED_EFA_DEVICES     /sys/class/infiniband/* the node must have
#   CDK_TRN_SHARED_ROOT              the shared file system's mount path
#   CDK_TRN_SHARED_FS_TYPE           its type in /proc/mounts (lustre); empty: a writable directory
#   CDK_TRN_DEVICE_ROOT              prefix of /dev and /sys (the local cluster's fake device trees)
#   CDK_TRN_DEVICE_HOLDERS_ALLOWED   process names that may hold Neuron devices outside jobs
#   CDK_TRN_HOST_NODES               Slurm nodes that share this host (default: this node)
#   CDK_TRN_EPILOG_USER_SWEEP        1 (default): the epilog may kill all of the job user's
#                                    processes; 0 where the host is not the cluster's alone
#   SLURM_CONF                       slurm.conf for scontrol and squeue, when not the default
#   CDK_TRN_REPLACE_ON_HARDWARE_FAILURE  1 on the cloud (node_bootstrap.sh): a node drained for a
#                                    hardware reason also asks its Auto Scaling group to replace
#                                    it; unset on the local cluster
#   CDK_TRN_INSTANCE_ID, CDK_TRN_REGION  the instance to mark Unhealthy, and its region
# slurmd starts these scripts with an almost empty environment; system paths come last so
# test doubles earlier on PATH win.
PATH="${PATH:+$PATH:}/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
export PATH
# shellcheck source=../../contract/contract.sh
. "$(dirname "${BASH_SOURCE[0]}")/../../contract/contract.sh"

load_node_env() {
  local file="${CDK_TRN_SLURM_ENV:-$CONTRACT_SLURM_NODE_ENV_FILE}"
  if [ -r "$file" ]; then
    set -a
    # shellcheck disable=SC1090
    . "$file"
    set +a
  fi
  DEVICE_ROOT="${CDK_TRN_DEVICE_ROOT:-}"
  EXPECTED_NEURON="${CDK_TRN_EXPECTED_NEURON_DEVICES:-0}"
  EXPECTED_EFA="${CDK_TRN_EXPECTED_EFA_DEVICES:-0}"
  SHARED_ROOT="${CDK_TRN_SHARED_ROOT:-}"
  SHARED_FS_TYPE="${CDK_TRN_SHARED_FS_TYPE:-}"
  HOLDERS_ALLOWED="${CDK_TRN_DEVICE_HOLDERS_ALLOWED:-neuron-monitor}"
  NODE="${SLURMD_NODENAME:-$(hostname -s)}"
  HOST_NODES="${CDK_TRN_HOST_NODES:-$NODE}"
}

log() { echo "cdk-trn[$NODE]: $*" >&2; logger -t cdk-trn-slurm "$NODE: $*" 2>/dev/null || true; }

count_existing() {
  local n=0 f
  for f in "$@"; do [ -e "$f" ] && n=$((n + 1)); done
  echo "$n"
}

# Running or completing jobs on the nodes of this host, one id a line; fails when Slurm does not
# answer (the caller then does nothing it could regret).
# shellcheck disable=SC2120  # epilog.sh passes -u <user>
jobs_on_host() {
  local nodes
  nodes=$(echo "$HOST_NODES" | tr ' ' ',')
  squeue -h -w "$nodes" -t RUNNING,COMPLETING -o %A "$@"
}

job_of_pid() {
  tr '\0' '\n' < "/proc/$1/environ" 2>/dev/null | sed -n 's/^SLURM_JOB_ID=//p' | head -n1
}

# Pids with a file whose path starts with $1 open, from /proc (where fuser is not installed).
proc_holders() {
  local fd target
  for fd in /proc/[0-9]*/fd/*; do
    target=$(readlink "$fd" 2>/dev/null) || continue
    case "$target" in "$1"*)
      fd="${fd#/proc/}"
      echo "${fd%%/*}"
      ;;
    esac
  done | sort -u | tr '\n' ' '
}

# Processes holding a Neuron device that no running job on this host owns.
stale_device_holders() {
  local devices=("$DEVICE_ROOT"/dev/neuron[0-9]*) pids pid job name running stale=""
  [ -e "${devices[0]}" ] || return 0
  if command -v fuser > /dev/null; then
    pids=$(fuser "${devices[@]}" 2>/dev/null | tr -cs '0-9' ' ') || true
  else
    pids=$(proc_holders "$DEVICE_ROOT/dev/neuron")
  fi
  [ -n "${pids// /}" ] || return 0
  if ! running=$(jobs_on_host); then
    running=""
  fi
  for pid in $pids; do
    [ "$pid" = "$$" ] && continue
    name=$(cat "/proc/$pid/comm" 2>/dev/null) || continue
    case ",$HOLDERS_ALLOWED," in *",$name,"*) continue ;; esac
    job=$(job_of_pid "$pid")
    if [ -n "$job" ] && grep -qx "$job" <<< "$running"; then
      continue
    fi
    stale="$stale $pid($name)"
  done
  echo "${stale# }"
}

# The first problem of this node, as a drain reason, on stdout; nothing when healthy.
node_problem() {
  local neuron efa mounted probe stale
  neuron=$(count_existing "$DEVICE_ROOT"/dev/neuron[0-9]*)
  if [ "$neuron" -ne "$EXPECTED_NEURON" ]; then
    echo "neuron devices $neuron of $EXPECTED_NEURON"
    return
  fi
  efa=$(count_existing "$DEVICE_ROOT"/sys/class/infiniband/*)
  if [ "$efa" -ne "$EXPECTED_EFA" ]; then
    echo "efa devices $efa of $EXPECTED_EFA"
    return
  fi
  if [ -n "$SHARED_ROOT" ]; then
    if [ -n "$SHARED_FS_TYPE" ]; then
      mounted=$(awk -v m="$SHARED_ROOT" -v t="$SHARED_FS_TYPE" '$2 == m && $3 == t' /proc/mounts)
      if [ -z "$mounted" ]; then
        echo "shared fs $SHARED_ROOT not mounted as $SHARED_FS_TYPE"
        return
      fi
    fi
    if [ ! -d "$SHARED_ROOT" ]; then
      echo "shared fs $SHARED_ROOT missing"
      return
    fi
    probe="$SHARED_ROOT/.cdk-trn-health-$NODE-$$"
    if ! { : > "$probe" && rm -f "$probe"; } 2>/dev/null; then
      echo "shared fs $SHARED_ROOT not writable"
      return
    fi
  fi
  stale=$(stale_device_holders)
  if [ -n "$stale" ]; then
    echo "stale neuron device holders $stale"
    return
  fi
}

drain_node() {
  log "draining: $1"
  scontrol update nodename="$NODE" state=drain reason="$CONTRACT_SLURM_DRAIN_REASON_PREFIX $1"
}

# Hardware reasons: a Neuron or EFA device count below the catalog's. A new instance fixes these;
# it does not fix a shared file system that is down (every node would be replaced, and the new
# ones would fail the same check) nor a stale process (the epilog or an operator ends those).
is_hardware_problem() {
  case "$1" in "neuron devices "* | "efa devices "*) return 0 ;; esac
  return 1
}

# On the cloud, a node drained for a hardware reason marks its instance Unhealthy; its Auto
# Scaling group terminates and replaces it (the node role may do this for its own group only).
# The terminating node leaves Slurm (node_bootstrap.sh slurmd-leave); the new one registers as a
# dynamic node and takes jobs. Repeated on every failed check until the group acts (idempotent).
replace_if_hardware() {
  [ "${CDK_TRN_REPLACE_ON_HARDWARE_FAILURE:-0}" = 1 ] || return 0
  is_hardware_problem "$1" || return 0
  if [ -z "${CDK_TRN_INSTANCE_ID:-}" ]; then
    log "cannot request a replacement: CDK_TRN_INSTANCE_ID is not set"
    return 1
  fi
  log "hardware failure ($1): asking the Auto Scaling group to replace $CDK_TRN_INSTANCE_ID"
  if ! aws autoscaling set-instance-health ${CDK_TRN_REGION:+--region "$CDK_TRN_REGION"} \
    --instance-id "$CDK_TRN_INSTANCE_ID" --health-status Unhealthy \
    --no-should-respect-grace-period; then
    log "set-instance-health failed for $CDK_TRN_INSTANCE_ID; the next check tries again"
    return 1
  fi
}
