"""Storage for training: FSx for Lustre, the dataset and checkpoint buckets, the storage key.

Everything here is stateful and retained on stack delete; the cluster stack consumes it.
The sizing helper is plain Python: ``import cdk_trn.storage.sizing`` (or the names re-exported
here from it) does not load the CDK; the construct names load it on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from cdk_trn.storage.sizing import SizingChoice, size_for_throughput, throughput_per_node_gbps

if TYPE_CHECKING:
    from cdk_trn.storage.buckets import TrainingBuckets, storage_key
    from cdk_trn.storage.file_system import (
        ALL_EVENTS,
        DataCompression,
        DataRepositoryAssociation,
        DataRepositoryEvent,
        DeploymentType,
        MetadataConfiguration,
        MetadataMode,
        TrainingFileSystem,
        default_data_repository_associations,
    )

_LAZY = {
    "TrainingBuckets": "cdk_trn.storage.buckets",
    "storage_key": "cdk_trn.storage.buckets",
    "ALL_EVENTS": "cdk_trn.storage.file_system",
    "DataCompression": "cdk_trn.storage.file_system",
    "DataRepositoryAssociation": "cdk_trn.storage.file_system",
    "DataRepositoryEvent": "cdk_trn.storage.file_system",
    "DeploymentType": "cdk_trn.storage.file_system",
    "MetadataConfiguration": "cdk_trn.storage.file_system",
    "MetadataMode": "cdk_trn.storage.file_system",
    "TrainingFileSystem": "cdk_trn.storage.file_system",
    "default_data_repository_associations": "cdk_trn.storage.file_system",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'cdk_trn.storage' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


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
