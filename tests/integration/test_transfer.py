"""Capabilities in messages (issue #3): move, copy, rights, failures, reply hand-off."""

import asyncio
import subprocess
import sys
import textwrap
import time
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


def test_a_copy_in_a_waiting_message_is_made_when_it_is_sent(kernel_daemon):
    """As SCM_RIGHTS: the copy exists from the send on, so the sender's own capability
    stays usable and closable meanwhile (it was locked until a receiver came, so an
    asyncio task using it failed or not by timing)."""

    async def scenario():
        async with kernel.connect_async(autostart=False) as k:
            ep, n = await k.endpoint(), await k.notification()
            sending = asyncio.create_task(ep.send(b"x", caps=[n.as_copy()], timeout=10.0))
            await asyncio.sleep(0.1)
            await n.signal(1)
            assert (await n.info()).derived == 1  # the copy in flight
            await n.close()  # the copy in flight keeps the notification
            msg = await ep.recv(timeout=5.0)
            await sending
            (copy,) = msg.caps
            assert await copy.poll() == 1
            assert (await copy.info()).parent_slot is None  # moved up when n was closed

    asyncio.run(scenario())


def test_a_copy_made_for_a_send_that_fails_is_dropped(kernel_daemon):
    async def scenario():
        async with kernel.connect_async(autostart=False) as k:
            ep, n = await k.endpoint(), await k.notification()
            sending = asyncio.create_task(ep.send(b"x", caps=[n.as_copy()], timeout=10.0))
            await asyncio.sleep(0.1)
            assert (await n.info()).derived == 1
            sending.cancel()
            with pytest.raises(asyncio.CancelledError):
                await sending
            assert (await n.info()).derived == 0
            with pytest.raises(TimeoutError):  # nothing left to deliver
                await ep.recv(timeout=0.1)

    asyncio.run(scenario())


def test_a_copy_in_flight_dies_with_its_sender(kernel_daemon):
    sender = textwrap.dedent("""
        import kernel
        with kernel.connect(autostart=False) as k:
            print("SENDING", flush=True)
            k.inherited["ep"].send(b"x", caps=[k.inherited["n"].as_copy()])   # never taken
    """)
    with kernel.connect(autostart=False) as k:
        ep, n = k.endpoint(), k.notification()
        child = k.spawn(
            [sys.executable, "-c", sender],
            caps={"ep": ep, "n": n},
            stdout=subprocess.PIPE,
            text=True,
        )
        assert child.popen.stdout.readline() == "SENDING\n"
        deadline = time.monotonic() + 10
        while n.info().derived < 2:  # the child's inherited one, and the copy in flight
            assert time.monotonic() < deadline, n.info()
            time.sleep(0.01)
        child.kill()
        child.wait(timeout=10)
        child.popen.stdout.close()
        while n.info().derived:  # both dropped with the child
            assert time.monotonic() < deadline, n.info()
            time.sleep(0.01)


@pytest.mark.parametrize("carried", ["moved", "copied", "minted"])
def test_revoking_a_capability_in_transit_fails_only_that_send(kernel_daemon, carried):
    async def scenario():
        async with kernel.connect_async(autostart=False) as k:
            ep, n = await k.endpoint(), await k.notification()
            c = await n.copy()
            item = {"moved": c, "copied": c.as_copy(), "minted": c.as_mint(badge=9)}[carried]
            sending = asyncio.create_task(ep.send(b"x", caps=[item], timeout=10.0))
            await asyncio.sleep(0.1)
            # Moved, `c` itself waits in the message; copied or minted, a child of it.
            assert await (n if carried == "moved" else c).revoke() == 1
            # The revocation fails that send at once; nothing is left to deliver, so
            # a receiver keeps waiting.
            with pytest.raises(kernel.InvalidCapabilityError, match="carried was revoked"):
                await sending
            with pytest.raises(TimeoutError):
                await ep.recv(timeout=0.2)
            if carried != "moved":
                await c.signal(1)  # only its child was revoked

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


# ------------------------------------------------------------ minted in transit (as_mint)


def _recv_in_thread(ep, out):
    import threading

    t = threading.Thread(target=lambda: out.append(ep.recv(timeout=10.0)))
    t.start()
    return t


def test_a_capability_minted_in_transit_has_its_rights_and_badge_and_derives(kernel_daemon):
    with kernel.connect(autostart=False) as a:
        ep, n = a.endpoint(), a.notification()
        got = []
        t = _recv_in_thread(ep, got)
        ep.send(b"mint", timeout=10.0, caps=[n.as_mint(Rights.SIGNAL | Rights.TRANSFER, badge=77)])
        t.join()
        (child,) = got[0].caps
        info = child.info()
        assert (info.rights, info.badge) == (Rights.SIGNAL | Rights.TRANSFER, 77)
        assert n.info().badge == 0
        assert n.info().derived == 1
        child.signal(4)
        assert n.poll() == 4
        assert n.revoke() == 1  # a child of n: revoking n reaches it
        with pytest.raises(kernel.InvalidCapabilityError):
            child.signal(1)


def test_a_minted_transfer_obeys_the_mint_rules_and_moves_nothing_on_failure(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        ep, n = k.endpoint(), k.notification()
        narrow = n.copy(rights=Rights.SIGNAL | Rights.COPY | Rights.TRANSFER)
        with pytest.raises(kernel.AccessDeniedError, match="add rights"):
            ep.send_nowait(b"x", caps=[narrow.as_mint(Rights.SIGNAL | Rights.WAIT, badge=1)])
        badged = n.mint(badge=5)
        with pytest.raises(kernel.AccessDeniedError, match="already carries badge 5"):
            ep.send_nowait(b"x", caps=[badged.as_mint(badge=6)])
        no_copy = n.copy(rights=Rights.SIGNAL | Rights.TRANSFER)
        with pytest.raises(kernel.AccessDeniedError, match="COPY"):
            ep.send_nowait(b"x", caps=[no_copy.as_mint(badge=1)])
        with pytest.raises(TimeoutError):  # no receiver: nothing is minted
            ep.send(b"x", caps=[n.as_mint(badge=9)], timeout=0.05)
        assert n.info().derived == 3  # narrow, badged, no_copy: no minted child appeared
        with pytest.raises(ValueError, match="badge"):
            n.as_mint(badge=-1)
        with pytest.raises(ValueError, match="at most"):
            ep.send_nowait(b"x", caps=[n.as_mint(badge=i + 1) for i in range(5)])


def test_a_minted_transfer_without_its_badge_word_is_refused(kernel_daemon):
    from kernel import abi
    from kernel.abi import Op

    with kernel.connect(autostart=False) as k:
        ep, n = k.endpoint(), k.notification()
        word = n.slot | abi.TRANSFER_MINT | abi.TRANSFER_SAME_RIGHTS
        conn = k._conn
        req = conn.submit(Op.ENDPOINT_SEND, ep.slot, abi.DEADLINE_NOW, 0, b"x", (word,))
        c = conn.wait(req)
        assert c.status == kernel.Status.INVALID_ARGS
        assert "badge word" in c.reason()
        assert n.info().derived == 0


def test_reply_recv_may_mint_with_a_badge_that_looks_like_its_own_slot(kernel_daemon):
    """The badge word is not a slot: it must not trip the 'moves its own capability' check."""
    import threading

    with kernel.connect(autostart=False) as server:
        ep, n = server.endpoint(), server.notification()
        # a call from a thread, answered by reply_recv that mints with badge == ep.slot
        answers = []
        calls = threading.Thread(target=lambda: answers.append(ep.call(b"q", timeout=10.0)))
        calls.start()
        msg = ep.recv(timeout=10.0)
        with pytest.raises(TimeoutError):
            ep.reply_recv(msg, b"a", caps=[n.as_mint(badge=ep.slot)], timeout=0.05)
        calls.join()
        (minted,) = answers[0].caps
        assert minted.info().badge == ep.slot
