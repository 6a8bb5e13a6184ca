"""Endpoints: synchronous rendezvous, call/reply, credentials, payload limits, bad caps."""

from __future__ import annotations

import contextlib
import os
import time

import pytest
from peerlib import raising_in_thread, spawned

import kernel
from kernel import ReplyCap
from kernel.abi import Op

pytestmark = pytest.mark.integration


def creds_of(data: bytes) -> kernel.Credentials:
    pid, uid, gid = map(int, data.split())
    return kernel.Credentials(pid, uid, gid)


# ------------------------------------------------------------------ rendezvous


def test_send_blocks_until_a_receiver_takes_the_message(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        ep, back = k.endpoint(), k.endpoint()
        with spawned(k, "actor.py", "recv", "0.3", ep=ep, back=back) as proc:
            t0 = time.monotonic()
            ep.send(b"hello", timeout=10)
            assert time.monotonic() - t0 >= 0.3  # the receiver only came after 0.3 s
            assert back.recv(timeout=10).data == b"hello"
            assert proc.wait(timeout=10) == 0


def test_send_nowait_raises_wouldblock_when_no_receiver_waits(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        ep = k.endpoint()
        t0 = time.monotonic()
        with pytest.raises(kernel.WouldBlock):
            ep.send_nowait(b"nobody")
        assert time.monotonic() - t0 < 0.05
        with pytest.raises(TimeoutError):  # and nothing was left queued on the endpoint
            ep.recv(timeout=0)


def test_send_nowait_succeeds_when_a_receiver_waits(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        ep, back = k.endpoint(), k.endpoint()
        with spawned(k, "actor.py", "recv", "0", ep=ep, back=back) as proc:
            deadline = time.monotonic() + 10
            while True:  # WouldBlock until the child sits in recv
                try:
                    ep.send_nowait(b"now")
                    break
                except kernel.WouldBlock:
                    assert time.monotonic() < deadline, "the receiver never waited"
                    time.sleep(0.005)
            assert back.recv(timeout=10).data == b"now"
            assert proc.wait(timeout=10) == 0


def test_call_returns_the_servers_reply_with_the_servers_credentials(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        ep = k.endpoint()
        with spawned(k, "echo_server.py", "creds", ep=ep) as server:
            reply = ep.call(b"who are you", timeout=10)
            assert reply.sender == creds_of(reply.data)
            assert reply.sender.pid == server.pid
            assert reply.badge == 0
            assert not reply.is_call


def test_reply_recv_loop_answers_every_call_in_order(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        ep = k.endpoint()
        with spawned(k, "echo_server.py", "reply_recv", ep=ep) as server:
            for i in range(200):
                assert ep.call(b"call %d" % i, timeout=10).data == b"CALL %d" % i
            assert ep.call(b"stop", timeout=10).data == b"bye"
            assert server.wait(timeout=10) == 0


def test_messages_carry_badge_zero_and_the_kernel_verified_sender(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        ep = k.endpoint()
        with (
            spawned(k, "actor.py", "creds", "0", ep=ep) as sender,
            spawned(k, "actor.py", "callcreds", "0", ep=ep) as caller,
        ):
            for _ in range(2):
                msg = ep.recv(timeout=10)
                assert msg.badge == 0
                # the child wrote its own os.getpid()/getuid()/getgid(); the kernel agrees
                assert msg.sender == creds_of(msg.data)
                assert msg.sender.uid == os.getuid()
                assert msg.sender.gid == os.getgid()
                if msg.is_call:
                    assert msg.sender.pid == caller.pid
                    msg.reply(b"ok")
                else:
                    assert msg.sender.pid == sender.pid
            assert sender.wait(timeout=10) == 0
            assert caller.wait(timeout=10) == 0


# ------------------------------------------------------------------ payloads


def test_payloads_of_zero_and_of_exactly_max_payload_bytes_roundtrip(kernel_daemon):
    big = os.urandom(kernel.MAX_PAYLOAD)
    with kernel.connect(autostart=False) as k:
        ep, back = k.endpoint(), k.endpoint()
        with spawned(k, "echo_server.py", "upper", ep=ep):
            assert ep.call(big, timeout=10).data == big.upper()
            assert ep.call(b"", timeout=10).data == b""
        for data in (big, b""):
            with spawned(k, "actor.py", "recv", "0", ep=ep, back=back) as proc:
                ep.send(data, timeout=10)
                assert back.recv(timeout=10).data == data
                assert proc.wait(timeout=10) == 0


def test_a_payload_over_max_payload_raises_and_the_connection_stays_usable(kernel_daemon):
    too_big = bytes(kernel.MAX_PAYLOAD + 1)
    with kernel.connect(autostart=False) as k:
        ep = k.endpoint()
        for attempt in (
            lambda: ep.call(too_big, timeout=1),
            lambda: ep.send(too_big, timeout=1),
            lambda: ep.send_nowait(too_big),
        ):
            with pytest.raises(kernel.MessageTooLargeError, match="exceeds the maximum") as info:
                attempt()
            assert isinstance(info.value, ValueError)
        with spawned(k, "echo_server.py", "upper", ep=ep):
            assert ep.call(b"still fine", timeout=10).data == b"STILL FINE"


def test_a_reply_refused_for_its_size_leaves_the_call_answerable(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        ep, back = k.endpoint(), k.endpoint()
        with spawned(k, "actor.py", "call", "0", "question", ep=ep, back=back) as proc:
            msg = ep.recv(timeout=10)
            with pytest.raises(kernel.MessageTooLargeError):
                msg.reply(bytes(kernel.MAX_PAYLOAD + 1))
            msg.reply(b"answer")  # nothing was sent yet: the call is still open
            assert back.recv(timeout=10).data == b"answer"
            assert proc.wait(timeout=10) == 0


# ------------------------------------------------------------------ replies


def test_replying_to_a_sent_message_raises_invalid_capability(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        ep = k.endpoint()
        with spawned(k, "actor.py", "send", "0", "plain", ep=ep) as proc:
            msg = ep.recv(timeout=10)
            assert not msg.is_call
            with pytest.raises(kernel.InvalidCapabilityError, match="not called"):
                msg.reply(b"nobody waits for this")
            assert proc.wait(timeout=10) == 0


def test_a_reply_capability_is_one_shot_in_the_client_and_in_the_kernel(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        ep, back = k.endpoint(), k.endpoint()
        with spawned(k, "actor.py", "call", "0", "question", ep=ep, back=back) as proc:
            msg = ep.recv(timeout=10)
            assert msg.data == b"question"
            reply_cap = ReplyCap(k, msg._reply_slot)
            msg.reply(b"first")
            with pytest.raises(kernel.InvalidCapabilityError, match="already answered"):
                msg.reply(b"second")
            # past the client's bookkeeping: the same reply slot again, in the kernel
            with pytest.raises(kernel.InvalidCapabilityError, match="earlier reply"):
                k._roundtrip(Op.ENDPOINT_REPLY, reply_cap, "reply", payload=b"forged")
            assert back.recv(timeout=10).data == b"first"
            assert proc.wait(timeout=10) == 0


def test_a_call_whose_message_is_dropped_unanswered_fails_at_once(kernel_daemon):
    """As when the server closes the reply capability: a caller without a timeout
    must not wait forever, and the server's table must not keep the slot."""
    with kernel.connect(autostart=False) as k:
        ep = k.endpoint()
        t, raised = raising_in_thread(lambda: ep.call(b"x"))  # no timeout
        msg = ep.recv(timeout=10)
        slot = msg._reply_slot
        del msg  # dropped without a reply
        t.join(10)
        assert not t.is_alive()
        assert isinstance(raised[0], kernel.PeerClosedError)
        assert "without replying" in str(raised[0])
        with pytest.raises(kernel.InvalidCapabilityError, match="closed"):  # not left behind
            k._roundtrip(Op.ENDPOINT_REPLY, ReplyCap(k, slot), "reply", payload=b"late")


def test_many_receivers_on_one_endpoint_each_take_a_call(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        ep = k.endpoint()
        with contextlib.ExitStack() as stack:
            servers = [
                stack.enter_context(spawned(k, "echo_server.py", "once", str(i), ep=ep))
                for i in range(4)
            ]
            tags = set()
            for i in range(4):
                data, _, tag = ep.call(b"job %d" % i, timeout=10).data.rpartition(b"|")
                assert data == b"job %d" % i
                tags.add(tag)
            assert tags == {b"0", b"1", b"2", b"3"}  # one call each: a pool of workers
            assert [s.wait(timeout=10) for s in servers] == [0, 0, 0, 0]


# ------------------------------------------------------------------ bad capabilities


def test_a_closed_cap_raises_invalid_capability_saying_it_was_closed(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        ep, n = k.endpoint(), k.notification()
        ep.close()
        n.close()
        for use in (
            lambda: ep.call(b"x", timeout=0.1),
            lambda: ep.send_nowait(b"x"),
            lambda: ep.recv(timeout=0),
            ep.close,
            lambda: n.signal(1),
            n.poll,
        ):
            with pytest.raises(kernel.InvalidCapabilityError, match="closed"):
                use()


def test_a_closed_slot_never_names_the_next_object_in_its_place(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        old = k.endpoint()
        old.close()
        new = k.endpoint()
        assert new.slot != old.slot
        with pytest.raises(kernel.InvalidCapabilityError, match="closed"):
            old.send_nowait(b"x")
        with pytest.raises(kernel.WouldBlock):
            new.send_nowait(b"x")


def test_a_notification_cap_used_as_an_endpoint_raises_invalid_capability(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        n, ep = k.notification(), k.endpoint()
        with pytest.raises(kernel.InvalidCapabilityError, match="notification"):
            kernel.EndpointCap(k, n.slot).call(b"x", timeout=0.1)
        with pytest.raises(kernel.InvalidCapabilityError, match="endpoint"):
            kernel.NotificationCap(k, ep.slot).signal(1)
        n.signal(2)  # both objects are untouched
        assert n.poll() == 2


def test_a_forged_slot_raises_invalid_capability_and_the_connection_keeps_working(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        for slot in (0x7FFF1234, 0, 0x10001 + 77, 0xFFFFFFFF):
            forged = kernel.EndpointCap(k, slot)
            with pytest.raises(kernel.InvalidCapabilityError, match="names no capability"):
                forged.call(b"x", timeout=0.1)
            with pytest.raises(kernel.InvalidCapabilityError, match="names no capability"):
                forged.recv(timeout=0)
            with pytest.raises(kernel.InvalidCapabilityError, match="names no capability"):
                forged.send(b"x", timeout=0)
        ep = k.endpoint()
        with spawned(k, "echo_server.py", "upper", ep=ep):
            assert ep.call(b"fine", timeout=10).data == b"FINE"


def test_closing_the_last_cap_fails_a_receiver_blocked_on_it(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        ep = k.endpoint()
        t, errors = raising_in_thread(lambda: ep.recv(timeout=10))
        time.sleep(0.2)  # let the receiver block in the kernel
        ep.close()
        t.join(5)
        assert not t.is_alive()
        assert len(errors) == 1
        assert isinstance(errors[0], kernel.PeerClosedError), errors
        assert "destroyed" in str(errors[0])


async def test_the_newest_waiting_receiver_gets_the_message_and_senders_keep_order(
    kernel_daemon,
):
    """Receivers are served newest first (the one most likely still running, so no
    wakeup); waiting senders oldest first (message order)."""
    import asyncio

    async with kernel.connect_async(autostart=False) as k:
        ep = await k.endpoint()
        receivers = []
        for _ in range(3):
            receivers.append(asyncio.ensure_future(ep.recv(timeout=10)))
            await asyncio.sleep(0.02)  # each receive is in the kernel before the next
        await ep.send(b"one", timeout=5)
        done, _ = await asyncio.wait(receivers, timeout=5, return_when=asyncio.FIRST_COMPLETED)
        assert done == {receivers[2]}
        assert receivers[2].result().data == b"one"
        for r in receivers[:2]:
            r.cancel()
        await asyncio.gather(*receivers[:2], return_exceptions=True)
        sends = []
        for i in range(3):
            sends.append(asyncio.ensure_future(ep.send(b"m%d" % i, timeout=10)))
            await asyncio.sleep(0.02)
        got = [(await ep.recv(timeout=5)).data for _ in range(3)]
        assert got == [b"m0", b"m1", b"m2"]
        await asyncio.gather(*sends)
