"""Helpers shared by the enclave tests: vector locations and a vault running on loopback."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import socket
import threading
from dataclasses import dataclass
from pathlib import Path

import cbor2

from cdk_trn_runtime.enclave.service import ChannelAddress, EnclaveSigner, serve
from cdk_trn_runtime.vault.admission import ParentLimits
from cdk_trn_runtime.vault.caller_proof import CallerVerifier
from cdk_trn_runtime.vault.enclave_client import EnclaveClient
from cdk_trn_runtime.vault.key_state import KeyStateFile
from cdk_trn_runtime.vault.protocol import sts_url_for_region
from cdk_trn_runtime.vault.server import ParentServer
from tests.support import servers
from tests.support.enclave_doubles import (
    IMAGE_PCR0,
    KmsTestDouble,
    StsTestDouble,
    TestPkiNsm,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
# Public AWS data carried in the repository (provenance in its README), so every test runs.
VECTORS = REPO_ROOT / "tests" / "data" / "nitro-attestation"
VECTOR_FILES = ("doc-2023-05-17.b64", "doc-2022-07-26-debug.b64")


def load_vector(directory: Path, name: str) -> tuple[bytes, dt.datetime]:
    """The raw document and its own timestamp."""
    raw = base64.b64decode((directory / name).read_text())
    millis = cbor2.loads(cbor2.loads(raw)[2])["timestamp"]
    return raw, dt.datetime.fromtimestamp(millis / 1000, dt.UTC)


# --- a running vault on loopback: enclave signer thread + parent server thread -----------------

REGION = "us-east-2"
KEY_ID = "arn:aws:kms:us-east-2:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
NODE_ROLE_ARN = "arn:aws:iam::111122223333:role/cdk-trn/TrainiumNodeRole"
NODE_SESSION_ARN = "arn:aws:sts::111122223333:assumed-role/TrainiumNodeRole/i-0aaaabbbbccccdddd"
OTHER_SESSION_ARN = "arn:aws:sts::111122223333:assumed-role/SomeOtherRole/i-0eeeeffff00001111"
NODE_KEY = ("AKIANODE", "node-secret")
OTHER_KEY = ("AKIAOTHER", "other-secret")
HOST_CREDENTIALS = {
    "access_key_id": "AKIAHOST",
    "secret_access_key": "host-secret",
    "session_token": "host-token",
}


class RunningEnclave:
    """The enclave signer as a plain local thread on a loopback TCP port."""

    def __init__(self, signer: EnclaveSigner) -> None:
        self.signer = signer
        self.listener = ChannelAddress.tcp("127.0.0.1", 0).listen()
        self.address = ChannelAddress.tcp("127.0.0.1", self.listener.getsockname()[1])
        self.stop = threading.Event()
        self.thread = threading.Thread(
            target=serve, args=(self.listener, signer, self.stop), daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        # Wakes the loop's accept() at once (Linux), rather than at its next 0.2 s timeout.
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.thread.join(5)
        self.listener.close()


@dataclass
class Vault:
    url: str
    server: ParentServer
    enclave: RunningEnclave
    kms: KmsTestDouble
    sts: StsTestDouble
    nsm: TestPkiNsm
    state: KeyStateFile


def start_vault(pki, tmp_path, *, limits=None, nsm_pcr0=IMAGE_PCR0, initialise=True) -> Vault:
    clock = lambda: pki.valid_at  # noqa: E731 - the test PKI's time, not the wall clock
    kms = KmsTestDouble(
        key_id=KEY_ID, image_sha384=IMAGE_PCR0, trusted_root_sha256=pki.root_sha256, clock=clock
    )
    nsm = TestPkiNsm(pki, pcr0=nsm_pcr0)
    enclave = RunningEnclave(EnclaveSigner(nsm, lambda region, credentials: kms))
    state = KeyStateFile(tmp_path / "state" / "signing-key.json")
    client = EnclaveClient(
        enclave.address,
        key_id=KEY_ID,
        region=REGION,
        state=state,
        credentials=lambda: HOST_CREDENTIALS,
    )
    if initialise:
        client.initialise()
    sts = StsTestDouble(
        {
            NODE_KEY[0]: (NODE_KEY[1], NODE_SESSION_ARN),
            OTHER_KEY[0]: (OTHER_KEY[1], OTHER_SESSION_ARN),
        },
        region=REGION,
    )
    verifier = CallerVerifier(
        sts_url=sts_url_for_region(REGION),
        allowed_role_arns=[NODE_ROLE_ARN],
        server_id="vault-test-1",
        transport=sts,
    )
    server = ParentServer(
        ("127.0.0.1", 0),
        enclave=client,
        verifier=verifier,
        region=REGION,
        limits=limits or ParentLimits(),
    )
    servers.start(server)
    url = f"http://127.0.0.1:{server.server_address[1]}"
    return Vault(url=url, server=server, enclave=enclave, kms=kms, sts=sts, nsm=nsm, state=state)


def stop_vault(vault: Vault) -> None:
    vault.server.shutdown()
    vault.server.server_close()
    vault.enclave.close()
