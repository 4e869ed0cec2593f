"""The parent-enclave channel: addresses (vsock or loopback TCP) and length-prefixed JSON frames.

Standard library only, so the parent host imports it without any third-party package. A frame is a
4-byte big-endian length, then that many bytes of UTF-8 JSON holding one object; both ends bound
the size. In production the enclave listens on ``AF_VSOCK`` (its CID, a fixed port) and the parent
connects; tests and local runs use loopback TCP with the same code.
"""

from __future__ import annotations

import json
import socket
import struct
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DEFAULT_ENCLAVE_PORT",
    "MAX_FRAME_BYTES",
    "PARENT_CID",
    "ChannelAddress",
    "FrameError",
    "recv_frame",
    "send_frame",
]

PARENT_CID = 3
DEFAULT_ENCLAVE_PORT = 5005
MAX_FRAME_BYTES = 256 * 1024
_HEADER = struct.Struct(">I")


class FrameError(Exception):
    """A frame on the parent-enclave channel is malformed, oversized or truncated."""


def send_frame(sock: socket.socket, message: dict[str, Any]) -> None:
    body = json.dumps(message, separators=(",", ":")).encode()
    if len(body) > MAX_FRAME_BYTES:
        raise FrameError(f"frame of {len(body)} bytes exceeds {MAX_FRAME_BYTES}")
    sock.sendall(_HEADER.pack(len(body)) + body)


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(min(size - len(chunks), 65536))
        if not chunk:
            raise FrameError(f"connection closed after {len(chunks)} of {size} bytes")
        chunks += chunk
    return bytes(chunks)


def recv_frame(sock: socket.socket, max_bytes: int = MAX_FRAME_BYTES) -> dict[str, Any]:
    (size,) = _HEADER.unpack(_recv_exact(sock, _HEADER.size))
    if size > max_bytes:
        raise FrameError(f"frame of {size} bytes exceeds {max_bytes}")
    try:
        message = json.loads(_recv_exact(sock, size))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FrameError(f"frame is not UTF-8 JSON: {exc}") from exc
    except RecursionError as exc:
        # json's decoder recurses per nesting level: "[" * 200000 must not take the reader down.
        raise FrameError("frame nests too deeply") from exc
    if not isinstance(message, dict):
        raise FrameError("frame must hold a JSON object")
    return message


@dataclass(frozen=True)
class ChannelAddress:
    """Where the enclave listens: a vsock (cid, port) in production, loopback TCP in tests."""

    family: int
    address: tuple[Any, ...]

    @classmethod
    def vsock(cls, cid: int, port: int = DEFAULT_ENCLAVE_PORT) -> ChannelAddress:
        return cls(socket.AF_VSOCK, (cid, port))

    @classmethod
    def tcp(cls, host: str, port: int) -> ChannelAddress:
        return cls(socket.AF_INET, (host, port))

    def listen(self, backlog: int = 16) -> socket.socket:
        sock = socket.socket(self.family, socket.SOCK_STREAM)
        if self.family == socket.AF_INET:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(self.address)
        sock.listen(backlog)
        return sock

    def connect(self, timeout: float) -> socket.socket:
        sock = socket.socket(self.family, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(self.address)
        except OSError:
            sock.close()
            raise
        return sock

    def request(self, message: dict[str, Any], *, timeout: float = 30.0) -> dict[str, Any]:
        """Send one request frame and return the reply frame."""
        with self.connect(timeout) as sock:
            send_frame(sock, message)
            return recv_frame(sock)
