"""The parent-side server on the enclave host (the node side is ``cdk_trn_runtime.vault.client``).

    python3.11 -m cdk_trn_runtime.vault.server --enclave-cid N --key-id ARN --region R \
        --allowed-role-arn ARN [...]

It wires the concerns of the vault host together, each in its own module:

- :mod:`~cdk_trn_runtime.vault.enclave_client` and :mod:`~cdk_trn_runtime.vault.key_state`:
  start-up against the enclave (load the stored key state, ``init`` with the host role's
  credentials from :mod:`~cdk_trn_runtime.vault.imds`, refuse a key other than the stored one),
  then ``sign`` / ``public_key`` / ``attest`` over vsock;
- :mod:`~cdk_trn_runtime.vault.caller_proof`: caller authentication (a SigV4-signed
  ``sts:GetCallerIdentity`` bound to this server and the digest, checked and sent to STS);
- :mod:`~cdk_trn_runtime.vault.admission`: source network, connection caps and rate limit before
  a byte is parsed (applied by :class:`ParentServer`, here);
- :mod:`~cdk_trn_runtime.vault.http_api`: the endpoints, deadlines and JSON errors.

The security group in front of the hosts admits only the cluster's nodes; the server adds the IAM
check so that membership of the network alone is not enough. Standard library only: the host
runs it with AL2023's python3.11 and nothing else.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import socket
import threading
from http.server import ThreadingHTTPServer
from typing import Any

from cdk_trn_runtime.enclave.channel import DEFAULT_ENCLAVE_PORT, ChannelAddress
from cdk_trn_runtime.vault.admission import ParentLimits, RateLimiter, refuse
from cdk_trn_runtime.vault.caller_proof import CallerVerifier, urllib_sts_transport
from cdk_trn_runtime.vault.enclave_client import EnclaveClient, initialise_when_up
from cdk_trn_runtime.vault.http_api import VaultRequestHandler
from cdk_trn_runtime.vault.imds import host_credentials
from cdk_trn_runtime.vault.key_state import KeyStateFile
from cdk_trn_runtime.vault.protocol import sts_url_for_region

__all__ = ["ParentServer", "main"]

LOG = logging.getLogger(__name__)


class ParentServer(ThreadingHTTPServer):
    """HTTP API on the enclave host: ``GET /v1/health``, ``GET /v1/info``,
    ``GET /v1/attestation?nonce=...``, ``POST /v1/sign``.

    Admission happens on the accepting thread before a byte of the request is read: the source
    network, the per-address and total connection caps and the rate limit. Each admitted
    connection then has ``request_deadline`` seconds of wall-clock time to send its request.
    """

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(
        self,
        address: tuple[str, int],
        *,
        enclave: EnclaveClient,
        verifier: CallerVerifier,
        region: str,
        limits: ParentLimits | None = None,
    ) -> None:
        self.enclave = enclave
        self.verifier = verifier
        self.region = region
        self.limits = limits or ParentLimits()
        self.rate_limiter = RateLimiter(self.limits.rate_per_second, self.limits.burst)
        self.networks = [ipaddress.ip_network(n) for n in self.limits.allowed_networks]
        self._active = 0
        self._per_address: dict[str, int] = {}
        self._active_lock = threading.Lock()
        super().__init__(address, VaultRequestHandler)

    def verify_request(self, request: Any, client_address: Any) -> bool:
        # Runs before any parsing; a refused connection gets a fixed answer and is closed.
        client = str(client_address[0])
        if self.networks:
            try:
                address = ipaddress.ip_address(client)
            except ValueError:
                address = None
            if address is None or not any(address in network for network in self.networks):
                refuse(request, 403, "forbidden", "caller address is not allowed")
                return False
        if not self.rate_limiter.allow(client):
            refuse(request, 429, "rate_limited", "too many requests; slow down")
            return False
        return True

    def process_request(self, request: Any, client_address: Any) -> None:
        client = str(client_address[0])
        with self._active_lock:
            busy = self._active >= self.limits.max_connections
            crowded = self._per_address.get(client, 0) >= self.limits.max_connections_per_address
            if not busy and not crowded:
                self._active += 1
                self._per_address[client] = self._per_address.get(client, 0) + 1
        if busy or crowded:
            message = (
                "too many connections; retry"
                if busy
                else "too many connections from this address; retry"
            )
            refuse(request, 503, "busy", message)
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver prints tracebacks to stderr by default; a dropped connection is routine.
        LOG.warning("connection from %s ended with an error", client_address, exc_info=True)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        client = str(client_address[0])
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._active_lock:
                self._active -= 1
                left = self._per_address.get(client, 1) - 1
                if left > 0:
                    self._per_address[client] = left
                else:
                    self._per_address.pop(client, None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="cdk-trn vault: parent-side signing server")
    parser.add_argument("--listen", default="0.0.0.0:8443", help="host:port (default 0.0.0.0:8443)")  # noqa: S104 - the security group admits only the cluster
    parser.add_argument("--enclave-cid", type=int, required=True)
    parser.add_argument("--enclave-port", type=int, default=DEFAULT_ENCLAVE_PORT)
    parser.add_argument("--key-id", required=True, help="KMS key ARN for the enclave")
    parser.add_argument("--region", required=True)
    parser.add_argument(
        "--allowed-role-arn",
        action="append",
        required=True,
        help="IAM role ARN whose sessions may sign (repeatable)",
    )
    parser.add_argument("--state", default="/var/lib/cdk-trn/signing-key.json")
    parser.add_argument(
        "--server-id",
        default=None,
        help="value callers bind their proofs to (default: this host's name)",
    )
    parser.add_argument(
        "--allowed-network",
        action="append",
        default=[],
        help="CIDR allowed to call (repeatable; default: any, rely on the SG)",
    )
    parser.add_argument(
        "--max-clients",
        type=int,
        default=0,
        help="client nodes the vault serves: connection slots are sized so each has its share",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    sts_url = sts_url_for_region(args.region)
    enclave = EnclaveClient(
        ChannelAddress.vsock(args.enclave_cid, args.enclave_port),
        key_id=args.key_id,
        region=args.region,
        state=KeyStateFile(args.state),
        credentials=host_credentials,
    )
    initialise_when_up(enclave)
    verifier = CallerVerifier(
        sts_url=sts_url,
        allowed_role_arns=args.allowed_role_arn,
        server_id=args.server_id or socket.getfqdn(),
        transport=urllib_sts_transport(),
        region=args.region,
    )
    host, _, port = args.listen.rpartition(":")
    limits = ParentLimits.for_clients(
        args.max_clients, allowed_networks=tuple(args.allowed_network)
    )
    with ParentServer(
        (host, int(port)), enclave=enclave, verifier=verifier, region=args.region, limits=limits
    ) as server:
        LOG.info("vault listening on %s", args.listen)
        server.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
