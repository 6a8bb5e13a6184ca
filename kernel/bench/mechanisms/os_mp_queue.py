"""multiprocessing.Queue, one per direction: a pipe plus a feeder thread and pickling on each
side, so it shows the cost of the convenient path.

A Queue can only be handed to a child that multiprocessing starts, so the peer is a "spawn"
child (a "fork" child would inherit every other mechanism's descriptors and hide their EOF).
Like any spawn user, the calling program needs an ``if __name__ == "__main__":`` guard.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import queue
import time
from multiprocessing.process import BaseProcess
from multiprocessing.queues import Queue

from kernel.bench.mechanisms import (
    Mechanism,
    PeerLostError,
    bound_peer_life,
    make_payload,
    register,
)

_READY_TIMEOUT_S = 20.0  # a spawn child starts a fresh interpreter
_READY_POLL_S = 0.05
_STOP_GRACE_S = 2.0


@register
class OsMpQueue(Mechanism):
    name = "mp.Queue"

    def __init__(self) -> None:
        self._ping: Queue[bytes | None] | None = None
        self._echo: Queue[bytes | None] | None = None
        self._proc: BaseProcess | None = None
        self._payload = b""

    def setup(self, payload_size: int) -> None:
        self.teardown()
        self._payload = make_payload(payload_size)
        try:
            self._start()
        except BaseException:
            self.teardown()
            raise

    def _start(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._ping, self._echo = ctx.Queue(), ctx.Queue()
        args = (self._ping, self._echo, os.getpid(), self.peer_lifetime_s)
        self._proc = ctx.Process(target=_peer, args=args, name="mkipc-bench-mp.Queue", daemon=True)
        self._proc.start()
        deadline = time.monotonic() + _READY_TIMEOUT_S
        while self._proc.is_alive() and time.monotonic() < deadline:  # bounded by the deadline
            with contextlib.suppress(queue.Empty):
                self._echo.get(timeout=_READY_POLL_S)  # the peer's "ready"
                return
        raise PeerLostError(f"mp.Queue: the peer did not start (exit code {self._proc.exitcode})")

    def roundtrip(self) -> None:
        ping, echo_queue = self._ping, self._echo
        assert ping is not None, "mp.Queue: roundtrip before setup"
        assert echo_queue is not None, "mp.Queue: roundtrip before setup"
        ping.put(self._payload)
        echo = echo_queue.get()
        if echo is None or len(echo) != len(self._payload):
            raise PeerLostError("mp.Queue: aborted, or the echo has the wrong size")

    def peer_pids(self) -> list[int]:
        pid = None if self._proc is None else self._proc.pid
        return [] if pid is None else [pid]

    def abort(self) -> None:
        """A dead peer never wakes ``get()``: post the stop value to our own queue."""
        if self._echo is not None:
            self._echo.put(None)
        super().abort()

    def teardown(self) -> None:
        if self._ping is not None and self._proc is not None and self._proc.is_alive():
            self._ping.put(None)  # the peer's stop value
        if self._proc is not None:
            _stop_process(self._proc)
            self._proc = None
        for q in (self._ping, self._echo):
            if q is not None:
                q.cancel_join_thread()  # a dead peer may leave data unread: never hang here
                q.close()
        self._ping = self._echo = None


def _stop_process(proc: BaseProcess) -> None:
    """Let the peer exit by itself, then kill it (by its own pid) and reap it."""
    if proc.pid is None:  # never started
        return
    proc.join(_STOP_GRACE_S)
    if proc.is_alive():
        proc.kill()
        proc.join(_STOP_GRACE_S)
    with contextlib.suppress(ValueError):  # still running after SIGKILL: the OS reaps it
        proc.close()


def _peer(
    ping: Queue[bytes | None], echo: Queue[bytes | None], parent_pid: int, lifetime_s: float
) -> None:
    bound_peer_life(parent_pid, lifetime_s)
    echo.put(b"ready")
    while True:  # ends at the stop value, or at the lifetime alarm
        payload = ping.get()
        if payload is None:
            return
        echo.put(payload)
