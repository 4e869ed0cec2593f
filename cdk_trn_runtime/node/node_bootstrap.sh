#!/bin/bash
# cdk-trn node bootstrap: the entry script of the node's boot bundle (bundle.py). The launcher
# (launcher.sh, the user data) runs it once at first boot from the root-only boot directory,
# whose boot.env holds the CDK_TRN_* variables the TrainiumCluster construct writes.
#
# The node signals SUCCESS to its Auto Scaling group's creation policy only after it has
# verified itself: the catalog's Neuron device count, the catalog's EFA device count, Docker, the
# FSx for Lustre mount (when configured), on UltraServers its server and node ids and, with a
# Slurm scheduler, that its slurmd registered with the controller. A check a new instance may
# pass (devices, the mount) has the group replace the node (fail_retryable, bounded); any other
# failed check signals FAILURE at once (the deploy fails fast). The reason goes to the journal,
# the serial console (`aws ec2 get-console-output`) and the cluster's boot log group in
# CloudWatch Logs.
#
# Subcommands (the systemd units from units/ run this script with one):
#   (none)              boot
#   slurmd-run          run slurmd in the training image in the foreground (cdk-trn-slurmd.service)
#   slurmd-leave        remove this node from Slurm, then stop slurmd (the unit's ExecStop)
#   resolve-controller  point the controller's name at its current address (a timer)
#   configure-lnet      LNet over EFA for an EFA-enabled FSx, at every later boot (a unit)
#   publish-metrics     NeuronCore, device memory and EFA metrics to CloudWatch (a timer)
BOOT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ENTRY="$BOOT_DIR/node_bootstrap.sh"
# shellcheck source=/dev/null  # boot.env: written by the launcher (or the tests, or the twin)
. "$BOOT_DIR/boot.env"
# shellcheck source=boot_common.sh
. "$BOOT_DIR/boot_common.sh"

# Tests only: a shorter wait for devices and registration.
DEVICE_WAIT_SECONDS="${NODE_BOOTSTRAP_TEST_WAIT_SECONDS:-300}"
SLURMD_CONTAINER=$CONTRACT_SLURM_NODE_CONTAINER
ULTRASERVER_ID=""

count_matches() {
  local n=0 f
  for f in $1; do [ -e "$f" ] && n=$((n + 1)); done
  echo "$n"
}

# Wait up to $1 seconds until the glob $2 matches $3 paths; print the last count on failure.
wait_for_count() {
  local deadline=$((SECONDS + $1)) got
  while :; do
    got=$(count_matches "$2")
    [ "$got" -eq "$3" ] && return 0
    [ "$SECONDS" -ge "$deadline" ] && { echo "$got"; return 1; }
    sleep 5
  done
}

check_neuron() {
  local got
  if ! got=$(wait_for_count "$DEVICE_WAIT_SECONDS" "$ROOT/dev/neuron[0-9]*" "$CDK_TRN_EXPECTED_NEURON_DEVICES"); then
    fail_retryable "expected $CDK_TRN_EXPECTED_NEURON_DEVICES Neuron devices (/dev/neuron*), found $got"
  fi
  log "Neuron devices: $CDK_TRN_EXPECTED_NEURON_DEVICES"
}

check_efa() {
  local got
  [ "$CDK_TRN_EXPECTED_EFA_DEVICES" -eq 0 ] && { log "no EFA on this instance type"; return; }
  if ! got=$(wait_for_count "$DEVICE_WAIT_SECONDS" "$ROOT/sys/class/infiniband/*" "$CDK_TRN_EXPECTED_EFA_DEVICES"); then
    fail_retryable "expected $CDK_TRN_EXPECTED_EFA_DEVICES EFA devices (/sys/class/infiniband), found $got"
  fi
  if command -v fi_info >/dev/null && ! fi_info -p efa -t FI_EP_RDM >/dev/null; then
    fail "libfabric does not offer the efa provider (fi_info -p efa)"
  fi
  log "EFA devices: $CDK_TRN_EXPECTED_EFA_DEVICES"
}

write_environment() {
  mkdir -p "$ROOT/etc/cdk-trn" "$ROOT$CDK_TRN_COMPILE_CACHE"
  {
    echo "CDK_TRN_CLUSTER=$CDK_TRN_CLUSTER"
    echo "FI_PROVIDER=efa"
    echo "FI_EFA_USE_DEVICE_RDMA=1"
    echo "NEURON_LOGICAL_NC_CONFIG=$CDK_TRN_LOGICAL_NC"
    echo "NEURON_COMPILE_CACHE_URL=$CDK_TRN_COMPILE_CACHE"
    # What the Slurm health check, prolog and epilog (cdk_trn_runtime/slurm/scripts) verify.
    echo "CDK_TRN_EXPECTED_NEURON_DEVICES=$CDK_TRN_EXPECTED_NEURON_DEVICES"
    echo "CDK_TRN_EXPECTED_EFA_DEVICES=$CDK_TRN_EXPECTED_EFA_DEVICES"
    echo "CDK_TRN_SHARED_ROOT=$CDK_TRN_FSX_MOUNT_PATH"
    echo "CDK_TRN_SHARED_FS_TYPE=${CDK_TRN_FSX_DNS:+lustre}"
    # A node drained for a hardware reason asks its Auto Scaling group to replace it.
    echo "CDK_TRN_REPLACE_ON_HARDWARE_FAILURE=1"
    echo "CDK_TRN_INSTANCE_ID=$INSTANCE_ID"
    echo "CDK_TRN_REGION=$CDK_TRN_REGION"
    echo "CDK_TRN_SIGNER_ROLE_ARN=$CDK_TRN_SIGNER_ROLE"
  } > "$ENV_FILE"
  if [ "$CDK_TRN_ULTRASERVER_SIZE" -gt 0 ]; then
    # The Neuron driver exposes the UltraServer topology in sysfs per node configuration
    # (4 = all four nodes); the EKS UltraServer init script reads the same files.
    local cfg=$CDK_TRN_ULTRASERVER_SIZE server node
    server=$(cat "$ROOT/sys/class/neuron_device/server_id_$cfg" 2>/dev/null || echo "")
    node=$(cat "$ROOT/sys/class/neuron_device/node_id_$cfg" 2>/dev/null || echo "-1")
    if [ -z "$server" ] || [ "$server" = "0000000000000000" ] || ! [[ $node =~ ^[0-9]+$ ]] || [ "$node" -ge "$cfg" ]; then
      fail "not part of a $cfg-node UltraServer (server_id='$server', node_id='$node')"
    fi
    {
      echo "NEURON_RT_ULTRASERVER_MODE=1"
      echo "NEURON_RT_ULTRASERVER_SERVER_ID=$server"
      echo "NEURON_RT_ULTRASERVER_NODE_ID=$node"
    } >> "$ENV_FILE"
    ULTRASERVER_ID=$server
    log "UltraServer $server node $node"
  fi
  chmod 0644 "$ENV_FILE"
  # KEY=VALUE lines serve docker --env-file and systemd EnvironmentFile; shells export them too.
  printf 'set -a\n. %s\nset +a\n' "$ENV_FILE" > "$ROOT/etc/profile.d/cdk-trn-env.sh"
}

# --- Slurm: a dynamic node (slurmd -Z) in the training image -----------------------------------

node_name() { hostname -s; }

slurm_features() {
  local features=$CDK_TRN_SLURM_FEATURES
  [ -n "$ULTRASERVER_ID" ] && features="$features,us-$ULTRASERVER_ID"
  echo "$features"
}

# slurmd -Z registers every byte of physical memory unless told otherwise: RealMemory keeps 5%
# for the OS, Docker and the daemons (the controller's cluster document uses the same 95%).
real_memory_mib() {
  awk '/^MemTotal:/ { printf "%d\n", $2 / 1024 * 0.95 }' "$ROOT/proc/meminfo"
}

# The node's Slurm identity, fixed at boot: its name, features (with its UltraServer id) and the
# memory it offers to jobs.
write_slurm_identity() {
  local memory
  memory=$(real_memory_mib)
  [[ $memory =~ ^[1-9][0-9]*$ ]] || fail "could not read MemTotal from /proc/meminfo"
  {
    printf 'NODE_NAME=%q\n' "$(node_name)"
    printf 'FEATURES=%q\n' "$(slurm_features)"
    printf 'REAL_MEMORY=%q\n' "$memory"
  } >"$ROOT/etc/cdk-trn/slurmd.conf"
}

slurmd_run() {
  local mnt=$CDK_TRN_FSX_MOUNT_PATH NODE_NAME FEATURES REAL_MEMORY
  # shellcheck source=/dev/null
  . "$ROOT/etc/cdk-trn/slurmd.conf"
  docker rm --force "$SLURMD_CONTAINER" >/dev/null 2>&1 || true
  # Host network and PID namespace, every Neuron and EFA device (privileged), the host's cgroups
  # for job containment, the shared file system (and its home/ as /home), the munge key; slurmd
  # with the checkpoint signing agent beside it (provenance/with_agent.sh).
  exec docker run --rm --name "$SLURMD_CONTAINER" \
    --network host --pid host --ipc host --privileged --cgroupns host \
    --ulimit memlock=-1:-1 --ulimit nofile=65536:65536 --ulimit stack=67108864:67108864 \
    --env-file "$ENV_FILE" \
    --volume "$ENV_FILE:$CONTRACT_SLURM_NODE_ENV_FILE:ro" \
    --volume /etc/hosts:/etc/hosts:ro \
    --volume "$MUNGE_KEY:/run/cdk-trn/munge.key:ro" \
    --volume "$mnt:$mnt:rshared" --volume "$mnt/home:/home" \
    --entrypoint /bin/bash "$CDK_TRN_SLURM_IMAGE" -c "$IN_CONTAINER" "$SLURMD_CONTAINER" \
    /opt/cdk-trn/cdk_trn_runtime/provenance/with_agent.sh slurmd -D -Z -N "$NODE_NAME" --conf-server "$SLURMCTLD_NAME:$CONTRACT_SLURMCTLD_PORT" --conf "RealMemory=$REAL_MEMORY Feature=$FEATURES"
}

# A terminating node leaves Slurm: EC2 shuts the OS down before it terminates an instance, and
# systemd stops cdk-trn-slurmd.service first (it is ordered after docker and the network). A node running a
# job cannot be deleted; it is marked DOWN instead, so the controller requeues the job at once
# rather than after SlurmdTimeout.
slurmd_leave() {
  local name state
  name=$(node_name)
  # Stopped by Slurm's power saving (idle scale-in: % powering down, ~ powered down): the node
  # keeps its record and comes back as itself when a job needs it.
  state=$(docker exec -u root -w / "$SLURMD_CONTAINER" sinfo -h -N -n "$name" -o %t 2>/dev/null || true)
  case "$state" in
    *[%~!]*)
      docker stop --time 60 "$SLURMD_CONTAINER" >/dev/null 2>&1 || true
      return 0
      ;;
  esac
  docker exec -u root -w / "$SLURMD_CONTAINER" scontrol delete nodename="$name" \
    || docker exec -u root -w / "$SLURMD_CONTAINER" scontrol update nodename="$name" state=down \
      reason="instance shutting down" \
    || true
  docker stop --time 60 "$SLURMD_CONTAINER" >/dev/null 2>&1 || true
}

# A replaced controller whose saved state predates this node's registration does not know the
# node and never contacts it: slurmd restarts and registers again (run by the address timer).
rejoin_if_unknown() {
  local out
  out=$(docker exec -u root -w / "$SLURMD_CONTAINER" scontrol show node "$(node_name)" 2>&1) && return 0
  [[ $out == *"not found"* ]] || return 0
  log "the controller does not know $(node_name): restarting slurmd to register again"
  systemctl restart cdk-trn-slurmd.service
}

wait_for_registration() {
  local name seconds=${NODE_BOOTSTRAP_TEST_WAIT_SECONDS:-$CDK_TRN_SLURM_REGISTER_SECONDS} out
  local deadline
  name=$(node_name)
  deadline=$((SECONDS + seconds))
  while :; do
    if out=$(docker exec -u root -w / "$SLURMD_CONTAINER" scontrol show node "$name" 2>&1) \
      && [[ $out == *"NodeName=$name "* ]] && [[ $out != *NOT_RESPONDING* ]] \
      && ! [[ $out =~ State=[A-Z_+]*(DOWN|DRAIN|FAIL) ]]; then
      log "slurmd registered as $name ($(slurm_features))"
      return 0
    fi
    [ "$SECONDS" -ge "$deadline" ] && \
      fail "slurmd did not register as $name with the controller ($SLURMCTLD_NAME) within ${seconds}s: ${out:-no answer}"
    sleep 10
  done
}

start_slurmd() {
  [ -z "$CDK_TRN_SLURM_IMAGE" ] && { log "no Slurm scheduler configured"; return; }
  [ -n "$CDK_TRN_FSX_MOUNT_PATH" ] || fail "Slurm needs the shared file system, none is configured"
  fetch_munge_key || fail "could not read the Slurm authentication key from Secrets Manager"
  local tries=0 address
  until address=$(resolve_controller); do
    tries=$((tries + 1))
    [ $tries -ge 60 ] && fail "no controller address in $CDK_TRN_SLURM_CONTROLLER_PARAMETER"
    sleep 10
  done
  log "Slurm controller at $address"
  pull_image "$CDK_TRN_SLURM_IMAGE" || fail "could not pull $CDK_TRN_SLURM_IMAGE"
  drv=$(docker run --rm --workdir / --entrypoint python "$CDK_TRN_SLURM_IMAGE" -P -m cdk_trn_runtime.container.driver_check 2>&1) || fail "$drv"; log "$drv"
  write_slurm_identity
  install_controller_watch
  install_unit cdk-trn-slurmd.service "ENTRY=$ENTRY"
  systemctl daemon-reload
  systemctl enable --now cdk-trn-slurmd.service || fail "cdk-trn-slurmd.service did not start"
  wait_for_registration
  install_metrics_timer || fail "could not start the metrics timer"
}

# torchrun's rendezvous ports (contract.RENDEZVOUS_PORTS) never go to ephemeral connections, so
# a job's c10d store can always bind its port; kept across reboots in sysctl.d.
reserve_rendezvous_ports() {
  mkdir -p "$ROOT/etc/sysctl.d"
  echo "net.ipv4.ip_local_reserved_ports = $CDK_TRN_RENDEZVOUS_PORTS" \
    >"$ROOT/etc/sysctl.d/90-cdk-trn-rendezvous.conf"
  sysctl -q -w "net.ipv4.ip_local_reserved_ports=$CDK_TRN_RENDEZVOUS_PORTS" \
    || fail "could not reserve the rendezvous ports $CDK_TRN_RENDEZVOUS_PORTS"
}

boot() {
  begin_boot
  guard_imds || fail "imds_guard.sh failed"
  log "bootstrapping $INSTANCE_ID for cluster $CDK_TRN_CLUSTER"
  check_neuron
  check_efa
  start_docker
  mount_fsx
  write_environment
  reserve_rendezvous_ports
  start_slurmd
  signal SUCCESS
  log "node ready"
}

case "${1:-}" in
  "") boot ;;
  slurmd-run) slurmd_run ;;
  slurmd-leave) slurmd_leave ;;
  resolve-controller) resolve_controller >/dev/null && rejoin_if_unknown ;;
  configure-lnet) configure_lustre_efa ;;
  publish-metrics) publish_metrics "$CONTRACT_METRICS_NAMESPACE_NODE" "$SLURMD_CONTAINER" node_metrics.sh ;;
  *) echo "usage: $0 [slurmd-run|slurmd-leave|resolve-controller|configure-lnet|publish-metrics]" >&2; exit 2 ;;
esac
