"""The human summary ``make synth`` prints: what the cluster costs, then what it is, in the
figures that matter.

The cost comes first: ``$<amount>/h`` and ``$<amount>/day`` for the whole cluster (nodes x the
node price + the Slurm controller + the enclave vault hosts + FSx for Lustre), then each part with
its source. Every catalog price is an estimate (``cdk_trn.catalog``); a part without a sourced
price prints ``unknown`` and is left out of the total, which says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aws_cdk as cdk

from cdk_trn.catalog import HOURS_PER_MONTH, Price, fsx_lustre_price, instance_price


@dataclass(frozen=True)
class CostPart:
    """One priced part of the cluster: ``usd_per_hour`` None when no sourced price exists."""

    name: str
    usd_per_hour: float | None
    source: str


@dataclass(frozen=True)
class CostEstimate:
    parts: tuple[CostPart, ...]

    @property
    def usd_per_hour(self) -> float:
        """The total of the known parts."""
        return sum(p.usd_per_hour for p in self.parts if p.usd_per_hour is not None)

    @property
    def usd_per_day(self) -> float:
        return self.usd_per_hour * 24

    @property
    def unknown(self) -> tuple[CostPart, ...]:
        return tuple(p for p in self.parts if p.usd_per_hour is None)

    def headline(self) -> str:
        """``$<amount>/h, $<amount>/day`` and, when parts are unknown, which ones were left out."""
        line = f"${self.usd_per_hour:.2f}/h, ${self.usd_per_day:.2f}/day"
        if self.unknown:
            names = ", ".join(p.name for p in self.unknown)
            line += f" (without {names}: unknown price, left out of the total)"
        return line


def _hosts(name: str, count: int, instance_type: str, region: str) -> CostPart:
    price = instance_price(instance_type, region)
    label = f"{name} ({count} x {instance_type})"
    if price is None:
        return CostPart(label, None, f"no sourced on-demand price for {instance_type}")
    return CostPart(label, count * price.usd, price.label(region))


def cost_estimate(
    cluster: Any,
    file_system: Any | None = None,
    *,
    scheduler: Any | None = None,
    vault: Any | None = None,
) -> CostEstimate:
    """The cluster's price per hour, part by part (``TrainiumCluster``, its ``TrainingFileSystem``,
    ``SlurmScheduler`` and ``EnclaveKeyVault``, each optional but the cluster)."""
    region = cdk.Stack.of(cluster).region
    spec = cluster.spec
    price: Price | None = cluster.node_price
    nodes = f"nodes ({cluster.nodes} x {spec.instance_type})"
    parts: list[CostPart] = []
    if price is None:
        why = f"no sourced on-demand price for {spec.instance_type}"
        if cluster.capacity.kind.value != "on-demand":
            why += f" ({cluster.capacity.kind.value}: give hourly_price / -c hourlyPrice=)"
        parts.append(CostPart(nodes, None, why))
    else:
        parts.append(CostPart(nodes, cluster.nodes * price.usd, price.label(region)))
    if scheduler is not None:
        parts.append(_hosts("Slurm controller", 1, scheduler.controller_instance_type, region))
    if vault is not None:
        parts.append(_hosts("enclave vault hosts", vault.hosts, vault.spec.instance_type, region))
    if file_system is not None:
        parts.append(_file_system_part(file_system, region))
    return CostEstimate(tuple(parts))


def _file_system_part(file_system: Any, region: str) -> CostPart:
    gib = getattr(file_system, "storage_capacity_gib", None)
    throughput = getattr(file_system, "per_unit_storage_throughput", None)
    deployment = getattr(getattr(file_system, "deployment_type", None), "value", None)
    if gib is None or throughput is None:
        return CostPart("FSx for Lustre", None, "an imported file system: its size is not known")
    name = f"FSx for Lustre ({gib} GiB at {throughput} MB/s/TiB)"
    price = fsx_lustre_price(throughput, region) if deployment == "PERSISTENT_2" else None
    if price is None:
        return CostPart(name, None, f"no sourced price for {deployment} at {throughput} MB/s/TiB")
    per_hour = gib * price.usd / HOURS_PER_MONTH
    return CostPart(name, per_hour, f"${price.usd}/GiB-month, {price.label(region)}")


def format_cost(estimate: CostEstimate) -> str:
    """The total first, then each part with its source."""
    width = max(len(p.name) for p in estimate.parts)
    lines = [f"cdk-trn estimated cost: {estimate.headline()}"]
    for part in estimate.parts:
        amount = "unknown" if part.usd_per_hour is None else f"${part.usd_per_hour:.2f}/h"
        lines.append(f"  {part.name.ljust(width)}  {amount.rjust(9)}  {part.source}")
    return "\n".join(lines)


def format_cluster_summary(
    cluster: Any,
    file_system: Any | None = None,
    *,
    scheduler: Any | None = None,
    vault: Any | None = None,
) -> str:
    """Format a ``TrainiumCluster`` (and its optional ``TrainingFileSystem``, ``SlurmScheduler``
    and ``EnclaveKeyVault``): its estimated cost first, then a short table of what it is."""
    s = cluster.summary()
    spec = cluster.spec
    rows = [
        ("instance type", f"{s['instance_type']} ({spec.chips} x {spec.accelerator} per node)"),
        ("nodes", f"{s['nodes']} in {s['availability_zone']} ({s['capacity']})"),
        ("Trainium chips", f"{s['chips']}"),
        ("peak BF16", f"{s['peak_bf16_pflops']:.2f} PFLOPS (dense)"),
        ("EFA", f"{s['efa_tbps']:.1f} Tbps aggregate ({spec.efa_devices} EFA devices per node)"),
        ("HBM", f"{s['hbm_gib']:,} GiB"),
    ]
    if file_system is not None:
        per_node = file_system.throughput_gbps / max(cluster.nodes, 1)
        rows += [
            (
                "FSx for Lustre",
                f"{file_system.storage_capacity_gib:,} GiB at {file_system.mount_path}",
            ),
            (
                "FSx throughput",
                f"{file_system.throughput_gbps:.2f} GB/s aggregate, {per_node:.2f} GB/s per node",
            ),
        ]
    width = max(len(k) for k, _ in rows)
    estimate = cost_estimate(cluster, file_system, scheduler=scheduler, vault=vault)
    lines = [format_cost(estimate), "cdk-trn cluster summary"]
    lines += [f"  {k.ljust(width)}  {v}" for k, v in rows]
    return "\n".join(lines)
