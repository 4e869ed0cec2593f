# cdk-trn: install a systemd unit of the boot bundle (units/<unit>) with its placeholders
# replaced: install_unit <unit> [NAME=VALUE ...] writes /etc/systemd/system/<unit> with every
# @NAME@ replaced by VALUE and fails if a placeholder is left. Sourced by boot_common.sh and
# host_bootstrap.sh, which set BOOT_DIR (the bundle's directory).
install_unit() {
  local unit=$1 text pair units="${NODE_BOOTSTRAP_TEST_ROOT:-}/etc/systemd/system"
  shift
  text=$(<"$BOOT_DIR/units/$unit")
  for pair in "$@"; do
    text=${text//"@${pair%%=*}@"/"${pair#*=}"}
  done
  if [[ $text =~ @[A-Z0-9_]+@ ]]; then
    echo "install_unit: $unit still holds ${BASH_REMATCH[0]}" >&2
    return 1
  fi
  mkdir -p "$units"
  printf '%s\n' "$text" >"$units/$unit"
  chmod 0644 "$units/$unit"
}
