"""Socket servers (``socketserver``, ``http.server``) run in a thread for a test.

``serve_forever`` checks for ``shutdown()`` once per poll interval, half a second by default,
and ``shutdown()`` waits for it: :func:`serving` polls every hundredth of a second, so a test's
teardown does not wait out the default half second.
"""

from __future__ import annotations

import socketserver
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypeVar

#: How often a served loop looks for shutdown(), in seconds.
POLL_INTERVAL = 0.01

Server = TypeVar("Server", bound=socketserver.BaseServer)


def start(server: socketserver.BaseServer) -> threading.Thread:
    """``server.serve_forever`` in a daemon thread; stop it with :func:`stop`."""
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": POLL_INTERVAL}, daemon=True
    )
    thread.start()
    return thread


def stop(server: socketserver.BaseServer, thread: threading.Thread | None = None) -> None:
    """The loop stopped (within one poll interval), the socket closed, the thread ended."""
    server.shutdown()
    server.server_close()
    if thread is not None:
        thread.join()


@contextmanager
def serving(server: Server) -> Iterator[Server]:
    """``server`` serving in a thread for the ``with`` block, then stopped and closed."""
    thread = start(server)
    try:
        yield server
    finally:
        stop(server, thread)
