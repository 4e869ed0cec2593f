"""Rank order on Trn2 UltraServers: hosts ordered by (UltraServer id, node id), as AWS's
UltraServer init script (aws-neuron k8s-ultraserver-init-script) orders them, not by address.

Each host of an allocation reports ``<hostname> <server id> <node id>`` (its
``NEURON_RT_ULTRASERVER_SERVER_ID`` / ``NEURON_RT_ULTRASERVER_NODE_ID``, which the node bootstrap
reads from ``/sys/class/neuron_device/{server,node}_id_<size>``). The host's place in the order is
its ``NEURON_GLOBAL_TOPOID`` (and torchrun node rank); the first host is
``NEURON_GLOBAL_TOPOID0_HOST`` (and the rendezvous address).

Command line (examples/slurm/train.sbatch)::

    python -m cdk_trn_runtime.slurm.topology self     # this host's line; nothing off an UltraServer
    python -m cdk_trn_runtime.slurm.topology leader   # the TOPOID0 host
    python -m cdk_trn_runtime.slurm.topology env      # KEY=VALUE lines for this host

``leader`` and ``env`` read the table from ``$CDK_TRN_ULTRASERVER_HOSTS`` (one host a line) and,
in a job, refuse a table without exactly ``$SLURM_NNODES`` hosts.
"""

from __future__ import annotations

import os
import socket
import sys
from collections import Counter
from dataclasses import dataclass

#: The environment variable the batch script hands the host table over in.
HOSTS_VARIABLE = "CDK_TRN_ULTRASERVER_HOSTS"
#: The node's environment as the Slurm containers see it (node_bootstrap.sh's env file).
NODE_ENV_FILE = "/etc/cdk-trn/slurm-node.env"
#: What the init script's nodes report when they are not in an UltraServer.
NO_SERVER_ID = "0000000000000000"


class TopologyError(ValueError):
    """The allocation is not a set of whole UltraServers with distinct node ids."""


@dataclass(frozen=True)
class UltraServerHost:
    hostname: str
    server_id: str
    node_id: int


def parse_hosts(text: str) -> list[UltraServerHost]:
    """``<hostname> <server id> <node id>`` lines (blank lines ignored)."""
    hosts = []
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 3 or not fields[2].lstrip("-").isdigit():
            raise TopologyError(
                f"line {number}: expected '<hostname> <server id> <node id>': {line!r}"
            )
        hosts.append(UltraServerHost(fields[0], fields[1], int(fields[2])))
    return hosts


def order_hosts(hosts: list[UltraServerHost], size: int | None = None) -> list[UltraServerHost]:
    """Hosts in (server id, node id) order. Refuses a host outside an UltraServer, a host listed
    twice, two hosts with one (server, node) pair and, with ``size``, an UltraServer with another
    number of hosts than ``size`` (the init script's checks)."""
    if not hosts:
        raise TopologyError("no hosts")
    names = Counter(h.hostname for h in hosts)
    if twice := sorted(n for n, c in names.items() if c > 1):
        raise TopologyError(f"hosts listed more than once: {', '.join(twice)}")
    for host in hosts:
        if host.server_id == NO_SERVER_ID or host.node_id < 0:
            raise TopologyError(f"{host.hostname} is not in an UltraServer")
    places = Counter((h.server_id, h.node_id) for h in hosts)
    if clash := sorted(p for p, c in places.items() if c > 1):
        raise TopologyError(f"hosts share an UltraServer node id: {clash}")
    if size is not None:
        per_server = Counter(h.server_id for h in hosts)
        if wrong := sorted(s for s, c in per_server.items() if c != size):
            raise TopologyError(
                f"UltraServers {', '.join(wrong)} have other than {size} hosts in the allocation"
            )
    return sorted(hosts, key=lambda h: (h.server_id, h.node_id, h.hostname))


def topology_env(ordered: list[UltraServerHost], hostname: str) -> dict[str, str]:
    """``NEURON_GLOBAL_TOPOID`` and ``NEURON_GLOBAL_TOPOID0_HOST`` for ``hostname``."""
    for index, host in enumerate(ordered):
        if host.hostname == hostname:
            return {
                "NEURON_GLOBAL_TOPOID": str(index),
                "NEURON_GLOBAL_TOPOID0_HOST": ordered[0].hostname,
            }
    raise TopologyError(f"{hostname} is not among the allocation's hosts")


def self_line(environ: dict[str, str], hostname: str) -> str:
    """``<hostname> <server id> <node id>`` from the node's ids, or "" off an UltraServer."""
    server = environ.get("NEURON_RT_ULTRASERVER_SERVER_ID", "")
    node = environ.get("NEURON_RT_ULTRASERVER_NODE_ID", "")
    return f"{hostname} {server} {node}" if server and node else ""


def read_env_file(path: str) -> dict[str, str]:
    try:
        with open(path, encoding="utf-8") as file:
            return dict(line.rstrip("\n").split("=", 1) for line in file if "=" in line)
    except FileNotFoundError:
        return {}


def main(argv: list[str], environ: dict[str, str], hostname: str) -> int:
    if len(argv) != 1 or argv[0] not in ("self", "leader", "env"):
        print(f"usage: topology self | leader | env  (hosts in ${HOSTS_VARIABLE})", file=sys.stderr)
        return 2
    try:
        if argv[0] == "self":
            line = self_line({**read_env_file(NODE_ENV_FILE), **environ}, hostname)
            if line:
                print(line)
            return 0
        hosts = parse_hosts(environ.get(HOSTS_VARIABLE, ""))
        expected = environ.get("SLURM_NNODES", "")
        if expected.isdigit() and len(hosts) != int(expected):
            raise TopologyError(
                f"{len(hosts)} hosts reported their UltraServer ids, not {expected}"
            )
        ordered = order_hosts(hosts)
        if argv[0] == "leader":
            print(ordered[0].hostname)
        else:
            for key, value in topology_env(ordered, hostname).items():
                print(f"{key}={value}")
    except TopologyError as error:
        print(f"topology: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], dict(os.environ), socket.gethostname()))
