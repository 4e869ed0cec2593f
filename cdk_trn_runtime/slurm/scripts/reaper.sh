#!/usr/bin/env bash
# Controller reaper: deletes the records of dynamic nodes whose instance is gone.
#
# A dynamic node that dies keeps its record: `scontrol delete` refuses a node that still holds a
# job, and a node that was killed never runs its own `slurmd_leave`. Its replacement comes up
# with a new address, hence a new name, and every dead record takes a slot of MaxNodeCount
# (and is saved in StateSaveLocation, so it outlives the cluster on retained storage). So, every
# CDK_TRN_REAPER_INTERVAL seconds (0: once), for each dynamic node that is DOWN or not
# responding, the reaper asks EC2 whether an instance of this cluster (the contract's CLUSTER_TAG) still
# has the node's address; when none has, it deletes the record, and retries on the next round
# while Slurm refuses (the job is still being requeued off the node). A node whose instance runs
# is left to the health check and its Auto Scaling group; when EC2 does not answer nothing is
# deleted.
#
# Needs: scontrol (CDK_TRN_SCONTROL overrides the command, e.g. `docker exec <container>
# scontrol`), aws, CDK_TRN_REGION and CDK_TRN_CLUSTER.
set -uo pipefail
# shellcheck source=../../contract/contract.sh
. "$(dirname "${BASH_SOURCE[0]}")/../../contract/contract.sh"
read -r -a SCONTROL <<<"${CDK_TRN_SCONTROL:-scontrol}"
INTERVAL="${CDK_TRN_REAPER_INTERVAL:-0}"

log() { echo "cdk-trn-reaper: $*" >&2; logger -t cdk-trn-reaper "$*" 2>/dev/null || true; }

# Succeeds when an instance of this cluster has address $1; status 2 when EC2 did not answer.
instance_exists() {
  local count
  count=$(aws ec2 describe-instances --region "$CDK_TRN_REGION" \
    --filters "Name=private-ip-address,Values=$1" "Name=tag:$CONTRACT_CLUSTER_TAG,Values=$CDK_TRN_CLUSTER" \
    "Name=instance-state-name,Values=pending,running,stopping,stopped" \
    --query 'length(Reservations[].Instances[])' --output text) || return 2
  [[ $count =~ ^[0-9]+$ ]] || return 2
  [ "$count" -gt 0 ]
}

reap_once() {
  local nodes line name state address
  nodes=$("${SCONTROL[@]}" show node --oneliner 2>/dev/null) || { log "scontrol did not answer"; return 1; }
  while read -r line; do
    [ -n "$line" ] || continue
    name=$(sed -n 's/^NodeName=\([^ ]*\) .*/\1/p' <<<"$line")
    state=$(sed -n 's/.* State=\([^ ]*\) .*/\1/p' <<<"$line")
    address=$(sed -n 's/.* NodeAddr=\([^ ]*\) .*/\1/p' <<<"$line")
    case "+$state+" in *+DYNAMIC_NORM+*) ;; *) continue ;; esac
    case "+$state+" in *+DOWN+* | *+DOWN\*+* | *+NOT_RESPONDING+*) ;; *) continue ;; esac
    [ -n "$name" ] && [ -n "$address" ] || continue
    instance_exists "$address"
    case $? in
      0) continue ;;
      2) log "EC2 did not answer for $name ($address): kept"; continue ;;
    esac
    if "${SCONTROL[@]}" delete nodename="$name" >/dev/null 2>&1; then
      log "deleted $name: no instance has $address any more"
    else
      log "$name ($address) is gone but Slurm still holds it ($state): retrying"
    fi
  done <<<"$nodes"
}

reap_once
while [ "$INTERVAL" -gt 0 ]; do
  sleep "$INTERVAL"
  reap_once
done
exit 0
