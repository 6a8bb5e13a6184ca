"""POSIX message queues (mq_overview(7)) through the optional ``posix_ipc`` package.

Two queues, one per direction. Names are random and removed as soon as both processes have the
queues open (the queues live on until closed), so a crash leaves nothing behind in the name
space. Linux caps an unprivileged message at /proc/sys/fs/mqueue/msgsize_max (8192 by default):
larger payloads fail in setup and the runner reports the row as skipped.
"""

from __future__ import annotations

import contextlib
import importlib
import secrets
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

_READY_TIMEOUT_S = 10.0
_DEPTH = 1  # ping-pong never has more than one message in flight per direction


def _posix_ipc() -> ModuleType:
    return importlib.import_module("posix_ipc")  # optional: the [bench] extra


@register
class OsPosixMq(Mechanism):
    name = "posix.mq"

    def __init__(self) -> None:
        self._ping: Any = None  # posix_ipc.MessageQueue, untyped package
        self._echo: Any = None
        self._peer: PeerProcess | None = None
        self._payload = b""

    def unavailable(self) -> str | None:
        try:
            _posix_ipc()
        except ImportError:
            return "the optional package posix_ipc is not installed (pip install posix_ipc)"
        return None

    def setup(self, payload_size: int) -> None:
        self.teardown()
        check_limit(self.name, payload_size, "/proc/sys/fs/mqueue/msgsize_max")
        self._payload = make_payload(payload_size)
        try:
            self._start(_posix_ipc(), payload_size)
        except BaseException:
            self.teardown()
            raise

    def _start(self, mq: ModuleType, payload_size: int) -> None:
        names = [f"/mkipc-bench-{secrets.token_hex(8)}-{d}" for d in ("ping", "echo")]
        size = max(payload_size, 1)
        self._ping = mq.MessageQueue(names[0], mq.O_CREX, 0o600, _DEPTH, size)
        self._echo = mq.MessageQueue(names[1], mq.O_CREX, 0o600, _DEPTH, size)
        try:
            argv = [*names, str(payload_size)]
            self._peer = PeerProcess(__name__, argv, [], self.peer_lifetime_s)
            self._echo.receive(_READY_TIMEOUT_S)  # the peer has both queues open
        finally:
            for queue in (self._ping, self._echo):
                queue.unlink()

    def roundtrip(self) -> None:
        self._ping.send(self._payload)
        echo, _ = self._echo.receive()
        if len(echo) != len(self._payload):
            raise PeerLostError("posix.mq: aborted, or the echo has the wrong size")

    def peer_pids(self) -> list[int]:
        return [] if self._peer is None else [self._peer.pid]

    def abort(self) -> None:
        """A dead peer never wakes receive(): post an empty message to our own queue."""
        if self._echo is not None:
            with contextlib.suppress(Exception):
                self._echo.send(b"", 0)
        super().abort()

    def teardown(self) -> None:
        if self._ping is not None and self._peer is not None:
            with contextlib.suppress(Exception):  # full queue or peer gone: it still stops
                self._ping.send(b"", 0)  # the peer's stop message
        if self._peer is not None:
            self._peer.stop()
            self._peer = None
        for queue in (self._ping, self._echo):
            if queue is not None:
                queue.close()
        self._ping = self._echo = None


def peer_main(argv: list[str]) -> None:
    """``<ping_name> <echo_name> <payload_size>``: echo until an empty (stop) message."""
    mq = _posix_ipc()
    ping, echo = mq.MessageQueue(argv[0]), mq.MessageQueue(argv[1])
    echo.send(b"ready")
    while True:  # ends at the stop message, or at the lifetime alarm
        payload, _ = ping.receive()
        if not payload:
            return
        echo.send(payload)
