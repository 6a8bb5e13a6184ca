"""mkipc direct sessions: calls and one-way sends over a ring pair shared with the server.

Like mkipc.call, each row starts its own `mkipc kernel` (its CPU time counts as a peer's,
though it is off the path once the session stands) and a server that receives the endpoint
by inheritance. This process opens a session with ``ep.session()``; the server accepts the
offer and serves the session in its main thread until this process closes it, then exits.

- ``mkipc.session.call``: ``Session.call`` round trips, echoed with the same payload.
- ``mkipc.session.async`` / ``mkipc.session.async64``: the asyncio face, one call at a
  time (timed inside the loop) and 64 calls in flight from 64 tasks (calls per second).
- ``mkipc.session.send``: a burst of N ``Session.send`` (queued on the ring; the sender waits
  only while the ring is full), then one empty call that the server answers with the number
  of one-way messages it took since the last such call (8 bytes); a burst whose count differs
  fails the row. N follows oneway_os.burst_size, as for the other one-way rows.

Payloads above kernel.MAX_PAYLOAD are refused by mkipc by design; those rows say so.
The ``sessions`` role (every accepted session in one kernel.SessionGroup, served by one
thread) is the server of the concurrent-clients sweep (kernel/bench/clients.py), where each
client process opens its own session.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from array import array

import kernel
from kernel.bench.mechanisms import PeerLostError, make_payload, register
from kernel.bench.mechanisms.mkipc_async import (
    BURST,
    burst_in_flight,
    close_in_loop,
    open_in_loop,
    timed_calls,
)
from kernel.bench.mechanisms.mkipc_call import _START_TIMEOUT_S, _MkipcMechanism, serve_role
from kernel.bench.mechanisms.oneway_os import MAX_BATCH, burst_size

__all__ = [
    "MkipcSessionAsyncCall",
    "MkipcSessionAsyncInFlight",
    "MkipcSessionCall",
    "MkipcSessionSend",
    "SessionService",
]

_ABORT_GRACE_S = 0.5  # abort(): time for the kernel to see the server's death


def _check_size(payload_size: int) -> None:
    if payload_size > kernel.MAX_PAYLOAD:
        raise ValueError(
            f"mkipc messages carry at most {kernel.MAX_PAYLOAD} bytes; "
            "bulk data goes through memory objects"
        )


class _SessionMechanism(_MkipcMechanism):
    """A private kernel, a session server peer, and (rows only) this process's session."""

    peer_role = "session"

    def __init__(self) -> None:
        super().__init__()
        self._session: kernel.Session | None = None

    def _start_server(self) -> kernel.EndpointCap:
        self._start_kernel()
        assert self._k is not None
        ep = self._k.endpoint()
        self._spawn({"ep": ep})
        return ep

    def _open(self) -> kernel.Session:
        """Open this process's session; returns once the server accepted it."""
        self._session = self._start_server().session(timeout=_START_TIMEOUT_S)
        return self._session

    def abort(self) -> None:
        """Kill the server first and give the kernel a moment to end the session: a send
        waiting for room on a full ring believes only the kernel's word that the session
        ended, and a kernel killed first never says it. Then the kernel too, as by default."""
        if self._peer is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._peer.pid, signal.SIGKILL)
            time.sleep(_ABORT_GRACE_S)
        super().abort()

    def teardown(self) -> None:
        session, self._session = self._session, None
        if session is not None:  # the server's recv raises PeerClosedError: it exits
            with contextlib.suppress(kernel.IPCError, OSError):
                session.close()
        super().teardown()


@register
class MkipcSessionCall(_SessionMechanism):
    name = "mkipc.session.call"

    def setup(self, payload_size: int) -> None:
        _check_size(payload_size)
        self._payload = make_payload(payload_size)
        s = self._open()
        reply = s.call(self._payload, timeout=_START_TIMEOUT_S)  # the server answers
        if len(reply.data) != payload_size:
            raise PeerLostError(f"the echo carried {len(reply.data)} of {payload_size} bytes")
        self._call = s.call

    def roundtrip(self) -> None:
        self._call(self._payload)


@register
class MkipcSessionSend(_SessionMechanism):
    name = "mkipc.session.send"
    batch = MAX_BATCH  # > 1 marks a throughput row even before setup() picks the burst size

    def setup(self, payload_size: int) -> None:
        _check_size(payload_size)
        self.batch = burst_size(payload_size)
        self._payload = make_payload(payload_size)
        s = self._open()
        s.call(b"", timeout=_START_TIMEOUT_S)  # the server is up; its count starts at 0
        self._send, self._call = s.send, s.call

    def roundtrip(self) -> None:
        send, payload = self._send, self._payload
        for _ in range(self.batch):
            send(payload)
        received = int.from_bytes(self._call(b"").data, "little")
        if received != self.batch:
            raise PeerLostError(f"the receiver counted {received} of {self.batch} messages")


class _AsyncSessionMechanism(_SessionMechanism):
    """The session opened from a uvloop loop (the asyncio face), through the name server
    as an application would find it."""

    _NAME = "bench.session.async"

    def setup(self, payload_size: int) -> None:
        _check_size(payload_size)
        self._payload = make_payload(payload_size)
        ep = self._start_server()
        assert self._k is not None
        assert self._kernel is not None
        self._k.names.register(self._NAME, ep, mode=0o600)
        self._loop, self._ak, self._aclient = open_in_loop(self._kernel.path, self._aopen)

    async def _aopen(self, ak: kernel.AsyncKernel) -> kernel.AsyncSession:
        aep = await ak.names.lookup(self._NAME, timeout=_START_TIMEOUT_S)
        s = await aep.session(timeout=_START_TIMEOUT_S)
        await s.call(self._payload, timeout=_START_TIMEOUT_S)  # the server answers
        return s

    def teardown(self) -> None:
        loop = self.__dict__.pop("_loop", None)
        if loop is not None:
            close_in_loop(loop, self._ak, self._aclient)
        super().teardown()


@register
class MkipcSessionAsyncCall(_AsyncSessionMechanism):
    """One call at a time from asyncio, timed inside the loop (as mkipc.call.async)."""

    name = "mkipc.session.async"

    def roundtrip(self) -> None:
        self._loop.run_until_complete(self._aclient.call(self._payload))

    def time_roundtrips(self, count: int, deadline_ns: int, pace_s: float) -> array[int]:
        timed = timed_calls(self._aclient.call, self._payload, count, deadline_ns, pace_s)
        return self._loop.run_until_complete(timed)


@register
class MkipcSessionAsyncInFlight(_AsyncSessionMechanism):
    """64 calls in flight on one session from 64 tasks (issue #5's 300k calls/s goal),
    as mkipc.call.async64 does through the kernel; a throughput row."""

    name = "mkipc.session.async64"
    batch = BURST

    def roundtrip(self) -> None:
        self._loop.run_until_complete(burst_in_flight(self._aclient.call, self._payload))


class SessionService(_SessionMechanism):
    """The concurrent-clients sweep's server: accepts every session offer into one
    kernel.SessionGroup, which one thread serves. No session of this process's own, so
    no roundtrip(); the clients make the calls."""

    name = "mkipc.session"
    peer_role = "sessions"

    def setup(self, payload_size: int) -> None:
        _check_size(payload_size)
        self._ep = self._start_server()
        with self._ep.session(timeout=_START_TIMEOUT_S) as s:  # the server is up
            s.call(make_payload(payload_size), timeout=_START_TIMEOUT_S)

    def roundtrip(self) -> None:
        raise NotImplementedError("mkipc.session is a service for the clients sweep only")


# --- inside the server peer ---------------------------------------------------------------


def _serve(s: kernel.SessionServer) -> None:
    """Echo calls; count one-way messages, and answer an empty call with that count (and
    reset it). Ends when the caller closes the session or dies (PeerClosedError)."""
    received = 0
    try:
        while True:
            m = s.recv()
            if not m.is_call:
                received += 1
            elif m.data:
                m.reply(m.data)
            else:  # a burst's closing call
                m.reply(received.to_bytes(8, "little"))
                received = 0
    except kernel.PeerClosedError:
        pass  # the caller closed the session or ended
    finally:
        s.close()


def _offers(ep: kernel.EndpointCap) -> kernel.SessionServer:
    """The next session offer on ``ep``, accepted. Anything else is dropped, and so is an
    offer whose caller gave up meanwhile; a kernel that went away raises from recv()."""
    while True:
        msg = ep.recv()
        if msg.session_offer:
            with contextlib.suppress(kernel.IPCError):
                return ep.accept_session(msg)


def _one_session(k: kernel.Kernel) -> None:
    ep = k.inherited["ep"]
    assert isinstance(ep, kernel.EndpointCap)
    _serve(_offers(ep))  # then the process ends: the benchmark's row is torn down


def _serve_group(group: kernel.SessionGroup) -> None:
    """Echo every call of every session in the group, from this one thread."""
    while True:
        for m in group.recv_many():
            m.reply(m.data)


def _sessions(k: kernel.Kernel) -> None:
    ep = k.inherited["ep"]
    assert isinstance(ep, kernel.EndpointCap)
    group = kernel.SessionGroup()
    threading.Thread(target=_serve_group, args=(group,), daemon=True).start()
    while True:  # ends when the benchmark kills this process or tears the kernel down
        group.add(_offers(ep))


if __name__ == "__main__":
    serve_role(sys.argv[1:], {"session": _one_session, "sessions": _sessions})
