"""The stateful stack: the network and everything that must outlive a cluster.

Keys, buckets and the FSx for Lustre file system are retained on delete (and the stack has
termination protection); the cluster stack can be destroyed and recreated without touching this one.
"""

from __future__ import annotations

import aws_cdk as cdk
from constructs import Construct

from cdk_trn.network import TrainingNetwork
from cdk_trn.storage import (
    MetadataConfiguration,
    TrainingBuckets,
    TrainingFileSystem,
    default_data_repository_associations,
)
from stacks.config import AppConfig


class StorageStack(cdk.Stack):
    def __init__(self, scope: Construct, id: str, *, config: AppConfig, **kwargs: object) -> None:
        super().__init__(scope, id, **kwargs)  # type: ignore[arg-type]
        self.network = TrainingNetwork(
            self,
            "Network",
            availability_zone=config.availability_zone,
            nat_egress=config.nat_egress,
        )
        self.buckets = TrainingBuckets(self, "Buckets")
        self.file_system = TrainingFileSystem(
            self,
            "FileSystem",
            vpc=self.network.vpc,
            subnet=self.network.subnet,
            storage_capacity_gib=config.fsx_capacity_gib,
            per_unit_storage_throughput=config.fsx_throughput,
            encryption_key=self.buckets.encryption_key,
            data_repository_associations=default_data_repository_associations(self.buckets),
            efa_enabled=config.fsx_efa,
            metadata_configuration=MetadataConfiguration.automatic() if config.fsx_efa else None,
        )
        fs = self.file_system
        for label, value, description in (
            (
                "DatasetBucketName",
                self.buckets.dataset_bucket.bucket_name,
                "datasets (/fsx/datasets)",
            ),
            (
                "CheckpointBucketName",
                self.buckets.checkpoint_bucket.bucket_name,
                "checkpoints (/fsx/checkpoints)",
            ),
            ("FileSystemId", fs.file_system_id, "FSx for Lustre file system"),
            ("FileSystemThroughputGBps", f"{fs.throughput_gbps:.2f}", "aggregate GB/s"),
        ):
            cdk.CfnOutput(self, label, value=value, description=description)
