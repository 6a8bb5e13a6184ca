"""kernel.SessionGroup: many direct sessions served from one thread.

The callers are real processes (peers/caller.py over a session) or, where a test
needs to steer both ends, threads of this process on their own connection; the
group runs in this test's thread against the real kernel and real rings.
"""

from __future__ import annotations

import json
import threading
import time

import pytest
from peerlib import accept_offer, raising_in_thread, session_in_process, spawn_callers

import kernel
from capabilities import Rights

pytestmark = pytest.mark.integration

CLIENTS, CALLS = 4, 300


def _serve_until(group: kernel.SessionGroup, done: threading.Event, tag: bytes) -> int:
    served = 0
    while not done.is_set():
        try:
            batch = group.recv_many(timeout=0.2)
        except kernel.CallTimeoutError:
            continue
        for m in batch:
            m.reply(m.data + b"|" + tag)
        served += len(batch)
    return served


def test_one_thread_serves_the_sessions_of_many_caller_processes(kernel_daemon):
    ended: list[str] = []
    with kernel.connect(autostart=False) as k:
        ep = k.endpoint()
        group = kernel.SessionGroup(on_end=lambda s, e: ended.append(type(e).__name__))
        clients = spawn_callers(k, ep, CLIENTS, CALLS, "session")
        try:
            for _ in range(CLIENTS):
                group.add(accept_offer(ep))
            done = threading.Event()
            waiter = threading.Thread(target=lambda: [c.popen.wait(60) for c in clients])
            waiter.start()
            threading.Thread(target=lambda: (waiter.join(), done.set())).start()
            served = _serve_until(group, done, b"group")
            for c in clients:
                out, err = c.popen.communicate(timeout=10)
                assert c.wait(timeout=10) == 0, err
                assert json.loads(out) == {"group": CALLS}
            assert served == CLIENTS * CALLS
            deadline = time.monotonic() + 10
            while len(group) and time.monotonic() < deadline:  # the last ends to notice
                with pytest.raises(kernel.CallTimeoutError):
                    group.recv_many(timeout=0.05)
            assert len(group) == 0
            assert ended == ["PeerClosedError"] * CLIENTS
        finally:
            for c in clients:
                c.kill()
                c.wait(timeout=10)
            group.close()


def _session_pair(k: kernel.Kernel, badge: int):
    """A session opened from a thread of this process through a capability whose
    parent (returned) can revoke it, and its server side, accepted here."""
    ep = k.endpoint()
    parent = ep.mint(Rights.SEND | Rights.COPY | Rights.MANAGE, badge=badge)
    session, server = session_in_process(ep, parent.copy(Rights.SEND))
    return session, server, parent


def test_a_short_timeout_cuts_the_groups_spin_short(kernel_daemon, monkeypatch):
    """The group spins before it sleeps; a timeout shorter than the spin ends the
    wait at the timeout, not after the spin (here a 2 s spin, a 10 ms timeout)."""
    from kernel.client import session_group

    monkeypatch.setattr(session_group, "SPIN_NS", 2_000_000_000)
    monkeypatch.setattr(session_group, "SPIN_YIELDS", 10**9)
    with kernel.connect(autostart=False) as k:
        group = kernel.SessionGroup()
        s, server, _ = _session_pair(k, badge=1)
        with s:
            group.add(server)
            t0 = time.monotonic()
            try:
                with pytest.raises(kernel.CallTimeoutError):
                    group.recv_many(timeout=0.01)
                assert time.monotonic() - t0 < 1.0
            finally:
                group.close()


# recv_many() waits without a deadline or with one (faces.pyx GroupReceiver); the
# tests whose group waits for something another thread does take both ways.
WAITS = pytest.mark.parametrize("wait", [None, 10.0], ids=["untimed", "timed"])


@WAITS
def test_an_idle_group_times_out_wakes_for_a_late_member_and_drops_a_revoked_one(
    kernel_daemon, wait
):
    with kernel.connect(autostart=False) as k:
        group = kernel.SessionGroup()
        a, a_server, a_parent = _session_pair(k, badge=1)
        b, b_server, _ = _session_pair(k, badge=2)
        group.add(a_server)
        t0 = time.monotonic()
        with pytest.raises(kernel.CallTimeoutError):
            group.recv_many(timeout=0.3)  # spins, then sleeps on every doorbell
        assert time.monotonic() - t0 >= 0.3

        def late_member() -> None:
            time.sleep(0.3)  # the group sleeps by now
            group.add(b_server)
            b.send(b"late")

        threading.Thread(target=late_member).start()
        got = group.recv_many(timeout=wait)
        assert [(m.data, m.badge) for m in got] == [(b"late", 2)]

        a_parent.revoke()  # a's session ends; b's stands
        results: list[bytes] = []
        caller = threading.Thread(target=lambda: results.append(b.call(b"q", timeout=10).data))
        caller.start()
        (call,) = group.recv_many(timeout=wait)  # b's call; a is dropped on the way
        call.reply(call.data + b"!")
        caller.join(10)
        assert results == [b"q!"]
        assert len(group) == 1
        assert a_server.closed
        freed = time.monotonic() + 5  # dropped without a round trip, yet the kernel freed it
        while k._conn.session_states.get(a_server._end.index) and time.monotonic() < freed:
            time.sleep(0.01)
        assert k._conn.session_states.get(a_server._end.index) == 0
        with pytest.raises(kernel.InvalidCapabilityError):
            a.call(b"gone", timeout=5)

        group.close()  # closes b too: its caller hears of it
        assert b_server.closed
        with pytest.raises(kernel.PeerClosedError):
            b.call(b"after", timeout=5)
        with pytest.raises(kernel.PeerClosedError):
            group.recv_many(timeout=1)
        a.close()
        b.close()


@WAITS
def test_a_member_closed_from_another_thread_while_the_group_sleeps_is_dropped(kernel_daemon, wait):
    ended: list[str] = []
    with kernel.connect(autostart=False) as k:
        group = kernel.SessionGroup(on_end=lambda s, e: ended.append(str(e)))
        a, a_server, _ = _session_pair(k, badge=1)
        b, b_server, _ = _session_pair(k, badge=2)
        group.add(a_server)
        group.add(b_server)

        def close_a_then_send_on_b() -> None:
            time.sleep(0.3)  # the group sleeps on both doorbells by now
            a_server.close()  # waits for the group to let go of a's rings
            b.send(b"after")

        closer = threading.Thread(target=close_a_then_send_on_b)
        closer.start()
        got = group.recv_many(timeout=wait)
        closer.join(10)
        assert [m.data for m in got] == [b"after"]
        assert a_server.closed
        with pytest.raises(kernel.CallTimeoutError):
            group.recv_many(timeout=0.05)  # a's end is noticed and dropped
        assert len(group) == 1
        assert ended == [f"session {a_server._end.sid}: closed"]
        with pytest.raises(kernel.PeerClosedError):
            a.call(b"gone", timeout=5)
        group.close()
        a.close()
        b.close()


@WAITS
def test_shutdown_stops_receiving_but_the_requests_taken_can_still_be_answered(kernel_daemon, wait):
    with kernel.connect(autostart=False) as k:
        group = kernel.SessionGroup()
        (a, a_server, _), (b, b_server, _) = (_session_pair(k, badge=n) for n in (1, 2))
        group.add(a_server)
        group.add(b_server)
        replies: list[bytes] = []
        caller = threading.Thread(target=lambda: replies.append(a.call(b"held").data))
        caller.start()
        (held,) = group.recv_many(timeout=10)
        waiter, waiting = raising_in_thread(lambda: group.recv_many(timeout=wait))
        time.sleep(0.3)  # it sleeps on the doorbells by now
        group.shutdown()
        waiter.join(10)
        assert [type(e) for e in waiting] == [kernel.PeerClosedError]
        with pytest.raises(kernel.CallTimeoutError):
            b.call(b"after the shutdown", timeout=0.2)  # open, but nobody receives
        with pytest.raises(kernel.PeerClosedError, match="shut down"):
            group.recv_many(timeout=1)
        held.reply(held.data + b"!")  # the member is still open
        caller.join(10)
        assert replies == [b"held!"]

        group.close()  # now the callers hear of it
        for session in (a, b):
            with pytest.raises(kernel.PeerClosedError):
                session.call(b"closed", timeout=5)
            session.close()


@WAITS
def test_closing_the_group_ends_a_recv_many_waiting_in_another_thread(kernel_daemon, wait):
    with kernel.connect(autostart=False) as k:
        group = kernel.SessionGroup()
        a, a_server, _ = _session_pair(k, badge=1)
        group.add(a_server)
        a.send(b"first")
        assert [m.data for m in group.recv_many()] == [b"first"]  # a has joined
        waiter, waiting = raising_in_thread(lambda: group.recv_many(timeout=wait))
        time.sleep(0.3)  # it sleeps on the doorbells by now
        group.close()
        waiter.join(10)
        assert [type(e) for e in waiting] == [kernel.PeerClosedError]
        assert a_server.closed
        with pytest.raises(kernel.PeerClosedError):
            a.call(b"after", timeout=5)
        with pytest.raises(ValueError, match="max_n must be at least 1"):
            group.recv_many(0)
        a.close()


def test_a_caller_that_always_has_a_batch_waiting_does_not_starve_the_others(kernel_daemon):
    """Each pass starts after the member that filled the last batch: a one-way stream
    (or an asyncio client with hundreds of calls in flight) is served in turn with
    the others, not alone until its ring runs dry."""
    with kernel.connect(autostart=False) as k:
        group = kernel.SessionGroup()
        (a, a_server, _), (b, b_server, _), (c, c_server, _) = (
            _session_pair(k, badge=n) for n in (1, 2, 3)
        )
        for server in (a_server, b_server, c_server):
            group.add(server)
        try:
            a.send_many([b"a"] * 2000)
            b.send(b"b")
            c.send_many([b"c"] * 2000)
            passes = [[m.data for m in group.recv_many(8, timeout=10)] for _ in range(4)]
            assert passes[0] == [b"a"] * 8
            assert passes[1] == [b"b"] + [b"c"] * 7  # b's one request waits one pass only
            assert passes[2] == [b"a"] * 8
            assert passes[3] == [b"c"] * 8
        finally:
            group.close()
            for session in (a, b, c):
                session.close()
