"""``aws`` on the twin: a command double answering the calls the cluster's own code makes.

Installed as ``<twin>/bin/aws`` (first on the PATH of the twin's controller processes). It
answers from the twin's record of its instances (``twin.json``): an instance exists while the
process holding its namespaces lives, as an EC2 instance exists until it is terminated.

Supported: ``ec2 describe-instances --filters Name=private-ip-address,Values=<a>
[Name=tag:cdk-trn:cluster,Values=<c>] [Name=instance-state-name,Values=...] --query
'length(Reservations[].Instances[])' --output text`` (the reaper's question), and the boot code's
calls: ``secretsmanager get-secret-value`` (the twin's munge key), ``ssm get-parameter`` /
``put-parameter`` (parameters kept in ``<twin>/ssm/``; the controller address parameter is the
controller's address), ``cloudformation signal-resource`` (appended to ``<twin>/signals``),
``cloudwatch put-metric-data``, ``autoscaling set-instance-health`` and ``ecr
get-login-password``. Anything else fails with status 254 naming the call, so a new call of the
cloud code shows up on the twin.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _filters(argv: list[str]) -> dict[str, list[str]]:
    filters: dict[str, list[str]] = {}
    if "--filters" not in argv:
        return filters
    for item in argv[argv.index("--filters") + 1 :]:
        if item.startswith("--"):
            break
        parts = dict(part.split("=", 1) for part in item.split(",", 1) if "=" in part)
        if "Name" in parts and "Values" in parts:
            filters[parts["Name"]] = parts["Values"].split(",")
    return filters


def running_instances(twin: dict[str, object]) -> list[dict[str, object]]:
    instances = twin.get("instances", {})
    assert isinstance(instances, dict)
    return [
        i for i in instances.values() if isinstance(i, dict) and _alive(int(i.get("holder", 0)))
    ]


def describe_instances(twin: dict[str, object], argv: list[str]) -> int:
    filters = _filters(argv)
    found = []
    for instance in running_instances(twin):
        if (
            "private-ip-address" in filters
            and instance["address"] not in filters["private-ip-address"]
        ):
            continue
        cluster = filters.get("tag:cdk-trn:cluster")
        if cluster is not None and twin.get("cluster") not in cluster:
            continue
        states = filters.get("instance-state-name")
        if states is not None and "running" not in states:
            continue
        found.append(instance)
    query = argv[argv.index("--query") + 1] if "--query" in argv else ""
    if query == "length(Reservations[].Instances[])":
        print(len(found))
        return 0
    print(f"aws (twin double): unsupported query {query!r}", file=sys.stderr)
    return 254


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    twin_dir = os.environ.get("CDK_TRN_TWIN_DIR")
    if not twin_dir:
        print("aws (twin double): CDK_TRN_TWIN_DIR is not set", file=sys.stderr)
        return 254
    try:
        twin = json.loads((Path(twin_dir) / "twin.json").read_text())
    except (OSError, ValueError) as error:
        print(f"aws (twin double): {error}", file=sys.stderr)
        return 254
    words = [a for a in argv if not a.startswith("-")]
    if words[:2] == ["ec2", "describe-instances"]:
        return describe_instances(twin, argv)
    root = Path(twin_dir)

    def option(name: str) -> str:
        return argv[argv.index(name) + 1] if name in argv else ""

    if words[:2] == ["secretsmanager", "get-secret-value"]:
        # As the CLI prints a secret: the value, then a newline (the twin key holds both).
        print((root / "munge" / "munge.key").read_text().rstrip("\n"))
        return 0
    if words[:2] == ["ssm", "get-parameter"]:
        stored = root / "ssm" / option("--name").strip("/").replace("/", "_")
        if stored.exists():
            print(stored.read_text())
            return 0
        print(f"An error occurred (ParameterNotFound): {option('--name')}", file=sys.stderr)
        return 254
    if words[:2] == ["ssm", "put-parameter"]:
        stored = root / "ssm" / option("--name").strip("/").replace("/", "_")
        stored.parent.mkdir(exist_ok=True)
        stored.write_text(option("--value"))
        return 0
    if words[:2] == ["cloudformation", "signal-resource"]:
        record = {"instance": option("--unique-id"), "status": option("--status")}
        with (root / "signals").open("a") as signals:
            signals.write(json.dumps(record) + "\n")
        return 0
    if words[:2] in (["cloudwatch", "put-metric-data"], ["autoscaling", "set-instance-health"]):
        return 0
    if words[:2] == ["ecr", "get-login-password"]:
        print("twin-double")
        return 0
    print(f"aws (twin double): unsupported call: aws {' '.join(argv)}", file=sys.stderr)
    return 254


if __name__ == "__main__":
    sys.exit(main())
