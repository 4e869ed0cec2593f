"""The twin's network: one bridge of its own, one network namespace per instance.

Names and the subnet derive from the twin's directory (a hash of its real path), so two twins
(two checkouts) never share a bridge, a namespace or addresses. The subnet is a private /24
(10.100.0.0 to 10.199.255.0) that no route of this host already covers; the host has ``.1`` on the
bridge (it is the login node), the controller ``.2``, nodes ``.10`` upwards, never reused. No
NAT, no default route: an instance reaches the bridge and nothing else.
"""

from __future__ import annotations

import hashlib
import ipaddress
import subprocess
from pathlib import Path

NETNS_DIR = Path("/run/netns")


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {result.stderr.strip() or result.returncode}")
    return result


def twin_id(directory: Path) -> str:
    """Six hex digits naming the twin of ``directory``."""
    return hashlib.sha256(str(directory.resolve()).encode()).hexdigest()[:6]


def bridge_name(tid: str) -> str:
    return f"ctw{tid}"


def netns_name(tid: str, octet: int) -> str:
    return f"ctw{tid}-{octet}"


def veth_name(tid: str, octet: int) -> str:
    """Host side of an instance's link (at most 15 characters, the kernel's limit)."""
    return f"vtw{tid}{octet:03d}"


def ec2_name(address: str) -> str:
    """EC2's host name for a private address: ``ip-10-1-2-3``."""
    return "ip-" + address.replace(".", "-")


def _routes() -> list[ipaddress.IPv4Network]:
    out = run("ip", "-4", "route", "show", "table", "all").stdout
    networks = []
    for line in out.splitlines():
        first = line.split()[0] if line.split() else ""
        if first in ("default", "broadcast", "local", "unreachable"):
            continue
        try:
            networks.append(ipaddress.IPv4Network(first, strict=False))
        except ValueError:
            continue
    return networks


def choose_subnet(tid: str) -> str:
    """A /24 for the twin ``tid`` that overlaps no route of this host."""
    seed = int(tid, 16)
    taken = _routes()
    for step in range(10_000):
        value = (seed + step * 7919) % (100 * 256)
        candidate = ipaddress.IPv4Network(f"10.{100 + value // 256}.{value % 256}.0/24")
        if not any(candidate.overlaps(network) for network in taken):
            return str(candidate)
    raise RuntimeError("no free private /24 in 10.100.0.0-10.199.255.0 on this host")


def address(subnet: str, octet: int) -> str:
    return str(ipaddress.IPv4Network(subnet).network_address + octet)


def bridge_up(tid: str, subnet: str) -> None:
    bridge = bridge_name(tid)
    if run("ip", "link", "show", bridge, check=False).returncode != 0:
        run("ip", "link", "add", bridge, "type", "bridge")
    host = f"{address(subnet, 1)}/24"
    if host.split("/")[0] not in run("ip", "-4", "addr", "show", "dev", bridge).stdout:
        run("ip", "addr", "add", host, "dev", bridge)
    run("ip", "link", "set", bridge, "up")


def bridge_down(tid: str) -> None:
    run("ip", "link", "del", bridge_name(tid), check=False)


def netns_up(tid: str, subnet: str, octet: int) -> str:
    """A new namespace with ``eth0`` on the bridge at ``.octet``; its name."""
    ns, veth = netns_name(tid, octet), veth_name(tid, octet)
    peer = f"ptw{tid}{octet:03d}"
    netns_down(tid, octet)
    run("ip", "netns", "add", ns)
    run("ip", "link", "add", veth, "type", "veth", "peer", "name", peer)
    run("ip", "link", "set", peer, "netns", ns)
    run("ip", "link", "set", veth, "master", bridge_name(tid))
    run("ip", "link", "set", veth, "up")
    inside = ("ip", "netns", "exec", ns)
    run(*inside, "ip", "link", "set", peer, "name", "eth0")
    run(*inside, "ip", "addr", "add", f"{address(subnet, octet)}/24", "dev", "eth0")
    run(*inside, "ip", "link", "set", "eth0", "up")
    run(*inside, "ip", "link", "set", "lo", "up")
    return ns


def cut_link(tid: str, octet: int) -> None:
    """The instance's link goes away (both ends of the veth pair)."""
    run("ip", "link", "del", veth_name(tid, octet), check=False)


def netns_pids(tid: str, octet: int) -> list[int]:
    return netns_pids_by_name(netns_name(tid, octet))


def netns_pids_by_name(ns: str) -> list[int]:
    """Processes in the network namespace ``ns`` (none when it does not exist)."""
    if not (NETNS_DIR / ns).exists():
        return []
    out = run("ip", "netns", "pids", ns, check=False).stdout
    return [int(p) for p in out.split()]


def netns_down(tid: str, octet: int) -> None:
    cut_link(tid, octet)
    if (NETNS_DIR / netns_name(tid, octet)).exists():
        run("ip", "netns", "del", netns_name(tid, octet), check=False)


def twin_namespaces(tid: str) -> list[str]:
    if not NETNS_DIR.is_dir():
        return []
    return sorted(p.name for p in NETNS_DIR.iterdir() if p.name.startswith(f"ctw{tid}-"))
