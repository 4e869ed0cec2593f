"""Admission on the vault host before a byte of a request is parsed: the bounds of
:class:`ParentLimits` (sizes, connection caps in total and per address, deadlines, source
networks), the per-address :class:`RateLimiter`, and the fixed answer to a refused connection.
Standard library only."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ParentLimits", "RateLimiter", "refuse"]


class RateLimiter:
    """Token buckets per client address, with a bounded number of tracked addresses."""

    def __init__(
        self,
        rate_per_second: float,
        burst: int,
        *,
        max_clients: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._rate = rate_per_second
        self._burst = float(burst)
        self._max_clients = max_clients
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def allow(self, client: str) -> bool:
        now = self._clock()
        with self._lock:
            tokens, last = self._buckets.pop(client, (self._burst, now))
            tokens = min(self._burst, tokens + (now - last) * self._rate)
            allowed = tokens >= 1.0
            self._buckets[client] = (tokens - 1.0 if allowed else tokens, now)
            while len(self._buckets) > self._max_clients:
                self._buckets.popitem(last=False)
            return allowed


@dataclass
class ParentLimits:
    """Bounds that keep one caller from exhausting the server.

    ``socket_timeout`` bounds each wait for bytes; ``header_deadline`` bounds the request line
    and headers by the wall clock (a few seconds: an honest client sends them at once), and
    ``request_deadline`` the whole request, so a client trickling one byte at a time holds a slot
    for seconds only; ``max_connections_per_address`` keeps one address from taking every one of
    ``max_connections``, which :meth:`for_clients` sizes so that every client node's share fits.
    """

    max_body_bytes: int = 32 * 1024
    rate_per_second: float = 5.0
    burst: int = 20
    max_connections: int = 32
    max_connections_per_address: int = 4
    socket_timeout: float = 10.0
    request_deadline: float = 20.0
    header_deadline: float = 3.0
    allowed_networks: tuple[str, ...] = field(default_factory=tuple)

    #: Slots kept beyond the client nodes' shares (operators, a replaced node's new address).
    RESERVE = 8

    @classmethod
    def for_clients(cls, nodes: int, **limits: Any) -> ParentLimits:
        """Limits where ``nodes`` client nodes (one address each) each have their full share of
        slots: the slow connections of every job on every node cannot crowd out one node's
        signing agent."""
        made = cls(**limits)
        made.max_connections = max(
            made.max_connections, made.max_connections_per_address * nodes + cls.RESERVE
        )
        return made


_PHRASES = {403: "Forbidden", 429: "Too Many Requests", 503: "Service Unavailable"}


def refuse(sock: socket.socket, status: int, code: str, message: str) -> None:
    """Answer a connection that is not admitted, without reading its request."""
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    head = (
        f"HTTP/1.0 {status} {_PHRASES[status]}\r\nContent-Type: application/json\r\n"
        f"Retry-After: 1\r\nConnection: close\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    with contextlib.suppress(OSError):
        # Non-blocking: the accepting thread never waits on a refused client.
        sock.setblocking(False)
        sock.sendall(head.encode() + body)
        sock.shutdown(socket.SHUT_WR)
        # Take what the client already sent, so that closing does not reset the connection
        # (and discard the answer) because of unread data.
        for _ in range(16):
            if not sock.recv(65536):
                break
