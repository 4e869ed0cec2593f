"""Slurm's power saving drives the nodes' Auto Scaling group: idle nodes stop, pending jobs start
them again (opt-in ``SlurmScheduler(idle_scale_in=...)``, on-demand clusters only).

    python -m cdk_trn_runtime.slurm.power suspend|resume HOSTLIST

slurmctld runs this as ``SuspendProgram`` for nodes idle longer than ``SuspendTime`` and as
``ResumeProgram`` for powered-down nodes a job needs (slurm.conf, ``config.PowerSave``). A node is
never terminated: ``suspend`` puts its instance into Standby in its group, lowering the group's
desired capacity (``EnterStandby`` with ``ShouldDecrementDesiredCapacity``), then stops it (no
compute billed); ``resume`` starts it, waits until it runs, and returns it to service
(``ExitStandby`` raises the desired capacity again). A stopped instance keeps its private address
and host name, so it comes back as the same Slurm node and the job that asked for it starts there.

Node names are host names (``slurmd -Z -N $(hostname -s)``): ``ip-10-0-1-23`` (the private
address) or ``i-0123456789abcdef0`` (resource names); each is looked up among the group's
instances only (tagged with the cluster's name); their group is their
``aws:autoscaling:groupName`` tag. The tag and the region come from the cluster document
(``/etc/slurm/cluster.json``, key ``power_save``). Standard library and botocore (in the
training image).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cdk_trn_runtime.contract.cluster_document import ClusterDocument

CLUSTER_DOCUMENT = Path("/etc/slurm/cluster.json")
_IP_NAME = re.compile(r"^ip-(\d{1,3})-(\d{1,3})-(\d{1,3})-(\d{1,3})$")
_INSTANCE_NAME = re.compile(r"^i-[0-9a-f]{8,17}$")
#: Seconds ``resume`` waits for a started instance to run (within slurm.conf's ResumeTimeout).
START_TIMEOUT_SECONDS = 600


def log(message: str) -> None:
    print(f"cdk-trn power: {message}", file=sys.stderr, flush=True)


def expand(hostlist: str) -> list[str]:
    """Slurm's hostlist expression (``ip-10-0-1-[23,45]``) as names, by ``scontrol``."""
    done = subprocess.run(
        ["scontrol", "show", "hostnames", hostlist], capture_output=True, text=True, check=True
    )
    return [name for name in done.stdout.split() if name]


def instance_filter(name: str) -> dict[str, Any]:
    """The DescribeInstances filter that finds the node ``name``; ValueError for other names."""
    if _INSTANCE_NAME.match(name):
        return {"Name": "instance-id", "Values": [name]}
    match = _IP_NAME.match(name)
    if match:
        return {"Name": "private-ip-address", "Values": [".".join(match.groups())]}
    raise ValueError(f"node {name!r} is neither ip-a-b-c-d nor an instance id")


@dataclass(frozen=True)
class Cluster:
    """Which instances are the cluster's: those tagged ``key`` = ``value``."""

    key: str
    value: str


def instances_of(ec2: Any, cluster: Cluster, names: Sequence[str]) -> tuple[dict[str, str], str]:
    """Node name -> instance id among the cluster's instances (by its tag) only, and their Auto
    Scaling group (their ``aws:autoscaling:groupName`` tag; one group)."""
    found: dict[str, str] = {}
    groups: set[str] = set()
    for name in names:
        response = ec2.describe_instances(
            Filters=[
                instance_filter(name),
                {"Name": f"tag:{cluster.key}", "Values": [cluster.value]},
            ]
        )
        matches = [i for r in response.get("Reservations", []) for i in r["Instances"]]
        group = {
            t["Value"]
            for i in matches
            for t in i.get("Tags", [])
            if t.get("Key") == "aws:autoscaling:groupName"
        }
        if len(matches) != 1 or len(group) != 1:
            log(f"node {name}: {len(matches)} instances of the cluster match; left alone")
            continue
        found[name] = matches[0]["InstanceId"]
        groups |= group
    if len(groups) > 1:
        log(f"nodes in several groups ({', '.join(sorted(groups))}); left alone")
        return {}, ""
    return found, next(iter(groups), "")


def suspend(ec2: Any, autoscaling: Any, cluster: Cluster, names: Sequence[str]) -> int:
    """Standby (desired capacity down), then stop; the instance and its name are kept."""
    nodes, group = instances_of(ec2, cluster, names)
    if not nodes:
        return 1
    ids = sorted(nodes.values())
    autoscaling.enter_standby(
        InstanceIds=ids, AutoScalingGroupName=group, ShouldDecrementDesiredCapacity=True
    )
    ec2.stop_instances(InstanceIds=ids)
    log(f"suspended {', '.join(f'{n} ({i})' for n, i in sorted(nodes.items()))}")
    return 0 if len(nodes) == len(names) else 1


def resume(
    ec2: Any,
    autoscaling: Any,
    cluster: Cluster,
    names: Sequence[str],
    *,
    sleep: Callable[[float], None] = time.sleep,
    timeout: float = START_TIMEOUT_SECONDS,
) -> int:
    """Start, wait until running, then back in service (desired capacity up)."""
    nodes, group = instances_of(ec2, cluster, names)
    if not nodes:
        return 1
    ids = sorted(nodes.values())
    ec2.start_instances(InstanceIds=ids)
    waited = 0.0
    while True:
        response = ec2.describe_instances(InstanceIds=ids)
        states = {
            i["InstanceId"]: i["State"]["Name"]
            for r in response.get("Reservations", [])
            for i in r["Instances"]
        }
        if all(states.get(i) == "running" for i in ids):
            break
        if waited >= timeout:
            log(f"not running after {timeout:.0f} s: {states}")
            return 1
        sleep(10)
        waited += 10
    autoscaling.exit_standby(InstanceIds=ids, AutoScalingGroupName=group)
    log(f"resumed {', '.join(f'{n} ({i})' for n, i in sorted(nodes.items()))}")
    return 0 if len(nodes) == len(names) else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2 or args[0] not in ("suspend", "resume"):
        print(
            "usage: python -m cdk_trn_runtime.slurm.power suspend|resume HOSTLIST", file=sys.stderr
        )
        return 2
    action, hostlist = args
    try:
        settings = ClusterDocument.from_properties(
            json.loads(CLUSTER_DOCUMENT.read_text())
        ).power_save
        if settings is None:
            raise ValueError(f"{CLUSTER_DOCUMENT} has no power_save: power saving is off")
        key, value = settings.cluster_tag
        cluster, region = Cluster(key, value), settings.region
        import botocore.session

        session = botocore.session.get_session()
        ec2 = session.create_client("ec2", region_name=region)
        autoscaling = session.create_client("autoscaling", region_name=region)
        names = expand(hostlist)
        run = suspend if action == "suspend" else resume
        return run(ec2, autoscaling, cluster, names)
    except Exception as error:  # noqa: BLE001 - slurmctld only sees the exit status; log why
        log(f"{action} {hostlist} failed: {error}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
