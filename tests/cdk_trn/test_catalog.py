import inspect
import json
import re
from importlib import resources
from pathlib import Path

import pytest

from cdk_trn.catalog import (
    ENCLAVE_HOST_SPECS,
    HOST_SPECS,
    INSTANCE_SPECS,
    MIN_ENCLAVE_HOST_VCPUS,
    enclave_host_spec,
    instance_spec,
)
from cdk_trn.enclave.vault import EnclaveKeyVault
from cdk_trn.errors import CdkTrnError
from cdk_trn.scheduler import SlurmScheduler

REPO = Path(__file__).resolve().parents[2]


def cfn_lint_regions(instance_type: str) -> set[str]:
    data = json.loads(
        resources.files("cfnlint.data.schemas.extensions.aws_ec2_instance")
        .joinpath("instancetype_enum.json")
        .read_text()
    )
    return {
        r
        for r, v in data.items()
        if r != "all" and isinstance(v, dict) and instance_type in v.get("enum", [])
    }


def test_trn2_48xlarge_matches_the_documented_hardware():
    spec = instance_spec("trn2.48xlarge")
    assert (spec.chips, spec.neuron_cores, spec.hbm_gib, spec.vcpus, spec.memory_gib) == (
        16,
        128,
        1536,
        192,
        2048,
    )
    assert (spec.network_cards, spec.efa_devices, spec.efa_gbps) == (16, 16, 3200)
    assert spec.peak_bf16_tflops == pytest.approx(10672.0)  # 10.7 PFLOPS per instance


def test_derived_cluster_figures_scale_with_nodes():
    spec = instance_spec("trn2.48xlarge")
    assert spec.cluster_chips(4) == 64
    assert spec.cluster_peak_bf16_pflops(4) == pytest.approx(42.688)  # one UltraServer: 42.8
    assert spec.cluster_efa_tbps(2) == pytest.approx(6.4)
    assert spec.cluster_hbm_gib(4) == 6144


def test_trn2u_is_an_ultraserver_member_of_four():
    assert instance_spec("trn2u.48xlarge").ultraserver_size == 4
    assert instance_spec("trn2.48xlarge").ultraserver_size is None


def test_network_card_counts_follow_the_vpc_cni_limits():
    assert instance_spec("trn1.32xlarge").network_cards == 8
    assert instance_spec("trn1n.32xlarge").network_cards == 16
    assert not instance_spec("trn2.3xlarge").has_efa


def test_unknown_instance_type_lists_the_known_ones():
    with pytest.raises(CdkTrnError) as error:
        instance_spec("trn3.48xlarge")
    message = str(error.value)
    assert "instance_type" in message and "'trn3.48xlarge'" in message
    for known in INSTANCE_SPECS:
        assert known in message


@pytest.mark.parametrize("name", [n for n, s in INSTANCE_SPECS.items() if s.regions_confirmed])
def test_confirmed_regions_agree_with_cfn_lint_data(name):
    assert set(INSTANCE_SPECS[name].regions) == cfn_lint_regions(name)


@pytest.mark.parametrize("name", [n for n, s in INSTANCE_SPECS.items() if not s.regions_confirmed])
def test_unconfirmed_regions_are_types_missing_from_cfn_lint_data(name):
    # If cfn-lint's data starts listing them, confirm the regions and drop the E3628 silencing.
    assert cfn_lint_regions(name) == set()


def test_logical_cores_per_chip_follow_the_default_lnc():
    assert instance_spec("trn2.48xlarge").logical_cores_per_chip == 4  # 8 physical, LNC=2
    assert instance_spec("trn1.32xlarge").logical_cores_per_chip == 2  # 2 physical, LNC=1


# --- hosts beside the cluster -----------------------------------------------------------------


def test_host_sizes_follow_the_family_memory_per_vcpu():
    facts = {n: (s.vcpus, s.memory_gib, s.nitro_enclaves) for n, s in HOST_SPECS.items()}
    assert facts["m7i.xlarge"] == (4, 16, True)
    assert facts["c7i.large"] == (2, 4, False)
    assert facts["r6i.large"] == (2, 16, False)
    assert facts["c6i.8xlarge"] == (32, 64, True)
    assert facts["r7i.2xlarge"] == (8, 64, True)


@pytest.mark.parametrize("name", sorted(HOST_SPECS))
def test_every_host_type_is_an_ec2_instance_type_in_cfn_lint_data(name):
    assert cfn_lint_regions(name), f"{name} is in no region of cfn-lint's EC2 data"


def test_enclave_hosts_are_the_hosts_with_enough_vcpus_for_an_enclave():
    assert set(ENCLAVE_HOST_SPECS) == {
        n for n, s in HOST_SPECS.items() if s.vcpus >= MIN_ENCLAVE_HOST_VCPUS
    }
    assert enclave_host_spec("m7i.xlarge") is HOST_SPECS["m7i.xlarge"]


@pytest.mark.parametrize("name", ["m7i.large", "trn1.32xlarge", "m7g.xlarge"])
def test_a_type_that_cannot_host_an_enclave_is_refused_listing_those_that_can(name):
    with pytest.raises(CdkTrnError) as error:
        enclave_host_spec(name)
    message = str(error.value)
    assert message.startswith("instance_type must be an enclave-capable host type")
    assert message.endswith(f"got {name!r}")
    assert all(known in message for known in ENCLAVE_HOST_SPECS)


@pytest.mark.parametrize(
    ("construct", "prop"),
    [(SlurmScheduler, "controller_instance_type"), (EnclaveKeyVault, "instance_type")],
)
def test_the_default_host_types_are_in_the_host_table(construct, prop):
    assert inspect.signature(construct.__init__).parameters[prop].default in HOST_SPECS


def test_every_host_type_the_docs_name_is_in_the_host_table():
    readme = "".join(p.read_text() for p in (REPO / "README.md", *(REPO / "docs").glob("*.md")))
    named = set(re.findall(r"\b[cmr][5-8][a-z]*\.[0-9]*x?large\b", readme))
    assert named and named <= set(HOST_SPECS)
