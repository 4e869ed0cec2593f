"""The ``CDK_TRN_*`` boot variables: what each instance role's user data carries and its boot
bundle's scripts read (from ``boot.env``, written by ``cdk_trn_runtime/node/launcher.sh``).

One message per role (:class:`NodeBoot`, :class:`ControllerBoot`, :class:`VaultBoot`), built by
its construct (``cdk_trn.cluster``, ``cdk_trn.scheduler``, ``cdk_trn.enclave.vault``) and rendered
by ``cdk_trn._boot`` with :meth:`Message.to_environment` (declaration order: the order of the user
data's lines), plus the launcher's own variables (:class:`LauncherVariables`). The twin and the
tests read them back with :meth:`Message.from_environment`. Integers are decimal, flags ``1``/``0``.

Every role carries ``CDK_TRN_REGION``, ``CDK_TRN_STACK`` and ``CDK_TRN_RESOURCE``: the launcher
signals FAILURE to that resource when the bundle cannot be fetched or checked.

Standard library only.
"""

from __future__ import annotations

from dataclasses import dataclass

from cdk_trn_runtime.contract import (
    ENV_CLUSTER,
    SLURM_ENV_EXPECTED_EFA,
    SLURM_ENV_EXPECTED_NEURON,
    SLURM_ENV_REGION,
)
from cdk_trn_runtime.contract.cluster_document import ClusterDocument
from cdk_trn_runtime.contract.message import Message, key

#: Every boot variable starts with this (the launcher hands exactly these to ``boot.env``).
PREFIX = "CDK_TRN_"

# Variables more than one role carries.
REGION = SLURM_ENV_REGION
STACK = "CDK_TRN_STACK"
RESOURCE = "CDK_TRN_RESOURCE"
NODE_OS = "CDK_TRN_NODE_OS"
FSX_DNS = "CDK_TRN_FSX_DNS"
FSX_MOUNT_NAME = "CDK_TRN_FSX_MOUNT_NAME"
FSX_MOUNT_PATH = "CDK_TRN_FSX_MOUNT_PATH"
FSX_EFA = "CDK_TRN_FSX_EFA"
SLURM_IMAGE = "CDK_TRN_SLURM_IMAGE"
SLURM_KEY_SECRET = "CDK_TRN_SLURM_KEY_SECRET"  # noqa: S105 - the variable's name, not a secret
SLURM_CONTROLLER_PARAMETER = "CDK_TRN_SLURM_CONTROLLER_PARAMETER"


@dataclass(frozen=True)
class BootVariables(Message):
    """Base of a role's boot variables (each role declares its own, in its user data's order,
    ``region``, ``stack`` and ``resource`` among them)."""

    DESCRIPTION = "boot variables"


@dataclass(frozen=True)
class NodeBoot(BootVariables):
    """A Trainium node's (``node_bootstrap.sh``)."""

    DESCRIPTION = "node boot variables"

    region: str = key(REGION)
    signer_role: str = key("CDK_TRN_SIGNER_ROLE", doc="the role the node's signing agent assumes")
    stack: str = key(STACK)
    resource: str = key(RESOURCE, doc="the nodes' Auto Scaling group (logical id)")
    cluster: str = key(ENV_CLUSTER)
    node_os: str = key(NODE_OS, doc="cdk_trn.machine_image's OS (e.g. ubuntu-24.04)")
    expected_neuron_devices: int = key(SLURM_ENV_EXPECTED_NEURON)
    expected_efa_devices: int = key(SLURM_ENV_EXPECTED_EFA)
    logical_nc: int = key("CDK_TRN_LOGICAL_NC", doc="NEURON_LOGICAL_NC_CONFIG")
    ultraserver_size: int = key("CDK_TRN_ULTRASERVER_SIZE", doc="0 unless an UltraServer block")
    fsx_dns: str = key(FSX_DNS, doc="empty without a shared file system")
    fsx_mount_name: str = key(FSX_MOUNT_NAME)
    fsx_mount_path: str = key(FSX_MOUNT_PATH)
    fsx_efa: bool = key(FSX_EFA, doc="mount the file system over EFA")
    compile_cache: str = key("CDK_TRN_COMPILE_CACHE")
    rendezvous_ports: str = key("CDK_TRN_RENDEZVOUS_PORTS", doc="low-high, reserved")
    slurm_image: str = key(SLURM_IMAGE, doc="empty without Slurm")
    slurm_key_secret: str = key(SLURM_KEY_SECRET)
    slurm_controller_parameter: str = key(SLURM_CONTROLLER_PARAMETER)
    slurm_features: str = key("CDK_TRN_SLURM_FEATURES", doc="comma-separated static features")
    slurm_register_seconds: int = key("CDK_TRN_SLURM_REGISTER_SECONDS")
    boot_seconds: int = key("CDK_TRN_BOOT_SECONDS", doc="how long a node's boot takes")
    signal_seconds: int = key("CDK_TRN_SIGNAL_SECONDS", doc="the group's signal timeout")


@dataclass(frozen=True)
class ControllerBoot(BootVariables):
    """The Slurm controller's (``controller_bootstrap.sh``)."""

    DESCRIPTION = "controller boot variables"

    region: str = key(REGION)
    stack: str = key(STACK)
    resource: str = key(RESOURCE, doc="the controller's Auto Scaling group (logical id)")
    cluster: str = key(ENV_CLUSTER)
    node_os: str = key(NODE_OS)
    fsx_dns: str = key(FSX_DNS)
    fsx_mount_name: str = key(FSX_MOUNT_NAME)
    fsx_mount_path: str = key(FSX_MOUNT_PATH)
    fsx_efa: bool = key(FSX_EFA)
    slurm_image: str = key(SLURM_IMAGE)
    slurm_key_secret: str = key(SLURM_KEY_SECRET)
    slurm_controller_parameter: str = key(SLURM_CONTROLLER_PARAMETER)
    slurm_spec: ClusterDocument = key("CDK_TRN_SLURM_SPEC", doc="the cluster document's JSON")


@dataclass(frozen=True)
class VaultBoot(BootVariables):
    """An enclave vault host's (``host_bootstrap.sh``)."""

    DESCRIPTION = "vault host boot variables"

    region: str = key(REGION)
    stack: str = key(STACK)
    resource: str = key(RESOURCE, doc="the hosts' Auto Scaling group (logical id)")
    eif_bucket: str = key("CDK_TRN_EIF_BUCKET")
    eif_key: str = key("CDK_TRN_EIF_KEY")
    expected_pcr0: str = key("CDK_TRN_EXPECTED_PCR0")
    enclave_cpu_count: int = key("CDK_TRN_ENCLAVE_CPU_COUNT")
    enclave_memory_mib: int = key("CDK_TRN_ENCLAVE_MEMORY_MIB")
    enclave_cid: int = key("CDK_TRN_ENCLAVE_CID")
    kms_proxy_port: int = key("CDK_TRN_KMS_PROXY_PORT", doc="vsock port of the KMS proxy")
    service_port: int = key("CDK_TRN_SERVICE_PORT")
    kms_key_arn: str = key("CDK_TRN_KMS_KEY_ARN")
    allowed_role_arns: str = key("CDK_TRN_ALLOWED_ROLE_ARNS", doc="space-separated")
    max_clients: int = key("CDK_TRN_MAX_CLIENTS")
    state_bucket: str = key("CDK_TRN_STATE_BUCKET")
    key_state_object: str = key("CDK_TRN_KEY_STATE_OBJECT")
    public_key_parameter: str = key("CDK_TRN_PUBLIC_KEY_PARAMETER")
    url_parameters: str = key("CDK_TRN_URL_PARAMETERS", doc="space-separated")


@dataclass(frozen=True)
class LauncherVariables(Message):
    """What the launcher (``launcher.sh``) needs besides the role's variables: the boot bundle's
    coordinates and digest, the entry script and the boot log group."""

    DESCRIPTION = "launcher variables"

    bucket: str = key("CDK_TRN_BOOT_BUCKET")
    object_key: str = key("CDK_TRN_BOOT_KEY")
    sha256: str = key("CDK_TRN_BOOT_SHA256", doc="of the bundle's archive, checked before use")
    entry: str = key("CDK_TRN_BOOT_ENTRY", doc="the role's entry script in the bundle")
    log_group: str = key("CDK_TRN_BOOT_LOG_GROUP")


#: The message of each role (``cdk_trn_runtime.node.bundle.ROLES``).
ROLE_VARIABLES: dict[str, type[BootVariables]] = {
    "node": NodeBoot,
    "controller": ControllerBoot,
    "vault": VaultBoot,
}
