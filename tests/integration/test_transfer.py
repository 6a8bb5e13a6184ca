"""Capabilities in messages (issue #3): move, copy, rights, failures, reply hand-off."""

import asyncio
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import kernel
from kernel import Rights

pytestmark = pytest.mark.integration
PEERS = Path(__file__).parent / "peers"


def _receiver(k, ep):
    """A child that receives one message on `ep` and reports what it carried."""
    return k.spawn(
        [
            sys.executable,
            "-c",
            textwrap.dedent("""
        import kernel
        with kernel.connect(autostart=False) as k:
            msg = k.inherited["ep"].recv(timeout=10.0)
            print([(type(c).__name__, c.info().rights.value) for c in msg.caps], flush=True)
            if msg.caps and isinstance(msg.caps[0], kernel.NotificationCap):
                msg.caps[0].signal(1)   # the capability works in its new process
    """),
        ],
        caps={"ep": ep},
        stdout=subprocess.PIPE,
        text=True,
    )


def test_a_moved_capability_leaves_the_sender_and_works_in_the_receiver(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        ep, n = k.endpoint(), k.notification()
        keep = n.copy(rights=Rights.WAIT)
        child = _receiver(k, ep)
        ep.send(b"take this", caps=[n], timeout=10.0)
        assert keep.wait(timeout=10.0) == 1  # signalled by the receiver through n
        out, _ = child.popen.communicate(timeout=10)
        child.wait(timeout=10)
        assert "NotificationCap" in out
        with pytest.raises(kernel.InvalidCapabilityError, match=f"was sent to pid {child.pid}"):
            n.info()


def test_a_copied_capability_stays_and_the_copy_derives_from_it(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        ep, n = k.endpoint(), k.notification()
        child = _receiver(k, ep)
        ep.send(b"a copy", caps=[n.as_copy()], timeout=10.0)
        assert n.wait(timeout=10.0) == 1
        child.popen.communicate(timeout=10)
        child.wait(timeout=10)
        assert n.info().object_caps == 1  # the child's copy went with the child


def test_transfer_needs_grant_on_the_endpoint_and_transfer_on_the_capability(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        ep, n = k.endpoint(), k.notification()
        no_grant = ep.copy(rights=Rights.SEND | Rights.RECEIVE)
        with pytest.raises(kernel.AccessDeniedError, match="GRANT"):
            no_grant.send_nowait(b"x", caps=[n])
        untransferable = n.copy(rights=Rights.SIGNAL | Rights.COPY)
        with pytest.raises(kernel.AccessDeniedError, match="TRANSFER"):
            ep.send_nowait(b"x", caps=[untransferable])
        uncopyable = n.copy(rights=Rights.SIGNAL | Rights.TRANSFER)
        with pytest.raises(kernel.AccessDeniedError, match="COPY"):
            ep.send_nowait(b"x", caps=[uncopyable.as_copy()])
        # every check failed before anything moved: all still here
        for cap in (n, untransferable, uncopyable):
            assert cap.info().kind == "notification"


def test_a_failed_transfer_leaves_every_capability_where_it_was(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        ep, n1, n2 = k.endpoint(), k.notification(), k.notification()
        with pytest.raises(kernel.InvalidCapabilityError):  # one bad slot among good ones
            ep.send_nowait(b"x", caps=[n1, kernel.NotificationCap(k, 0x7FFF0001), n2])
        with pytest.raises(kernel.InvalidArgumentError, match="appears twice"):
            ep.send_nowait(b"x", caps=[n1, n1])
        with pytest.raises(kernel.InvalidArgumentError, match="sent through"):
            ep.send_nowait(b"x", caps=[ep])
        with pytest.raises(TimeoutError):  # waited for a receiver, none came
            ep.send(b"x", caps=[n1, n2.as_copy()], timeout=0.1)
        assert n1.info().kind == n2.info().kind == "notification"
        assert n2.info().derived == 0  # the copy was never made


def test_a_capability_in_a_waiting_message_is_locked_until_delivery(kernel_daemon):
    async def scenario():
        async with kernel.connect_async(autostart=False) as k:
            ep, n = await k.endpoint(), await k.notification()
            sending = asyncio.create_task(ep.send(b"x", caps=[n], timeout=10.0))
            await asyncio.sleep(0.1)
            with pytest.raises(kernel.InvalidArgumentError, match="in transit"):
                await n.signal(1)
            msg = await ep.recv(timeout=5.0)
            await sending
            (moved,) = msg.caps
            await moved.signal(2)  # now ours again, under a new slot
            assert await moved.poll() == 2

    asyncio.run(scenario())


def test_revoking_a_capability_in_transit_fails_only_that_send(kernel_daemon):
    async def scenario():
        async with kernel.connect_async(autostart=False) as k:
            ep, n = await k.endpoint(), await k.notification()
            c = await n.copy()
            sending = asyncio.create_task(ep.send(b"x", caps=[c], timeout=10.0))
            await asyncio.sleep(0.1)
            assert await n.revoke() == 1
            # The kernel checks a waiting message when a receiver comes for it: the broken
            # one fails its sender and is not delivered; the receiver keeps waiting.
            with pytest.raises(TimeoutError):
                await ep.recv(timeout=0.2)
            with pytest.raises(kernel.InvalidCapabilityError, match="revoked before delivery"):
                await sending

    asyncio.run(scenario())


def test_a_reply_carries_capabilities_only_when_the_caller_granted(kernel_daemon):
    server = textwrap.dedent("""
        import kernel
        with kernel.connect(autostart=False) as k:
            ep = k.inherited["ep"]
            for _ in range(2):
                msg = ep.recv(timeout=10.0)
                gift = k.notification()
                try:
                    msg.reply(b"with a gift", caps=[gift])
                    print("GIFT SENT", flush=True)
                except kernel.AccessDeniedError:
                    print("GIFT REFUSED", flush=True)
                    msg.reply(b"no gift")   # the refused transfer left the reply usable
    """)
    with kernel.connect(autostart=False) as k:
        ep = k.endpoint()
        srv = k.spawn(
            [sys.executable, "-c", server], caps={"ep": ep}, stdout=subprocess.PIPE, text=True
        )
        reply = ep.call(b"grant", timeout=10.0)
        (gift,) = reply.caps
        assert isinstance(gift, kernel.NotificationCap)
        gift.signal(4)
        assert gift.poll() == 4
        no_grant = ep.copy(rights=Rights.SEND)
        answer = no_grant.call(b"no grant", timeout=10.0)
        assert (answer.data, answer.caps) == (b"no gift", [])
        out, _ = srv.popen.communicate(timeout=10)
        srv.wait(timeout=10)
        assert out.split() == ["GIFT", "SENT", "GIFT", "REFUSED"]


def test_a_reply_capability_handed_to_a_worker_answers_exactly_once(kernel_daemon):
    server = textwrap.dedent("""
        import kernel
        with kernel.connect(autostart=False) as k:
            ep, jobs = k.inherited["ep"], k.inherited["jobs"]
            msg = ep.recv(timeout=10.0)
            jobs.send(msg.data, caps=[msg.reply_cap], timeout=10.0)   # hand it off
            try:
                msg.reply(b"the server answers too")
                print("SERVER REPLIED")
            except kernel.InvalidCapabilityError:
                print("SERVER CANNOT REPLY")
    """)
    with kernel.connect(autostart=False) as k:
        ep, jobs = k.endpoint(), k.endpoint()
        worker = k.spawn(
            [sys.executable, str(PEERS / "reply_worker.py")],
            caps={"jobs": jobs},
            stdout=subprocess.PIPE,
            text=True,
        )
        srv = k.spawn(
            [sys.executable, "-c", server],
            caps={"ep": ep, "jobs": jobs},
            stdout=subprocess.PIPE,
            text=True,
        )
        reply = ep.call(b"job 1", timeout=10.0)
        assert reply.data == b"worker says: job 1"
        assert reply.sender.pid == worker.pid
        srv_out, _ = srv.popen.communicate(timeout=10)
        worker_out, _ = worker.popen.communicate(timeout=10)
        srv.wait(timeout=10)
        worker.wait(timeout=10)
        assert "SERVER CANNOT REPLY" in srv_out
        assert "SECOND REPLY REFUSED" in worker_out
        with pytest.raises(TimeoutError):  # exactly one reply reached the caller
            ep.recv(timeout=0.1)


async def test_the_asyncio_face_sends_and_receives_capabilities(kernel_daemon):
    async with kernel.connect_async(autostart=False) as k:
        ep, n = await k.endpoint(), await k.notification()
        sending = asyncio.ensure_future(ep.send(b"x", caps=[n.as_copy()], timeout=5.0))
        msg = await ep.recv(timeout=5.0)
        await sending
        (copy,) = msg.caps
        assert isinstance(copy, kernel.AsyncNotificationCap)
        assert (await copy.info()).parent_slot == n.slot
