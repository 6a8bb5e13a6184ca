"""CALLER_MONITOR and the messages the kernel sends itself.

A server holding a call's reply capability may ask the kernel to send it a message
when the caller's process ends (`msg.monitor(endpoint, badge)`); that message has
`from_kernel` True, sender pid 0 and the badge given. The callers are real
processes (peers/actor.py callcreds), killed by pid.
"""

from __future__ import annotations

import threading

import pytest
from peerlib import spawned

import kernel
from capabilities import Rights
from kernel.abi import Op
from kernel.errors import ResourceLimitError

pytestmark = pytest.mark.integration


def _called(k: kernel.Kernel, ep: kernel.EndpointCap, proc: kernel.Process) -> kernel.Message:
    msg = ep.recv(timeout=20)
    assert msg.is_call
    assert msg.sender.pid == proc.pid
    assert not msg.from_kernel
    assert msg.sender_id != 0
    return msg


def test_the_notice_arrives_when_the_caller_dies_with_the_badge_from_the_kernel(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        ep, notices = k.endpoint(), k.endpoint()
        with spawned(k, "actor.py", "callcreds", "0", ep=ep) as caller:
            msg = _called(k, ep, caller)
            msg.monitor(notices, 0xFEED_F00D_0000_0001)
            with pytest.raises(kernel.CallTimeoutError):
                notices.recv(timeout=0)  # nothing while the caller lives
            caller.kill()
            notice = notices.recv(timeout=5)
            assert caller.wait(timeout=10) != 0
        assert notice.from_kernel
        assert notice.badge == 0xFEED_F00D_0000_0001
        assert notice.sender.pid == 0
        assert notice.sender_id == 0
        assert not notice.is_call
        assert notice.data == b""
        assert notice.caps == []
        with pytest.raises(kernel.PeerClosedError):
            msg.reply(b"too late")


async def test_the_notice_arrives_in_the_async_face(kernel_daemon):
    import asyncio
    import sys

    from peerlib import PEERS

    async with kernel.connect_async(autostart=False) as k:
        ep, notices = await k.endpoint(), await k.endpoint()
        caller = await k.spawn(
            [sys.executable, str(PEERS / "actor.py"), "callcreds", "0"], caps={"ep": ep}
        )
        try:
            msg = await ep.recv(timeout=20)
            assert msg.sender.pid == caller.pid
            assert not msg.from_kernel
            await msg.monitor(notices, 7)
            pending = asyncio.get_running_loop().create_task(notices.recv(timeout=5))
            caller.kill()
            notice = await pending
        finally:
            caller.kill()
            await caller.wait(timeout=10)
        assert notice.from_kernel
        assert (notice.badge, notice.sender.pid, notice.sender_id) == (7, 0, 0)


def test_a_process_cannot_forge_a_kernel_message(kernel_daemon):
    """The message flags a receiver sees come from the kernel: a sender that sets every
    bit of its record's arg still delivers an ordinary message."""
    with kernel.connect(autostart=False) as k:
        ep = k.endpoint()
        errors: list[BaseException] = []

        def forge() -> None:
            try:
                k._roundtrip(Op.ENDPOINT_SEND, ep, "send", timeout=10, arg=(1 << 64) - 1,
                             payload=b"I am the kernel")  # fmt: skip
            except BaseException as e:
                errors.append(e)

        t = threading.Thread(target=forge, daemon=True)
        t.start()
        msg = ep.recv(timeout=10)
        t.join(10)
        assert msg.data == b"I am the kernel"
        assert not msg.from_kernel
        assert not msg.is_call
        assert msg.sender.pid == k.pid
        assert msg.sender_id != 0
        assert errors == []
        with kernel.connect(autostart=False) as other:
            ep2 = other.endpoint()
            t = threading.Thread(target=lambda: ep2.send(b"x", timeout=10), daemon=True)
            t.start()
            normal = ep2.recv(timeout=10)
            t.join(10)
            assert not normal.from_kernel
            assert normal.sender_id not in (0, msg.sender_id)  # one id per connection


def test_monitor_refuses_a_sent_message_an_answered_one_and_a_gone_caller(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        ep, back, notices = k.endpoint(), k.endpoint(), k.endpoint()
        with spawned(k, "actor.py", "send", "0", "plain", ep=ep) as sender:
            sent = ep.recv(timeout=20)
            assert sent.sender.pid == sender.pid
            with pytest.raises(kernel.InvalidCapabilityError, match="sent, not called"):
                sent.monitor(notices, 1)
        with spawned(k, "actor.py", "call", "0", "q", ep=ep, back=back) as caller:
            answered = _called(k, ep, caller)
            answered.reply(b"a")
            assert back.recv(timeout=20).data == b"a"
            with pytest.raises(kernel.InvalidCapabilityError, match="already answered"):
                answered.monitor(notices, 2)
        with spawned(k, "actor.py", "callcreds", "0", ep=ep) as caller:
            orphan = _called(k, ep, caller)
            caller.kill()
            caller.wait(timeout=10)  # the kernel has cleaned the caller up
            with pytest.raises(kernel.PeerClosedError, match="caller is gone") as e:
                orphan.monitor(notices, 3)
            assert e.value.status == kernel.Status.CALLER_GONE
        with pytest.raises(kernel.CallTimeoutError):
            notices.recv(timeout=0)  # no refused monitor left a notice behind


def test_monitor_needs_send_on_the_endpoint(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        ep, notices = k.endpoint(), k.endpoint()
        receive_only = notices.copy(Rights.RECEIVE)
        with spawned(k, "actor.py", "callcreds", "0", ep=ep) as caller:
            msg = _called(k, ep, caller)
            with pytest.raises(kernel.AccessDeniedError, match="SEND"):
                msg.monitor(receive_only, 1)
            with pytest.raises(TypeError, match="an endpoint or a notification"):
                msg.monitor(k.queue(), 1)  # type: ignore[arg-type]
            with pytest.raises(TypeError, match="needs an endpoint capability"):
                msg.monitor_call(k.notification(), 1)  # type: ignore[arg-type]
            with pytest.raises(ValueError):
                msg.monitor(notices, -1)
            msg.monitor(notices.copy(Rights.SEND), 5)  # SEND alone is enough
            msg.reply(b"ok")  # a monitored call stays answerable
            caller.kill()
        notice = receive_only.recv(timeout=5)
        assert notice.from_kernel
        assert notice.badge == 5


def test_a_notice_on_an_endpoint_nobody_receives_on_waits_for_a_receiver(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        ep, notices = k.endpoint(), k.endpoint()
        with spawned(k, "actor.py", "callcreds", "0", ep=ep) as caller:
            msg = _called(k, ep, caller)
            msg.monitor(notices, 11)
            msg.monitor(notices, 12)  # two watchers of one call: two notices
            caller.kill()
            caller.wait(timeout=10)  # gone, and the kernel sent the notices meanwhile
        got = sorted(notices.recv(timeout=5).badge for _ in range(2))
        assert got == [11, 12]
        with pytest.raises(kernel.CallTimeoutError):
            notices.recv(timeout=0)


def test_monitors_of_one_process_are_bounded(kernel_daemon):
    from kernel.daemon.state import MAX_MONITORS

    with kernel.connect(autostart=False) as k:
        ep, notices = k.endpoint(), k.endpoint()
        with spawned(k, "actor.py", "callcreds", "0", ep=ep) as caller:
            msg = _called(k, ep, caller)
            for i in range(MAX_MONITORS):
                msg.monitor(notices, i + 1)
            with pytest.raises(ResourceLimitError, match=f"{MAX_MONITORS} monitors"):
                msg.monitor(notices, 0)
            caller.kill()
            caller.wait(timeout=10)
        for expected in range(1, 4):  # some read; the kernel drops the rest with the endpoint
            assert notices.recv(timeout=5).badge == expected
        notices.close()


# ------------------------------------------------------------ CALL_MONITOR


def _threaded_call(ep: kernel.EndpointCap, timeout: float) -> tuple[threading.Thread, list]:
    out: list = []

    def call() -> None:
        try:
            out.append(ep.call(b"q", timeout=timeout))
        except BaseException as e:  # reported by the test
            out.append(e)

    t = threading.Thread(target=call)
    t.start()
    return t, out


def test_monitor_call_tells_when_the_caller_times_out_and_not_when_answered(kernel_daemon):
    with kernel.connect(autostart=False) as server, kernel.connect(autostart=False) as client:
        ep, notices = server.endpoint(), server.endpoint()
        server.names.register("svc", ep)
        theirs = client.names.lookup("svc")
        t, out = _threaded_call(theirs, 0.3)
        msg = ep.recv(timeout=10)
        msg.monitor_call(notices, 77)
        notice = notices.recv(timeout=10)  # the caller's 0.3 s ran out
        t.join(10)
        assert isinstance(out[0], kernel.CallTimeoutError)
        assert (notice.from_kernel, notice.badge, notice.sender.pid) == (True, 77, 0)
        assert b"timed out" in notice.data
        t, out = _threaded_call(theirs, 10.0)
        msg = ep.recv(timeout=10)
        msg.monitor_call(notices, 78)
        msg.reply(b"a")
        t.join(10)
        assert out[0].data == b"a"
        with pytest.raises(kernel.CallTimeoutError):
            notices.recv(timeout=0.2)  # an answered call sends no notice


async def test_monitor_call_tells_when_the_caller_cancels(kernel_daemon):
    import asyncio

    async with kernel.connect_async(autostart=False) as server:
        async with kernel.connect_async(autostart=False) as client:
            ep, notices = await server.endpoint(), await server.endpoint()
            await server.names.register("svc", ep)
            theirs = await client.names.lookup("svc")
            calling = asyncio.ensure_future(theirs.call(b"q", timeout=30))
            msg = await ep.recv(timeout=10)
            await msg.monitor_call(notices, 5)
            calling.cancel()
            notice = await notices.recv(timeout=10)
            assert (notice.from_kernel, notice.badge) == (True, 5)
            assert b"cancelled" in notice.data
            with pytest.raises(kernel.PeerClosedError):
                await msg.reply(b"too late")


def test_monitor_call_on_an_answered_or_sent_message_is_refused(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        ep, notices = k.endpoint(), k.endpoint()
        t, out = _threaded_call(ep, 10.0)
        msg = ep.recv(timeout=10)
        msg.reply(b"done")
        t.join(10)
        with pytest.raises(kernel.InvalidCapabilityError, match="already answered"):
            msg.monitor_call(notices, 1)
