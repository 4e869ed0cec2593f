"""Nodes below a node-local threshold: replaced, and the run repeated, within the resource's hour
(also the wait for an image refresh's successors, which is the same wait).

The summary that names the nodes is written by the run, which on a Slurm cluster runs as the job
user: any job of that user can change it. So a node is replaced only if it was one of the run's
(on Slurm: among the nodes Slurm allocated to the job, as the controller reports them after it;
with SSM: one the run's commands went to), and on Slurm only once Slurm reports it drained
without a job (``replace_drain``): a forged failure can at most have idle nodes of the run
replaced."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

from cdk_trn_runtime.acceptance.common import (
    NODE_BOOT_SECONDS,
    AcceptanceRunError,
    Clients,
    Node,
    RunProps,
    _limit,
    _run_nodes,
    _version,
)
from cdk_trn_runtime.acceptance.slurm_launcher import (
    addresses_of,
    discover_controller,
    drain_in_slurm,
    run_nodes,
    send_slurm_command,
)
from cdk_trn_runtime.acceptance.ssm_launcher import discover_nodes, send_commands
from cdk_trn_runtime.contract import CLUSTER_TAG

LOG = logging.getLogger(__name__)

#: Checks a node fails by itself (its own devices and memory) and a new instance may pass. A run
#: whose every failure is one of these, on some nodes but not all, replaces those nodes and runs
#: again instead of failing the deploy. Any other failure (collectives, training, compilation,
#: an error the suite raised, every node failing alike) fails at once: a new node would not fix it.
NODE_LOCAL_CHECKS = frozenset(
    {"gemm_numerics", "gemm_fraction_of_peak", "hbm_copy_correctness", "hbm_fraction_of_peak"}
)

#: Rounds of replacement per run. One round, because a round costs a node's boot plus a second run
#: and CloudFormation gives the whole custom resource one hour; a round is started only when
#: that still fits before the run's deadline (``replacement_fits``).
MAX_REPLACEMENT_ROUNDS = 1


def replacement_plan(
    summary: Mapping[str, Any], nodes: int
) -> dict[str, list[dict[str, Any]]] | None:
    """The nodes (by the address the suite names them with) whose failures a new instance may
    fix, and those failures; None when any failure is not node-local, names no node, or every
    node failed (then the cause is not a node)."""
    plan: dict[str, list[dict[str, Any]]] = {}
    for failure in summary.get("failures") or []:
        if not isinstance(failure, Mapping) or failure.get("check") not in NODE_LOCAL_CHECKS:
            return None
        host = str(failure.get("node") or "")
        if not host or host == "unknown":
            return None
        plan.setdefault(host, []).append(dict(failure))
    if not plan or len(plan) >= nodes:
        return None
    return plan


def replacement_fits(started: float, now: float, deadline: float) -> bool:
    """A round (a node's boot, then the run again, as long as this one took) ends by the
    deadline."""
    return now + NODE_BOOT_SECONDS + (now - started) <= deadline


def attempt_run_id(run_id: str, round_: int) -> str:
    return run_id if round_ == 0 else f"{run_id[:59]}-r{round_}"


def _replace_or_none(
    clients: Clients,
    props: RunProps,
    state: Mapping[str, Any],
    summary: Mapping[str, Any],
    nodes: Sequence[Node],
    run_id: str,
    now: float,
    failures: Sequence[str] = (),
) -> dict[str, Any] | None:
    """Start a replacement round for the nodes below threshold, or None when the run must fail:
    not node-local, rounds used up, no time for a boot and another run, or no node of the plan
    among the run's own. On Slurm the round starts with a drain (``replace_drain`` replaces the
    nodes Slurm then reports drained without a job); ``failures`` (the run's, as the reason
    lists them) are kept for the reason if it ends there."""
    rounds = int(state.get("Round", 0))
    plan = replacement_plan(summary, _run_nodes(props, state))
    if plan is None or rounds >= MAX_REPLACEMENT_ROUNDS:
        return None
    if not replacement_fits(float(state["StartedAt"]), now, float(state["Deadline"])):
        LOG.info("no time for a replacement round before %s", state["Deadline"])
        return None
    plan = _of_the_run(clients, props, nodes, plan, run_id)
    if not plan:
        return None
    instances = instances_of(clients, props, nodes, list(plan))
    if len(instances) != len(plan):
        return None
    entries = [
        {
            "InstanceId": instance_id,
            "Host": host,
            "Problems": "; ".join(str(f.get("message") or f.get("check")) for f in plan[host]),
        }
        for host, instance_id in instances.items()
    ]
    if props.slurm:
        command = drain_in_slurm(clients, props, run_id, list(instances))
        if command is None:
            return None
        return {
            "IsComplete": False,
            "Status": f"draining {', '.join(instances.values())} in Slurm before replacing "
            f"them (below threshold in {run_id})",
            "AcceptanceRun": {
                **state,
                "Round": rounds + 1,
                "FailedAttempt": run_id,
                "ReplaceDrain": {
                    "Command": asdict(command),
                    "Nodes": entries,
                    "Failures": [_limit(f) for f in failures][:20],
                },
            },
        }
    for entry in entries:
        LOG.info("replacing %s (%s): %s", entry["InstanceId"], entry["Host"], entry["Problems"])
        clients.autoscaling.set_instance_health(
            InstanceId=entry["InstanceId"], HealthStatus="Unhealthy", ShouldRespectGracePeriod=False
        )
    return replacing_state(state, entries, run_id, now, rounds + 1)


def replacing_state(
    state: Mapping[str, Any],
    replaced: Sequence[Mapping[str, Any]],
    run_id: str,
    now: float,
    round_: int,
) -> dict[str, Any]:
    """is_complete's answer once ``replaced`` are marked Unhealthy: wait for their successors."""
    instances = [str(r["InstanceId"]) for r in replaced]
    new_state = {
        **state,
        "Replacing": True,
        "Round": round_,
        "ReplacingSince": now,
        "Replaced": [*state.get("Replaced", []), *replaced],
        "FailedAttempt": run_id,
    }
    new_state.pop("ReplaceDrain", None)
    return {
        "IsComplete": False,
        "Status": f"replacing {', '.join(instances)} (below threshold in {run_id})",
        "AcceptanceRun": new_state,
    }


def _of_the_run(
    clients: Clients,
    props: RunProps,
    nodes: Sequence[Node],
    plan: Mapping[str, list[dict[str, Any]]],
    run_id: str,
) -> dict[str, list[dict[str, Any]]]:
    """The plan's nodes that were the run's: on Slurm, those Slurm allocated to the job (the
    list the controller wrote to S3 after it, as root); with SSM, those the run's commands went
    to. Any other address the summary names is refused, and logged."""
    if props.slurm:
        ran = run_nodes(clients, props, run_id)
    else:
        ran = {n.private_ip for n in nodes if n.kind == "node"}
    refused = sorted(h for h in plan if h not in ran)
    if refused:
        LOG.warning(
            "not replacing %s: the results name them but they were not the run's nodes (%s)",
            ", ".join(refused),
            ", ".join(sorted(ran)) or "none reported",
        )
    return {h: f for h, f in plan.items() if h in ran}


def instances_of(
    clients: Clients, props: RunProps, nodes: Sequence[Node], hosts: Sequence[str]
) -> dict[str, str]:
    """Host (private IP) -> instance id, for nodes of this cluster's group only."""
    known = {n.private_ip: n.instance_id for n in nodes if n.kind == "node"}
    found = {h: known[h] for h in hosts if h in known}
    missing = [h for h in hosts if h not in found]
    if missing:
        reservations = clients.ec2.describe_instances(
            Filters=[
                {"Name": "private-ip-address", "Values": missing},
                {"Name": f"tag:{CLUSTER_TAG}", "Values": [props.cluster_name]},
                {
                    "Name": "tag:aws:autoscaling:groupName",
                    "Values": [props.auto_scaling_group_name],
                },
            ]
        )["Reservations"]
        for instance in (i for r in reservations for i in r["Instances"]):
            if instance.get("PrivateIpAddress") in missing:
                found[instance["PrivateIpAddress"]] = instance["InstanceId"]
    return found


def _after_replacement(
    clients: Clients, props: RunProps, state: Mapping[str, Any]
) -> dict[str, Any]:
    """Once the group has the run's nodes InService besides the replaced ones (after an image
    refresh: on the current launch template version) and, for a replacement round, a boot's time
    has passed, run again (a new attempt id); until then, wait. After a refresh the run goes to
    exactly those nodes, and the Slurm document answers "not ready" until each is idle in Slurm
    (the successors' boot), so no boot time is assumed."""
    now = clients.clock()
    deadline = float(state["Deadline"])
    refresh = state.get("Refresh") or {}
    replaced = {
        r["InstanceId"] for r in (*state.get("Replaced", []), *refresh.get("Refreshed", []))
    }
    waiting = f"replaced {', '.join(sorted(replaced))}; waiting for their successors"
    if now >= deadline:
        raise AcceptanceRunError(
            _limit(
                f"acceptance run {state['Run']}: {waiting} until the deadline. "
                + "; ".join(_replaced_first(state))
            )
        )
    groups = clients.autoscaling.describe_auto_scaling_groups(
        AutoScalingGroupNames=[props.auto_scaling_group_name]
    )["AutoScalingGroups"]
    in_service = [
        i["InstanceId"]
        for g in groups
        for i in g["Instances"]
        # After a refresh a node of the current version stopped by idle scale-in counts too:
        # Slurm starts it for the run's job.
        if (i["LifecycleState"] == "InService" or (refresh and i["LifecycleState"] == "Standby"))
        and i["InstanceId"] not in replaced
        and (not refresh or _version(i) == _version(g))
    ]
    need = _run_nodes(props, state)
    booted = bool(refresh) or now - float(state["ReplacingSince"]) >= NODE_BOOT_SECONDS
    if len(in_service) < need or not booted:
        return {"IsComplete": False, "Status": waiting}
    round_ = int(state.get("Round", 0))
    run_id = attempt_run_id(str(state["Run"]), round_)
    on: dict[str, str] = {}
    if props.slurm:
        if refresh:
            on = addresses_of(clients, props, sorted(in_service))
        controller = discover_controller(clients, props)
        nodes = [send_slurm_command(clients, props, run_id, controller, list(on.values()))]
    else:
        nodes = send_commands(clients, props, run_id, discover_nodes(clients, props))
    new_state = {
        **state,
        "Replacing": False,
        "AttemptId": run_id,
        "Commands": [asdict(n) for n in nodes],
    }
    if refresh:
        new_state["Refresh"] = {**refresh, "Ran": sorted(on)}
        new_state["RunNodes"] = len(on)
    return {
        "IsComplete": False,
        "Status": f"running {run_id} after replacing {', '.join(sorted(replaced))}",
        "AcceptanceRun": new_state,
    }


def _replaced_first(state: Mapping[str, Any]) -> list[str]:
    """What the earlier rounds replaced, with why: the start of a final failure's reason."""
    return [
        f"replaced {r['InstanceId']} ({r['Host']}): {r['Problems']}"
        for r in state.get("Replaced", [])
    ]
