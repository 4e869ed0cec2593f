#!/bin/bash
# cdk-trn Slurm controller bootstrap: the entry script of the controller's boot bundle
# (bundle.py), run once at first boot by the launcher (launcher.sh, the user data) from the
# root-only boot directory, whose boot.env holds the CDK_TRN_* variables the SlurmScheduler
# construct writes. The controller is an Auto Scaling group of one, so a dead one is replaced.
#
# It mounts the shared file system (StateSaveLocation lives there, so a replacement resumes the
# queue), renders slurm.conf with the shared generator, starts slurmctld in the training image,
# publishes its address in an SSM parameter for the nodes, and signals SUCCESS only once
# `scontrol ping` answers. Any failure signals FAILURE with the reason.
#
# Subcommands (the systemd units from units/ run this script with one):
#   (none)              boot
#   slurmctld-run       run slurmctld in the training image in the foreground (a systemd unit)
#   resolve-controller  point the controller's name at its current address (a timer)
#   publish-metrics     Slurm node states and queue depth to CloudWatch (a timer)
BOOT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ENTRY="$BOOT_DIR/controller_bootstrap.sh"
# shellcheck source=/dev/null  # boot.env: written by the launcher (or the tests, or the twin)
. "$BOOT_DIR/boot.env"
# shellcheck source=boot_common.sh
. "$BOOT_DIR/boot_common.sh"
#   apply-document      re-read the cluster document's SSM parameter; restart or reconfigure (a timer)

CONTAINER=$CONTRACT_SLURM_CONTROLLER_CONTAINER
# The SlurmUser's uid in the training image (pinned by its Dockerfile): slurmctld runs
# ResumeProgram/SuspendProgram (power saving: botocore with the instance role) as that user, so
# instance metadata is root's and its.
SLURM_DAEMON_UID=$CONTRACT_SLURM_DAEMON_UID
SLURM_ETC="$ROOT/etc/cdk-trn/slurm"

# The cluster document (CDK_TRN_SLURM_SPEC, written at synth) plus what only the instance knows:
# its host name (SlurmctldHost) and the stable controller name (SlurmctldAddr).
write_cluster_document() {
  mkdir -p "$SLURM_ETC"
  bundle_python node/cluster_spec.py document "$CDK_TRN_SLURM_SPEC" "$(hostname -s)" \
    "$SLURMCTLD_NAME" >"$SLURM_ETC/cluster.json"
}

# slurm.conf from the shared generator (cdk_trn_runtime.slurm.config, shipped in the image), the
# same one the local cluster uses.
render_slurm_conf() {
  docker run --rm --network none --workdir / --volume "$SLURM_ETC:/etc/slurm" \
    --entrypoint python3 "$CDK_TRN_SLURM_IMAGE" -P -m cdk_trn_runtime.slurm.config \
    --spec /etc/slurm/cluster.json --output /etc/slurm/slurm.conf
}

# Directories the cluster keeps on the shared file system; the job user's home.
prepare_shared_directories() {
  local mnt="$ROOT$CDK_TRN_FSX_MOUNT_PATH" user uid
  local state="$mnt/$CONTRACT_SHARED_SLURM_STATE" logs="$mnt/$CONTRACT_SHARED_JOB_LOGS"
  local homes="$mnt/$CONTRACT_SHARED_HOMES" checkpoints="$mnt/$CONTRACT_SHARED_CHECKPOINTS"
  local cache="$mnt/$CONTRACT_SHARED_COMPILE_CACHE"
  user=$(bundle_python node/cluster_spec.py get "$CDK_TRN_SLURM_SPEC" job_user)
  uid=$(bundle_python node/cluster_spec.py get "$CDK_TRN_SLURM_SPEC" job_uid)
  mkdir -p "$state" "$logs" "$homes/$user" "$checkpoints" "$cache"
  chown "$uid:$uid" "$homes/$user" "$checkpoints" "$cache"
  # Explicit modes (whatever umask the boot inherited): the job user reaches its home through
  # home/, the SlurmUser its state and logs through slurm/; the state is the daemon's alone.
  chmod 0755 "$(dirname "$state")" "$(dirname "$logs")" "$homes" "$logs" "$homes/$user"
  chmod 0700 "$state"
}

slurmctld_run() {
  local mnt=$CDK_TRN_FSX_MOUNT_PATH
  docker rm --force "$CONTAINER" >/dev/null 2>&1 || true
  # The state and log directories belong to the SlurmUser the generated slurm.conf names.
  # shellcheck disable=SC2016
  local prepare='owner=$(sed -n "s/^SlurmUser=//p" /etc/slurm/slurm.conf); owner=${owner:-root}
chown -R "$owner" "$1" "$2"; shift 2; '"$IN_CONTAINER"
  exec docker run --rm --name "$CONTAINER" --network host --workdir / \
    --volume /etc/hosts:/etc/hosts:ro \
    --volume "$SLURM_ETC:/etc/slurm" \
    --volume "$MUNGE_KEY:/run/cdk-trn/munge.key:ro" \
    --volume "$mnt:$mnt" --volume "$mnt/home:/home" \
    --entrypoint /bin/bash "$CDK_TRN_SLURM_IMAGE" -c "$prepare" "$CONTAINER" \
    "$mnt/$CONTRACT_SHARED_SLURM_STATE" "$mnt/$CONTRACT_SHARED_JOB_LOGS" slurmctld -D
}

publish_address() {
  local address
  address=$(imds local-ipv4)
  aws ssm put-parameter --region "$CDK_TRN_REGION" --name "$CDK_TRN_SLURM_CONTROLLER_PARAMETER" \
    --type String --overwrite --value "$address" >/dev/null
  echo "$address"
}

wait_for_slurmctld() {
  local deadline=$((SECONDS + ${NODE_BOOTSTRAP_TEST_WAIT_SECONDS:-300})) out
  while :; do
    if out=$(docker exec -u root -w / "$CONTAINER" scontrol ping 2>&1) && [[ $out == *UP* ]]; then
      log "slurmctld answers: $out"
      return 0
    fi
    [ "$SECONDS" -ge "$deadline" ] && fail "slurmctld does not answer scontrol ping: ${out:-no answer}"
    sleep 10
  done
}

# --- Every deploy that changes the cluster document rewrites its SSM parameter (named in the
# document); a timer re-reads it and applies it: restart slurmctld for keys it reads only at start
# (MaxNodeCount among them), `scontrol reconfigure` otherwise (cdk_trn_runtime.slurm.apply).
apply_document() {
  local name new="$SLURM_ETC/document.json.new" action
  name=$(bundle_python node/cluster_spec.py get "$CDK_TRN_SLURM_SPEC" document_parameter "")
  [ -n "$name" ] || return 0
  aws ssm get-parameter --region "$CDK_TRN_REGION" --name "$name" --query Parameter.Value \
    --output text >"$new" || { rm -f "$new"; return 1; }
  mv -f "$new" "$SLURM_ETC/document.json"
  action=$(docker run --rm --network none --workdir / --volume "$SLURM_ETC:/etc/slurm" --entrypoint python3 \
    "$CDK_TRN_SLURM_IMAGE" -P -m cdk_trn_runtime.slurm.apply --document /etc/slurm/document.json \
    --conf /etc/slurm/slurm.conf --controller-host "$(hostname -s)" --controller-addr "$SLURMCTLD_NAME") || return 1
  case "$action" in
    restart) log "cluster document changed: restarting slurmctld"; systemctl restart cdk-trn-slurmctld.service ;;
    reconfigure) log "cluster document changed: scontrol reconfigure"; docker exec -u root -w / "$CONTAINER" scontrol reconfigure ;;
  esac
}

# The reaper (src/cdk_trn_runtime/slurm/scripts/reaper.sh of this bundle, units/cdk-trn-reaper.service) and the timer that applies
# the cluster document (units/cdk-trn-apply-document.*).
install_reaper() {
  install_unit cdk-trn-reaper.service "REGION=$CDK_TRN_REGION" "CLUSTER=$CDK_TRN_CLUSTER" \
    "CONTAINER=$CONTAINER" "REAPER=$BUNDLE_SRC/slurm/scripts/reaper.sh" || return 1
  install_unit cdk-trn-apply-document.service "ENTRY=$ENTRY" || return 1
  install_unit cdk-trn-apply-document.timer || return 1
  systemctl daemon-reload
  systemctl enable --now cdk-trn-reaper.service cdk-trn-apply-document.timer
}

boot() {
  begin_boot
  guard_imds "$SLURM_DAEMON_UID" || fail "imds_guard.sh failed"
  log "bootstrapping Slurm controller $INSTANCE_ID for cluster $CDK_TRN_CLUSTER"
  start_docker
  mount_fsx
  [ -n "$CDK_TRN_FSX_MOUNT_PATH" ] || fail "the controller needs the shared file system"
  fetch_munge_key || fail "could not read the Slurm authentication key from Secrets Manager"
  pull_image "$CDK_TRN_SLURM_IMAGE" || fail "could not pull $CDK_TRN_SLURM_IMAGE"
  prepare_shared_directories
  write_cluster_document
  render_slurm_conf || fail "could not render slurm.conf from $SLURM_ETC/cluster.json"
  local address
  address=$(publish_address) || fail "could not publish the controller address"
  resolve_controller >/dev/null || fail "could not resolve $SLURMCTLD_NAME"
  install_controller_watch
  install_unit cdk-trn-slurmctld.service "ENTRY=$ENTRY" "CONTAINER=$CONTAINER"
  systemctl daemon-reload
  systemctl enable --now cdk-trn-slurmctld.service || fail "cdk-trn-slurmctld.service did not start"
  wait_for_slurmctld
  # A replacement controller: running nodes refresh their configless configuration.
  docker exec -u root -w / "$CONTAINER" scontrol reconfigure || log "scontrol reconfigure failed (no nodes yet?)"
  install_reaper || fail "could not start the Slurm node reaper"
  install_metrics_timer || fail "could not start the metrics timer"
  signal SUCCESS
  log "controller ready at $address"
}

case "${1:-}" in
  "") boot ;;
  slurmctld-run) slurmctld_run ;;
  resolve-controller) resolve_controller >/dev/null ;;
  publish-metrics) publish_metrics "$CONTRACT_METRICS_NAMESPACE_SLURM" "$CONTAINER" slurm_metrics.sh ;;
  apply-document) apply_document ;;
  *) echo "usage: $0 [slurmctld-run|resolve-controller|publish-metrics|apply-document]" >&2; exit 2 ;;
esac
