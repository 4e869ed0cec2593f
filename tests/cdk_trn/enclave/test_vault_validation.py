"""Bad vault and image input raises CdkTrnError at synth, naming the prop, before any resource."""

from __future__ import annotations

from pathlib import Path

import aws_cdk as cdk
import pytest
from aws_cdk import aws_s3 as s3

from cdk_trn.enclave.image import EifLocation, EnclaveImage
from cdk_trn.enclave.vault import EnclaveKeyVault
from cdk_trn.errors import CdkTrnError
from cdk_trn.network import TrainingNetwork
from tests.cdk_trn.enclave.stacks import (
    AZ_ID,
    PCR0,
    REGION,
    cluster_stand_in,
    prebuilt_image,
)


def _stack_parts():
    stack = cdk.Stack(cdk.App(), "VaultStack", env=cdk.Environment(region=REGION))
    network = TrainingNetwork(stack, "Network", availability_zone=AZ_ID)
    return stack, network, cluster_stand_in(stack, network), prebuilt_image(stack)


def _vault(**overrides):
    stack, network, client, image = _stack_parts()
    props = dict(network=network, clients=[client], image=image)
    props.update(overrides)
    try:
        return EnclaveKeyVault(stack, "Vault", **props)
    finally:
        # Whatever happened, a rejected vault left nothing behind.
        if stack.node.try_find_child("Vault") is None:
            assert not [c for c in stack.node.find_all() if "/Vault/" in c.node.path]


@pytest.mark.parametrize("instance_type", ["trn2.48xlarge", "t3.micro", "m7i.large", "c7g.xlarge"])
def test_non_enclave_or_too_small_instance_type_is_rejected(instance_type):
    with pytest.raises(CdkTrnError, match=rf"instance_type.*{instance_type}"):
        _vault(instance_type=instance_type)


@pytest.mark.parametrize("cpus", [0, 1, 3, 4, 64])
def test_enclave_cpu_count_out_of_range_or_odd_is_rejected(cpus):
    # m7i.xlarge: 4 vCPUs, 2 stay with the parent, enclaves take whole cores
    with pytest.raises(CdkTrnError, match=rf"enclave_cpu_count must be .*, got {cpus}"):
        _vault(enclave_cpu_count=cpus)


def test_enclave_cpu_count_may_grow_on_a_larger_host():
    vault = _vault(instance_type="m7i.2xlarge", enclave_cpu_count=6)
    assert vault.enclave_cpu_count == 6


@pytest.mark.parametrize("memory", [0, 256, 14 * 1024 + 1, 64 * 1024])
def test_enclave_memory_out_of_range_is_rejected(memory):
    # m7i.xlarge: 16 GiB, 2 GiB stay with the parent
    with pytest.raises(
        CdkTrnError, match=rf"enclave_memory_mib must be 512 to 14336 MiB.*{memory}"
    ):
        _vault(enclave_memory_mib=memory)


@pytest.mark.parametrize("port", [0, 443, 70000])
def test_privileged_or_invalid_port_is_rejected(port):
    with pytest.raises(CdkTrnError, match=rf"port must be .*, got {port}"):
        _vault(port=port)


@pytest.mark.parametrize("hosts", [0, 9])
def test_host_count_out_of_range_is_rejected(hosts):
    with pytest.raises(CdkTrnError, match=rf"hosts must be 1 to 8, got {hosts}"):
        _vault(hosts=hosts)


def test_vault_without_clients_is_rejected():
    with pytest.raises(CdkTrnError, match=r"clients must be at least one client"):
        _vault(clients=[])


def test_client_without_connections_and_role_is_rejected():
    with pytest.raises(CdkTrnError, match=r"clients must be objects with \.connections and \.role"):
        _vault(clients=[object()])


def test_image_that_is_not_an_enclave_image_is_rejected():
    with pytest.raises(CdkTrnError, match=r"image must be an EnclaveImage"):
        _vault(image="enclave.eif")


def _eif() -> EifLocation:
    stack = cdk.Stack(cdk.App(), "S")
    return EifLocation(bucket=s3.Bucket.from_bucket_name(stack, "B", "images"), key="a.eif")


@pytest.mark.parametrize(
    "pcr",
    ["", "ab" * 47, "ab" * 49, "zz" * 48, "0x" + "ab" * 47, "sha384:" + "ab" * 48],
)
def test_pcr0_that_is_not_96_hex_characters_is_rejected(pcr):
    with pytest.raises(CdkTrnError, match=r"pcr0 must be 96 hexadecimal characters"):
        EnclaveImage.from_measurements(pcr, eif=_eif())


def test_all_zero_pcr0_of_a_debug_mode_enclave_is_rejected():
    with pytest.raises(CdkTrnError, match=r"pcr0 must be a real measurement, not all zeros"):
        EnclaveImage.from_measurements("0" * 96, eif=_eif())


def test_malformed_pcr8_is_rejected():
    with pytest.raises(CdkTrnError, match=r"pcr8 must be 96 hexadecimal characters"):
        EnclaveImage.from_measurements(PCR0, "abc", eif=_eif())


def test_upper_case_pcr_is_accepted_and_normalised_to_lower_case():
    image = EnclaveImage.from_measurements(PCR0.upper(), eif=_eif())
    stack = cdk.Stack(cdk.App(), "S2")
    bound = image.bind(stack, bucket=None, encryption_key=None, vpc=None, subnet=None)  # type: ignore[arg-type]
    assert bound.pcr0 == PCR0 and not bound.signed


def test_pcr0_token_is_not_validated_at_synth():
    stack = cdk.Stack(cdk.App(), "S3")
    token = cdk.CfnParameter(stack, "Pcr0").value_as_string
    image = EnclaveImage.from_measurements(token, eif=_eif())
    bound = image.bind(stack, bucket=None, encryption_key=None, vpc=None, subnet=None)  # type: ignore[arg-type]
    assert bound.pcr0 == token


def test_build_context_without_dockerfile_is_rejected(tmp_path: Path):
    with pytest.raises(CdkTrnError, match=r"dockerfile must be a file inside .*, got 'Dockerfile'"):
        EnclaveImage.from_directory(tmp_path)


@pytest.mark.parametrize("dockerfile", ["../Dockerfile", "/etc/Dockerfile", "enclave/Absent"])
def test_dockerfile_outside_the_context_or_missing_is_rejected(tmp_path: Path, dockerfile):
    (tmp_path / "ctx").mkdir()
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    with pytest.raises(CdkTrnError, match=r"dockerfile must be a file inside"):
        EnclaveImage.from_directory(tmp_path / "ctx", dockerfile=dockerfile)


def test_missing_build_context_is_rejected(tmp_path: Path):
    with pytest.raises(CdkTrnError, match=r"path must be an existing directory"):
        EnclaveImage.from_directory(tmp_path / "absent")


@pytest.mark.parametrize("minutes", [5, 60])
def test_build_timeout_beyond_what_cloudformation_waits_is_rejected(tmp_path: Path, minutes):
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    with pytest.raises(
        CdkTrnError, match=rf"build_timeout must be 10 to 45 minutes, got '{minutes} minutes'"
    ):
        EnclaveImage.from_directory(tmp_path, build_timeout=cdk.Duration.minutes(minutes))
