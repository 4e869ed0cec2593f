# cdk-trn boot library: what the Trainium node (node_bootstrap.sh) and the Slurm controller
# (controller_bootstrap.sh) boot scripts share. Both ship in the role's boot bundle
# (cdk_trn_runtime/node/bundle.py) with this file, units.sh, the systemd units (units/) and, under
# src/cdk_trn_runtime/, the contract (contract/contract.sh) and the Python the boot runs; the
# launcher (launcher.sh, the user data) unpacks the bundle into a root-only directory and writes
# the CDK_TRN_* variables into its boot.env. The entry script sets BOOT_DIR and ENTRY and sources
# boot.env, then this file. The systemd units run the entry script from that directory with a
# subcommand (install_unit), so they run the same, shellchecked code as the boot.
# shellcheck disable=SC2034  # variables read by the instance scripts that source this file
set -Eeuo pipefail
# The launcher runs with umask 077 (its bundle directory and archive are root's alone); what the
# boot makes for others (the shared file system's home and Slurm directories, profile.d, units,
# slurm.conf) must be readable by them: 0755/0644 unless a mode is given. Secrets set their own
# (fetch_munge_key: umask 077).
umask 022

# Tests only (tests/cdk_trn_runtime/node/test_node_bootstrap.py): a directory that stands in for /.
# Unset on an instance, where every path is the real one.
ROOT="${NODE_BOOTSTRAP_TEST_ROOT:-}"

#: The bundle's copy of the runtime package: the contract and the Python modules the boot runs.
BUNDLE_SRC="$BOOT_DIR/src/cdk_trn_runtime"
# Every name both sides share (CONTRACT_*), rendered from cdk_trn_runtime/contract/__init__.py.
# shellcheck source=../contract/contract.sh
. "$BUNDLE_SRC/contract/contract.sh"

LOG_TAG=cdk-trn-bootstrap
ENV_FILE="$ROOT/etc/cdk-trn/env"
#: The name every Slurm daemon uses for the controller (SlurmctldAddr, slurmd --conf-server). It
#: resolves through /etc/hosts, which watch_controller keeps pointing at the controller's current
#: address (published in an SSM parameter), so a replaced controller is found again.
SLURMCTLD_NAME=$CONTRACT_SLURM_CONTROLLER_ADDR
#: The munge key, readable by root only; containers get it read-only and copy it for munged.
MUNGE_KEY="$ROOT/etc/cdk-trn/munge.key"
#: Runs inside the Slurm containers before the daemon: munged with the shared key, then the
#: daemon in the foreground ("$@").
# shellcheck disable=SC2016
IN_CONTAINER='install -o munge -g munge -m 0400 /run/cdk-trn/munge.key /etc/munge/munge.key'
IN_CONTAINER+=' && install -d -o munge -g munge -m 0755 /run/munge && runuser -u munge -- munged'
IN_CONTAINER+=' && exec "$@"'
INSTANCE_ID=""
# shellcheck source=units.sh
. "$BOOT_DIR/units.sh"
# shellcheck source=imds_guard.sh
. "$BOOT_DIR/imds_guard.sh"

# Run a Python module of the bundle (a path under src/cdk_trn_runtime/, e.g. node/cluster_spec.py)
# as root: a file run with -I, so neither PYTHON* variables, a user's site nor the working
# directory reach it; such a module imports the standard library only. (AL2023's python3 is 3.9,
# which has no -P for `python3 -m` from the bundle.)
bundle_python() {
  local module=$1
  shift
  python3 -I "$BUNDLE_SRC/$module" "$@"
}

# To stderr (the launcher sends the boot's output to the serial console and the boot log, the
# journal keeps a unit's) and to syslog. Never stdout: functions print their results there.
log() {
  echo "[$LOG_TAG] $*" >&2
  echo "[$LOG_TAG] $*" | logger -t "$LOG_TAG" || true
}

imds() {
  local token
  token=$(curl -fsS -X PUT -H "X-aws-ec2-metadata-token-ttl-seconds: 300" \
    http://169.254.169.254/latest/api/token)
  curl -fsS -H "X-aws-ec2-metadata-token: $token" "http://169.254.169.254/latest/meta-data/$1"
}

# Report to the Auto Scaling group's creation (or rolling update) policy. A resource that no
# longer waits for signals (the group is complete: this instance replaces a node, or the group
# grew later) refuses any signal with "... is in CREATE_COMPLETE state and cannot be signaled"
# (a ValidationError): nothing waits for this boot, so that is not a failure. Any other refusal is.
signal() {
  local out
  if out=$(aws cloudformation signal-resource --region "$CDK_TRN_REGION" \
    --stack-name "$CDK_TRN_STACK" --logical-resource-id "$CDK_TRN_RESOURCE" \
    --unique-id "$INSTANCE_ID" --status "$1" 2>&1); then
    return 0
  fi
  if [[ $out == *"state and cannot be signaled"* ]]; then
    log "signal $1 not sent: $CDK_TRN_RESOURCE no longer waits for signals (${out##*: })"
    return 0
  fi
  log "signal $1 refused: $out"
  return 1
}

fail() {
  log "FAILED on $INSTANCE_ID: $*"
  signal FAILURE || log "could not send the FAILURE signal"
  exit 1
}

# A failed check that a new instance may pass (its Neuron or EFA devices, the mount): no FAILURE
# signal, which fails the group's creation and rolls the whole cluster back; the node marks itself
# Unhealthy and its Auto Scaling group replaces it, and the successor signals for its own id.
# Bounded by the creation policy: only while another boot (CDK_TRN_BOOT_SECONDS) fits before the
# signal timeout counted from the group's creation (read by the group's CloudFormation tags), so
# a slot boots at most timeout / boot times (3 with 45 and 15 minutes); past that the FAILURE
# signal names the node and the reason. Past the timeout (a node launched after the creation)
# there is no policy to fail: always replaced.
fail_retryable() {
  local tag=Name=tag:aws:cloudformation created left
  log "$*"
  if ! created=$(aws autoscaling describe-auto-scaling-groups --region "$CDK_TRN_REGION" \
    --output text --query 'AutoScalingGroups[0].CreatedTime' \
    --filters "$tag:stack-name,Values=$CDK_TRN_STACK" "$tag:logical-id,Values=$CDK_TRN_RESOURCE") \
    || ! created=$(date -d "$created" +%s); then
    fail "$*; no group"
  fi
  # Seconds left before the creation policy's signal timeout; another boot must fit in them.
  left=$((created + CDK_TRN_SIGNAL_SECONDS - EPOCHSECONDS))
  if ((left > 0 && left <= CDK_TRN_BOOT_SECONDS)); then
    fail "$*; no time left"
  fi
  aws autoscaling set-instance-health --region "$CDK_TRN_REGION" --instance-id "$INSTANCE_ID" \
    --health-status Unhealthy --no-should-respect-grace-period \
    || fail "$*; could not mark this node Unhealthy"
  exit 1
}

# In the boot: fail (signal FAILURE). In a helper command run by systemd, which must never
# signal: log the reason and exit non-zero, so the unit fails with it in the journal.
fail_or_exit() {
  [ -n "$INSTANCE_ID" ] && fail "$*"
  log "$*"
  exit 1
}

# The boot, and only the boot, reports to the creation policy: the helper commands never signal.
begin_boot() {
  INSTANCE_ID=$(imds instance-id)
  # set -E hands this trap to functions and command substitutions too: only the main shell
  # fails (and signals), once, when the substitution's non-zero status reaches it. The trap runs
  # where the command failed: BASH_SOURCE and LINENO name the shipped file and its line.
  # shellcheck disable=SC2154  # BASH_COMMAND is bash's
  trap '[ "$BASH_SUBSHELL" -eq 0 ] && fail "unexpected error at ${BASH_SOURCE[0]##*/}:$LINENO: $BASH_COMMAND"' ERR
}

#: AL2023's own package repository (dnf's repo id; `dnf repolist` names it "Amazon Linux 2023
#: repository"). It is served from S3, which the VPC's gateway endpoint reaches.
AL2023_REPOSITORY=amazonlinux

install_packages() {
  case "$CDK_TRN_NODE_OS" in
    # In the isolated subnet only AL2023's own repository is reachable: every other repository
    # (the DLAMI adds Neuron and EFA ones) is disabled, so dnf neither waits on nor fails for it.
    amazon-linux-2023) dnf install -y --disablerepo='*' --enablerepo="$AL2023_REPOSITORY" "$@" ;;
    # Ubuntu mirrors are not reachable without NAT egress; everything must be on the AMI.
    ubuntu-24.04) apt-get install -y --no-download "$@" ;;
  esac
}

# The Lustre client is the kernel module and the tools: on AL2023 the module is in the kernel
# (`modinfo lustre` succeeds) while mount.lustre, lctl and lnetctl come from lustre-client.
lustre_tools_present() {
  local tool
  for tool in mount.lustre lctl lnetctl; do
    command -v "$tool" >/dev/null 2>&1 || return 1
  done
}

install_lustre_client() {
  modinfo lustre >/dev/null 2>&1 && lustre_tools_present && return 0
  case "$CDK_TRN_NODE_OS" in
    # AL2023 ships the client in its own repository.
    amazon-linux-2023) install_packages lustre-client || return 1 ;;
    # The FSx Ubuntu repository is not reachable through VPC endpoints: bake the client into the
    # AMI or opt into NAT egress (FACTS.md "Air-gapped nodes").
    ubuntu-24.04) apt-get install -y "lustre-client-modules-$(uname -r)" || return 1 ;;
  esac
  lustre_tools_present || { log "lustre-client installed, but mount.lustre, lctl or lnetctl is missing"; return 1; }
}

# EFA-enabled FSx: LNet must use the kefalnd driver over the node's EFA devices before the mount
# (EKS user guide, "FSx for Lustre with EFA"; needs the efa kernel module >= 2.12.1). LNet set
# up at runtime is gone after a reboot, so cdk-trn-lnet-efa.service redoes it before remote-fs
# (this function, through the helper's configure-lnet subcommand).
configure_lustre_efa() {
  local eth dev
  eth=$(ip -br -4 addr show | awk -v ip="$(hostname -i | awk '{print $1}')/" 'index($3, ip) == 1 {print $1}')
  [ -n "$eth" ] || fail_or_exit "could not find the primary interface for LNet"
  { modprobe lnet && modprobe kefalnd ipif_name="$eth" && modprobe ksocklnd; } || fail_or_exit "LNet EFA modules did not load"
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

#: The unit that redoes the EFA LNet setup at every later boot, before the Lustre mount.
LNET_EFA_UNIT=cdk-trn-lnet-efa.service

install_lnet_efa_unit() {
  install_unit "$LNET_EFA_UNIT" "ENTRY=$ENTRY"
  systemctl daemon-reload
  # Enabled for later boots only: this boot configures LNet itself, once.
  systemctl enable "$LNET_EFA_UNIT"
}

mount_fsx() {
  [ -z "$CDK_TRN_FSX_DNS" ] && { log "no FSx for Lustre file system configured"; return; }
  install_lustre_client || fail "the Lustre client (mount.lustre, lctl, lnetctl) is not on the AMI and could not be installed"
  local options="relatime,flock,_netdev,x-systemd.automount,x-systemd.requires=network-online.target"
  if [ "$CDK_TRN_FSX_EFA" = "1" ]; then
    configure_lustre_efa
    install_lnet_efa_unit
    options+=",x-systemd.requires=$LNET_EFA_UNIT"
  fi
  local mnt="$ROOT$CDK_TRN_FSX_MOUNT_PATH"
  mkdir -p "$mnt"
  local source="$CDK_TRN_FSX_DNS@tcp:/$CDK_TRN_FSX_MOUNT_NAME"
  grep -q " $mnt lustre " "$ROOT/etc/fstab" || echo "$source $mnt lustre $options 0 0" >> "$ROOT/etc/fstab"
  systemctl daemon-reload
  local tries=0
  until mountpoint -q "$mnt" || mount "$mnt"; do
    tries=$((tries + 1)); [ $tries -ge 12 ] && fail_retryable "could not mount $source at $mnt"
    sleep 10
  done
  ls "$mnt" >/dev/null || fail_retryable "$mnt is mounted but not readable"
  log "FSx for Lustre mounted at $mnt"
}

start_docker() {
  # Ubuntu's package named "docker" is a KDE system-tray tool; its Docker engine is docker.io.
  local package=docker
  [ "$CDK_TRN_NODE_OS" = ubuntu-24.04 ] && package=docker.io
  command -v docker >/dev/null || install_packages "$package" || fail "docker is not installed and could not be installed"
  systemctl enable --now docker || fail "docker did not start"
}

# The munge key from Secrets Manager (through its VPC endpoint), root-only from the first byte;
# it is never echoed, logged or passed on a command line.
fetch_munge_key() {
  mkdir -p "$(dirname "$MUNGE_KEY")"
  if ! (umask 077 && aws secretsmanager get-secret-value --region "$CDK_TRN_REGION" \
    --secret-id "$CDK_TRN_SLURM_KEY_SECRET" --query SecretString --output text >"$MUNGE_KEY.new"); then
    rm -f "$MUNGE_KEY.new"
    return 1
  fi
  mv -f "$MUNGE_KEY.new" "$MUNGE_KEY"
}

# Pull the Slurm image (from the bootstrap ECR repository through its VPC endpoints).
pull_image() {
  local image=$1 registry=${1%%/*} tries=0
  case "$registry" in
    *.dkr.ecr.*)
      aws ecr get-login-password --region "$CDK_TRN_REGION" \
        | docker login --username AWS --password-stdin "$registry" >/dev/null || return 1 ;;
  esac
  until docker pull --quiet "$image" >/dev/null; do
    tries=$((tries + 1)); [ $tries -ge 5 ] && return 1
    sleep 30
  done
}

# Point $SLURMCTLD_NAME at the address in the controller's SSM parameter. /etc/hosts is rewritten
# in place (same inode), so the containers that bind-mount it see the change at once. Prints the
# address; fails while the parameter holds no address yet.
resolve_controller() {
  local address hosts="$ROOT/etc/hosts" kept
  address=$(aws ssm get-parameter --region "$CDK_TRN_REGION" \
    --name "$CDK_TRN_SLURM_CONTROLLER_PARAMETER" --query Parameter.Value --output text) || return 1
  [[ $address =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ ]] || return 1
  touch "$hosts"
  if ! grep -qx "$address $SLURMCTLD_NAME" "$hosts"; then
    kept=$(grep -v " $SLURMCTLD_NAME\$" "$hosts" || true)
    printf '%s\n%s %s\n' "$kept" "$address" "$SLURMCTLD_NAME" | sed '/^$/d' >"$hosts.cdk-trn"
    cat "$hosts.cdk-trn" >"$hosts"
    rm -f "$hosts.cdk-trn"
  fi
  echo "$address"
}

# A timer re-resolves the controller every minute: slurmd looks the name up again for each
# connection, so nodes follow a replaced controller without restarting (and without losing jobs).
install_controller_watch() {
  install_unit cdk-trn-controller-address.service "ENTRY=$ENTRY"
  install_unit cdk-trn-controller-address.timer
  systemctl daemon-reload
  systemctl enable --now cdk-trn-controller-address.timer
}

# --- Metrics: every minute the collector in the Slurm container prints CloudWatch metric data
# (cdk_trn_runtime/monitoring/*.sh in the image) and the host publishes it under the cluster's
# name through the monitoring VPC endpoint. A collector with nothing to say publishes nothing.
IMAGE_MONITORING=/opt/cdk-trn/cdk_trn_runtime/monitoring

publish_metrics() { # namespace container collector
  local data
  data=$(docker exec -u root -w / "$2" "$IMAGE_MONITORING/$3" "$CDK_TRN_CLUSTER") && [ -n "$data" ] || return 0
  aws cloudwatch put-metric-data --region "$CDK_TRN_REGION" --namespace "$1" --metric-data "$data"
}

install_metrics_timer() {
  install_unit cdk-trn-metrics.service "ENTRY=$ENTRY"
  install_unit cdk-trn-metrics.timer
  systemctl daemon-reload
  systemctl enable --now cdk-trn-metrics.timer
}
