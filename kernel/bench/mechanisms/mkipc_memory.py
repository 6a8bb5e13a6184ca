"""mkipc memory objects: bulk data in shared memory; a session call carries only its length.

``mkipc.memory`` is the path DESIGN §8 gives bulk data: nothing of the payload crosses a
ring or the kernel. Set-up creates two memory objects, ``ping`` (this process writes it,
the server maps it read-only) and ``pong`` (the other way round), and opens a direct
session to the server. A round trip then does what an echo over a pipe does, copy for
copy: this process writes the payload into ``ping``; its session call carries the length
(8 bytes); the server reads the payload out of ``ping`` and writes it into ``pong``, then
answers; this process reads the echo out of ``pong``. Both sides map once, at set-up.

So the row measures what a user of the zero-copy path pays per message, and it runs for
every payload size of the sweep, 1 MiB included, which messages (``kernel.MAX_PAYLOAD``)
do not carry.
"""

from __future__ import annotations

import mmap
import sys

import kernel
from kernel import Rights
from kernel.bench.mechanisms import PeerLostError, make_payload, register
from kernel.bench.mechanisms.mkipc_call import _START_TIMEOUT_S, serve_role
from kernel.bench.mechanisms.mkipc_session import _offers, _SessionMechanism

__all__ = ["MkipcMemory"]

_READ_ONLY = Rights.MAP | Rights.READ | Rights.COPY  # COPY: inheritance copies it


@register
class MkipcMemory(_SessionMechanism):
    name = "mkipc.memory"
    peer_role = "memory"

    def setup(self, payload_size: int) -> None:
        self._payload = make_payload(payload_size)
        self._length = payload_size.to_bytes(8, "little")
        self._start_kernel()
        k = self._k
        assert k is not None
        size = max(payload_size, 1)
        ping, pong = k.memory(size), k.memory(size)
        ep = k.endpoint()
        self._spawn({"ep": ep, "ping": ping.copy(_READ_ONLY), "pong": pong})
        self._ping, self._pong = ping.map(), pong.map(writable=False)
        self._session = ep.session(timeout=_START_TIMEOUT_S)
        self._call = self._session.call
        self.roundtrip()
        if self._pong[:payload_size] != self._payload:
            raise PeerLostError("the echo in the pong memory object differs from the payload")

    def roundtrip(self) -> None:
        n = len(self._payload)
        self._ping[:n] = self._payload
        self._call(self._length)
        self._pong[:n]  # noqa: B018 - reading the echo out is part of the round trip

    def teardown(self) -> None:
        for name in ("_ping", "_pong"):
            mapping = self.__dict__.pop(name, None)
            if mapping is not None:
                mapping.close()
        super().teardown()


# --- inside the server peer ---------------------------------------------------------------


def _echo_through_memory(k: kernel.Kernel) -> None:
    """Copy each call's length of bytes from ping to pong, then answer. Ends when the
    caller closes the session or dies."""
    ep, ping_cap, pong_cap = (k.inherited[n] for n in ("ep", "ping", "pong"))
    assert isinstance(ep, kernel.EndpointCap)
    assert isinstance(ping_cap, kernel.MemoryCap)
    assert isinstance(pong_cap, kernel.MemoryCap)
    with ping_cap.map() as ping, pong_cap.map() as pong:
        _serve(_offers(ep), ping, pong)


def _serve(s: kernel.SessionServer, ping: mmap.mmap, pong: mmap.mmap) -> None:
    try:
        while True:
            m = s.recv()
            n = int.from_bytes(m.data, "little")
            pong[:n] = ping[:n]  # read it out, write it back: as a pipe echo does
            m.reply(m.data)
    except kernel.PeerClosedError:
        pass  # the caller closed the session or ended
    finally:
        s.close()


if __name__ == "__main__":
    serve_role(sys.argv[1:], {"memory": _echo_through_memory})
