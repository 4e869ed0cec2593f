"""Command line of ``cdk_trn_runtime.launch`` (see the package's docstring)."""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections.abc import Sequence

from cdk_trn_runtime.launch import (
    ENV_DEVICE_ROOT,
    NOT_IN_A_JOB,
    JobPlan,
    LaunchError,
    first_host,
    gather_ultraserver_hosts,
    neuron_ls_cores,
    node_environment,
    node_rank,
    plan_job,
    procs_per_node,
    scontrol_node_address,
    torchrun_command,
)
from cdk_trn_runtime.slurm.topology import HOSTS_VARIABLE


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cdk_trn_runtime.launch",
        description="Run a torchrun script on every node of this Slurm job (one torchrun per "
        "node, rendezvous on the first).",
    )
    parser.add_argument("--procs-per-node", type=int, help="ranks per node; default: per device")
    parser.add_argument("--master-port", type=int, help="rendezvous port; default: by job id")
    parser.add_argument("-m", dest="module", action="store_true", help="TARGET is a module")
    # Internal: one srun task per node runs this module again with these.
    parser.add_argument("--node", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--nnodes", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--master-addr", help=argparse.SUPPRESS)
    parser.add_argument("target", help="the training script (or module with -m)")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="the script's arguments")
    return parser


def _target(args: argparse.Namespace) -> list[str]:
    if args.module:
        return ["-m", args.target, *args.args]
    return [args.target, *args.args]


def run_job(args: argparse.Namespace) -> int:
    """In the batch script: plan the job, then one task per node runs ``--node``."""
    environ = dict(os.environ)
    if not environ.get("SLURM_JOB_ID") or not environ.get("SLURM_NNODES"):
        raise LaunchError(NOT_IN_A_JOB)
    target = args.target
    if not args.module:
        path = os.path.abspath(target)
        if not os.path.isfile(path):
            raise LaunchError(f"no training script {target!r} (looked for {path})")
        target = path
    hosts = gather_ultraserver_hosts(sys.executable)
    plan = plan_job(environ, scontrol_node_address, first_host(environ), hosts, args.master_port)
    nodes = str(plan.nnodes)
    command = [
        "srun",
        "--kill-on-bad-exit=1",
        f"--nodes={nodes}",
        f"--ntasks={nodes}",
        "--ntasks-per-node=1",
        sys.executable,
        "-m",
        "cdk_trn_runtime.launch",
        "--node",
        "--nnodes",
        nodes,
        "--master-addr",
        plan.master_addr,
        "--master-port",
        str(plan.master_port),
    ]
    if args.procs_per_node:
        command += ["--procs-per-node", str(args.procs_per_node)]
    if args.module:
        command.append("-m")
    command += [target, *args.args]
    print(
        f"launch: job={environ.get('SLURM_JOB_ID')} nodes={plan.nnodes} "
        f"master={plan.master_addr}:{plan.master_port} target={target}",
        flush=True,
    )
    env = {**environ, HOSTS_VARIABLE: plan.ultraserver_hosts}
    import subprocess

    return subprocess.run(command, env=env, check=False).returncode  # noqa: S603


def run_node(args: argparse.Namespace) -> int:
    """On each node (an srun task): the node's environment, then torchrun replaces us."""
    environ = dict(os.environ)
    if not args.nnodes or not args.master_addr or not args.master_port:
        raise LaunchError("--node needs --nnodes, --master-addr and --master-port")
    plan = JobPlan(
        args.nnodes, args.master_addr, args.master_port, environ.get(HOSTS_VARIABLE, "").strip()
    )
    root = environ.get(ENV_DEVICE_ROOT, "")
    rank, topology_variables = node_rank(plan, environ, socket.gethostname())
    procs = args.procs_per_node or procs_per_node(environ, root, neuron_ls_cores)
    env = {**environ, **node_environment(plan, environ, root), **topology_variables}
    command = torchrun_command(sys.executable, plan, rank, procs, _target(args))
    print(
        f"launch: node {rank} ({socket.gethostname()}) procs_per_node={procs}",
        file=sys.stderr,
        flush=True,
    )
    os.execve(sys.executable, command, env)  # noqa: S606  (torchrun, an argument list)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.procs_per_node is not None and args.procs_per_node < 1:
        parser.error(f"--procs-per-node must be positive, got {args.procs_per_node}")
    try:
        return run_node(args) if args.node else run_job(args)
    except (LaunchError, OSError) as error:
        print(f"launch: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
