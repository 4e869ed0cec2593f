"""The stateful stack: the network and everything that must outlive a cluster.

Keys, buckets and the FSx for Lustre file system are retained on delete (and the stack has
termination protection); the cluster stack can be destroyed and recreated without touching this one.
Its access-log bucket also receives the server access logs of the later stacks' buckets (the
acceptance results, the vault state), each under its own prefix, so those logs outlive the stacks
they describe and every S3 access log of the app is in one bucket.
"""

from __future__ import annotations

import aws_cdk as cdk
from constructs import Construct

from cdk_trn.acceptance import RESULTS_ACCESS_LOG_PREFIX
from cdk_trn.enclave.vault import STATE_ACCESS_LOG_PREFIX
from cdk_trn.interfaces import ITrainingNetwork
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
        # -c vpcId=vpc-... -c subnetId=subnet-...: an existing network (no lookup at synth).
        self.network: ITrainingNetwork = (
            TrainingNetwork.from_attributes(
                self,
                "Network",
                vpc_id=config.vpc_id,
                subnet_id=config.subnet_id,
                availability_zone=config.availability_zone,
                vpc_cidr_block=config.vpc_cidr_block,
            )
            if config.vpc_id is not None and config.subnet_id is not None
            else TrainingNetwork(
                self,
                "Network",
                availability_zone=config.availability_zone,
                nat_egress=config.nat_egress,
            )
        )
        self.buckets = TrainingBuckets(self, "Buckets")
        # The later stacks' buckets log here; this stack cannot name them (they depend on it).
        if config.acceptance:
            self.buckets.admit_access_logs(RESULTS_ACCESS_LOG_PREFIX)
        if config.enclave_vault:
            self.buckets.admit_access_logs(STATE_ACCESS_LOG_PREFIX)
        self.file_system = TrainingFileSystem(
            self,
            "FileSystem",
            network=self.network,
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
