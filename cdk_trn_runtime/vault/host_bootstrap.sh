#!/bin/bash
# Boot script of an EnclaveKeyVault host (Amazon Linux 2023): the entry script of the vault
# host's boot bundle (cdk_trn_runtime/node/bundle.py), run once at first boot by the launcher
# (cdk_trn_runtime/node/launcher.sh, the user data), which checked the bundle's SHA-256 and wrote
# the variables cdk_trn/enclave/vault_boot.py renders (checked below) into boot.env beside this file.
# The bundle also holds the systemd units (units/) and the parent server's code (src/).
#
# Order: packages -> enclave allocator -> vsock-proxy (KMS only) -> EIF fetched and its PCR0
# checked -> enclave started in production mode -> parent server (key state from/to S3) -> public
# key and this host's URL published to SSM -> cfn-signal. Success is signalled only once the
# enclave is RUNNING without debug flags and the parent server listens; any failing command
# signals failure at once, naming this file and line, so the deploy rolls back instead of waiting
# for the timeout.
#
# The host has no internet path: dnf reaches the AL2023 repositories (S3 buckets) through the S3
# gateway endpoint; KMS, STS, SSM, CloudFormation and CloudWatch Logs are interface endpoints.
set -Eeuo pipefail
BOOT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=/dev/null  # boot.env: written by the launcher (or the tests)
. "$BOOT_DIR/boot.env"
# shellcheck source=../node/units.sh
. "$BOOT_DIR/units.sh"
: "${CDK_TRN_REGION:?}" "${CDK_TRN_STACK:?}" "${CDK_TRN_RESOURCE:?}" "${CDK_TRN_EIF_BUCKET:?}"
: "${CDK_TRN_EIF_KEY:?}" "${CDK_TRN_EXPECTED_PCR0:?}" "${CDK_TRN_ENCLAVE_CPU_COUNT:?}"
: "${CDK_TRN_ENCLAVE_MEMORY_MIB:?}" "${CDK_TRN_ENCLAVE_CID:?}" "${CDK_TRN_KMS_PROXY_PORT:?}" "${CDK_TRN_SERVICE_PORT:?}"
: "${CDK_TRN_KMS_KEY_ARN:?}" "${CDK_TRN_ALLOWED_ROLE_ARNS:?}" "${CDK_TRN_STATE_BUCKET:?}" "${CDK_TRN_KEY_STATE_OBJECT:?}"
: "${CDK_TRN_PUBLIC_KEY_PARAMETER:?}" "${CDK_TRN_URL_PARAMETERS:?}"
AWS_REGION=$CDK_TRN_REGION
# What the boot reads out of nitro-cli's JSON and the key state (cdk_trn_runtime/vault/
# host_checks.py of this bundle): run as a file with -I, so neither PYTHON* variables, a user's
# site nor the working directory reach it; it imports the standard library only.
host_checks() { python3 -I "$BOOT_DIR/src/cdk_trn_runtime/vault/host_checks.py" "$@"; }

ROOT=/opt/cdk-trn
ENCLAVE_NAME=cdk-trn-vault
SERVICE_USER=cdktrn-vault
STATE_DIR=/var/lib/cdk-trn
STATE="$STATE_DIR/signing-key.json"

signal() {
  # cfn-signal comes from aws-cfn-bootstrap; before it is installed a failure waits for the timeout.
  if [ -x /opt/aws/bin/cfn-signal ]; then
    /opt/aws/bin/cfn-signal --exit-code "$1" --reason "$2" --stack "$CDK_TRN_STACK" \
      --resource "$CDK_TRN_RESOURCE" --region "$AWS_REGION" || echo "cfn-signal failed" >&2
  fi
}
fail() {
  echo "cdk-trn vault bootstrap failed: $1" >&2
  trap - ERR
  signal 1 "$1"
  exit 1
}
# set -E hands this trap to functions and command substitutions; only the main shell fails and
# signals. The trap runs where the command failed, so BASH_SOURCE and LINENO name this shipped file.
trap '[ "$BASH_SUBSHELL" -eq 0 ] && fail "${BASH_SOURCE[0]##*/}:$LINENO: $BASH_COMMAND"' ERR

retry() {
  local attempt
  for attempt in 1 2 3 4 5; do
    "$@" && return 0
    echo "attempt $attempt of: $* failed; retrying" >&2
    sleep $((attempt * 10))
  done
  return 1
}

# --- packages -------------------------------------------------------------------------------
retry dnf install -y aws-cfn-bootstrap
retry dnf install -y aws-nitro-enclaves-cli aws-nitro-enclaves-cli-devel python3.11
# botocore signs the key-state write (state_store, below). AL2023 packages Python modules for its
# system python3 only, so that write runs with python3; the package's version is the one of the
# AMI's AL2023 release (dnf stays on the release the AMI was built from).
retry dnf install -y python3-botocore

# --- enclave resources: CPUs and memory taken from the parent at boot -------------------------
cat > /etc/nitro_enclaves/allocator.yaml <<EOF
---
# Written by cdk-trn: resources reserved for the signing enclave.
memory_mib: ${CDK_TRN_ENCLAVE_MEMORY_MIB}
cpu_count: ${CDK_TRN_ENCLAVE_CPU_COUNT}
EOF
systemctl enable --now nitro-enclaves-allocator.service

# --- vsock-proxy: the enclave's only way out, to this region's KMS endpoint -------------------
# STS is not listed: the parent hands the enclave the instance role's credentials, so the enclave
# calls KMS only. Private DNS of the KMS interface endpoint makes this name resolve inside the VPC.
cat > /etc/nitro_enclaves/vsock-proxy.yaml <<EOF
# Written by cdk-trn: the enclave may reach KMS in ${AWS_REGION} and nothing else.
allowlist:
- {address: kms.${AWS_REGION}.amazonaws.com, port: 443}
EOF
install_unit cdk-trn-kms-proxy.service "CDK_TRN_REGION=$AWS_REGION" "KMS_PROXY_PORT=$CDK_TRN_KMS_PROXY_PORT"

# --- the enclave image, checked against the PCR0 the key policy trusts -----------------------
install -d -m 0755 "$ROOT"
retry aws s3 cp "s3://${CDK_TRN_EIF_BUCKET}/${CDK_TRN_EIF_KEY}" "$ROOT/enclave.eif" --region "$AWS_REGION" --only-show-errors
nitro-cli describe-eif --eif-path "$ROOT/enclave.eif" > "$ROOT/eif-measurements.json"
host_checks pcr0 "$ROOT/eif-measurements.json" "$CDK_TRN_EXPECTED_PCR0" \
  || fail "EIF PCR0 differs from the PCR0 in the key policy"

# --- the parent server's code: cdk_trn_runtime (vault, enclave) from the boot bundle ----------
# Copied out of the root-only boot directory so that the service user can read it.
rm -rf "$ROOT/src"
install -d -m 0755 "$ROOT/src"
cp -R "$BOOT_DIR/src/." "$ROOT/src/"
chmod -R a+rX,go-w "$ROOT/src"
# The parent server's module loads (its --help imports it whole); not from the working directory.
PYTHONPATH="$ROOT/src" python3.11 -P -m cdk_trn_runtime.vault.server --help >/dev/null \
  || fail "cdk_trn_runtime.vault.server does not import with python3.11 on this host"

# --- the enclave, in production mode (no console; attestation carries the real PCRs) ---------
install_unit cdk-trn-enclave.service "ENCLAVE_NAME=$ENCLAVE_NAME" "EIF=$ROOT/enclave.eif" \
  "ENCLAVE_CPU_COUNT=$CDK_TRN_ENCLAVE_CPU_COUNT" "ENCLAVE_MEMORY_MIB=$CDK_TRN_ENCLAVE_MEMORY_MIB" \
  "ENCLAVE_CID=$CDK_TRN_ENCLAVE_CID"

# --- the key state: KMS ciphertext of the signing key + its public key (nothing secret) -------
# The parent keeps it on disk; the state bucket keeps the copy that outlives this host.
id -u "$SERVICE_USER" >/dev/null 2>&1 || useradd --system --no-create-home --shell /sbin/nologin "$SERVICE_USER"
install -d -o "$SERVICE_USER" -g "$SERVICE_USER" -m 0700 "$STATE_DIR"
fetch_state() {
  aws s3 cp "s3://${CDK_TRN_STATE_BUCKET}/${CDK_TRN_KEY_STATE_OBJECT}" "$STATE" --region "$AWS_REGION" --only-show-errors
  chown "$SERVICE_USER:$SERVICE_USER" "$STATE"
  chmod 0600 "$STATE"
}
STATE_FROM_S3=no
if aws s3api head-object --bucket "$CDK_TRN_STATE_BUCKET" --key "$CDK_TRN_KEY_STATE_OBJECT" \
    --region "$AWS_REGION" >/dev/null 2>"$ROOT/head.err"; then
  fetch_state
  STATE_FROM_S3=yes
elif ! grep -q "Not Found\|404" "$ROOT/head.err"; then
  fail "cannot read s3://${CDK_TRN_STATE_BUCKET}/${CDK_TRN_KEY_STATE_OBJECT}: $(cat "$ROOT/head.err")"
fi

# --- the parent server: TCP from the cluster's nodes -> vsock to the enclave -----------------
ROLE_ARGS=""
for arn in $CDK_TRN_ALLOWED_ROLE_ARNS; do ROLE_ARGS="$ROLE_ARGS --allowed-role-arn $arn"; done
install_unit cdk-trn-enclave-parent.service "SERVICE_PORT=$CDK_TRN_SERVICE_PORT" \
  "SERVICE_USER=$SERVICE_USER" "SRC=$ROOT/src" "ENCLAVE_CID=$CDK_TRN_ENCLAVE_CID" \
  "KMS_KEY_ARN=$CDK_TRN_KMS_KEY_ARN" "CDK_TRN_REGION=$AWS_REGION" "STATE=$STATE" \
  "STATE_DIR=$STATE_DIR" "ROLE_ARGS=$ROLE_ARGS" \
  "MAX_CLIENTS=${CDK_TRN_MAX_CLIENTS:-0}"

systemctl daemon-reload
systemctl enable --now cdk-trn-kms-proxy.service cdk-trn-enclave.service cdk-trn-enclave-parent.service

# --- success needs the enclave RUNNING in production mode and the parent listening -----------
check_enclave() {
  nitro-cli describe-enclaves > "$ROOT/enclaves.json"
  host_checks enclave "$ROOT/enclaves.json" "$ENCLAVE_NAME" \
    || fail "enclave is not RUNNING in production mode"
}
check_enclave
wait_for_parent() {
  for _ in $(seq 1 60); do
    if ss -Hltn "sport = :${CDK_TRN_SERVICE_PORT}" | grep -q . && [ -s "$STATE" ]; then
      return 0
    fi
    sleep 2
  done
  return 1
}
wait_for_parent || fail "parent server did not listen on ${CDK_TRN_SERVICE_PORT} with a key state within 120 s"

# --- keep the key state; the first host to store it wins (hosts > 1 start together) ----------
# S3's conditional create (If-None-Match: *) decides the winner atomically. The write goes through
# cdk_trn_runtime.vault.state_store (python3 with python3-botocore, botocore's SigV4 with the host
# role), not
# `aws s3api put-object --if-none-match`: AL2023's awscli-2 may predate that option (aws-cli
# 8863), and a head-object check before an unconditional put would let two hosts both "win".
if [ "$STATE_FROM_S3" = no ]; then
  store_status=0
  # python3 (3.9: no -P) ignores the environment (-E) and user site (-s); -m puts the working
  # directory first on sys.path, so it runs from the root-only source directory.
  (cd "$ROOT/src" && python3 -E -s -m cdk_trn_runtime.vault.state_store \
    --bucket "$CDK_TRN_STATE_BUCKET" --key "$CDK_TRN_KEY_STATE_OBJECT" --file "$STATE" \
    --region "$AWS_REGION") 2>"$ROOT/put.err" || store_status=$?
  if [ "$store_status" -ne 0 ]; then
    [ "$store_status" -eq 3 ] || fail "cannot store the key state: $(cat "$ROOT/put.err")"
    # Another host stored its key first: load that one, so that every host signs with one key.
    # The enclave still holds this host's key in memory and would keep answering init with it,
    # so it restarts empty and decrypts the stored key when the parent sends init again.
    systemctl stop cdk-trn-enclave-parent.service
    fetch_state
    systemctl restart cdk-trn-enclave.service
    check_enclave
    systemctl start cdk-trn-enclave-parent.service
    wait_for_parent || fail "parent server did not come back with the stored key state"
  fi
fi

# --- publish the manifest-signing public key (PEM) for offline verifiers --------------------
host_checks public-key-pem "$STATE" > "$ROOT/manifest-public-key.pem"
aws ssm put-parameter --name "$CDK_TRN_PUBLIC_KEY_PARAMETER" --type String --overwrite \
  --value "file://$ROOT/manifest-public-key.pem" --region "$AWS_REGION" >/dev/null

# --- publish this host's URL where the clusters' nodes look (contract.vault_url_parameter) ---
# The nodes' signing hook reads it at every checkpoint, so a replacement host takes over here.
imds=http://169.254.169.254/latest
token=$(curl -sf -X PUT "$imds/api/token" -H "X-aws-ec2-metadata-token-ttl-seconds: 60")
address=$(curl -sf -H "X-aws-ec2-metadata-token: $token" "$imds/meta-data/local-ipv4")
[[ $address =~ ^[0-9]+(\.[0-9]+){3}$ ]] || fail "no private IPv4 address from IMDS: '$address'"
for name in $CDK_TRN_URL_PARAMETERS; do
  retry aws ssm put-parameter --name "$name" --type String --overwrite \
    --value "http://${address}:${CDK_TRN_SERVICE_PORT}" --region "$AWS_REGION" >/dev/null
done

signal 0 "enclave running (PCR0 ${CDK_TRN_EXPECTED_PCR0}); parent server on http://${address}:${CDK_TRN_SERVICE_PORT}"
