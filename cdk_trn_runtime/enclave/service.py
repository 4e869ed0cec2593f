"""The signer that runs inside the Nitro Enclave, and the wire it speaks.

This module owns:

- the enclave end of the channel in :mod:`cdk_trn_runtime.enclave.channel` (vsock in production,
  loopback TCP in tests; length-prefixed JSON frames);
- the attestation source in production, :class:`NsmDevice`, which asks ``/dev/nsm`` for
  attestation documents through the NSM driver's raw ioctl;
- :class:`EnclaveSigner`, the request handler: ``init`` (obtain the P-384 key through KMS with a
  Recipient, from the configured KMS key only), ``public_key``, ``sign`` (ECDSA P-384 over a
  SHA-384 digest) and ``attest`` (an attestation document whose ``public_key`` is the signing key
  and whose ``user_data`` names the KMS key ARN, see
  :mod:`cdk_trn_runtime.enclave.vault_attestation`, so anyone can check that key lives in an
  enclave with the expected PCRs and came from the expected KMS key);
- :func:`serve`, the accept loop, one request per connection;
- :class:`StreamForwarder`, which carries boto3's TLS to KMS from a loopback port in the enclave
  to ``vsock-proxy`` on the parent.

The private key never leaves this process: no request returns it and the key state the parent
stores is KMS ciphertext. Run in the enclave image as ``python -m cdk_trn_runtime.enclave.service``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import fcntl
import hashlib
import logging
import os
import socket
import threading
from collections.abc import Callable
from typing import Any

import cbor2
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from cdk_trn_runtime.enclave.channel import (
    DEFAULT_ENCLAVE_PORT,
    PARENT_CID,
    ChannelAddress,
    FrameError,
    recv_frame,
    send_frame,
)
from cdk_trn_runtime.enclave.kms_recipient import (
    AttestationSource,
    KeyMismatchError,
    KmsClient,
    KmsRecipientError,
    SigningKey,
    StoredKey,
    boto3_kms_client,
    decrypt_signing_key,
    generate_signing_key,
)
from cdk_trn_runtime.enclave.vault_attestation import KMS_KEY_ARN, vault_user_data

__all__ = [
    "DEFAULT_ENCLAVE_PORT",
    "PARENT_CID",
    "ChannelAddress",
    "EnclaveSigner",
    "FrameError",
    "NsmDevice",
    "NsmError",
    "StreamForwarder",
    "recv_frame",
    "send_frame",
    "serve",
]

LOG = logging.getLogger("cdk_trn_runtime.enclave.service")

SIGNATURE_ALGORITHM = "ECDSA_P384_SHA384"
_SHA384_HEX = 96
KmsFactory = Callable[[str, dict[str, str]], KmsClient]


class NsmError(Exception):
    """The Nitro Security Module refused or failed a request."""


class _NsmIovec(ctypes.Structure):
    _fields_ = [("addr", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class _NsmRaw(ctypes.Structure):
    _fields_ = [("request", _NsmIovec), ("response", _NsmIovec)]


def _iowr(magic: int, number: int, size: int) -> int:
    # Linux _IOWR: direction read|write (3) in bits 30-31, size in 16-29, type in 8-15, nr in 0-7.
    return (3 << 30) | (size << 16) | (magic << 8) | number


class NsmDevice:
    """Attestation documents from the Nitro Security Module, ``/dev/nsm``.

    Uses the driver's raw ioctl (``NSM_IOCTL_RAW = _IOWR(0x0A, 0, struct nsm_raw)`` in the Linux
    uapi header ``linux/nsm.h``): the request is the CBOR the NSM API defines,
    ``{"Attestation": {"user_data": ..., "nonce": ..., "public_key": ...}}``, and the answer is
    ``{"Attestation": {"document": <COSE_Sign1>}}`` or ``{"Error": <code>}``. This path only runs
    inside a Nitro Enclave and is not exercised by the tests on this machine; tests use a
    test-PKI attestation source with the same interface.
    """

    REQUEST_MAX = 0x1000
    RESPONSE_MAX = 0x3000
    IOCTL_RAW = _iowr(0x0A, 0, ctypes.sizeof(_NsmRaw))

    def __init__(self, path: str = "/dev/nsm") -> None:
        self._path = path
        self._lock = threading.Lock()

    def attest(
        self,
        *,
        public_key: bytes | None = None,
        user_data: bytes | None = None,
        nonce: bytes | None = None,
    ) -> bytes:
        request = cbor2.dumps(
            {"Attestation": {"user_data": user_data, "nonce": nonce, "public_key": public_key}}
        )
        reply = self._call(request)
        if not isinstance(reply, dict):
            raise NsmError("NSM reply is not a map")
        if "Error" in reply:
            raise NsmError(f"NSM refused the attestation request: {reply['Error']}")
        document = reply.get("Attestation", {}).get("document")
        if not isinstance(document, bytes):
            raise NsmError("NSM reply holds no attestation document")
        return document

    def _call(self, request: bytes) -> Any:
        if len(request) > self.REQUEST_MAX:
            raise NsmError(f"NSM request of {len(request)} bytes exceeds {self.REQUEST_MAX}")
        request_buffer = ctypes.create_string_buffer(request, len(request))
        response_buffer = ctypes.create_string_buffer(self.RESPONSE_MAX)
        message = _NsmRaw(
            _NsmIovec(ctypes.addressof(request_buffer), len(request)),
            _NsmIovec(ctypes.addressof(response_buffer), self.RESPONSE_MAX),
        )
        with self._lock:
            fd = os.open(self._path, os.O_RDWR | os.O_CLOEXEC)
            try:
                fcntl.ioctl(fd, self.IOCTL_RAW, message)
            except OSError as exc:
                raise NsmError(f"NSM ioctl failed: {exc}") from exc
            finally:
                os.close(fd)
        size = int(message.response.len)
        if not 0 < size <= self.RESPONSE_MAX:
            raise NsmError(f"NSM returned {size} bytes")
        return cbor2.loads(response_buffer.raw[:size])


class StreamForwarder:
    """Pipes local TCP connections to another address: in the enclave, 127.0.0.1:443 to the
    parent's ``vsock-proxy`` (CID 3, port 8000), which relays to KMS.

    The enclave has no network device, so boto3 reaches KMS through this forwarder: the image maps
    ``kms.<region>.amazonaws.com`` to 127.0.0.1 in ``/etc/hosts`` and brings ``lo`` up. TLS runs
    end to end between boto3 and KMS; the parent only ever sees ciphertext.
    """

    def __init__(
        self,
        listen: ChannelAddress,
        target: ChannelAddress,
        *,
        max_connections: int = 16,
        timeout: float = 60.0,
    ) -> None:
        self._listener = listen.listen()
        self.address = self._listener.getsockname()
        self._target = target
        self._slots = threading.BoundedSemaphore(max_connections)
        self._timeout = timeout
        self._stop = threading.Event()

    def start(self) -> StreamForwarder:
        threading.Thread(target=self._accept_loop, name="kms-forwarder", daemon=True).start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._listener.close()

    def _accept_loop(self) -> None:
        self._listener.settimeout(0.2)
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if not self._slots.acquire(blocking=False):
                client.close()
                continue
            threading.Thread(target=self._connect, args=(client,), daemon=True).start()

    def _connect(self, client: socket.socket) -> None:
        try:
            upstream = self._target.connect(self._timeout)
        except OSError:
            client.close()
            self._slots.release()
            return
        client.settimeout(self._timeout)
        done = threading.Event()
        for source, sink in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pipe, args=(source, sink, done), daemon=True).start()
        threading.Thread(target=self._reap, args=(client, upstream, done), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket, done: threading.Event) -> None:
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            done.set()

    def _reap(self, client: socket.socket, upstream: socket.socket, done: threading.Event) -> None:
        done.wait()
        for sock in (client, upstream):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        self._slots.release()


class RequestError(Exception):
    """A request to the enclave is invalid; ``code`` is machine-readable."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class EnclaveSigner:
    """The in-enclave request handler. Holds the signing key in memory once initialised."""

    def __init__(self, attestation: AttestationSource, kms_factory: KmsFactory) -> None:
        self._attestation = attestation
        self._kms_factory = kms_factory
        self._key: SigningKey | None = None
        self._lock = threading.Lock()

    @property
    def ready(self) -> bool:
        return self._key is not None

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        """Answer one request; never raises, errors come back as ``{"ok": false, "error": ...}``."""
        op = request.get("op")
        handlers = {
            "init": self._init,
            "public_key": self._public_key,
            "sign": self._sign,
            "attest": self._attest,
        }
        try:
            if op not in handlers:
                allowed = sorted(handlers)
                raise RequestError("unknown_op", f"op must be one of {allowed}, got {op!r}")
            return {"ok": True, **handlers[str(op)](request)}
        except RequestError as exc:
            return {"ok": False, "error": {"code": exc.code, "message": str(exc)}}
        except KeyMismatchError as exc:
            return {"ok": False, "error": {"code": "key_mismatch", "message": str(exc)}}
        except KmsRecipientError as exc:
            return {"ok": False, "error": {"code": "kms", "message": str(exc)}}
        except Exception as exc:
            LOG.exception("enclave request %s failed", op)
            return {"ok": False, "error": {"code": "internal", "message": type(exc).__name__}}

    def _require_key(self) -> SigningKey:
        if self._key is None:
            raise RequestError("not_initialised", "the signing key is not loaded; send init first")
        return self._key

    def _key_info(self, key: SigningKey) -> dict[str, Any]:
        return {
            "public_key": base64.b64encode(key.public_key_der).decode(),
            "key_sha256": hashlib.sha256(key.public_key_der).hexdigest(),
        }

    def _init(self, request: dict[str, Any]) -> dict[str, Any]:
        key_id, region = request.get("key_id"), request.get("region")
        credentials = request.get("credentials")
        if not isinstance(key_id, str) or not key_id or not isinstance(region, str) or not region:
            raise RequestError("bad_request", "init needs key_id and region strings")
        if not KMS_KEY_ARN.match(key_id):
            raise RequestError("bad_request", f"key_id must be a KMS key ARN, got {key_id!r}")
        if not isinstance(credentials, dict) or not all(
            isinstance(credentials.get(k), str) for k in ("access_key_id", "secret_access_key")
        ):
            raise RequestError(
                "bad_request", "init needs credentials with access_key_id and secret_access_key"
            )
        stored_json = request.get("stored_key")
        with self._lock:
            if self._key is not None:
                # A restarted parent re-sends init; the key already in memory stays, and only
                # for the key it came from.
                if key_id != self._key.stored.key_id:
                    raise KeyMismatchError(
                        f"this enclave holds a key from {self._key.stored.key_id}, not {key_id}"
                    )
                return {
                    **self._key_info(self._key),
                    "stored_key": self._key.stored.to_json(),
                    "created": False,
                }
            kms = self._kms_factory(region, credentials)
            if stored_json is None:
                key = generate_signing_key(kms, key_id, self._attestation)
                created = True
            else:
                key = decrypt_signing_key(
                    kms, StoredKey.from_json(stored_json), self._attestation, key_id
                )
                created = False
            self._key = key
        LOG.info("signing key loaded (created=%s)", created)
        return {**self._key_info(key), "stored_key": key.stored.to_json(), "created": created}

    def _public_key(self, request: dict[str, Any]) -> dict[str, Any]:
        return self._key_info(self._require_key())

    def _sign(self, request: dict[str, Any]) -> dict[str, Any]:
        key = self._require_key()
        digest_hex = request.get("digest")
        if not isinstance(digest_hex, str) or len(digest_hex) != _SHA384_HEX:
            raise RequestError("bad_request", "digest must be the 96-hex-digit SHA-384 to sign")
        try:
            digest = bytes.fromhex(digest_hex)
        except ValueError as exc:
            raise RequestError("bad_request", "digest must be hexadecimal") from exc
        signature = key.private_key.sign(digest, ec.ECDSA(Prehashed(hashes.SHA384())))
        return {
            "signature": base64.b64encode(signature).decode(),
            "algorithm": SIGNATURE_ALGORITHM,
            **self._key_info(key),
        }

    def _attest(self, request: dict[str, Any]) -> dict[str, Any]:
        key = self._require_key()
        nonce = request.get("nonce")
        nonce_bytes: bytes | None = None
        if nonce is not None:
            try:
                nonce_bytes = base64.b64decode(nonce, validate=True)
            except (ValueError, TypeError) as exc:
                raise RequestError("bad_request", "nonce must be base64") from exc
            if len(nonce_bytes) > 512:
                raise RequestError("bad_request", "nonce must be at most 512 bytes")
        # The signing key in public_key, the KMS key it came from in user_data: a verifier
        # learns both from the NSM, not from the host that relays the answer.
        document = self._attestation.attest(
            public_key=key.public_key_der,
            user_data=vault_user_data(key.stored.key_id, key.public_key_der),
            nonce=nonce_bytes,
        )
        return {"attestation_document": base64.b64encode(document).decode(), **self._key_info(key)}


def serve(
    listener: socket.socket,
    signer: EnclaveSigner,
    stop: threading.Event | None = None,
    *,
    connection_timeout: float = 10.0,
) -> None:
    """Answer one request per connection until ``stop`` is set. Bad input never ends the loop."""
    stop = stop or threading.Event()
    listener.settimeout(0.2)
    while not stop.is_set():
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            continue
        except OSError:
            if stop.is_set():
                return
            raise
        with conn:
            try:
                _answer(conn, signer, connection_timeout)
            except Exception:
                # Whatever one connection sends, the loop goes on to the next.
                LOG.exception("a request on the enclave channel failed")


def _answer(conn: socket.socket, signer: EnclaveSigner, timeout: float) -> None:
    conn.settimeout(timeout)
    try:
        request = recv_frame(conn)
    except (FrameError, OSError) as exc:
        _reply_quietly(conn, {"ok": False, "error": {"code": "bad_frame", "message": str(exc)}})
        return
    _reply_quietly(conn, signer.handle(request))


def _reply_quietly(conn: socket.socket, message: dict[str, Any]) -> None:
    try:
        send_frame(conn, message)
    except (OSError, FrameError, ValueError, TypeError):
        LOG.warning("could not send a reply to the parent")


def _resolve_locally(host: str, hosts_file: str = "/etc/hosts") -> None:
    """Point ``host`` at 127.0.0.1, where the forwarder listens; TLS still checks ``host``.

    The region is known only when the parent sends ``init``, so the entry is written then.
    """
    entry = f"127.0.0.1 {host}"
    with open(hosts_file, "a+", encoding="ascii") as hosts:
        hosts.seek(0)
        if entry not in hosts.read().splitlines():
            hosts.write(entry + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="cdk-trn in-enclave manifest signer")
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_ENCLAVE_PORT,
        help=f"vsock port to listen on (default {DEFAULT_ENCLAVE_PORT})",
    )
    parser.add_argument(
        "--kms-endpoint",
        default=None,
        help="KMS endpoint URL (default: the regional endpoint, which the image "
        "maps to 127.0.0.1 where the forwarder listens)",
    )
    parser.add_argument(
        "--forward-port",
        type=int,
        default=443,
        help="local TCP port forwarded to vsock-proxy (default 443; 0 disables)",
    )
    parser.add_argument(
        "--proxy-port", type=int, default=8000, help="vsock-proxy port on the parent (default 8000)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    def kms_factory(region: str, credentials: dict[str, str]) -> KmsClient:
        if args.forward_port and args.kms_endpoint is None:
            _resolve_locally(f"kms.{region}.amazonaws.com")
        return boto3_kms_client(region, credentials, endpoint_url=args.kms_endpoint)

    if args.forward_port:
        StreamForwarder(
            ChannelAddress.tcp("127.0.0.1", args.forward_port),
            ChannelAddress.vsock(PARENT_CID, args.proxy_port),
        ).start()
    signer = EnclaveSigner(NsmDevice(), kms_factory)
    # VMADDR_CID_ANY: accept from the parent whatever CID the enclave was given.
    with ChannelAddress.vsock(socket.VMADDR_CID_ANY, args.port).listen() as listener:
        LOG.info("enclave signer listening on vsock port %d", args.port)
        serve(listener, signer)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
