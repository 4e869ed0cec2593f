#!/bin/bash
# cdk-trn launcher: the user data of every instance role (Trainium node, Slurm controller, enclave
# vault host). cdk_trn._boot renders it as "#!/bin/bash", the CDK_TRN_* variables (each quoted
# with shlex.quote), then this file without its first line.
#
# It downloads the role's boot bundle (an S3 asset, through the S3 gateway endpoint), checks the
# archive against the SHA-256 written above before anything in it runs, unpacks it into a
# root-only directory, writes the variables into the bundle's boot.env and runs the role's entry
# script (cdk_trn_runtime/node/bundle.py describes the bundle). Everything the boot prints goes to
# the serial console, /var/log/cdk-trn-boot.log and, when the boot ends, whatever its outcome, to the role's
# CloudWatch Logs group (log stream: the instance id) with `aws logs put-log-events`: the
# CloudWatch agent is not on every AMI this runs on (AL2023 has it only as a package), and a boot
# that failed before any agent could start is the one whose log matters most.
# A failure here, before the entry script runs, signals FAILURE to the Auto Scaling group.
# shellcheck disable=SC2154  # the CDK_TRN_* variables are the lines in front of this file
set -uo pipefail
umask 077

# Tests only (tests/cdk_trn_runtime/node/test_launcher.py): a directory that stands in for /.
ROOT="${NODE_BOOTSTRAP_TEST_ROOT:-}"
BOOT="$ROOT/opt/cdk-trn/boot"
LOG="$ROOT/var/log/cdk-trn-boot.log"
ARCHIVE="$ROOT/opt/cdk-trn/boot.tar.gz"
BUNDLE_URL="s3://$CDK_TRN_BOOT_BUCKET/$CDK_TRN_BOOT_KEY"
INSTANCE_ID=""

# /opt/cdk-trn stays traversable (the vault host's service user reads its code below it); the
# bundle directory itself is root-only.
mkdir -p "$(dirname "$LOG")" "$ROOT/opt"
[ -d "$(dirname "$BOOT")" ] || mkdir -m 0755 "$(dirname "$BOOT")"
say() { echo "[cdk-trn-launcher] $*" | tee -a "$LOG" "$ROOT/dev/console" >/dev/null 2>&1 || true; }

instance_id() {
  local token imds=http://169.254.169.254/latest
  token=$(curl -fsS -X PUT -H "X-aws-ec2-metadata-token-ttl-seconds: 300" "$imds/api/token") \
    && curl -fsS -H "X-aws-ec2-metadata-token: $token" "$imds/meta-data/instance-id"
}

# The boot log as CloudWatch Logs events (JSON): the last lines that fit one PutLogEvents call
# (1 MiB, 26 bytes of overhead per event; at most 16,000 bytes a message), in order, all stamped
# now. No Python: this runs before the bundle is unpacked, or when it could not be. Control
# characters go, tabs become spaces, \ and " are escaped before the cut (a half escape at the cut
# goes too) and iconv drops a character the cut split, so each message is valid JSON text.
log_events() {
  LC_ALL=C tr -d '\000-\010\013-\037\177' <"$LOG" | LC_ALL=C tr '\t' ' ' \
    | LC_ALL=C sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' | LC_ALL=C awk -v now="$(date +%s)000" '
      { line[NR] = $0 }
      END {
        n = NR; if (n == 0) { line[1] = "(the boot printed nothing)"; n = 1 }
        budget = 900000; first = n + 1
        for (i = n; i >= 1 && n - i < 9000; i--) {
          m = substr(line[i], 1, 16000)
          if (match(m, /\\+$/) && RLENGTH % 2) m = substr(m, 1, length(m) - 1)
          if (m == "") m = " "
          budget -= length(m) + 26; if (budget < 0) break
          msg[i] = m; first = i
        }
        printf "["
        for (i = first; i <= n; i++)
          printf "%s{\"timestamp\":%s,\"message\":\"%s\"}", (i > first ? "," : ""), now, msg[i]
        print "]"
      }' | { iconv -c -f UTF-8 -t UTF-8 || [ $? -eq 1 ]; }
}

ship_log() {
  local events="$ROOT/opt/cdk-trn/boot-log-events.json" stream=${INSTANCE_ID:-unknown-instance}
  [ -n "${CDK_TRN_BOOT_LOG_GROUP:-}" ] || return 0
  log_events >"$events" || { say "could not read the boot log"; return 0; }
  aws logs create-log-stream --region "$CDK_TRN_REGION" --log-group-name "$CDK_TRN_BOOT_LOG_GROUP" \
    --log-stream-name "$stream" >/dev/null 2>&1 || true
  aws logs put-log-events --region "$CDK_TRN_REGION" --log-group-name "$CDK_TRN_BOOT_LOG_GROUP" \
    --log-stream-name "$stream" --log-events "file://$events" >/dev/null \
    || say "could not send the boot log to CloudWatch Logs ($CDK_TRN_BOOT_LOG_GROUP)"
  rm -f "$events"
}

fail_launch() {
  say "FAILED before the boot script ran on ${INSTANCE_ID:-this instance}: $*"
  if [ -n "$INSTANCE_ID" ]; then
    aws cloudformation signal-resource --region "$CDK_TRN_REGION" --stack-name "$CDK_TRN_STACK" \
      --logical-resource-id "$CDK_TRN_RESOURCE" --unique-id "$INSTANCE_ID" --status FAILURE \
      >/dev/null || say "could not send the FAILURE signal"
  fi
  ship_log
  exit 1
}

INSTANCE_ID=$(instance_id) || INSTANCE_ID=""
[ -n "$INSTANCE_ID" ] || fail_launch "no instance id from the instance metadata service (IMDSv2)"

tries=0
until aws s3 cp --region "$CDK_TRN_REGION" --only-show-errors "$BUNDLE_URL" "$ARCHIVE"; do
  tries=$((tries + 1))
  [ "$tries" -ge 5 ] && fail_launch "could not download the boot bundle $BUNDLE_URL"
  sleep $((tries * 10))
done
echo "$CDK_TRN_BOOT_SHA256  $ARCHIVE" | sha256sum --check --status \
  || fail_launch "the boot bundle $BUNDLE_URL does not match its SHA-256 $CDK_TRN_BOOT_SHA256"

# A fresh root-only directory: nothing of an earlier unpack, nothing another user could write.
rm -rf "$BOOT"
mkdir -m 0700 "$BOOT" || fail_launch "could not create $BOOT"
tar -xzf "$ARCHIVE" -C "$BOOT" --no-same-owner || fail_launch "could not unpack $BUNDLE_URL"
for name in "${!CDK_TRN_@}"; do printf '%s=%q\n' "$name" "${!name}"; done >"$BOOT/boot.env"
say "boot bundle $BUNDLE_URL (sha256 $CDK_TRN_BOOT_SHA256) in $BOOT: running $CDK_TRN_BOOT_ENTRY"

# The boot's output (its log lines and every command's errors) to the serial console (read with
# `aws ec2 get-console-output`) and the boot log.
bash "$BOOT/$CDK_TRN_BOOT_ENTRY" 2>&1 | tee -a "$LOG" >>"$ROOT/dev/console"
status=${PIPESTATUS[0]}
say "$CDK_TRN_BOOT_ENTRY exited with status $status"
ship_log
exit "$status"
