"""``cdk-trn vault-key`` and ``cdk-trn verify`` read what to expect from the stacks' outputs
(botocore Stubber on real clients) and fail clearly when a stack lacks them. The attestation and
manifest checks against a running vault are in
tests/cdk_trn_runtime/cli/test_vault_end_to_end.py."""

from __future__ import annotations

import argparse

import pytest

from cdk_trn_runtime.cli import command as cli_main
from cdk_trn_runtime.cli.vault import default_vault_stack, expected_values, relay_script
from cdk_trn_runtime.contract import VAULT_URL_PENDING
from tests.cdk_trn_runtime.cli.aws_doubles import INSTANCE, REGION, STACK, stubbed_aws

VAULT_STACK = "trn-vault"
NODE_GROUP = "trn-cluster-ClusterNodes-0A1B2C3D4E5F"
PARAMETER = "/cdk-trn/trn-cluster/vault-url"
PCR0 = "ab" * 48
KEY_ARN = "arn:aws:kms:us-east-2:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
VAULT_OUTPUTS = {
    "VaultImagePcr0": PCR0,
    "VaultKeyArn": KEY_ARN,
    "VaultUrlParameter": PARAMETER,
    "VaultPort": "8443",
}
CLUSTER_OUTPUTS = {"ClusterName": "trn-cluster", "SlurmNodeGroup": NODE_GROUP}


@pytest.fixture
def stubs(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test-double-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-double-secret")
    stubs = stubbed_aws()
    yield stubs
    stubs.assert_all_called()


def _args(**kw) -> argparse.Namespace:
    return argparse.Namespace(**{"stack": STACK, "vault_stack": None, "vault_url": None, **kw})


def _parameter(stubs, value: str) -> None:
    stubs.ssm.add_response(
        "get_parameter",
        {"Parameter": {"Name": PARAMETER, "Type": "String", "Value": value, "Version": 3}},
        {"Name": PARAMETER},
    )


def test_expected_values_come_from_both_stacks_and_the_url_parameter(stubs):
    stubs.stack(VAULT_OUTPUTS, stack=VAULT_STACK)
    stubs.stack(CLUSTER_OUTPUTS)
    _parameter(stubs, "http://10.0.1.5:8443")
    stubs.group(name=NODE_GROUP)
    expected = expected_values(stubs.aws, _args())
    assert (expected.pcr0, expected.kms_key_arn) == (PCR0, KEY_ARN)
    assert expected.url == "http://10.0.1.5:8443"
    assert (expected.cluster_name, expected.relay_instance) == ("trn-cluster", INSTANCE)


def test_a_given_vault_url_needs_no_parameter_and_no_relay_node(stubs):
    stubs.stack(VAULT_OUTPUTS, stack="other-vault")
    stubs.stack(CLUSTER_OUTPUTS)
    expected = expected_values(
        stubs.aws, _args(vault_stack="other-vault", vault_url="http://127.0.0.1:18443")
    )
    assert (expected.url, expected.relay_instance) == ("http://127.0.0.1:18443", None)


def test_the_vault_stack_defaults_to_the_default_apps_name():
    assert default_vault_stack("trn-cluster") == "trn-vault"
    assert default_vault_stack("team-a-cluster") == "team-a-vault"


@pytest.mark.parametrize("command", [["vault-key"], ["verify", "CHECKPOINT", "--run-id", "7"]])
def test_a_vault_stack_without_the_outputs_names_them(stubs, tmp_path, capsys, command):
    checkpoint = tmp_path / "step-00000010"
    checkpoint.mkdir()
    (tmp_path / "step-00000010.manifest.json").write_text("{}")
    argv = [str(checkpoint) if a == "CHECKPOINT" else a for a in command]
    stubs.stack({"VaultPort": "8443", "VaultKeyArn": KEY_ARN}, stack=VAULT_STACK)
    code = cli_main.main(argv, make_aws=lambda profile, region: stubs.aws)
    assert code == 1
    err = capsys.readouterr().err
    assert (
        "stack trn-vault has no output VaultImagePcr0, VaultUrlParameter: is it a cdk-trn "
        "vault stack" in err
    )


def test_a_missing_vault_stack_says_so(stubs, capsys):
    stubs.no_stack(stack=VAULT_STACK)
    assert cli_main.main(["vault-key"], make_aws=lambda profile, region: stubs.aws) == 1
    assert f"stack {VAULT_STACK} does not exist in {REGION}" in capsys.readouterr().err


def test_a_parameter_without_a_url_says_no_vault_host_started(stubs, capsys):
    stubs.stack(VAULT_OUTPUTS, stack=VAULT_STACK)
    stubs.stack(CLUSTER_OUTPUTS)
    _parameter(stubs, VAULT_URL_PENDING)
    assert cli_main.main(["vault-key"], make_aws=lambda profile, region: stubs.aws) == 1
    assert "holds no vault URL" in capsys.readouterr().err


def test_a_cluster_stack_without_nodes_asks_for_a_vault_url(stubs, capsys):
    stubs.stack(VAULT_OUTPUTS, stack=VAULT_STACK)
    stubs.stack({"ClusterName": "trn-cluster"})
    _parameter(stubs, "http://10.0.1.5:8443")
    assert cli_main.main(["vault-key"], make_aws=lambda profile, region: stubs.aws) == 1
    assert "no output SlurmNodeGroup" in capsys.readouterr().err


def test_verify_refuses_a_checkpoint_without_a_manifest_before_asking_aws(stubs, tmp_path, capsys):
    checkpoint = tmp_path / "step-00000010"
    checkpoint.mkdir()
    code = cli_main.main(["verify", str(checkpoint)], make_aws=lambda profile, region: stubs.aws)
    assert code == 2
    assert "step-00000010.manifest.json: no signed manifest" in capsys.readouterr().err


def test_verify_without_a_run_fails_closed_before_asking_aws(stubs, tmp_path, capsys):
    checkpoint = tmp_path / "step-00000010"
    checkpoint.mkdir()
    (tmp_path / "step-00000010.manifest.json").write_text("{}")
    code = cli_main.main(["verify", str(checkpoint)], make_aws=lambda profile, region: stubs.aws)
    assert code == 2
    assert "(--run-id)" in capsys.readouterr().err


def test_the_relay_script_quotes_the_url_and_carries_the_nonce():
    script = relay_script("http://10.0.1.5:8443", b"\x00" * 32)
    assert script.splitlines()[0] == "set -eu"
    assert "url='http://10.0.1.5:8443'" in script
    assert "nonce='AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA%3D'" in script
    assert '"$url/v1/attestation?nonce=$nonce"' in script
    assert "--max-time 20" in script and "--noproxy '*'" in script


def test_the_relay_refuses_what_is_not_a_vault_url():
    with pytest.raises(ValueError, match="VaultUrl"):
        relay_script("http://10.0.1.5:8443/x'; rm -rf /", b"\x00" * 32)


def test_the_help_lists_the_vault_commands(capsys):
    with pytest.raises(SystemExit):
        cli_main.main(["--help"])
    out = capsys.readouterr().out
    assert "vault-key" in out and "verify" in out


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254:80",  # instance metadata: the relay runs as root on a node
        "http://169.254.169.254:8443",
        "http://127.0.0.1:8443",
        "http://8.8.8.8:8443",
        "http://172.32.0.1:8443",
        "http://10.0.1.5:22",
        "http://10.0.1.5:65536",
        "http://10.0.1.256:8443",
    ],
)
def test_the_relay_fetches_only_a_private_vpc_address_on_an_unprivileged_port(url):
    with pytest.raises(ValueError, match="VaultUrl"):
        relay_script(url, b"\x00" * 32)


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.1.5:8443",
        "http://172.16.0.9:1024",
        "http://172.31.255.1:65535",
        "http://192.168.3.4:18443",
    ],
)
def test_the_relay_takes_a_vault_in_the_vpc(url):
    assert f"url='{url}'" in relay_script(url, b"\x00" * 32)
