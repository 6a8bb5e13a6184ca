"""mkipc's classic facilities as the OS rows measure theirs: each through the kernel.

- ``mkipc.queue``: one message queue carries both directions, told apart by the message
  type (1 = ping, 2 = echo), as ``sysv.mq`` does with a System V queue.
- ``mkipc.pipe``: two pipes of the default 64 KiB, one each way; the peer reads a whole
  message before it writes it back (it learns the size first), as the ``os.pipe`` peer
  does, so that a message larger than a pipe cannot deadlock the pair.
- ``mkipc.semaphore``: two semaphores, posted and waited in turn (no payload), the
  synchronisation round trip that coordinates a shared memory object.

Each row starts its own ``mkipc kernel`` and spawns the peer with the capabilities it needs.
"""

from __future__ import annotations

import contextlib
import sys

import kernel
from kernel.bench.mechanisms import PeerLostError, make_payload, register
from kernel.bench.mechanisms.mkipc_call import _MkipcMechanism, serve_role

__all__ = ["MkipcPipe", "MkipcQueue", "MkipcSemaphore"]

_PING, _ECHO = 1, 2  # message types on the queue


@register
class MkipcQueue(_MkipcMechanism):
    name = "mkipc.queue"
    peer_role = "queue"

    def setup(self, payload_size: int) -> None:
        if payload_size > kernel.MAX_PAYLOAD:
            raise ValueError(f"mkipc messages carry at most {kernel.MAX_PAYLOAD} bytes")
        self._payload = make_payload(payload_size)
        self._start_kernel()
        assert self._k is not None
        self._q = self._k.queue(2, max_bytes=2 * (payload_size + 64))
        self._spawn({"q": self._q})
        self.roundtrip()

    def roundtrip(self) -> None:
        self._q.send(self._payload, mtype=_PING)
        if len(self._q.recv(mtype=_ECHO).data) != len(self._payload):
            raise PeerLostError("the echo's length differs from the payload's")


@register
class MkipcPipe(_MkipcMechanism):
    name = "mkipc.pipe"
    peer_role = "pipe"

    def setup(self, payload_size: int) -> None:
        self._payload = make_payload(payload_size)
        self._start_kernel()
        assert self._k is not None
        (r_ping, self._w), (self._r, w_echo) = self._k.pipe(), self._k.pipe()
        self._spawn({"r": r_ping, "w": w_echo})
        for cap in (r_ping, w_echo):
            cap.close()  # the peer holds them: its end is EOF and EPIPE here
        self._w.write(payload_size.to_bytes(8, "little"))
        self.roundtrip()

    def roundtrip(self) -> None:
        self._w.write(self._payload)
        _read_exact(self._r, len(self._payload))


@register
class MkipcSemaphore(_MkipcMechanism):
    """post → the peer wakes and posts back (the payload is not used)."""

    name = "mkipc.semaphore"
    peer_role = "semaphore"

    def setup(self, payload_size: int) -> None:
        self._start_kernel()
        assert self._k is not None
        self._ping, self._pong = self._k.semaphore(), self._k.semaphore()
        self._spawn({"ping": self._ping, "pong": self._pong})
        self.roundtrip()

    def roundtrip(self) -> None:
        self._ping.post()
        self._pong.wait()


# --- inside the peer ----------------------------------------------------------------------


def _queue(k: kernel.Kernel) -> None:
    q = k.inherited["q"]
    assert isinstance(q, kernel.QueueCap)
    while True:
        q.send(q.recv(mtype=_PING).data, mtype=_ECHO)


def _read_exact(r: kernel.PipeReaderCap, n: int) -> bytes:
    parts, left = [], n
    while left:
        chunk = r.read(min(left, kernel.MAX_PAYLOAD))
        if not chunk:
            raise PeerLostError("the pipe reached EOF")
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def _pipe(k: kernel.Kernel) -> None:
    r, w = k.inherited["r"], k.inherited["w"]
    assert isinstance(r, kernel.PipeReaderCap)
    assert isinstance(w, kernel.PipeWriterCap)
    size = int.from_bytes(_read_exact(r, 8), "little")
    while True:  # ends at EOF (PeerLostError) or when the benchmark ends the kernel
        w.write(_read_exact(r, size))


def _semaphore(k: kernel.Kernel) -> None:
    ping, pong = k.inherited["ping"], k.inherited["pong"]
    assert isinstance(ping, kernel.SemaphoreCap)
    assert isinstance(pong, kernel.SemaphoreCap)
    while True:
        ping.wait()
        pong.post()


if __name__ == "__main__":
    with contextlib.suppress(PeerLostError):
        serve_role(sys.argv[1:], {"queue": _queue, "pipe": _pipe, "semaphore": _semaphore})
