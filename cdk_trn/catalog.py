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
* Hosts beside the cluster (the Slurm controller, enclave hosts): vCPUs and memory from the EC2
  instance types guide (``instancetypes/gp.html``, ``co.html``, ``mo.html``: c6i/c7i have 2 GiB,
  m6i/m7i 4 GiB and r6i/r7i 8 GiB per vCPU); every type is checked against cfn-lint's EC2
  instance-type data by the tests. Nitro Enclaves support from the Nitro Enclaves user guide
  (``nitro-enclave.html#nitro-enclave-reqs``): Nitro based Intel/AMD instances with at least 4
  vCPUs, except the listed exclusions (which include Trn1/Trn1n, see FACTS.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cdk_trn.errors import CdkTrnError, invalid


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


# --- Hosts beside the cluster ---------------------------------------------------------------


@dataclass(frozen=True)
class HostSpec:
    """An x86_64 instance type that runs beside the Trainium nodes: the Slurm controller (which
    runs the x86_64 training image) or an enclave host."""

    instance_type: str
    vcpus: int
    memory_gib: int
    #: It can be a Nitro Enclaves parent (an Intel Nitro type with at least 4 vCPUs).
    nitro_enclaves: bool


#: Intel/AMD Nitro Enclaves parents need at least this many vCPUs (the enclave takes whole cores,
#: the parent keeps 2).
MIN_ENCLAVE_HOST_VCPUS = 4
#: GiB of memory per vCPU of each family (general purpose m, compute optimized c, memory
#: optimized r); all six are Intel Nitro types that can host an enclave.
_GIB_PER_VCPU = {"c6i": 2, "c7i": 2, "m6i": 4, "m7i": 4, "r6i": 8, "r7i": 8}
#: vCPUs per size, the same in these families; the sizes every one of them has up to 8xlarge
#: (larger hosts buy neither a controller nor an enclave anything).
_VCPUS = {"large": 2, "xlarge": 4, "2xlarge": 8, "4xlarge": 16, "8xlarge": 32}


def _hosts() -> dict[str, HostSpec]:
    hosts: dict[str, HostSpec] = {}
    for family, gib_per_vcpu in _GIB_PER_VCPU.items():
        for size, vcpus in _VCPUS.items():
            name = f"{family}.{size}"
            hosts[name] = HostSpec(
                name, vcpus, vcpus * gib_per_vcpu, nitro_enclaves=vcpus >= MIN_ENCLAVE_HOST_VCPUS
            )
    return hosts


#: Every host type the library launches beside the cluster, by name.
HOST_SPECS: dict[str, HostSpec] = _hosts()
#: The host types that can run a Nitro Enclave (a view of ``HOST_SPECS``).
ENCLAVE_HOST_SPECS: dict[str, HostSpec] = {
    name: spec for name, spec in HOST_SPECS.items() if spec.nitro_enclaves
}


def enclave_host_spec(instance_type: str) -> HostSpec:
    """The host entry of an enclave-capable type; any other type is an error listing them."""
    try:
        return ENCLAVE_HOST_SPECS[instance_type]
    except KeyError:
        raise invalid(
            "instance_type",
            instance_type,
            f"an enclave-capable host type with at least {MIN_ENCLAVE_HOST_VCPUS} vCPUs, one of "
            + ", ".join(ENCLAVE_HOST_SPECS),
        ) from None


# --- Prices ------------------------------------------------------------------------------------
#
# On-demand list prices (Linux, USD) with the source and its date beside each figure. They are
# estimates: AWS changes them, capacity blocks and negotiated rates differ, and no figure below
# comes from AWS's own price list (none is in the stored documents); each names the third-party
# page that reported it. A given price (``TrainiumCluster(hourly_price=...)``, ``-c hourlyPrice=``)
# always wins. A type or region without a figure is ``unknown``, never guessed.

#: Hours per month in AWS's monthly prices (365 x 24 / 12).
HOURS_PER_MONTH = 730.0
#: The region the figures are for; another region falls back to it, labelled as such.
PRICE_REGION = "us-east-1"


@dataclass(frozen=True)
class Price:
    """One sourced price: ``usd`` per ``unit`` in ``region``, reported by ``source`` on ``date``."""

    usd: float
    unit: str  # "hour" or "GiB-month"
    region: str
    source: str
    date: str
    #: False for a price the user gave (``hourly_price``): it is not an estimate.
    estimate: bool = True

    def label(self, region: str | None = None) -> str:
        """``estimate, <region> price, <source> (<date>)``, saying so when the figure is for
        another region than ``region``."""
        if not self.estimate:
            return self.source
        where = f"{self.region} price"
        if region is not None and region != self.region:
            where += f" (no figure for {region})"
        return f"estimate, {where}, {self.source} ({self.date})"


_TRN2_REPORT = (
    "third-party report citing AWS's April 2026 price list (FACTS.md, Prices)",
    "2026-04",
)
_USAGE_AI = ("usage.ai, 'AWS Trainium vs GPU Instances' (third party)", "2026-06-25")
_C3X_EC2 = ("c3x.dev, 'm5 vs m6i vs m7i: cost and price-performance' (third party)", "2026")
_C3X_FSX = ("c3x.dev, 'aws_fsx_lustre_file_system cost estimation' (third party)", "2026")

#: Instance type -> region -> on-demand price per hour.
INSTANCE_PRICES: dict[str, dict[str, Price]] = {
    "trn2.48xlarge": {"us-east-1": Price(35.76, "hour", "us-east-1", *_TRN2_REPORT)},
    "trn2.3xlarge": {"us-east-1": Price(2.235, "hour", "us-east-1", *_TRN2_REPORT)},
    "trn1.32xlarge": {"us-east-1": Price(21.50, "hour", "us-east-1", *_USAGE_AI)},
    # Hosts beside the cluster (controller, enclave vault).
    "m7i.xlarge": {"us-east-1": Price(0.2016, "hour", "us-east-1", *_C3X_EC2)},
    "m6i.xlarge": {"us-east-1": Price(0.192, "hour", "us-east-1", *_C3X_EC2)},
}
#: FSx for Lustre PERSISTENT_2 SSD storage, by throughput per unit of storage (MB/s/TiB) ->
#: region -> price per GiB-month (AWS bills FSx by provisioned GB-month of the GiB capacity).
FSX_LUSTRE_PRICES: dict[int, dict[str, Price]] = {
    125: {"us-east-1": Price(0.145, "GiB-month", "us-east-1", *_C3X_FSX)},
}


def _in_region(prices: dict[str, Price] | None, region: str) -> Price | None:
    if not prices:
        return None
    return prices.get(region) or prices.get(PRICE_REGION)


def instance_price(instance_type: str, region: str) -> Price | None:
    """The on-demand price per hour of ``instance_type`` in ``region`` (or, labelled, in
    ``PRICE_REGION``); None when no sourced figure exists."""
    return _in_region(INSTANCE_PRICES.get(instance_type), region)


def fsx_lustre_price(per_unit_throughput: int, region: str) -> Price | None:
    """The PERSISTENT_2 SSD price per GiB-month at ``per_unit_throughput`` MB/s/TiB; None when no
    sourced figure exists."""
    return _in_region(FSX_LUSTRE_PRICES.get(per_unit_throughput), region)


def validate_hourly_price(prop: str, value: object) -> float:
    """A given price of one instance per hour: a finite number above 0 and below 10,000."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise invalid(prop, value, "a number of US dollars per instance-hour, such as 35.76")
    price = float(value)
    if not 0 < price < 10_000 or price != price:
        raise invalid(prop, value, "a price above 0 and below 10000 US dollars per hour")
    return price
