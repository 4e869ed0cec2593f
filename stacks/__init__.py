"""The default composition of cdk-trn: a stateful storage stack, a cluster stack and (optional)
an enclave key vault stack."""

from __future__ import annotations

from dataclasses import dataclass

import aws_cdk as cdk

from cdk_trn.cluster import TrainiumCluster
from stacks.cluster_stack import ClusterStack
from stacks.config import AppConfig
from stacks.storage_stack import StorageStack
from stacks.vault_stack import VaultStack


@dataclass(frozen=True)
class DefaultApp:
    config: AppConfig
    storage_stack: StorageStack
    cluster_stack: ClusterStack
    vault_stack: VaultStack | None

    @property
    def cluster(self) -> TrainiumCluster:
        return self.cluster_stack.cluster


def build_default_app(app: cdk.App, config: AppConfig | None = None) -> DefaultApp:
    """Build the default stacks into ``app`` from ``config`` (default: the app's context)."""
    config = config or AppConfig.from_context(app.node)
    env = cdk.Environment(region=config.region)
    storage = StorageStack(
        app,
        f"{config.prefix}-storage",
        config=config,
        env=env,
        description="cdk-trn: network and retained storage (keys, buckets, FSx for Lustre)",
        termination_protection=True,
    )
    cluster = ClusterStack(
        app,
        f"{config.prefix}-cluster",
        config=config,
        storage=storage,
        env=env,
        description="cdk-trn: Trainium2 training cluster",
    )
    cluster.add_stack_dependency(storage)
    vault = None
    if config.enclave_vault:
        vault = VaultStack(
            app,
            f"{config.prefix}-vault",
            cluster=cluster.cluster,
            access_log_bucket=storage.buckets.access_log_bucket,
            env=env,
            description="cdk-trn: Nitro Enclave key vault that signs checkpoint manifests",
        )
        vault.add_stack_dependency(cluster)
    return DefaultApp(config, storage, cluster, vault)
