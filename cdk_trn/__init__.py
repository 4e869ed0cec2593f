"""cdk-trn: AWS CDK constructs for training on AWS Trainium2.

The constructs live here; what runs on instances, in handlers, in the enclave and in the
container lives in ``cdk_trn_runtime``, which never imports aws-cdk-lib.
"""

from cdk_trn.acceptance import (
    AcceptanceRun,
    AcceptanceThresholds,
    AcceptanceWorkload,
    NeuronTrainingImage,
)
from cdk_trn.alarm_topic import ClusterEventsTopic
from cdk_trn.capacity import Capacity, CapacityKind
from cdk_trn.catalog import INSTANCE_SPECS, InstanceSpec, instance_spec
from cdk_trn.cluster import TrainiumCluster
from cdk_trn.enclave import EnclaveImage, EnclaveKeyVault
from cdk_trn.errors import CdkTrnError
from cdk_trn.interfaces import ITrainingFileSystem, ITrainingNetwork
from cdk_trn.launch_template import EfaInterfaceMode, efa_network_interfaces
from cdk_trn.machine_image import NeuronMachineImage, NodeOs
from cdk_trn.network import TrainingNetwork
from cdk_trn.observability import ClusterDashboard
from cdk_trn.preflight import Preflight
from cdk_trn.researcher_access import ResearcherAccess
from cdk_trn.scheduler import SlurmScheduler
from cdk_trn.security import EfaSecurityGroup
from cdk_trn.storage import (
    DataRepositoryAssociation,
    MetadataConfiguration,
    TrainingBuckets,
    TrainingFileSystem,
    size_for_throughput,
)

__version__ = "0.1.0"

__all__ = [
    "AcceptanceRun",
    "AcceptanceThresholds",
    "AcceptanceWorkload",
    "Capacity",
    "CapacityKind",
    "CdkTrnError",
    "ClusterDashboard",
    "ClusterEventsTopic",
    "DataRepositoryAssociation",
    "EfaInterfaceMode",
    "EfaSecurityGroup",
    "EnclaveImage",
    "EnclaveKeyVault",
    "INSTANCE_SPECS",
    "ITrainingFileSystem",
    "ITrainingNetwork",
    "InstanceSpec",
    "MetadataConfiguration",
    "NeuronMachineImage",
    "NeuronTrainingImage",
    "NodeOs",
    "Preflight",
    "ResearcherAccess",
    "SlurmScheduler",
    "TrainingBuckets",
    "TrainingFileSystem",
    "TrainingNetwork",
    "TrainiumCluster",
    "efa_network_interfaces",
    "instance_spec",
    "size_for_throughput",
]
