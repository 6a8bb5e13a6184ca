"""Direct sessions in the asyncio face, under both loops (conftest): many calls in
flight on one session, an asyncio server, timeouts, cancellation and revocation.
The peers are real processes (peers/session_peer.py, peers/actor.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from peerlib import PEERS, forge_answered, never_written

import kernel
from capabilities import Rights

pytestmark = pytest.mark.integration


async def _peer(k: kernel.AsyncKernel, mode: str, **caps: object) -> kernel.AsyncProcess:
    return await k.spawn([sys.executable, str(PEERS / "session_peer.py"), mode], caps=caps)


async def _event(rep: kernel.AsyncEndpointCap) -> dict:
    return json.loads((await rep.recv(timeout=20)).data)


async def _stop(proc: kernel.AsyncProcess) -> None:
    proc.kill()
    await proc.wait(timeout=10)


@contextlib.asynccontextmanager
async def _serving(
    mode: str,
) -> AsyncIterator[
    tuple[kernel.AsyncKernel, kernel.AsyncEndpointCap, kernel.AsyncEndpointCap, Any]
]:
    """A session_peer in `mode` serving `ep`, ready (it said so on `rep`), ended by
    its pid afterwards: (k, ep, rep, server)."""
    async with kernel.connect_async(autostart=False) as k:
        ep, rep = await k.endpoint(), await k.endpoint()
        server = await _peer(k, mode, ep=ep, report=rep)
        try:
            await _event(rep)
            yield k, ep, rep, server
        finally:
            await _stop(server)


async def test_many_calls_in_flight_each_get_their_own_reply(kernel_daemon):
    async with _serving("echo") as (k, ep, rep, server):
        async with await ep.session(timeout=10) as s:
            assert s.peer.pid == server.pid

            async def caller(n: int) -> None:
                for i in range(50):
                    data = f"{n}.{i}".encode()
                    assert (await s.call(data, timeout=10)).data == data

            await asyncio.gather(*(caller(n) for n in range(64)))
            for i in range(500):
                await s.send(b"%d" % i)
            assert (await s.call(b"count", timeout=10)).data.startswith(b"500:")
        assert (await _event(rep))["error"] == "PeerClosedError"


@pytest.mark.parametrize("mode", ["echo", "group"])
async def test_replies_that_outgrow_the_callers_ring_all_arrive(kernel_daemon, mode):
    """16 calls in flight whose 200 kB replies are three times the caller's ring
    (1 MiB): the server (a session's own thread, or a SessionGroup's) keeps what
    does not fit and writes it as the caller's loop drains the ring. Each once
    failed the server's reply() and timed out here."""
    async with _serving(mode) as (k, ep, rep, server):
        async with await ep.session(timeout=10) as s:
            for _ in range(3):
                asks = [b"bulk 200000 %d" % i for i in range(16)]
                replies = await asyncio.gather(*(s.call(a, timeout=10) for a in asks))
                assert [r.data for r in replies] == [a.ljust(200_000, b".") for a in asks]
        assert (await _event(rep))["event"] == "ended"  # no "reply refused" before it


@pytest.mark.parametrize("mode", ["parting", "aparting"])
async def test_a_server_that_closes_with_linger_delivers_the_replies_kept_for_the_caller(
    kernel_daemon, mode
):
    """The caller's loop is held while the server (either face) answers 16 calls of
    200 kB, three times the caller's 1 MiB ring, and closes the session: with
    `linger` its close waits while the caller drains, and every reply arrives.
    Closing at once failed 11 of the 16 with PeerClosedError."""
    async with _serving(mode) as (k, ep, rep, server):
        async with await ep.session(timeout=10) as s:
            asks = [b"bulk 200000 %d" % i for i in range(16)]
            calls = [asyncio.ensure_future(s.call(a, timeout=20)) for a in asks]
            await asyncio.sleep(0)  # each call writes its request
            time.sleep(0.5)  # noqa: ASYNC251  the loop is held: the server answers meanwhile
            replies = await asyncio.gather(*calls)
            assert [r.data for r in replies] == [a.ljust(200_000, b".") for a in asks]
        assert (await _event(rep))["event"] == "parted"


async def test_a_session_dropped_unclosed_closes_itself(kernel_daemon):
    """As the blocking face's does: 300 sessions opened and dropped, more than a
    process may hold (256), and the server sees each one end."""
    async with kernel.connect_async(autostart=False) as k:
        ep = await k.endpoint()
        for _ in range(300):
            opening = asyncio.ensure_future(ep.session(timeout=10))
            srv = await ep.accept_session(await ep.recv(timeout=10))
            s = await opening
            assert (await asyncio.gather(s.call(b"hi", timeout=10), _answer(srv)))[0].data == b"hi"
            del s, opening  # unclosed
            with pytest.raises(kernel.PeerClosedError):
                await srv.recv(timeout=10)
            await srv.close()


async def _answer(srv: kernel.AsyncSessionServer) -> None:
    m = await srv.recv(timeout=10)
    m.reply(m.data)


async def test_an_asyncio_server_serves_a_session_until_the_caller_dies(kernel_daemon):
    async with kernel.connect_async(autostart=False) as k:
        ep = await k.endpoint()
        caller = await k.spawn(
            [sys.executable, str(PEERS / "actor.py"), "session", "0"], caps={"ep": ep}
        )
        try:
            offer = await ep.recv(timeout=20)
            assert offer.session_offer
            srv = await ep.accept_session(offer)
            msg = await srv.recv(timeout=20)
            assert (msg.data, msg.is_call, msg.sender.pid) == (b"bye", True, caller.pid)
            msg.reply(b"ok")
            with pytest.raises(kernel.PeerClosedError):
                await srv.recv(timeout=20)  # it exits without closing: the kernel says so
            with pytest.raises(kernel.CallTimeoutError):
                await (await k.endpoint()).recv(timeout=0)  # the connection still works
            await srv.close()
        finally:
            await _stop(caller)


async def test_timeout_and_cancel_leave_the_session_usable(kernel_daemon):
    async with _serving("hold") as (k, ep, rep, server):
        async with await ep.session(timeout=10) as s:
            with pytest.raises(kernel.CallTimeoutError):
                await s.call(b"held", timeout=0.2)
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(s.call(b"cancelled"), 0.05)
            # Both were withdrawn: their server's replies are refused, not written.
            refused = [await _event(rep), await _event(rep)]
            assert [(e["event"], e["call"], e["status"]) for e in refused] == [
                ("reply refused", "held", kernel.Status.CALLER_GONE),
                ("reply refused", "cancelled", kernel.Status.CALLER_GONE),
            ]
            assert (await s.call(b"after", timeout=10)).data == b"after"


@contextlib.asynccontextmanager
async def _session_here() -> AsyncIterator[tuple[kernel.AsyncSession, Any]]:
    """A session with both ends in this process and this loop: (caller, server)."""
    async with kernel.connect_async(autostart=False) as k:
        ep = await k.endpoint()

        async def accept() -> Any:
            while not (offer := await ep.recv(timeout=20)).session_offer:
                pass
            return await ep.accept_session(offer)

        s, server = await asyncio.gather(ep.session(timeout=20), accept())
        async with s, server:
            yield s, server


async def _still_serves(s: kernel.AsyncSession, server: Any) -> None:
    """One more call answered over the session: it goes on."""
    call = asyncio.ensure_future(s.call(b"y", timeout=10))
    msg = await server.recv(timeout=10)
    msg.reply(msg.data)
    assert (await call).data == b"y"


async def test_a_reply_answered_before_the_withdrawal_is_the_calls_answer(kernel_daemon):
    """The server answers after the deadline by the clock, but before the caller's
    timer withdrew the call (the loop was busy): the answer counts on both sides."""
    async with _session_here() as (s, server):
        call = asyncio.ensure_future(s.call(b"x", timeout=0.2))
        msg = await server.recv(timeout=10)
        time.sleep(0.3)  # noqa: ASYNC251 - the loop is held past the caller's deadline
        msg.reply(b"in time")  # the call was not withdrawn yet: delivered
        assert (await call).data == b"in time"


async def test_a_call_answered_just_before_its_deadline_waits_for_that_reply(kernel_daemon):
    """As test_session's: the deadline's timer finds the call answered, and the
    reply written after it is the call's answer."""
    async with _session_here() as (s, server):
        call = asyncio.ensure_future(s.call(b"x", timeout=0.2))
        msg = await server.recv(timeout=10)
        forge_answered(server._end.mm, 1)  # the commit, before the deadline
        await asyncio.sleep(0.25)  # the timer runs: it finds the call answered
        assert not call.done()
        forge_answered(server._end.mm, 1, answered=False)
        msg.reply(b"in time")  # commit again, and the write
        assert (await call).data == b"in time"


async def test_a_call_the_server_drops_unanswered_fails_at_once(kernel_daemon):
    async with _session_here() as (s, server):
        call = asyncio.ensure_future(s.call(b"x"))  # no timeout
        msg = await server.recv(timeout=10)
        del msg  # dropped without a reply
        with pytest.raises(kernel.PeerClosedError, match="without replying"):
            await asyncio.wait_for(call, 10)
        await _still_serves(s, server)


async def test_a_forged_answer_mark_holds_a_timed_out_call_only_briefly(kernel_daemon):
    from kernel.client._session import ANSWERED_GRACE_S

    async with _session_here() as (s, server):
        forge_answered(server._end.mm, 1)  # the session's first call
        t0 = time.monotonic()
        with pytest.raises(kernel.CallTimeoutError, match="did not arrive"):
            await s.call(b"x", timeout=0.2)
        assert 0.2 + ANSWERED_GRACE_S <= time.monotonic() - t0 < 5
        msg = await server.recv(timeout=5)
        msg.reply(b"too late")  # the word says answered: written, and dropped
        await _still_serves(s, server)  # the late one was dropped


async def test_every_call_ends_the_same_way_on_both_sides_when_timeouts_race_replies(
    kernel_daemon,
):
    """test_session's race, with 32 calls in flight, 0-2 ms timeouts and the loop's
    timers (1 ms ones let few calls through: 14 of 1920 in one run): answered
    calls are exactly those whose replies were delivered, the timed-out ones those
    whose replies were refused."""
    import random

    rng = random.Random(3)
    outcomes = {"answered": 0, "timed out": 0}

    async def caller(s: kernel.AsyncSession, n: int) -> None:
        for i in range(60):
            try:
                await s.call(b"%d.%d" % (n, i), timeout=rng.uniform(0, 2e-3))
                outcomes["answered"] += 1
            except kernel.CallTimeoutError as e:
                outcomes["timed out"] += not never_written(e)

    async with _serving("jitter") as (k, ep, rep, server):
        async with await ep.session(timeout=10) as s:
            await asyncio.gather(*(caller(s, n) for n in range(32)))
            tally = (await s.call(b"tally", timeout=10)).data
        delivered, refused = map(int, tally.split(b":"))
        assert (outcomes["answered"], outcomes["timed out"]) == (delivered, refused)
        assert outcomes["answered"] > 20  # both sides of the race were run
        assert outcomes["timed out"] > 20


async def test_revocation_fails_the_calls_in_flight(kernel_daemon):
    async with _serving("hold") as (k, ep, rep, server):
        parent = await ep.copy(Rights.SEND | Rights.COPY | Rights.MANAGE)
        s = await (await parent.copy(Rights.SEND)).session(timeout=10)
        pending = asyncio.ensure_future(s.call(b"held", timeout=20))
        await asyncio.sleep(0.1)
        await parent.revoke()
        with pytest.raises(kernel.InvalidCapabilityError, match="revoked"):
            await pending
        with pytest.raises(kernel.InvalidCapabilityError):
            await s.call(b"again", timeout=10)
        await s.close()


async def test_closing_the_connection_fails_calls_in_flight_and_frees_the_session(kernel_daemon):
    async with _serving("hold") as (k, ep, rep, server):
        await k.names.register("t.aclose", await ep.copy())
        ak = await kernel.connect_async(autostart=False).open()
        try:
            s = await (await ak.names.lookup("t.aclose", timeout=5)).session(timeout=10)
            pending = asyncio.ensure_future(s.call(b"held", timeout=20))
            await asyncio.sleep(0.1)
        finally:
            ak.close()
        with pytest.raises(kernel.PeerClosedError, match="connection was closed"):
            await pending
        assert s.closed
        assert (await _event(rep))["error"] == "PeerClosedError"  # the server is told


async def test_a_lone_call_stops_spinning_when_the_machine_is_crowded(kernel_daemon, monkeypatch):
    """The lone call's spin drops to the minimum once a sched_yield() in it let others
    run for CROWDED_NS, as the blocking faces do: spinning on would take the core from
    whoever must answer. (CROWDED_NS = 1 ns makes every yield count as crowded.)"""
    from kernel.client import aio_session

    monkeypatch.setattr(aio_session, "CROWDED_NS", 1)
    async with _serving("hold") as (k, ep, rep, server):  # answers after 1 s
        async with await ep.session(timeout=10) as s:
            assert (await s.call(b"q", timeout=10)).data == b"late"
            assert s._spin_ns == aio_session.SPIN_MIN_NS
