"""cdk-trn: AWS CDK constructs for training on AWS Trainium2.

``from cdk_trn import TrainiumCluster, TrainingNetwork, ...`` works as usual, but names are
loaded on first use: ``import cdk_trn`` itself imports neither aws-cdk-lib nor any third-party
package, because the enclave hosts run ``cdk_trn.enclave.parent`` with a bare Python and the
container suite must never see torch through this package.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from cdk_trn.acceptance import (
        AcceptanceRun,
        AcceptanceThresholds,
        AcceptanceWorkload,
        NeuronTrainingImage,
    )
    from cdk_trn.capacity import Capacity, CapacityKind
    from cdk_trn.catalog import INSTANCE_SPECS, InstanceSpec, instance_spec
    from cdk_trn.cluster import TrainiumCluster
    from cdk_trn.enclave.image import EnclaveImage
    from cdk_trn.enclave.vault import EnclaveKeyVault
    from cdk_trn.errors import CdkTrnError
    from cdk_trn.launch_template import EfaInterfaceMode, efa_network_interfaces
    from cdk_trn.machine_image import NeuronMachineImage, NodeOs
    from cdk_trn.network import TrainingNetwork
    from cdk_trn.security import EfaSecurityGroup
    from cdk_trn.storage import (
        DataRepositoryAssociation,
        MetadataConfiguration,
        TrainingBuckets,
        TrainingFileSystem,
        size_for_throughput,
    )

_EXPORTS = {
    "AcceptanceRun": "cdk_trn.acceptance",
    "AcceptanceThresholds": "cdk_trn.acceptance",
    "AcceptanceWorkload": "cdk_trn.acceptance",
    "NeuronTrainingImage": "cdk_trn.acceptance",
    "Capacity": "cdk_trn.capacity",
    "CapacityKind": "cdk_trn.capacity",
    "INSTANCE_SPECS": "cdk_trn.catalog",
    "InstanceSpec": "cdk_trn.catalog",
    "instance_spec": "cdk_trn.catalog",
    "TrainiumCluster": "cdk_trn.cluster",
    "EnclaveImage": "cdk_trn.enclave.image",
    "EnclaveKeyVault": "cdk_trn.enclave.vault",
    "CdkTrnError": "cdk_trn.errors",
    "EfaInterfaceMode": "cdk_trn.launch_template",
    "efa_network_interfaces": "cdk_trn.launch_template",
    "NeuronMachineImage": "cdk_trn.machine_image",
    "NodeOs": "cdk_trn.machine_image",
    "TrainingNetwork": "cdk_trn.network",
    "EfaSecurityGroup": "cdk_trn.security",
    "DataRepositoryAssociation": "cdk_trn.storage",
    "MetadataConfiguration": "cdk_trn.storage",
    "TrainingBuckets": "cdk_trn.storage",
    "TrainingFileSystem": "cdk_trn.storage",
    "size_for_throughput": "cdk_trn.storage",
}

__all__ = [
    "AcceptanceRun",
    "AcceptanceThresholds",
    "AcceptanceWorkload",
    "Capacity",
    "CapacityKind",
    "CdkTrnError",
    "DataRepositoryAssociation",
    "EfaInterfaceMode",
    "EfaSecurityGroup",
    "EnclaveImage",
    "EnclaveKeyVault",
    "INSTANCE_SPECS",
    "InstanceSpec",
    "MetadataConfiguration",
    "NeuronMachineImage",
    "NeuronTrainingImage",
    "NodeOs",
    "TrainingBuckets",
    "TrainingFileSystem",
    "TrainingNetwork",
    "TrainiumCluster",
    "efa_network_interfaces",
    "instance_spec",
    "size_for_throughput",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'cdk_trn' has no attribute {name!r}")
    return getattr(import_module(module), name)
