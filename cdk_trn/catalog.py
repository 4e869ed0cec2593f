"""Facts per instance type: the single place that owns them.

Plain Python, no CDK import, so the container, the compliance rules and the summary can all use it.
Sources are in ``../shared/FACTS.md``; each value that is not confirmed there says so here.

* Trainium instance facts: Neuron docs ``about-neuron/arch/neuron-hardware/trn2-arch.rst``,
  ``trainium2.rst``, ``trn1-arch.rst``; network cards from aws/amazon-vpc-cni-k8s
  ``pkg/vpc/vpc_ip_resource_limit.go``; EFA counts from the Karpenter instance-types reference.
* Regions: cfn-lint's per-region instance-type data (gathered from the EC2 pricing API), which is
  what ``cfn-lint --regions`` judges a template by. Types that are sold only as Capacity Blocks
  (trn2u.48xlarge, trn2.3xlarge) are absent from that data; their regions come from AWS launch
  announcements and are marked unconfirmed (``regions_confirmed=False``).
* Enclave hosts: the Nitro Enclaves user guide (``nitro-enclave.html#nitro-enclave-reqs``): Nitro
  based Intel/AMD/Graviton instances with at least 4 vCPUs, except the listed exclusions (which
  include Trn1/Trn1n, see FACTS.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cdk_trn.errors import CdkTrnError


@dataclass(frozen=True)
class InstanceSpec:
    """What one Trainium instance type is. Derived figures are methods, never stored copies."""

    instance_type: str
    accelerator: str
    chips: int
    neuron_cores: int  # physical NeuronCores
    neuron_core_version: str
    default_logical_nc_config: int  # NEURON_LOGICAL_NC_CONFIG default (trn2: 2, trn1: 1)
    hbm_gib_per_chip: int
    hbm_gbps_per_chip: float  # GB/s (10^9 bytes)
    peak_bf16_tflops_per_chip: float  # dense
    peak_fp8_tflops_per_chip: float | None
    vcpus: int
    memory_gib: int
    network_cards: int
    max_interfaces_per_card: int
    efa_devices: int
    efa_gbps: int
    local_nvme_gb: int
    regions: tuple[str, ...]
    regions_confirmed: bool = True
    ultraserver_size: int | None = (
        None  # instances per UltraServer; None: not an UltraServer member
    )
    capacity_block_only: bool = False
    notes: tuple[str, ...] = field(default=())

    @property
    def has_efa(self) -> bool:
        return self.efa_devices > 0

    @property
    def is_ultraserver(self) -> bool:
        return self.ultraserver_size is not None

    @property
    def neuron_devices(self) -> int:
        """Neuron devices the driver exposes (/dev/neuron*): one per chip."""
        return self.chips

    @property
    def logical_cores_per_chip(self) -> int:
        """NeuronCores the runtime exposes per chip at the default logical NeuronCore config
        (one XLA device, and one training rank, each)."""
        return max(1, self.neuron_cores // self.chips // self.default_logical_nc_config)

    @property
    def hbm_gib(self) -> int:
        return self.chips * self.hbm_gib_per_chip

    @property
    def peak_bf16_tflops(self) -> float:
        return self.chips * self.peak_bf16_tflops_per_chip

    def cluster_chips(self, nodes: int) -> int:
        return self.chips * nodes

    def cluster_peak_bf16_pflops(self, nodes: int) -> float:
        return self.peak_bf16_tflops * nodes / 1000.0

    def cluster_efa_tbps(self, nodes: int) -> float:
        return self.efa_gbps * nodes / 1000.0

    def cluster_hbm_gib(self, nodes: int) -> int:
        return self.hbm_gib * nodes

    def offered_in(self, region: str) -> bool:
        return region in self.regions


_TRN2_COMMON = dict(
    accelerator="Trainium2",
    neuron_core_version="NeuronCore-v3",
    default_logical_nc_config=2,
    hbm_gib_per_chip=96,
    hbm_gbps_per_chip=2900.0,
    peak_bf16_tflops_per_chip=667.0,
    peak_fp8_tflops_per_chip=1299.0,
)

#: trn2.48xlarge and trn2u.48xlarge are the same machine; trn2u instances join UltraServers.
_TRN2_48XLARGE = dict(
    chips=16,
    neuron_cores=128,
    vcpus=192,
    memory_gib=2048,
    network_cards=16,
    max_interfaces_per_card=2,
    efa_devices=16,
    efa_gbps=3200,
    local_nvme_gb=4 * 1920,
)

_TRN1_COMMON = dict(
    accelerator="Trainium",
    chips=16,
    neuron_cores=32,
    neuron_core_version="NeuronCore-v2",
    default_logical_nc_config=1,
    hbm_gib_per_chip=32,
    hbm_gbps_per_chip=880.0,  # 820 GiB/s
    peak_bf16_tflops_per_chip=190.0,
    peak_fp8_tflops_per_chip=None,
    vcpus=128,
    memory_gib=512,
    local_nvme_gb=7600,
    regions=("us-east-1", "us-east-2", "us-west-2"),
)

_SPECS: tuple[InstanceSpec, ...] = (
    InstanceSpec(
        instance_type="trn2.48xlarge",
        **_TRN2_48XLARGE,  # type: ignore[arg-type]
        regions=("ap-south-2", "us-east-2"),
        **_TRN2_COMMON,  # type: ignore[arg-type]
    ),
    InstanceSpec(
        instance_type="trn2u.48xlarge",
        **_TRN2_48XLARGE,  # type: ignore[arg-type]
        # Unconfirmed: sold only as UltraServer Capacity Blocks, absent from the pricing data.
        regions=("us-east-2",),
        regions_confirmed=False,
        ultraserver_size=4,
        capacity_block_only=True,
        **_TRN2_COMMON,  # type: ignore[arg-type]
    ),
    InstanceSpec(
        instance_type="trn2.3xlarge",
        chips=1,
        neuron_cores=8,
        vcpus=12,
        memory_gib=128,
        network_cards=1,
        max_interfaces_per_card=2,  # unconfirmed; only the primary ENA interface is used
        efa_devices=0,
        efa_gbps=0,
        local_nvme_gb=470,
        # Unconfirmed, absent from the pricing data: users report launching (and capacity errors)
        # in ap-southeast-4 and sa-east-1 and none in us-east (aws-neuron/nki-moe issues 9, 14).
        regions=("ap-southeast-4", "sa-east-1"),
        regions_confirmed=False,
        **_TRN2_COMMON,  # type: ignore[arg-type]
    ),
    InstanceSpec(
        instance_type="trn1.32xlarge",
        network_cards=8,
        max_interfaces_per_card=5,
        efa_devices=8,
        efa_gbps=800,
        **_TRN1_COMMON,  # type: ignore[arg-type]
    ),
    InstanceSpec(
        instance_type="trn1n.32xlarge",
        network_cards=16,
        max_interfaces_per_card=5,
        efa_devices=16,
        efa_gbps=1600,
        **_TRN1_COMMON,  # type: ignore[arg-type]
    ),
)

INSTANCE_SPECS: dict[str, InstanceSpec] = {s.instance_type: s for s in _SPECS}


def instance_spec(instance_type: str) -> InstanceSpec:
    """The catalog entry for ``instance_type``; an unknown type is an error listing the known."""
    try:
        return INSTANCE_SPECS[instance_type]
    except KeyError:
        known = ", ".join(sorted(INSTANCE_SPECS))
        raise CdkTrnError(f"instance_type must be one of {known}, got {instance_type!r}") from None


# --- Enclave hosts ---------------------------------------------------------------------------


@dataclass(frozen=True)
class EnclaveHostSpec:
    """An instance type that can host a Nitro Enclave beside the cluster."""

    instance_type: str
    vcpus: int
    memory_gib: int


def _enclave_hosts() -> dict[str, EnclaveHostSpec]:
    # Intel Nitro families documented as enclave-capable; sizes with at least 4 vCPUs
    # (the parent keeps 2, the enclave gets whole cores).
    memory_per_vcpu = {"c": 2, "m": 4, "r": 8}
    sizes = {"xlarge": 4, "2xlarge": 8, "4xlarge": 16, "8xlarge": 32}
    hosts: dict[str, EnclaveHostSpec] = {}
    for family in ("c6i", "m6i", "r6i", "c7i", "m7i", "r7i"):
        for size, vcpus in sizes.items():
            name = f"{family}.{size}"
            hosts[name] = EnclaveHostSpec(name, vcpus, vcpus * memory_per_vcpu[family[0]])
    return hosts


ENCLAVE_HOST_SPECS: dict[str, EnclaveHostSpec] = _enclave_hosts()


def enclave_host_spec(instance_type: str) -> EnclaveHostSpec:
    try:
        return ENCLAVE_HOST_SPECS[instance_type]
    except KeyError:
        known = ", ".join(sorted(ENCLAVE_HOST_SPECS))
        raise CdkTrnError(
            "enclave instance_type must be an enclave-capable type with at least 4 vCPUs "
            f"({known}), got {instance_type!r}"
        ) from None
