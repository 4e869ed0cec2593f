# shellcheck shell=bash
# cdk-trn: instance metadata (IMDS, 169.254.169.254) for root only. (Its IPv6 endpoint,
# fd00:ec2::254, is off: the launch templates do not enable HttpProtocolIpv6.)
# Part of the node and controller boot bundles (cdk_trn_runtime/node/bundle.py), sourced by
# boot_common.sh; the boot calls guard_imds once, before anything a job could run exists.
#
# Jobs run in the slurmd container on the host network, so their connections leave through this
# host's output hook with their own uid: an owner match (nft `meta skuid`) tells them from root,
# as ParallelCluster's imds-access.sh does with iptables `-m owner --uid-owner`
# (aws-parallelcluster-cookbook, files/imds/imds-access.sh). IMDSv2's hop limit of 1 already
# keeps containers on a Docker bridge out; the forward hook drops their packets as well.
# The rules are an nftables table of their own (Docker's iptables rules never touch it), loaded
# now and at every later boot, before the network comes up, by cdk-trn-imds-guard.service.
#
#   guard_imds [user|uid...]   root and these users (the daemons that need the instance role)
#                              only; a number is a uid (a container's user the host does not know)
#
# ROOT (boot_common.sh: NODE_BOOTSTRAP_TEST_ROOT) prefixes the files it writes, install_unit
# (units.sh) writes the unit; NFT names nft (tests).
guard_imds() {
  local r="$ROOT/etc/cdk-trn/imds-guard.nft" u="${NODE_BOOTSTRAP_TEST_ROOT:-}/etc/systemd/system" ok=0 x n
  for x in "$@"; do
    case $x in
      '' | *[!0-9]*) x=$(id -u "$x") || return 1 ;;
    esac
    ok+=",$((10#$x))"
  done
  n=${NFT:-$(command -v nft)} || { install_packages nftables && n=$(command -v nft); } || return 1
  mkdir -p "${r%/*}" "$u/sysinit.target.wants"
  # Declaring, deleting, then defining the table replaces it in one transaction, every time.
  cat >"$r" <<NFT
table inet cdk_trn_imds
delete table inet cdk_trn_imds
table inet cdk_trn_imds {
chain output { type filter hook output priority 0; ip daddr 169.254.169.254 meta skuid != { $ok } reject; }
chain forward { type filter hook forward priority 0; ip daddr 169.254.169.254 drop; }
}
NFT
  # Loaded at every boot before the network (units/cdk-trn-imds-guard.service); enabled as
  # `systemctl enable` would, since systemd may not run yet where the boot tests run this.
  install_unit cdk-trn-imds-guard.service "NFT=$n" || return 1
  ln -sf ../cdk-trn-imds-guard.service "$u/sysinit.target.wants/"
  "$n" -f "$r"
}
