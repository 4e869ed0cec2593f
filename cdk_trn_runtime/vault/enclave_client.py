"""The vault host's client of the enclave, over vsock.

On start-up it loads the stored key state, sends the enclave ``init`` with the host role's
credentials, stores the state the enclave returns on first start, and refuses to serve when the
enclave holds a key other than the stored one; afterwards it forwards ``sign`` (and
``public_key`` / ``attest``), initialising the enclave again when it restarted. Standard library
only.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from cdk_trn_runtime.enclave.channel import FrameError
from cdk_trn_runtime.vault.key_state import KeyStateFile

__all__ = ["EnclaveChannel", "EnclaveClient", "EnclaveError", "initialise_when_up"]

LOG = logging.getLogger(__name__)


class EnclaveError(Exception):
    """The enclave is unreachable or answered with an error."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class EnclaveChannel(Protocol):
    """Sends one request frame to the enclave and returns its reply (:class:`ChannelAddress`)."""

    def request(self, message: dict[str, Any], *, timeout: float = 30.0) -> dict[str, Any]: ...


class EnclaveClient:
    """Requests to the enclave; initialises it (again) when it reports no key loaded."""

    def __init__(
        self,
        channel: EnclaveChannel,
        *,
        key_id: str,
        region: str,
        state: KeyStateFile,
        credentials: Callable[[], Mapping[str, str]],
        timeout: float = 30.0,
    ) -> None:
        self._channel = channel
        self._key_id = key_id
        self._region = region
        self._state = state
        self._credentials = credentials
        self._timeout = timeout
        self._init_lock = threading.Lock()

    def initialise(self) -> dict[str, Any]:
        with self._init_lock:
            stored = self._state.load()
            if stored is not None:
                self._require_configured_key(stored, f"the key state in {self._state.path}")
            reply = self._raw(
                {
                    "op": "init",
                    "key_id": self._key_id,
                    "region": self._region,
                    "credentials": dict(self._credentials()),
                    "stored_key": stored,
                }
            )
            self._require_configured_key(reply.get("stored_key"), "the enclave's key state")
            if stored is not None:
                self._require_stored_key(stored, reply)
            if reply.get("created") or stored is None:
                self._state.save(reply["stored_key"])
            LOG.info("enclave ready, signing key sha256 %s", reply.get("key_sha256"))
            return reply

    def _require_configured_key(self, state: Any, what: str) -> None:
        # Key substitution: state naming another KMS key (one whose policy someone else controls)
        # would let that someone decrypt the signing key outside the enclave. Never load it,
        # never store it.
        key_id = state.get("key_id") if isinstance(state, Mapping) else None
        if key_id != self._key_id:
            raise EnclaveError(
                "key_mismatch",
                f"{what} names KMS key {key_id!r}, but this vault is configured for "
                f"{self._key_id}; refusing it",
            )

    def _require_stored_key(self, stored: Mapping[str, Any], reply: Mapping[str, Any]) -> None:
        # An enclave that kept its own key in memory answers init with that key (created=False);
        # signing with it would produce signatures no published public key verifies.
        try:
            stored_public = base64.b64decode(str(stored["public_key"]), validate=True)
            enclave_public = base64.b64decode(str(reply["public_key"]), validate=True)
        except (KeyError, ValueError) as exc:
            raise EnclaveError(
                "key_mismatch", f"cannot compare the enclave's key with {self._state.path}: {exc}"
            ) from exc
        if stored_public != enclave_public:
            raise EnclaveError(
                "key_mismatch",
                f"the enclave holds signing key sha256 {hashlib.sha256(enclave_public).hexdigest()}"
                f" but {self._state.path} holds sha256 {hashlib.sha256(stored_public).hexdigest()};"
                " restart the enclave so that it loads the stored key",
            )

    def call(self, message: dict[str, Any]) -> dict[str, Any]:
        try:
            return self._raw(message)
        except EnclaveError as exc:
            if exc.code != "not_initialised":
                raise
        # The enclave restarted and lost its in-memory key: load it again, then retry once.
        self.initialise()
        return self._raw(message)

    def _raw(self, message: dict[str, Any]) -> dict[str, Any]:
        try:
            reply = self._channel.request(message, timeout=self._timeout)
        except (OSError, FrameError) as exc:
            raise EnclaveError("enclave_unavailable", f"enclave unreachable: {exc}") from exc
        if not reply.get("ok"):
            error = reply.get("error") or {}
            raise EnclaveError(
                str(error.get("code", "enclave_error")), str(error.get("message", "enclave error"))
            )
        return reply


def initialise_when_up(enclave: EnclaveClient, *, attempts: int = 60, pause: float = 2.0) -> None:
    # The enclave boots for a few seconds after `nitro-cli run-enclave` returns; wait for it.
    for attempt in range(1, attempts + 1):
        try:
            enclave.initialise()
            return
        except EnclaveError as exc:
            if exc.code != "enclave_unavailable" or attempt == attempts:
                raise
            LOG.info("enclave not reachable yet (%s); retrying", exc)
            time.sleep(pause)
