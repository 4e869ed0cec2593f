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
# The refresh rule: after an image change the acceptance run drains the nodes on an earlier
# launch template with the reason REFRESH_REASON; it has the idle ones replaced itself, and a node
# that was running a job is this rule's: once Slurm reports it drained (IDLE+DRAIN, no job, no
# CPU allocated, not completing) with that reason, the reaper marks its instance Unhealthy in its
# Auto Scaling group (the controller may do that in the node group only), which replaces it from
# the current launch template. A node still running a job is never touched; the mark is repeated
# every round until the instance is gone (idempotent). A node drained for the refresh whose
# instance is gone altogether (one stopped by idle scale-in, replaced by the acceptance run: no
# one pings a powered-down node, so it never turns DOWN) has its record deleted.
# The acceptance run's drain command reads the next line to know this reaper has the rule
# (contract.acceptance.REAPER_REFRESH_MARKER):
# cdk-trn-reaper-rule: image-refresh 1
#
# Reading `scontrol show node --oneliner`: each field is taken at its first occurrence at a field
# boundary. Slurm prints the fixed fields (NodeName, CPUAlloc, NodeAddr, State) before the free
# text ones (Reason, whose healthcheck text names users' processes, then Comment, Extra,
# InstanceId, ReservationName), so a later `State=`, `NodeAddr=` or `CPUAlloc=` inside free text is
# never read; the reason counts only when it comes before every other free-text field. Before a
# mark, squeue must list no job on the node.
#
# Needs: scontrol and squeue (CDK_TRN_SCONTROL overrides the scontrol command, e.g. `docker exec
# <container> scontrol`; CDK_TRN_SQUEUE likewise squeue: units/cdk-trn-reaper.service sets both), aws,
# CDK_TRN_REGION and CDK_TRN_CLUSTER.
set -uo pipefail
# shellcheck source=../../contract/contract.sh
. "$(dirname "${BASH_SOURCE[0]}")/../../contract/contract.sh"
read -r -a SCONTROL <<<"${CDK_TRN_SCONTROL:-scontrol}"
read -r -a SQUEUE <<<"${CDK_TRN_SQUEUE:-squeue}"
INTERVAL="${CDK_TRN_REAPER_INTERVAL:-0}"
# The acceptance run's drain reason for an image refresh (Slurm appends who set it and when).
REFRESH_REASON=$CONTRACT_REFRESH_DRAIN_REASON

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

# The id of the running instance of this cluster with address $1, if exactly one; status 2 when
# EC2 did not answer.
instance_at() {
  local ids
  ids=$(aws ec2 describe-instances --region "$CDK_TRN_REGION" \
    --filters "Name=private-ip-address,Values=$1" "Name=tag:$CONTRACT_CLUSTER_TAG,Values=$CDK_TRN_CLUSTER" \
    "Name=instance-state-name,Values=pending,running" \
    --query 'Reservations[].Instances[].InstanceId' --output text) || return 2
  [[ $ids =~ ^i-[0-9a-f]+$ ]] || return 1
  echo "$ids"
}

# The value of field $1 in the scontrol line $2: its first occurrence at a field boundary, up to
# the next space; status 1 when absent.
field() {
  local rest=" $2"
  case "$rest" in *" $1="*) ;; *) return 1 ;; esac
  rest=${rest#*" $1="}
  printf '%s\n' "${rest%% *}"
}

# The node's Reason (to the end of the line) when Slurm printed one: the first ` Reason=` counts
# only if no other free-text field starts before it (else it is text inside that field).
reason_of() {
  local line=" $1" before
  case "$line" in *" Reason="*) ;; *) return 0 ;; esac
  before=${line%%" Reason="*}
  case "$before" in
    *" Comment="* | *" Extra="* | *" InstanceId="* | *" InstanceType="* | *" ReservationName="*)
      return 0 ;;
  esac
  printf '%s\n' "${line#*" Reason="}"
}

# Refresh rule: $1 node name, $2 state, $3 address, $4 the whole scontrol line.
refresh_if_drained() {
  local name=$1 state=$2 address=$3 line=$4 reason instance jobs
  reason=$(reason_of "$line")
  case "$reason" in "$REFRESH_REASON"*) ;; *) return 0 ;; esac
  # Drained: the base state IDLE (no job), the DRAIN flag, nothing completing, no CPU allocated.
  case "$state" in IDLE+*) ;; *) return 0 ;; esac
  case "+$state+" in *+DRAIN+*) ;; *) return 0 ;; esac
  case "+$state+" in *+COMPLETING+*) return 0 ;; esac
  [ "$(field CPUAlloc "$line")" = 0 ] || return 0
  # And Slurm's job list agrees: no job on the node (an unanswered squeue marks nothing).
  jobs=$("${SQUEUE[@]}" -h -w "$name" -o %i 2>/dev/null) || {
    log "squeue did not answer for $name: not refreshed yet"
    return 0
  }
  if [ -n "$jobs" ]; then return 0; fi
  instance=$(instance_at "$address")
  case $? in
    0) ;;
    2) log "EC2 did not answer for $name ($address): not refreshed yet"; return 0 ;;
    *)
      instance_exists "$address"
      if [ $? -eq 1 ] && "${SCONTROL[@]}" delete nodename="$name" >/dev/null 2>&1; then
        log "deleted $name: refreshed, no instance has $address any more"
      fi
      return 0
      ;;
  esac
  instance_is_stale "$instance"
  case $? in
    0) ;;
    1)
      # The address's instance already runs the current image: the drain was its predecessor's.
      if "${SCONTROL[@]}" update nodename="$name" state=resume >/dev/null 2>&1; then
        log "resumed $name ($instance): on the current launch template, the drain was a predecessor's"
      fi
      return 0
      ;;
    *) log "Auto Scaling did not answer for $instance ($name): not refreshed yet"; return 0 ;;
  esac
  if aws autoscaling set-instance-health --region "$CDK_TRN_REGION" --instance-id "$instance" \
    --health-status Unhealthy --no-should-respect-grace-period >/dev/null; then
    log "refreshing $name ($instance): drained for the image refresh, no job; marked Unhealthy"
  else
    log "could not mark $instance ($name) Unhealthy: retrying"
  fi
}

# Whether instance $1 runs an earlier launch-template version than its Auto Scaling group: status
# 0 stale, 1 current (a successor that took a drained predecessor's address, and its record), 2
# when Auto Scaling did not answer.
instance_is_stale() {
  local group mine current
  read -r group mine < <(aws autoscaling describe-auto-scaling-instances --region "$CDK_TRN_REGION" \
    --instance-ids "$1" --query 'AutoScalingInstances[0].[AutoScalingGroupName,LaunchTemplate.Version]' \
    --output text) || return 2
  case "$group" in "" | None) return 2 ;; esac
  current=$(aws autoscaling describe-auto-scaling-groups --region "$CDK_TRN_REGION" \
    --auto-scaling-group-names "$group" --query 'AutoScalingGroups[0].LaunchTemplate.Version' \
    --output text) || return 2
  [ -n "$current" ] && [ "$current" != None ] || return 2
  [ "$mine" != "$current" ]
}

reap_once() {
  local nodes line name state address
  nodes=$("${SCONTROL[@]}" show node --oneliner 2>/dev/null) || { log "scontrol did not answer"; return 1; }
  while read -r line; do
    [ -n "$line" ] || continue
    case "$line" in NodeName=*) ;; *) continue ;; esac
    name=$(field NodeName "$line")
    state=$(field State "$line")
    address=$(field NodeAddr "$line")
    if [ -n "$name" ] && [ -n "$address" ]; then
      refresh_if_drained "$name" "$state" "$address" "$line"
    fi
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
