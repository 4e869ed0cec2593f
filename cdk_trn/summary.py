"""The human summary ``make synth`` prints: what the cluster is, in the figures that matter."""

from __future__ import annotations

from typing import Any


def format_cluster_summary(cluster: Any, file_system: Any | None = None) -> str:
    """Format a ``TrainiumCluster`` (and its optional ``TrainingFileSystem``) as a short table."""
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
    lines = ["cdk-trn cluster summary"] + [f"  {k.ljust(width)}  {v}" for k, v in rows]
    return "\n".join(lines)
