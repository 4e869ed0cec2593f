"""Apply a cluster document on the controller: render slurm.conf and say what slurmctld needs.

    python3 -m cdk_trn_runtime.slurm.apply --document cluster.json --conf /etc/slurm/slurm.conf \\
        --controller-addr cdk-trn-slurmctld [--controller-host <name>]

Renders slurm.conf from the document (``config.cloud_config``, plus the controller's host name
and address), writes it only when it changed, and prints one word on stdout: ``none`` (same
configuration), ``reconfigure`` (``scontrol reconfigure`` applies it) or ``restart`` (a key
slurmctld reads only at start changed, ``document.RESTART_KEYS``: restart slurmctld). The caller
acts on it: the controller after each deploy that changes the document, the twin on a resize.

Standard library only (runs in the training image and on the twin).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from collections.abc import Mapping
from pathlib import Path

from cdk_trn_runtime.contract.cluster_document import ClusterDocument
from cdk_trn_runtime.slurm.config import cloud_config, render_slurm_conf
from cdk_trn_runtime.slurm.document import change_action


def apply(
    document: Mapping[str, object], conf: Path, controller_host: str, controller_addr: str
) -> str:
    """Write slurm.conf for ``document`` at ``conf`` when it differs; the action slurmctld needs."""
    parsed = ClusterDocument.from_properties(document)
    config = cloud_config(parsed.for_controller(controller_host, controller_addr))
    text = render_slurm_conf(config)
    old = conf.read_text() if conf.exists() else None
    action = change_action(old, text)
    if action != "none" or old != text:
        conf.parent.mkdir(parents=True, exist_ok=True)
        tmp = conf.with_name(conf.name + ".new")
        tmp.write_text(text)
        tmp.chmod(0o644)
        os.replace(tmp, conf)
    return action


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m cdk_trn_runtime.slurm.apply")
    parser.add_argument("--document", required=True, type=Path)
    parser.add_argument("--conf", required=True, type=Path)
    parser.add_argument("--controller-addr", required=True)
    parser.add_argument("--controller-host", default=socket.gethostname().split(".")[0])
    args = parser.parse_args(argv)
    try:
        document = json.loads(args.document.read_text())
        if not isinstance(document, dict):
            raise ValueError("cluster document: not a JSON object")
        action = apply(document, args.conf, args.controller_host, args.controller_addr)
    except (OSError, ValueError) as error:
        print(f"slurm.apply: {error}", file=sys.stderr)
        return 2
    print(action)
    return 0


if __name__ == "__main__":
    sys.exit(main())
