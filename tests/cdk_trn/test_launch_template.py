from cdk_trn.catalog import instance_spec
from cdk_trn.launch_template import EfaInterfaceMode, efa_network_interfaces

GROUPS = ["sg-0123456789abcdef0"]


def with_ip(interfaces):
    return [i for i in interfaces if i.get("InterfaceType") != "efa-only"]


def test_trn2_gets_17_interfaces_over_16_cards_16_of_them_efa_only():
    interfaces = efa_network_interfaces(instance_spec("trn2.48xlarge"), GROUPS)
    assert len(interfaces) == 17
    assert {i["NetworkCardIndex"] for i in interfaces} == set(range(16))
    assert sum(i.get("InterfaceType") == "efa-only" for i in interfaces) == 16
    assert len(with_ip(interfaces)) == 1


def test_primary_interface_is_ena_at_card_0_device_0():
    primary = efa_network_interfaces(instance_spec("trn2.48xlarge"), GROUPS)[0]
    assert (primary["NetworkCardIndex"], primary["DeviceIndex"]) == (0, 0)
    assert "InterfaceType" not in primary


def test_efa_only_interfaces_sit_at_device_1_on_card_0_and_device_0_elsewhere():
    # EC2 user guide efa-acc-inst-types.html: EFA-only at card 0 device 1, then each further
    # card's EFA-only interface at device 0 (device 1 is for an ENA interface there).
    efa_only = [
        (i["NetworkCardIndex"], i["DeviceIndex"])
        for i in efa_network_interfaces(instance_spec("trn2.48xlarge"), GROUPS)
        if i.get("InterfaceType") == "efa-only"
    ]
    assert efa_only == [(0, 1)] + [(card, 0) for card in range(1, 16)]


def test_multi_interface_layout_never_sets_the_public_ip_flag():
    # EC2 rejects AssociatePublicIpAddress when an instance launches with several interfaces.
    for interface in efa_network_interfaces(instance_spec("trn2.48xlarge"), GROUPS):
        assert "AssociatePublicIpAddress" not in interface


def test_single_interface_asks_for_no_public_ip():
    (only,) = efa_network_interfaces(instance_spec("trn2.3xlarge"), GROUPS)
    assert only["AssociatePublicIpAddress"] is False


def test_every_interface_carries_the_security_groups():
    for interface in efa_network_interfaces(instance_spec("trn2.48xlarge"), GROUPS):
        assert interface["Groups"] == GROUPS


def test_trn1_gets_efa_on_its_8_cards():
    interfaces = efa_network_interfaces(instance_spec("trn1.32xlarge"), GROUPS)
    assert {i["NetworkCardIndex"] for i in interfaces} == set(range(8))
    assert sum(i.get("InterfaceType") == "efa-only" for i in interfaces) == 8


def test_trn2_3xlarge_has_one_ena_interface_and_no_efa():
    interfaces = efa_network_interfaces(instance_spec("trn2.3xlarge"), GROUPS)
    assert len(interfaces) == 1
    assert "InterfaceType" not in interfaces[0]


def test_legacy_mode_puts_efa_with_ena_on_every_card():
    interfaces = efa_network_interfaces(
        instance_spec("trn2.48xlarge"), GROUPS, mode=EfaInterfaceMode.LEGACY_EFA
    )
    assert len(interfaces) == 16
    assert all(i["InterfaceType"] == "efa" for i in interfaces)
