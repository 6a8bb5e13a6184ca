"""A System V message queue (msgsnd(2)/msgrcv(2)) through the optional ``sysv_ipc`` package.

One queue carries both directions, told apart by the message type (1 = ping, 2 = echo). System V
queues have no unlink-while-open: the queue exists until teardown removes it. Linux caps a
message at /proc/sys/kernel/msgmax (8192 by default): larger payloads are reported as skipped.
"""

from __future__ import annotations

import contextlib
import importlib
from types import ModuleType
from typing import Any

from kernel.bench.mechanisms import (
    Mechanism,
    PeerLostError,
    PeerProcess,
    check_limit,
    make_payload,
    register,
)

_PING, _ECHO = 1, 2  # message types


def _sysv_ipc() -> ModuleType:
    return importlib.import_module("sysv_ipc")  # optional: the [bench] extra


@register
class OsSysvMq(Mechanism):
    name = "sysv.mq"

    def __init__(self) -> None:
        self._queue: Any = None  # sysv_ipc.MessageQueue, untyped package
        self._peer: PeerProcess | None = None
        self._payload = b""

    def unavailable(self) -> str | None:
        try:
            _sysv_ipc()
        except ImportError:
            return "the optional package sysv_ipc is not installed (pip install sysv_ipc)"
        return None

    def setup(self, payload_size: int) -> None:
        self.teardown()
        check_limit(self.name, payload_size, "/proc/sys/kernel/msgmax")
        self._payload = make_payload(payload_size)
        sysv = _sysv_ipc()
        try:
            # key None: sysv_ipc picks an unused random key; IPC_CREX fails rather than share.
            self._queue = sysv.MessageQueue(None, sysv.IPC_CREX, 0o600, max(payload_size, 1))
            argv = [str(self._queue.key), str(payload_size)]
            self._peer = PeerProcess(__name__, argv, [], self.peer_lifetime_s)
        except BaseException:
            self.teardown()
            raise

    def roundtrip(self) -> None:
        self._queue.send(self._payload, type=_PING)
        echo, _ = self._queue.receive(type=_ECHO)
        if len(echo) != len(self._payload):
            raise PeerLostError("sysv.mq: aborted, or the echo has the wrong size")

    def peer_pids(self) -> list[int]:
        return [] if self._peer is None else [self._peer.pid]

    def abort(self) -> None:
        """A dead peer never wakes receive(): post an empty echo ourselves."""
        if self._queue is not None:
            with contextlib.suppress(Exception):
                self._queue.send(b"", block=False, type=_ECHO)
        super().abort()

    def teardown(self) -> None:
        if self._queue is not None and self._peer is not None:
            with contextlib.suppress(Exception):
                self._queue.send(b"", block=False, type=_PING)  # the peer's stop message
        if self._peer is not None:
            self._peer.stop()
            self._peer = None
        if self._queue is not None:
            with contextlib.suppress(Exception):  # already removed
                self._queue.remove()
            self._queue = None


def peer_main(argv: list[str]) -> None:
    """``<key> <payload_size>``: echo pings until an empty (stop) message."""
    sysv = _sysv_ipc()
    queue = sysv.MessageQueue(int(argv[0]), 0, 0o600, max(int(argv[1]), 1))
    while True:  # ends at the stop message, or at the lifetime alarm
        payload, _ = queue.receive(type=_PING)
        if not payload:
            return
        queue.send(payload, type=_ECHO)
