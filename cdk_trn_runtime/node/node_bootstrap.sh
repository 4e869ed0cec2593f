# cdk-trn node bootstrap. Runs once at first boot (cloud-init user data), after the variables
# CDK_TRN_* that the TrainiumCluster construct writes above this line.
#
# The node signals SUCCESS to its Auto Scaling group's creation policy only after it has
# verified itself: the catalog's Neuron device count, the catalog's EFA device count, Docker, the
# FSx for Lustre mount (when configured) and, on UltraServers, its server and node ids. Any failed
# check signals FAILURE at once (the deploy fails fast) and the reason goes to the journal and the
# serial console (`aws ec2 get-console-output`).
set -Eeuo pipefail

# Tests only (tests/foundation/test_node_bootstrap_run.py): a directory that stands in for / and
# a shorter device wait. Both unset on a node, where every path and wait is the real one.
ROOT="${NODE_BOOTSTRAP_TEST_ROOT:-}"
DEVICE_WAIT_SECONDS="${NODE_BOOTSTRAP_TEST_WAIT_SECONDS:-300}"

LOG_TAG=cdk-trn-bootstrap
ENV_FILE="$ROOT/etc/cdk-trn/env"

log() { echo "[$LOG_TAG] $*" | tee -a "$ROOT/dev/console" | logger -t "$LOG_TAG" || true; }

imds() {
  local token
  token=$(curl -fsS -X PUT -H "X-aws-ec2-metadata-token-ttl-seconds: 300" \
    http://169.254.169.254/latest/api/token)
  curl -fsS -H "X-aws-ec2-metadata-token: $token" "http://169.254.169.254/latest/meta-data/$1"
}

INSTANCE_ID=$(imds instance-id)

signal() {
  aws cloudformation signal-resource --region "$CDK_TRN_REGION" \
    --stack-name "$CDK_TRN_STACK" --logical-resource-id "$CDK_TRN_RESOURCE" \
    --unique-id "$INSTANCE_ID" --status "$1"
}

fail() {
  log "FAILED on $INSTANCE_ID: $*"
  signal FAILURE || log "could not send the FAILURE signal"
  exit 1
}
# set -E hands this trap to command substitutions too: only the main shell fails (and signals),
# once, when the substitution's non-zero status reaches it.
trap '[ "$BASH_SUBSHELL" -eq 0 ] && fail "unexpected error at line $LINENO"' ERR

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

install_packages() {
  case "$CDK_TRN_NODE_OS" in
    # Only AL2023's own repositories are reachable (S3 gateway endpoint); repositories the AMI
    # adds (Neuron, EFA) are skipped rather than failing the install.
    amazon-linux-2023) dnf install -y --setopt='*.skip_if_unavailable=True' "$@" ;;
    # Ubuntu mirrors are not reachable without NAT egress; everything must be on the AMI.
    ubuntu-24.04) apt-get install -y --no-download "$@" ;;
  esac
}

check_neuron() {
  local got
  if ! got=$(wait_for_count "$DEVICE_WAIT_SECONDS" "$ROOT/dev/neuron[0-9]*" "$CDK_TRN_EXPECTED_NEURON_DEVICES"); then
    fail "expected $CDK_TRN_EXPECTED_NEURON_DEVICES Neuron devices (/dev/neuron*), found $got"
  fi
  log "Neuron devices: $CDK_TRN_EXPECTED_NEURON_DEVICES"
}

check_efa() {
  local got
  [ "$CDK_TRN_EXPECTED_EFA_DEVICES" -eq 0 ] && { log "no EFA on this instance type"; return; }
  if ! got=$(wait_for_count "$DEVICE_WAIT_SECONDS" "$ROOT/sys/class/infiniband/*" "$CDK_TRN_EXPECTED_EFA_DEVICES"); then
    fail "expected $CDK_TRN_EXPECTED_EFA_DEVICES EFA devices (/sys/class/infiniband), found $got"
  fi
  if command -v fi_info >/dev/null && ! fi_info -p efa -t FI_EP_RDM >/dev/null; then
    fail "libfabric does not offer the efa provider (fi_info -p efa)"
  fi
  log "EFA devices: $CDK_TRN_EXPECTED_EFA_DEVICES"
}

check_docker() {
  # Ubuntu's package named "docker" is a KDE system-tray tool; its Docker engine is docker.io.
  local package=docker
  [ "$CDK_TRN_NODE_OS" = ubuntu-24.04 ] && package=docker.io
  command -v docker >/dev/null || install_packages "$package" || fail "docker is not installed and could not be installed"
  systemctl enable --now docker || fail "docker did not start"
}

install_lustre_client() {
  modinfo lustre >/dev/null 2>&1 && return 0
  case "$CDK_TRN_NODE_OS" in
    # AL2023 ships the client in its own repositories (S3 buckets: the gateway endpoint serves them).
    amazon-linux-2023) install_packages lustre-client ;;
    # The FSx Ubuntu repository is not reachable through VPC endpoints: bake the client into the
    # AMI or opt into NAT egress (FACTS.md "Air-gapped nodes").
    ubuntu-24.04) apt-get install -y "lustre-client-modules-$(uname -r)" ;;
  esac
}

# EFA-enabled FSx: LNet must use the kefalnd driver over the node's EFA devices before the mount
# (EKS user guide, "FSx for Lustre with EFA"; needs the efa kernel module >= 2.12.1).
configure_lustre_efa() {
  local eth dev
  eth=$(ip -br -4 addr show | awk -v ip="$(hostname -i | awk '{print $1}')/" 'index($3, ip) == 1 {print $1}')
  [ -n "$eth" ] || fail "could not find the primary interface for LNet"
  { modprobe lnet && modprobe kefalnd ipif_name="$eth" && modprobe ksocklnd; } || fail "LNet EFA modules did not load"
  lnetctl lnet configure
  lnetctl net del --net tcp 2>/dev/null || true
  lnetctl net add --net tcp --if "$eth"
  for dev in "$ROOT"/sys/class/infiniband/*; do
    lnetctl net add --net efa --if "$(basename "$dev")" --peer-credits 32
  done
  lnetctl set discovery 1
  lnetctl udsp add --src efa --priority 0
  modprobe lustre
  log "LNet configured over EFA"
}

mount_fsx() {
  [ -z "$CDK_TRN_FSX_DNS" ] && { log "no FSx for Lustre file system configured"; return; }
  install_lustre_client || fail "the Lustre client is not on the AMI and could not be installed"
  [ "$CDK_TRN_FSX_EFA" = "1" ] && configure_lustre_efa
  local mnt="$ROOT$CDK_TRN_FSX_MOUNT_PATH"
  mkdir -p "$mnt"
  local source="$CDK_TRN_FSX_DNS@tcp:/$CDK_TRN_FSX_MOUNT_NAME"
  grep -q " $mnt lustre " "$ROOT/etc/fstab" || echo \
    "$source $mnt lustre relatime,flock,_netdev,x-systemd.automount,x-systemd.requires=network-online.target 0 0" \
    >> "$ROOT/etc/fstab"
  systemctl daemon-reload
  local tries=0
  until mountpoint -q "$mnt" || mount "$mnt"; do
    tries=$((tries + 1)); [ $tries -ge 12 ] && fail "could not mount $source at $mnt"
    sleep 10
  done
  ls "$mnt" >/dev/null || fail "$mnt is mounted but not readable"
  log "FSx for Lustre mounted at $mnt"
}

write_environment() {
  mkdir -p "$ROOT/etc/cdk-trn" "$ROOT$CDK_TRN_COMPILE_CACHE"
  {
    echo "CDK_TRN_CLUSTER=$CDK_TRN_CLUSTER"
    echo "FI_PROVIDER=efa"
    echo "FI_EFA_USE_DEVICE_RDMA=1"
    echo "NEURON_LOGICAL_NC_CONFIG=$CDK_TRN_LOGICAL_NC"
    echo "NEURON_COMPILE_CACHE_URL=$CDK_TRN_COMPILE_CACHE"
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
    log "UltraServer $server node $node"
  fi
  chmod 0644 "$ENV_FILE"
  # KEY=VALUE lines serve docker --env-file and systemd EnvironmentFile; shells export them too.
  printf 'set -a\n. %s\nset +a\n' "$ENV_FILE" > "$ROOT/etc/profile.d/cdk-trn-env.sh"
}

log "bootstrapping $INSTANCE_ID for cluster $CDK_TRN_CLUSTER"
check_neuron
check_efa
check_docker
mount_fsx
write_environment
signal SUCCESS
log "node ready"
