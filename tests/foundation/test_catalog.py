import json
from importlib import resources

import pytest

from cdk_trn.catalog import INSTANCE_SPECS, instance_spec
from cdk_trn.errors import CdkTrnError


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
