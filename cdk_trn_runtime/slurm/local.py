"""The local twin of the cloud's Slurm cluster, on this machine (``cdk_trn_runtime.slurm.twin``).

    python -m cdk_trn_runtime.slurm.local up [--nodes N] --dir <twin dir>
    python -m cdk_trn_runtime.slurm.local replace --node <name> --dir <twin dir>
    python -m cdk_trn_runtime.slurm.local restart-controller --dir <twin dir>
    python -m cdk_trn_runtime.slurm.local down|status --dir <twin dir>

``up`` creates the twin (2 nodes unless ``--nodes``), or on a running twin resizes it to
``--nodes`` through the cluster document (as ``cdk deploy -c nodes=N``), or keeps its count and
replaces nodes that are gone. It prints one line on stdout, ``export SLURM_CONF=<path>`` (the
login node's configuration; valid across replacements, resizes and controller restarts), and
exits non-zero naming the node and the reason when a boot fails. ``replace`` loses a node (link
cut, every process SIGKILLed) and boots a replacement on a new address, printing
``replacement: <name>``. ``down`` removes processes, namespaces, interfaces and the directory.

Needs root and the Debian packages slurm-wlm, munge, iproute2 and util-linux.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

from cdk_trn_runtime.slurm.twin.cluster import Layout, Twin, log

__all__ = ["Layout", "Twin", "main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cdk_trn_runtime.slurm.local")
    parser.add_argument("action", choices=("up", "down", "status", "replace", "restart-controller"))
    parser.add_argument("--dir", required=True, type=Path, help="the twin's directory")
    parser.add_argument("--nodes", type=int, help="up: the node count (default: keep; new: 2)")
    parser.add_argument("--node", help="replace: the node to lose")
    parser.add_argument(
        "--boot",
        choices=("twin", "cloud"),
        help="up, new twin: how nodes boot: the twin's direct start (default) or the cloud's boot "
        "code (cdk_trn_runtime/node/node_bootstrap.sh) with command and metadata doubles",
    )
    args = parser.parse_args(argv)
    twin = Twin(args.dir)
    try:
        if args.action == "up":
            twin.up(args.nodes, args.boot)
            print(f"export SLURM_CONF={shlex.quote(str(twin.layout.conf))}")
        elif args.action == "replace":
            if not args.node:
                parser.error("replace needs --node")
            print(f"replacement: {twin.replace(args.node)}")
        elif args.action == "restart-controller":
            twin.restart_controller()
        elif args.action == "down":
            twin.down()
        else:
            return 0 if twin.status() else 3
    except (RuntimeError, subprocess.SubprocessError, OSError) as error:
        log(f"{args.action} failed: {error}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
