"""Capabilities in queue messages (DESIGN §5): held by the queue while they wait."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from peerlib import spawned

import kernel
from kernel import Rights

pytestmark = pytest.mark.integration


def test_a_moved_capability_outlives_its_sender_in_the_queue(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        q, n = k.queue(4), k.notification()
        watch = n.copy(rights=Rights.WAIT)
        with spawned(k, "queue_peer.py", "gift", q=q, n=n) as sender:
            assert sender.wait(timeout=10) == 0  # gone before anyone received
        n.close()  # ours: now the message holds the only capability that can signal
        m = q.recv(timeout=10)
        assert (m.data, m.mtype, m.sender.pid) == (b"gift", 3, sender.pid)
        (gift,) = m.caps
        assert isinstance(gift, kernel.NotificationCap)
        assert gift.info().object_id == watch.info().object_id
        gift.signal(2)
        assert watch.wait(timeout=10) == 2


def test_a_move_leaves_the_sender_when_stored_and_a_copy_stays(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        q, moved, copied, minted = k.queue(4), k.notification(), k.endpoint(), k.notification()
        q.send(b"three", caps=[moved, copied.as_copy(), minted.as_mint(Rights.SIGNAL, badge=7)])
        with pytest.raises(kernel.InvalidCapabilityError, match="sent away in a queue message"):
            moved.info()
        assert copied.info().derived == minted.info().derived == 1  # held by the queue
        a, b, c = q.recv(timeout=10).caps
        assert isinstance(a, kernel.NotificationCap)
        assert isinstance(b, kernel.EndpointCap)
        assert isinstance(c, kernel.NotificationCap)
        assert (c.info().rights, c.info().badge) == (Rights.SIGNAL, 7)
        c.signal(1)
        assert minted.poll() == 1
        assert minted.revoke() == 1  # it derives from the original, in its new table too
        with pytest.raises(kernel.InvalidCapabilityError):
            c.signal(1)


def test_revoking_a_stored_capability_leaves_a_hole_in_its_place(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        q, n, e = k.queue(4), k.notification(), k.endpoint()
        q.send(b"holes", caps=[n.as_copy(), e.as_copy(), n.copy()])
        assert n.revoke() == 2  # the copy and the moved child, while the message waits
        m = q.recv(timeout=10)
        assert m.caps[0] is None  # holes: the others keep their positions
        assert m.caps[2] is None
        assert isinstance(m.caps[1], kernel.EndpointCap)
        assert e.info().derived == 1


def test_transfers_need_grant_and_queue_capabilities_never_travel(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        q, other, n = k.queue(4), k.queue(4), k.notification()
        no_grant = q.copy(rights=Rights.SEND | Rights.RECEIVE)
        with pytest.raises(kernel.AccessDeniedError, match="GRANT"):
            no_grant.send(b"x", caps=[n])
        with pytest.raises(kernel.InvalidArgumentError, match="cannot carry a queue capability"):
            q.send(b"x", caps=[n, other])
        with pytest.raises(kernel.InvalidArgumentError, match="cannot carry a queue capability"):
            q.send(b"x", caps=[q.as_copy()])
        sealed = n.copy(rights=Rights.SIGNAL)  # no TRANSFER
        with pytest.raises(kernel.AccessDeniedError, match="TRANSFER"):
            q.send(b"x", caps=[sealed])
        n.signal(1)  # nothing moved: every refused send left n here
        assert n.poll() == 1
        assert sealed.info().rights == Rights.SIGNAL
        with pytest.raises(kernel.WouldBlock):
            q.recv_nowait()


def test_a_destroyed_queue_releases_what_its_messages_held(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        q = k.queue(4)
        r, w = k.pipe()
        q.send(b"the last writer", caps=[w])
        with pytest.raises(kernel.WouldBlock):
            r.read_nowait()  # a writer still exists: in the message
        q.close()
        assert r.read(timeout=10) == b""  # EOF: the message's writer went with the queue


def test_a_waiting_send_keeps_its_capabilities_locked_and_returns_them_on_timeout(
    kernel_daemon,
):
    with kernel.connect(autostart=False) as k:
        q, n, keep = k.queue(1), k.notification(), k.notification()
        q.send(b"fills it")
        failed: list[BaseException] = []

        def send() -> None:
            try:
                q.send(b"waits", caps=[n, keep.as_copy()], timeout=0.3)
            except kernel.CallTimeoutError as e:
                failed.append(e)

        sender = threading.Thread(target=send)
        sender.start()
        time.sleep(0.1)
        with pytest.raises(kernel.InvalidArgumentError, match="in transit"):
            n.signal(1)  # locked while its message waits for room
        assert keep.info().derived == 1  # the copy was made when the send began to wait
        sender.join(10)
        assert failed  # timed out: n is ours again, the copy is gone
        n.signal(1)
        assert n.poll() == 1
        assert keep.info().derived == 0


def test_a_waiting_send_stored_later_or_taken_by_a_receiver_hands_over(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        q, a, b = k.queue(1), k.notification(), k.notification()
        q.send(b"first")
        threads = [
            threading.Thread(target=q.send, args=(b"second",), kwargs={"caps": [a], "timeout": 10}),
        ]
        threads[0].start()
        time.sleep(0.1)
        assert q.recv(timeout=10).data == b"first"  # room: the waiting message is stored
        threads[0].join(10)
        with pytest.raises(kernel.InvalidCapabilityError, match="sent away in a queue message"):
            a.info()
        (got_a,) = q.recv(timeout=10).caps
        assert isinstance(got_a, kernel.NotificationCap)

        rendezvous = k.queue(0)
        sender = threading.Thread(
            target=rendezvous.send, args=(b"direct",), kwargs={"caps": [b], "timeout": 10}
        )
        sender.start()
        time.sleep(0.1)
        (got_b,) = rendezvous.recv(timeout=10).caps  # straight from the waiting sender
        sender.join(10)
        got_b.signal(4)
        assert got_b.poll() == 4


def test_a_waiting_receiver_gets_the_capabilities_at_once(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        q, n = k.queue(0), k.notification()
        got: list[kernel.QueueMessage] = []
        taker = threading.Thread(target=lambda: got.append(q.recv(timeout=10)))
        taker.start()
        time.sleep(0.1)
        q.send(b"now", caps=[n.as_mint(badge=5)], timeout=10)
        taker.join(10)
        (minted,) = got[0].caps
        assert minted.info().badge == 5


def _fill_table(n: kernel.NotificationCap) -> list[kernel.NotificationCap]:
    """Copies of `n` until the process's capability table is full."""
    filler = []
    for _ in range(1 << 16):
        try:
            filler.append(n.copy())
        except kernel.ResourceLimitError:
            return filler
    raise AssertionError("the capability table never filled")


def test_a_full_receiver_table_fails_the_receive_and_the_message_stays(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        q, n = k.queue(4), k.notification()
        q.send(b"gift", caps=[n.as_copy()])
        filler = _fill_table(n)
        with pytest.raises(kernel.ResourceLimitError, match="table is full"):
            q.recv(timeout=10)
        filler.pop().close()
        (gift,) = q.recv(timeout=10).caps  # still there, whole
        assert isinstance(gift, kernel.NotificationCap)
        for c in filler:
            c.close()


def test_the_asyncio_face_carries_capabilities_through_a_queue(kernel_daemon):
    async def scenario() -> None:
        async with kernel.connect_async(autostart=False) as k:
            q, n = await k.queue(4), await k.notification()
            await q.send(b"async", mtype=2, caps=[n.as_copy()])
            m = await q.recv(timeout=10, truncate=True, max_size=2)
            assert (m.data, m.mtype) == (b"as", 2)  # truncated, the capability kept
            (got,) = m.caps
            await got.signal(8)
            assert await n.poll() == 8

    asyncio.run(scenario())


def test_a_waiting_send_whose_sender_dies_queues_nothing_and_leaks_nothing(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        q, n = k.queue(1), k.notification()
        q.send(b"fills it")
        with spawned(k, "queue_peer.py", "gift", q=q, n=n) as sender:
            time.sleep(0.5)  # it started and waits for room, its copy of n locked in the send
            assert n.info().derived == 1
            sender.kill()
            sender.wait(timeout=10)
        assert n.info().derived == 0  # gone with its process, not into the queue
        assert q.recv(timeout=10).data == b"fills it"
        with pytest.raises(kernel.WouldBlock):
            q.recv_nowait()
