"""Storage for training: FSx for Lustre, the dataset and checkpoint buckets, the storage key.

Everything here is stateful and retained on stack delete; the cluster stack consumes it.
``file_system`` holds ``TrainingFileSystem`` (over ``file_system_base``, shared with its importer),
``metadata``, ``data_repository`` and ``lustre_access`` what it is configured and reached with.
``sizing`` is plain Python (no CDK) and says which capacity and throughput give a target GB/s.
"""

from cdk_trn.storage.buckets import TrainingBuckets, storage_key
from cdk_trn.storage.data_repository import (
    ALL_EVENTS,
    DataRepositoryAssociation,
    DataRepositoryEvent,
    default_data_repository_associations,
)
from cdk_trn.storage.file_system import DataCompression, DeploymentType, TrainingFileSystem
from cdk_trn.storage.metadata import MetadataConfiguration, MetadataMode
from cdk_trn.storage.sizing import SizingChoice, size_for_throughput, throughput_per_node_gbps

__all__ = [
    "ALL_EVENTS",
    "DataCompression",
    "DataRepositoryAssociation",
    "DataRepositoryEvent",
    "DeploymentType",
    "MetadataConfiguration",
    "MetadataMode",
    "SizingChoice",
    "TrainingBuckets",
    "TrainingFileSystem",
    "default_data_repository_associations",
    "size_for_throughput",
    "storage_key",
    "throughput_per_node_gbps",
]
