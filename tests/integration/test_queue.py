"""Message queues: System V's msgsnd/msgrcv on capabilities, with timeouts (DESIGN §4)."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time

import pytest
from peerlib import PEERS, ROOT, readme_script, run_script, spawned

import kernel
from kernel import Rights, abi
from kernel.abi import Op

pytestmark = pytest.mark.integration


def test_receive_selects_by_type_as_msgrcv_does(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        q = k.queue(8)
        for mtype, data in ((3, b"a"), (1, b"b"), (2, b"c"), (1, b"d"), (5, b"e")):
            q.send(data, mtype=mtype)
        assert q.recv(mtype=2).data == b"c"  # the first of type 2
        assert q.recv(mtype=1, except_type=True).data == b"a"  # the first not of type 1
        assert q.recv(mtype=-4).data == b"b"  # the first of the lowest type <= 4
        assert [q.recv().data for _ in range(2)] == [b"d", b"e"]  # the first, in order
        with pytest.raises(kernel.WouldBlock):
            q.recv_nowait()
        q.send(b"z", mtype=9)
        with pytest.raises(kernel.WouldBlock):
            q.recv_nowait(mtype=-8)  # types up to 8 only
        t0 = time.monotonic()
        with pytest.raises(kernel.CallTimeoutError, match="no message of the type"):
            q.recv(mtype=4, timeout=0.05)
        assert time.monotonic() - t0 >= 0.04
        got = q.recv_nowait(mtype=9)
        assert (got.data, got.mtype, got.badge, got.sender.pid) == (b"z", 9, 0, os.getpid())


def test_a_full_queue_makes_senders_wait_and_keeps_their_order(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        q, back = k.queue(2), k.endpoint()
        with spawned(k, "queue_peer.py", "send", "10", q=q, back=back) as sender:
            time.sleep(0.3)  # it stored 2 and waits with the third
            with pytest.raises(kernel.WouldBlock):
                q.send_nowait(b"late")
            assert q.recv(mtype=2, timeout=10).data == b"1"  # the second stored
            got = [q.recv(timeout=10) for _ in range(9)]  # then every other, in order
            expected = [(str(i).encode(), 1 + i % 2) for i in (0, *range(2, 10))]
            assert [(m.data, m.mtype) for m in got] == expected
            assert back.recv(timeout=10).data == b"sent"
            assert sender.wait(timeout=10) == 0


def test_a_rendezvous_queue_send_waits_for_a_receiver(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        q = k.queue(0)
        with pytest.raises(kernel.WouldBlock):
            q.send_nowait(b"nobody")
        with pytest.raises(kernel.CallTimeoutError, match="no receiver waits"):
            q.send(b"nobody", timeout=0)
        got: list[kernel.QueueMessage] = []
        taker = threading.Thread(target=lambda: got.append(q.recv(timeout=10)))
        taker.start()
        time.sleep(0.1)
        q.send(b"hand", mtype=4, timeout=10)
        taker.join(10)
        assert (got[0].data, got[0].mtype) == (b"hand", 4)
        sent: list[bool] = []
        sender = threading.Thread(target=lambda: sent.append(q.send(b"wait", timeout=10) is None))
        sender.start()
        time.sleep(0.1)
        assert not sent  # still waiting for a receiver
        assert q.recv(timeout=10).data == b"wait"
        sender.join(10)
        assert sent == [True]


def test_a_long_message_fails_the_receive_and_stays_unless_truncated(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        q = k.queue()
        q.send(b"0123456789", mtype=2)
        with pytest.raises(kernel.MessageTooLargeError, match="10 bytes, more than max_size 4"):
            q.recv(max_size=4)
        got = q.recv(max_size=4, truncate=True)
        assert (got.data, got.mtype) == (b"0123", 2)
        with pytest.raises(kernel.WouldBlock):
            q.recv_nowait()


def test_a_waiting_receiver_too_small_for_a_message_fails_and_the_message_stays(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        q = k.queue()
        errors: list[Exception] = []

        def small_receiver() -> None:
            try:
                q.recv(max_size=2, timeout=10)
            except kernel.MessageTooLargeError as e:
                errors.append(e)

        t = threading.Thread(target=small_receiver)
        t.start()
        time.sleep(0.1)
        q.send(b"too long")
        t.join(10)
        assert len(errors) == 1
        assert q.recv_nowait().data == b"too long"


def test_bytes_and_messages_are_bounded(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        q = k.queue(None, max_bytes=1000)  # bounded by bytes only
        with pytest.raises(kernel.MessageTooLargeError, match="never fit this queue"):
            q.send(bytes(1000 - 63))
        q.send(bytes(1000 - 64))  # exactly fills it: 64 bytes count per message
        with pytest.raises(kernel.WouldBlock):
            q.send_nowait(b"")
        q.recv_nowait()
        for _ in range(1000 // 64):
            q.send_nowait(b"")
        with pytest.raises(kernel.WouldBlock):
            q.send_nowait(b"")
        for bad in ({"capacity": -1}, {"capacity": abi.MAX_QUEUE_CAPACITY + 1}, {"max_bytes": 0}):
            with pytest.raises(ValueError, match="must be"):
                k.queue(**bad)  # type: ignore[arg-type]


def test_a_process_reserves_at_most_its_quota_of_queue_bytes(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        n = abi.MAX_RESERVED_BYTES // abi.MAX_QUEUE_BYTES
        queues = [k.queue(max_bytes=abi.MAX_QUEUE_BYTES) for _ in range(n)]
        with pytest.raises(
            kernel.ResourceLimitError,
            match="the process would have more than 256 MiB of queue and pipe buffers",
        ):
            k.queue(max_bytes=1)
        queues.pop().close()
        k.queue(max_bytes=abi.MAX_QUEUE_BYTES).close()
        for q in queues:
            q.close()


def test_messages_carry_the_badge_and_credentials_and_outlive_their_sender(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        q = k.queue()
        badged = q.mint(Rights.SEND | Rights.COPY, badge=42)
        with spawned(k, "queue_peer.py", "creds", q=badged) as peer:
            assert peer.wait(timeout=10) == 0  # gone, and cleaned up by the kernel
            got = q.recv(timeout=10)
        assert (got.data, got.mtype, got.badge, got.sender.pid) == (b"hello", 9, 42, peer.pid)


def test_a_waiting_send_of_a_process_that_dies_is_not_queued(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        q = k.queue(1)
        proc = k.spawn(
            [sys.executable, str(PEERS / "queue_peer.py"), "sendexit", "3"], caps={"q": q}
        )
        try:
            time.sleep(0.3)  # it stored one and waits to send the second
        finally:
            proc.kill()
            proc.wait(timeout=10)
        assert q.recv_nowait().data == b"0"
        with pytest.raises(kernel.WouldBlock):
            q.recv_nowait()


def test_revoking_a_receivers_capability_fails_its_wait_at_once(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        q, back = k.queue(), k.endpoint()
        with spawned(k, "queue_peer.py", "recv", q=q, back=back) as peer:
            time.sleep(0.3)
            assert q.revoke() == 1
            assert back.recv(timeout=10).data == b"InvalidCapabilityError"
            assert peer.wait(timeout=10) == 0
        q.send(b"kept")
        assert q.recv_nowait().data == b"kept"


def test_rights_and_malformed_requests_are_refused(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        q = k.queue()
        with pytest.raises(kernel.AccessDeniedError, match="lacks the SEND right"):
            q.copy(Rights.RECEIVE).send(b"x")
        with pytest.raises(kernel.AccessDeniedError, match="lacks the RECEIVE right"):
            q.copy(Rights.SEND).recv_nowait()
        for mtype in (0, -1, abi.MAX_QUEUE_TYPE + 1):
            with pytest.raises(ValueError, match="mtype must be"):
                q.send(b"x", mtype=mtype)
        with pytest.raises(kernel.InvalidArgumentError, match="type must be 1 to"):
            k._roundtrip(Op.QUEUE_SEND, q, "send", arg=0)  # the kernel checks too
        with pytest.raises(kernel.InvalidArgumentError, match="parameters take 24 bytes"):
            k._roundtrip(Op.QUEUE_RECV, q, "recv", payload=b"short", timeout=0)
        params = (0).to_bytes(8, "little") * 2 + (8).to_bytes(8, "little")
        with pytest.raises(kernel.InvalidArgumentError, match="unknown flags"):
            k._roundtrip(Op.QUEUE_RECV, q, "recv", payload=params, timeout=0)
        n = k.notification()
        with pytest.raises(kernel.InvalidArgumentError, match="cannot carry a queue capability"):
            k._roundtrip(Op.QUEUE_SEND, q, "send", arg=1, caps=(q.slot | abi.TRANSFER_COPY,))
        with pytest.raises(kernel.InvalidCapabilityError, match="not a queue"):
            k._roundtrip(Op.QUEUE_SEND, n, "send", arg=1)
        with pytest.raises(ValueError, match="except_type needs a positive mtype"):
            q.recv(except_type=True)


def test_a_message_won_by_a_withdrawn_receive_is_kept_for_the_next(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        q = k.queue()
        q.send(b"first", mtype=3)
        conn = k._conn
        params = (0).to_bytes(8, "little") + abi.MAX_PAYLOAD.to_bytes(8, "little") + bytes(8)
        req = conn.submit(Op.QUEUE_RECV, q.slot, -1, 0, params, ())
        conn.cancel(req, q.slot)
        q.send(b"second", mtype=1)  # a round trip: the orphaned completion is taken meanwhile
        assert len(conn.queue_stash[q.slot]) == 1
        assert q.recv_nowait(mtype=1).data == b"second"  # the stash holds type 3 only
        assert q.recv_nowait(mtype=3).data == b"first"  # from the stash
        with pytest.raises(kernel.WouldBlock):
            q.recv_nowait()


def test_the_name_server_hands_out_queues_without_receive(kernel_daemon):
    with kernel.connect(autostart=False) as owner, kernel.connect(autostart=False) as client:
        q = owner.queue()
        owner.names.register("test.queue", q, mode=0o666)
        theirs = client.names.lookup("test.queue", kind=kernel.QueueCap)
        assert theirs.info().rights == Rights.SEND | Rights.GRANT | Rights.COPY | Rights.TRANSFER
        answer_to = client.notification()  # GRANT, as an endpoint's: a job carries its reply path
        theirs.send(b"via names", mtype=2, caps=[answer_to.as_copy()])
        got = q.recv(timeout=5)
        assert (got.data, got.sender.pid) == (b"via names", os.getpid())
        assert got.badge != 0  # lookup's own badge: the service can tell clients apart
        got.caps[0].signal(1)
        assert answer_to.poll() == 1


async def test_the_asyncio_face_and_a_cancelled_receive_that_takes_nothing(kernel_daemon):
    async with kernel.connect_async(autostart=False) as k:
        q = await k.queue(4)
        assert isinstance(q, kernel.AsyncQueueCap)
        waiting = asyncio.ensure_future(q.recv(mtype=5))
        await asyncio.sleep(0.05)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await asyncio.sleep(0.05)
        await q.send(b"five", mtype=5)
        got = await q.recv(mtype=5, timeout=5)  # the withdrawn receive took nothing
        assert (got.data, got.mtype) == (b"five", 5)
        await q.send_nowait(b"x")
        assert (await q.recv_nowait()).data == b"x"
        with pytest.raises(kernel.WouldBlock):
            await q.recv_nowait()


def test_classic_example_runs_as_its_readme_says(kernel_daemon):
    out = run_script(readme_script(ROOT / "examples/classic/README.md"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("words per line [4, 2, 3], total 9 from pid ")
