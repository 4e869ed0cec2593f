"""The host boot, run for real from the synthesized user data against command test doubles: the
launcher fetches the vault host's real boot archive (``bundle_archive("vault")``) from an S3
stand-in, checks its digest, unpacks it and runs ``host_bootstrap.sh`` from it.

Each case runs the rendered user data with bash in a private mount namespace whose /etc, /opt and
/var are overlays on a temporary directory (and /dev/console a file), so the script writes its
files exactly where it would on a host while the machine stays untouched. dnf, systemctl,
nitro-cli, aws, ss, curl (IMDS) and cfn-signal are test doubles (``host_command_doubles/``: shell
scripts that record every call and emulate the behaviour each case needs); useradd, install,
chown and cp are the real ones, python is this interpreter without site processing, and the
parent server's code is the bundle's, so the parent module's import from it runs for real.
What cannot run here: the enclave, the allocator, vsock-proxy and KMS (no Nitro hypervisor).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import aws_cdk as cdk
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cdk_trn.enclave.vault import KEY_STATE_OBJECT
from cdk_trn_runtime.node.bundle import bundle_files
from tests.cdk_trn.enclave.stacks import EIF_KEY, PCR0, VaultStack, vault_stack


def _namespaces_available() -> bool:
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return False
    probe = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "true"], capture_output=True, check=False
    )
    return probe.returncode == 0


pytestmark = pytest.mark.skipif(
    not _namespaces_available(),
    reason="needs root and unshare -m to overlay /etc, /opt and /var for the boot script",
)

#: Test doubles of the host's commands (shell scripts that record each call in $CALLS).
COMMAND_DOUBLES = Path(__file__).with_name("host_command_doubles")

# python3.11: this interpreter without site processing: the standard library only, as AL2023's
# python3.11 package gives the host (no PyPI behind an isolated subnet), and cdk_trn only from the
# unzipped host package.
PYTHON_DOUBLE = f"""#!/bin/bash
if [ -n "$PARENT_IMPORT_FAILS" ]; then
  echo "ModuleNotFoundError: No module named 'cbor2'" >&2
  exit 1
fi
{sys.executable} -S -c 'import cdk_trn_runtime.vault.server as m; print("imported", m.__file__)' \\
  >> "$CALLS"
exec {sys.executable} -S "$@"
"""

# python3 (the system Python, with python3-botocore): the key-state write
# (cdk_trn_runtime.vault.state_store, S3 If-None-Match: *) is emulated on $FAKE_S3 with S3's
# semantics: exit 0 stored, 3 an object exists, 1 S3 refused (STORE_FAILS); anything else runs
# with this interpreter. The module itself is tested against an S3 test double server that
# verifies botocore's signatures, in test_state_store.py.
SYSTEM_PYTHON_DOUBLE = f"""#!/bin/bash
if [ "$1 $2 $3 $4" = "-E -s -m cdk_trn_runtime.vault.state_store" ]; then
  echo "python3 $*" >> "$CALLS"
  arg() {{
    local name=$1; shift
    while [ $# -gt 0 ]; do [ "$1" = "$name" ] && {{ echo "$2"; return; }}; shift; done
  }}
  key=$(arg --key "$@"); file=$(arg --file "$@")
  [ -z "$STORE_FAILS" ] || {{ echo "S3 PUT answered HTTP 403: AccessDenied" >&2; exit 1; }}
  if [ -n "$OTHER_HOST_STATE" ]; then
    mkdir -p "$(dirname "$FAKE_S3/$key")"; printf '%s' "$OTHER_HOST_STATE" > "$FAKE_S3/$key"
  fi
  [ ! -f "$FAKE_S3/$key" ] || {{ echo "exists (PreconditionFailed)" >&2; exit 3; }}
  mkdir -p "$(dirname "$FAKE_S3/$key")"; cp "$file" "$FAKE_S3/$key"; exit 0
fi
exec {sys.executable} "$@"
"""


def _key_state() -> tuple[str, str]:
    """A key state as the parent stores it, and the PEM of its public key."""
    public = ec.generate_private_key(ec.SECP384R1()).public_key()
    der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    state = {
        "encrypted_private_key": base64.b64encode(b"kms-ciphertext-test-double").decode(),
        "public_key": base64.b64encode(der).decode(),
    }
    return json.dumps(state, sort_keys=True), pem


@pytest.fixture(scope="module")
def synthesized(tmp_path_factory) -> tuple[VaultStack, Any, bytes]:
    out = tmp_path_factory.mktemp("cdk-out")
    built = vault_stack(app=cdk.App(outdir=str(out)))
    template = cdk.assertions.Template.from_stack(built.stack).to_json()
    staged = out / built.vault.boot.asset.asset_path
    return built, template, staged.read_bytes()


def _user_data(template: dict) -> str:
    (launch_template,) = [
        r for r in template["Resources"].values() if r["Type"] == "AWS::EC2::LaunchTemplate"
    ]
    joined = launch_template["Properties"]["LaunchTemplateData"]["UserData"]["Fn::Base64"]
    # Deploy-time values (Ref, GetAtt, Sub) become fixed stand-in strings.
    return "".join(
        part
        if isinstance(part, str)
        else "cfn-" + hashlib.sha256(json.dumps(part).encode()).hexdigest()[:10]
        for part in joined["Fn::Join"][1]
    )


class Host:
    """One run of the boot script; its files, recorded calls and published key afterwards."""

    def __init__(self, work: Path, result: subprocess.CompletedProcess) -> None:
        self.work = work
        self.result = result
        self.calls = (work / "calls").read_text().splitlines()

    def file(self, path: str) -> str:
        top, rest = path.strip("/").split("/", 1)
        return (self.work / "overlay" / top / "upper" / rest).read_text()

    @property
    def signals(self) -> list[str]:
        return [c for c in self.calls if c.startswith("cfn-signal ")]

    @property
    def published_urls(self) -> list[str]:
        path = self.work / "published-urls"
        return path.read_text().splitlines() if path.exists() else []

    @property
    def published_key(self) -> str | None:
        path = self.work / "published.pem"
        return path.read_text() if path.exists() else None


def _boot(tmp_path: Path, synthesized, *, s3_state: str | None = None, **env: str) -> Host:
    built, template, archive = synthesized
    fake_s3 = tmp_path / "s3"
    (fake_s3 / Path(EIF_KEY).parent).mkdir(parents=True)
    (fake_s3 / EIF_KEY).write_bytes(b"EIF test double")
    (fake_s3 / built.vault.boot.asset.s3_object_key).write_bytes(archive)
    if s3_state is not None:
        (fake_s3 / KEY_STATE_OBJECT).parent.mkdir(parents=True)
        (fake_s3 / KEY_STATE_OBJECT).write_text(s3_state)
    shims = tmp_path / "bin"
    shutil.copytree(COMMAND_DOUBLES, shims)
    (shims / "python3.11").write_text(PYTHON_DOUBLE)
    (shims / "python3").write_text(SYSTEM_PYTHON_DOUBLE)
    for double in shims.iterdir():
        double.chmod(0o755)
    (tmp_path / "user-data.sh").write_text(_user_data(template))
    (tmp_path / "calls").write_text("")
    mounts = "\n".join(
        f"mkdir -p {tmp_path}/overlay/{d}/upper {tmp_path}/overlay/{d}/work && "
        f"mount -t overlay overlay -o lowerdir=/{d},upperdir={tmp_path}/overlay/{d}/upper,"
        f"workdir={tmp_path}/overlay/{d}/work /{d}"
        for d in ("etc", "opt", "var")
    )
    mounts += f"\ntouch {tmp_path}/console && mount --bind {tmp_path}/console /dev/console"
    new_state, _ = _key_state()
    environment = {
        "PATH": f"{shims}:{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "CALLS": str(tmp_path / "calls"),
        "FAKE_S3": str(fake_s3),
        "PUBLISHED_KEY": str(tmp_path / "published.pem"),
        "PUBLISHED_URLS": str(tmp_path / "published-urls"),
        "PARENT_NEW_STATE": new_state,
        "EIF_PCR0": PCR0,
        "ENCLAVE_STATE": "RUNNING",
        "ENCLAVE_FLAGS": "NONE",
        **env,
    }
    result = subprocess.run(
        [
            "unshare",
            "-m",
            "--propagation",
            "private",
            "bash",
            "-c",
            f"set -e\n{mounts}\nbash {tmp_path}/user-data.sh",
        ],
        env=environment,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return Host(tmp_path, result)


def test_first_host_starts_the_enclave_stores_the_key_state_and_signals_success(
    tmp_path, synthesized
):
    host = _boot(tmp_path, synthesized)
    assert host.result.returncode == 0, host.result.stdout[-3000:]
    assert len(host.signals) == 1 and "--exit-code 0" in host.signals[0]
    stored = (tmp_path / "s3" / KEY_STATE_OBJECT).read_text()
    assert stored == host.file("/var/lib/cdk-trn/signing-key.json")
    public_key = json.loads((tmp_path / "s3" / KEY_STATE_OBJECT).read_text())["public_key"]
    assert host.published_key is not None and host.published_key.startswith(
        "-----BEGIN PUBLIC KEY-----"
    )
    loaded = serialization.load_pem_public_key(host.published_key.encode())
    assert (
        base64.b64encode(
            loaded.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        ).decode()
        == public_key
    )
    assert "imported /opt/cdk-trn/src/cdk_trn_runtime/vault/server.py" in host.calls
    name = (tmp_path / "published.pem.name").read_text().strip()
    assert name == synthesized[0].vault.public_key_parameter


def test_boot_writes_allocator_kms_only_proxy_and_production_enclave_unit(tmp_path, synthesized):
    host = _boot(tmp_path, synthesized)
    assert host.result.returncode == 0, host.result.stdout[-3000:]
    assert "memory_mib: 4096" in host.file("/etc/nitro_enclaves/allocator.yaml")
    assert "cpu_count: 2" in host.file("/etc/nitro_enclaves/allocator.yaml")
    allowlist = host.file("/etc/nitro_enclaves/vsock-proxy.yaml")
    assert [line for line in allowlist.splitlines() if line.startswith("- ")] == [
        "- {address: kms.us-east-2.amazonaws.com, port: 443}"
    ]
    proxy = host.file("/etc/systemd/system/cdk-trn-kms-proxy.service")
    assert "ExecStart=/usr/bin/vsock-proxy 8000 kms.us-east-2.amazonaws.com 443 --config" in proxy
    enclave = host.file("/etc/systemd/system/cdk-trn-enclave.service")
    assert "nitro-cli run-enclave --enclave-name cdk-trn-vault" in enclave
    assert "--cpu-count 2 --memory 4096 --enclave-cid 16" in enclave
    assert "--debug-mode" not in enclave and "--attach-console" not in enclave
    parent = host.file("/etc/systemd/system/cdk-trn-enclave-parent.service")
    assert "-m cdk_trn_runtime.vault.server --listen 0.0.0.0:8443 --enclave-cid 16" in parent
    assert "--allowed-role-arn cfn-" in parent and "User=cdktrn-vault" in parent
    assert "dnf install -y aws-nitro-enclaves-cli aws-nitro-enclaves-cli-devel python3.11" in (
        host.calls
    )
    assert "dnf install -y python3-botocore" in host.calls


def test_eif_with_another_pcr0_signals_failure_and_never_starts_the_enclave(tmp_path, synthesized):
    host = _boot(tmp_path, synthesized, EIF_PCR0="c4" * 48)
    assert host.result.returncode == 1
    assert len(host.signals) == 1 and "--exit-code 1" in host.signals[0]
    assert "EIF PCR0 differs from the PCR0 in the key policy" in host.signals[0]
    assert not [c for c in host.calls if c.startswith("systemctl enable --now cdk-trn")]


def test_enclave_in_debug_mode_signals_failure(tmp_path, synthesized):
    host = _boot(tmp_path, synthesized, ENCLAVE_FLAGS="DEBUG_MODE")
    assert host.result.returncode == 1
    assert len(host.signals) == 1 and "--exit-code 1" in host.signals[0]
    assert "not RUNNING in production mode" in host.signals[0]
    assert host.published_key is None


def test_parent_that_cannot_import_signals_failure_with_the_reason(tmp_path, synthesized):
    host = _boot(tmp_path, synthesized, PARENT_IMPORT_FAILS="1")
    assert host.result.returncode == 1
    assert "cdk_trn_runtime.vault.server does not import with python3.11" in host.signals[0]


def test_later_host_loads_the_stored_key_state_and_does_not_overwrite_it(tmp_path, synthesized):
    stored, pem = _key_state()
    host = _boot(tmp_path, synthesized, s3_state=stored)
    assert host.result.returncode == 0, host.result.stdout[-3000:]
    assert not [c for c in host.calls if "state_store" in c or "put-object" in c]
    assert host.file("/var/lib/cdk-trn/signing-key.json") == stored
    assert host.published_key is not None and host.published_key.strip() == pem.strip()
    assert "--exit-code 0" in host.signals[0]


def test_first_host_stores_the_key_state_with_the_conditional_write_not_the_cli(
    tmp_path, synthesized
):
    host = _boot(tmp_path, synthesized)
    assert host.result.returncode == 0, host.result.stdout[-3000:]
    (store,) = [c for c in host.calls if "state_store" in c]
    assert store.startswith("python3 -E -s -m cdk_trn_runtime.vault.state_store --bucket ")
    assert f"--key {KEY_STATE_OBJECT} --file /var/lib/cdk-trn/signing-key.json" in store
    assert not [c for c in host.calls if c.startswith("aws s3api put-object")]


def test_a_refused_key_state_write_signals_failure_with_the_reason(tmp_path, synthesized):
    host = _boot(tmp_path, synthesized, STORE_FAILS="1")
    assert host.result.returncode == 1
    assert len(host.signals) == 1 and "--exit-code 1" in host.signals[0]
    assert "cannot store the key state: S3 PUT answered HTTP 403" in host.signals[0]


def test_host_that_loses_the_first_write_race_restarts_its_enclave_with_the_winning_key(
    tmp_path, synthesized
):
    winner, pem = _key_state()
    host = _boot(tmp_path, synthesized, OTHER_HOST_STATE=winner)
    assert host.result.returncode == 0, host.result.stdout[-3000:]
    assert (tmp_path / "s3" / KEY_STATE_OBJECT).read_text() == winner
    assert host.file("/var/lib/cdk-trn/signing-key.json") == winner
    # The enclave restarts between the parent's stop and start, so that the parent's init finds
    # it empty and it decrypts the winning key instead of keeping this host's own.
    stop = host.calls.index("systemctl stop cdk-trn-enclave-parent.service")
    restart = host.calls.index("systemctl restart cdk-trn-enclave.service")
    start = host.calls.index("systemctl start cdk-trn-enclave-parent.service")
    assert stop < restart < start
    assert host.calls[restart + 1 : start].count("nitro-cli describe-enclaves") == 1
    assert host.published_key is not None and host.published_key.strip() == pem.strip()
    assert len(host.signals) == 1 and "--exit-code 0" in host.signals[0]


class _ParsedArguments(Exception):
    """Raised instead of starting the parent server once its arguments parsed."""


def test_parent_unit_command_line_is_accepted_by_the_parent_server(
    tmp_path, synthesized, monkeypatch
):
    from cdk_trn_runtime.vault import server as parent

    host = _boot(tmp_path, synthesized)
    unit = host.file("/etc/systemd/system/cdk-trn-enclave-parent.service")
    (exec_start,) = [line for line in unit.splitlines() if line.startswith("ExecStart=")]
    argv = shlex.split(exec_start.removeprefix("ExecStart="))
    assert argv[:3] == ["/usr/bin/python3.11", "-m", "cdk_trn_runtime.vault.server"]
    parse = argparse.ArgumentParser.parse_args
    parsed = {}

    def parse_then_stop(self, args=None, namespace=None):
        parsed["args"] = parse(self, args, namespace)
        raise _ParsedArguments

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    with pytest.raises(_ParsedArguments):
        parent.main(argv[3:])
    args = parsed["args"]
    assert args.listen == "0.0.0.0:8443" and args.enclave_cid == 16
    assert args.region == "us-east-2" and args.state == "/var/lib/cdk-trn/signing-key.json"
    assert len(args.allowed_role_arn) == 1


def test_host_publishes_its_url_in_the_clusters_parameter_before_signalling(tmp_path, synthesized):
    host = _boot(tmp_path, synthesized, HOST_ADDRESS="10.0.7.21")
    assert host.result.returncode == 0, host.result.stdout[-3000:]
    names = synthesized[0].vault.url_parameter_names
    assert host.published_urls == [f"{name}=http://10.0.7.21:8443" for name in names]
    # IMDSv2: a session token first, then the address with it.
    # (The launcher's two calls, for the instance id, come first.)
    curls = [c for c in host.calls if c.startswith("curl ")][2:]
    assert len(curls) == 2 and "-X PUT" in curls[0] and "local-ipv4" in curls[1]
    publish = next(i for i, c in enumerate(host.calls) if "http://10.0.7.21:8443" in c)
    assert publish < host.calls.index(host.signals[0])
    assert "parent server on http://10.0.7.21:8443" in host.signals[0]


def test_host_without_a_private_address_signals_failure_and_publishes_no_url(tmp_path, synthesized):
    host = _boot(tmp_path, synthesized, HOST_ADDRESS="")
    assert host.result.returncode == 1
    assert host.published_urls == []
    assert len(host.signals) == 1 and "no private IPv4 address from IMDS" in host.signals[0]


def test_unexpected_failure_signals_the_shipped_file_and_line(tmp_path, synthesized):
    host = _boot(tmp_path, synthesized, NITRO_CLI_FAILS="describe-eif")
    assert host.result.returncode == 1
    (signal,) = host.signals
    shipped = bundle_files("vault")["host_bootstrap.sh"].read_text().splitlines()
    line = 1 + next(
        i for i, text in enumerate(shipped) if text.startswith("nitro-cli describe-eif")
    )
    assert f"host_bootstrap.sh:{line}: nitro-cli describe-eif" in signal


def test_boot_log_goes_to_the_vaults_log_group(tmp_path, synthesized):
    built, _, _ = synthesized
    host = _boot(tmp_path, synthesized)
    assert host.result.returncode == 0, host.result.stdout[-3000:]
    (put,) = [c for c in host.calls if c.startswith("aws logs put-log-events ")]
    assert "--log-stream-name i-0fedcba9876543210" in put
    messages = [e["message"] for e in json.loads((tmp_path / "boot-log-events.json").read_text())]
    assert any("host_bootstrap.sh exited with status 0" in m for m in messages)
    assert "[cdk-trn-launcher]" in (tmp_path / "console").read_text()
