"""The security groups admit every port the rendered slurm.conf makes Slurm use between the
controller and the nodes. The ports come from the configuration the controller renders at boot
(``python -m cdk_trn_runtime.slurm.config`` on the synthesized cluster document), never from a
copy of the numbers: SlurmctldPort (slurmd, srun and the commands to slurmctld), SlurmdPort
(slurmctld to slurmd) and SrunPortRange (slurmctld and slurmstepd to srun, which runs on the
controller and, from batch scripts, on the nodes). slurmstepd's own ports are ephemeral and not in
slurm.conf; test_scheduler.py covers them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import aws_cdk as cdk
import pytest
from aws_cdk.assertions import Template

from cdk_trn.scheduler import SlurmScheduler
from tests.cdk_trn_runtime.node.test_node_bootstrap import FileSystemStandIn
from tests.support.stacks import cluster_stack


@pytest.fixture(scope="module")
def synth() -> tuple[SlurmScheduler, dict[str, Any]]:
    stack, cluster = cluster_stack("trn2.48xlarge", file_system=FileSystemStandIn())
    scheduler = SlurmScheduler(stack, "Slurm", cluster=cluster)
    return scheduler, dict(Template.from_stack(stack).to_json())


def _rendered_conf(scheduler: SlurmScheduler, tmp_path: Path) -> dict[str, str]:
    document = dict(scheduler.slurm_cluster_document())
    document.update(controller_host="ip-10-0-0-5", controller_addr="cdk-trn-slurmctld")
    spec = tmp_path / "cluster.json"
    spec.write_text(json.dumps(document))
    out = tmp_path / "slurm.conf"
    done = subprocess.run(
        [sys.executable, "-m", "cdk_trn_runtime.slurm.config", "--spec", str(spec)]
        + ["--output", str(out)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    conf: dict[str, str] = {}
    for line in out.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            conf.setdefault(key.strip(), value.strip())
    return conf


def _port_range(value: str) -> tuple[int, int]:
    low, _, high = value.partition("-")
    return int(low), int(high or low)


def _group_id(scheduler: SlurmScheduler, group: Any) -> Any:
    return cdk.Stack.of(scheduler).resolve(group.security_group_id)


def _covers(rule: dict[str, Any], low: int, high: int) -> bool:
    protocol = str(rule.get("IpProtocol"))
    if protocol == "-1":
        return True
    return protocol == "tcp" and rule["FromPort"] <= low and high <= rule["ToPort"]


def _admits(template: dict, source: Any, target: Any, low: int, high: int) -> bool:
    """``target`` admits TCP low-high from ``source``, and ``source`` may send it there."""
    resources = template["Resources"].values()
    ingress = any(
        r["Type"] == "AWS::EC2::SecurityGroupIngress"
        and r["Properties"]["GroupId"] == target
        and r["Properties"].get("SourceSecurityGroupId") == source
        and _covers(r["Properties"], low, high)
        for r in resources
    )
    egress = any(
        r["Type"] == "AWS::EC2::SecurityGroupEgress"
        and r["Properties"]["GroupId"] == source
        and r["Properties"].get("DestinationSecurityGroupId") == target
        and _covers(r["Properties"], low, high)
        for r in resources
    )
    return ingress and egress


def test_the_rendered_configuration_names_the_ports_the_groups_are_checked_for(synth, tmp_path):
    scheduler, _ = synth
    conf = _rendered_conf(scheduler, tmp_path)
    assert {"SlurmctldPort", "SlurmdPort", "SrunPortRange"} <= set(conf)


def test_nodes_reach_slurmctld_on_its_rendered_port(synth, tmp_path):
    scheduler, template = synth
    low, high = _port_range(_rendered_conf(scheduler, tmp_path)["SlurmctldPort"])
    nodes = _group_id(scheduler, scheduler.cluster.security_group)
    controller = _group_id(scheduler, scheduler.security_group)
    assert _admits(template, nodes, controller, low, high)


def test_controller_reaches_slurmd_on_its_rendered_port(synth, tmp_path):
    scheduler, template = synth
    low, high = _port_range(_rendered_conf(scheduler, tmp_path)["SlurmdPort"])
    nodes = _group_id(scheduler, scheduler.cluster.security_group)
    controller = _group_id(scheduler, scheduler.security_group)
    assert _admits(template, controller, nodes, low, high)


def test_srun_ports_are_open_both_ways_between_controller_and_nodes(synth, tmp_path):
    """srun on the controller hears from slurmstepd on the nodes; srun in a batch script on a
    node hears from slurmctld (step completion, signals, time limits)."""
    scheduler, template = synth
    low, high = _port_range(_rendered_conf(scheduler, tmp_path)["SrunPortRange"])
    nodes = _group_id(scheduler, scheduler.cluster.security_group)
    controller = _group_id(scheduler, scheduler.security_group)
    assert _admits(template, nodes, controller, low, high)
    assert _admits(template, controller, nodes, low, high)


def test_srun_ports_are_open_among_the_nodes(synth, tmp_path):
    scheduler, template = synth
    low, high = _port_range(_rendered_conf(scheduler, tmp_path)["SrunPortRange"])
    nodes = _group_id(scheduler, scheduler.cluster.security_group)
    assert _admits(template, nodes, nodes, low, high)
