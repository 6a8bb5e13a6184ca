"""Derivation, badges, rights and revocation (issue #3, first part) against a real kernel."""

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import kernel
from kernel import Rights
from kernel.abi import Op

pytestmark = pytest.mark.integration
PEERS = Path(__file__).parent / "peers"

CONTRACT = textwrap.dedent("""
    import kernel
    from kernel import Rights

    with kernel.connect() as k:
        ep = k.endpoint()                                  # all rights
        ro = ep.mint(rights=Rights.SEND | Rights.COPY, badge=7)
        info = ro.info()
        assert info.badge == 7 and info.rights == Rights.SEND | Rights.COPY
        try:
            ro.recv(timeout=0)
            raise SystemExit("recv without RECEIVE succeeded")
        except PermissionError:                            # kernel.AccessDeniedError
            pass
        child = ro.copy(rights=Rights.SEND)                # fewer rights: allowed
        try:
            ro.copy(rights=Rights.SEND | Rights.RECEIVE)   # more than it holds
            raise SystemExit("copy widened rights")
        except PermissionError:
            pass
        ep.revoke()                                        # deletes ro and child, wherever they are
        for cap in (ro, child):
            try:
                cap.info()
                raise SystemExit("revoked capability still resolves")
            except kernel.InvalidCapabilityError:
                pass
        assert Rights.RECEIVE in ep.info().rights         # ep itself survives its own revoke
""")


def test_the_issue_contract_program_runs_as_written(kernel_daemon, tmp_path):
    script = tmp_path / "contract3.py"
    script.write_text(CONTRACT)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_revoke_reaches_a_capability_inherited_by_another_process(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        ep, ready, go = k.endpoint(), k.notification(), k.notification()
        handed = ep.mint(rights=Rights.SEND | Rights.COPY, badge=3)
        holder = k.spawn(
            [sys.executable, str(PEERS / "revoked_holder.py")],
            caps={"ep": handed, "ready": ready, "go": go},
            stdout=subprocess.PIPE,
            text=True,
        )
        assert ready.wait(timeout=10.0) == 1
        assert ep.revoke() == 2  # `handed` here and its inherited child there
        go.signal(1)
        out, _ = holder.popen.communicate(timeout=10)
        holder.wait(timeout=10)
        assert holder.returncode == 0, out
        assert "was revoked" in out


def test_copy_and_mint_need_the_copy_right_and_never_widen(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        ep = k.endpoint()
        no_copy = ep.copy(rights=Rights.SEND)
        with pytest.raises(kernel.AccessDeniedError, match="lacks the COPY right"):
            no_copy.copy()
        with pytest.raises(kernel.AccessDeniedError, match="lacks the COPY right"):
            no_copy.mint(badge=1)
        narrow = ep.copy(rights=Rights.SEND | Rights.COPY)
        with pytest.raises(PermissionError, match="RECEIVE"):
            narrow.copy(rights=Rights.SEND | Rights.RECEIVE)
        assert narrow.copy().info().rights == Rights.SEND | Rights.COPY  # default: the same


def test_revoke_needs_the_manage_right(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        ep = k.endpoint()
        weak = ep.copy(rights=Rights.SEND | Rights.COPY)
        child = weak.copy()  # kept: a dropped one would close itself
        with pytest.raises(kernel.AccessDeniedError, match="MANAGE"):
            weak.revoke()
        assert weak.info().derived == 1  # nothing was deleted
        assert child.info().parent_slot == weak.slot


def test_a_badge_is_set_once_and_delivered_with_every_message(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        ep = k.endpoint()
        badged = ep.mint(badge=7)
        with pytest.raises(kernel.AccessDeniedError, match="already carries badge 7"):
            badged.mint(badge=8)
        assert badged.mint(badge=7).info().badge == 7  # the same badge again is fine
        assert badged.copy().info().badge == 7  # copies keep it
        sender = k.spawn(
            [
                sys.executable,
                "-c",
                textwrap.dedent("""
            import kernel
            with kernel.connect(autostart=False) as k:
                k.inherited["ep"].send(b"hi", timeout=10.0)
        """),
            ],
            caps={"ep": badged},
        )
        msg = ep.recv(timeout=10.0)
        sender.wait(timeout=10.0)
        assert (msg.data, msg.badge, msg.sender.pid) == (b"hi", 7, sender.pid)


def test_revoking_an_ancestor_reaches_past_a_closed_middle_capability(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        ep = k.endpoint()
        middle = ep.copy()
        leaf = middle.copy()
        middle.close()
        assert ep.info().derived == 1  # leaf moved up under ep
        ep.revoke()
        with pytest.raises(kernel.InvalidCapabilityError, match="was revoked"):
            leaf.info()


def test_info_reports_what_a_person_debugging_wants(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        n = k.notification()
        c = n.copy(rights=Rights.SIGNAL)
        info, parent = c.info(), n.info()
        assert info.kind == "notification"
        assert info.rights == Rights.SIGNAL
        assert info.object_id == parent.object_id
        assert (parent.object_caps, parent.derived, info.parent_slot) == (2, 1, n.slot)
        assert parent.parent_slot is None


async def test_the_asyncio_face_derives_and_revokes_too(kernel_daemon):
    async with kernel.connect_async(autostart=False) as k:
        ep = await k.endpoint()
        ro = await ep.mint(rights=Rights.SEND | Rights.COPY, badge=5)
        assert (await ro.info()).badge == 5
        with pytest.raises(PermissionError):
            await ro.recv(timeout=0)
        assert await ep.revoke() == 1
        with pytest.raises(kernel.InvalidCapabilityError):
            await ro.info()


async def test_a_receive_waiting_through_a_revoked_capability_takes_no_message(kernel_daemon):
    # Regression: a receive already waiting went on after its capability was revoked,
    # so revoked authority could still take a message.
    async with kernel.connect_async(autostart=False) as k:
        ep = await k.endpoint()
        doomed = await ep.copy()
        waiting = asyncio.ensure_future(doomed.recv(timeout=5.0))
        await asyncio.sleep(0.1)
        assert await ep.revoke() == 1
        with pytest.raises(kernel.WouldBlock):  # the only receiver has no authority left
            await ep.send_nowait(b"for nobody")
        with pytest.raises(kernel.InvalidCapabilityError, match="waited through was revoked"):
            await waiting


async def test_a_wait_on_a_closed_notification_capability_takes_no_signal(kernel_daemon):
    async with kernel.connect_async(autostart=False) as k:
        n = await k.notification()
        other = await n.copy()
        waiting = asyncio.ensure_future(other.wait(timeout=5.0))
        await asyncio.sleep(0.1)
        await other.close()
        await n.signal(1)
        with pytest.raises(kernel.InvalidCapabilityError, match="waited through"):
            await waiting
        assert await n.poll() == 1  # the bits stayed for a holder that can take them


async def test_revoking_fails_waiting_operations_at_once_not_at_their_timeout(kernel_daemon):
    """A receive, a queued send and a message carrying a capability, all waiting through
    or with capabilities that get revoked, fail as the revocation happens: nobody has
    to come along (or the timeout to pass) for the caller to learn it."""
    async with kernel.connect_async(autostart=False) as k:
        a, b, c, n = (
            await k.endpoint(),
            await k.endpoint(),
            await k.endpoint(),
            await k.notification(),
        )
        rx, tx, carried = await a.copy(), await b.copy(), await n.copy()
        loop = asyncio.get_running_loop()
        recv = asyncio.ensure_future(rx.recv(timeout=30.0))  # nobody sends on a
        queued = asyncio.ensure_future(tx.send(b"y", timeout=30.0))  # nobody receives on b
        send = asyncio.ensure_future(c.send(b"x", caps=[carried], timeout=30.0))  # nor on c
        await asyncio.sleep(0.1)  # all three wait in the kernel (ordering only; not timed)
        t0 = loop.time()
        assert (await a.revoke(), await b.revoke(), await n.revoke()) == (1, 1, 1)
        for fut in (recv, queued):
            with pytest.raises(kernel.InvalidCapabilityError, match="waited through was revoked"):
                await fut
        with pytest.raises(kernel.InvalidCapabilityError, match="carried was revoked"):
            await send
        assert loop.time() - t0 < 5.0  # at once, not at the 30 s timeouts


def test_closing_a_capability_fails_the_threads_waiting_through_it(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        ep = k.endpoint()
        rx = ep.copy()
        errors: list[BaseException] = []

        def receive() -> None:
            try:
                rx.recv(timeout=30.0)
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        t = threading.Thread(target=receive)
        t.start()
        time.sleep(0.1)  # the receive is in the kernel by then (ordering only; not timed)
        rx.close()
        t.join(5.0)
        assert not t.is_alive(), "the receive still waits after its capability was closed"
        assert isinstance(errors[0], kernel.InvalidCapabilityError)
        assert "waited through was closed" in str(errors[0])


# ------------------------------------------------------------------ dropped, not closed

CAP_TABLE_LIMIT = 4096  # capabilities/_table.pyx DEFAULT_LIMIT


def _settles(probe, want: int) -> int:
    """`probe()` until it returns `want` (a finalizer's close is not waited for)."""
    deadline = time.monotonic() + 5.0
    while (got := probe()) != want and time.monotonic() < deadline:
        time.sleep(0.01)
    return got


def test_a_capability_dropped_unclosed_frees_its_slot(kernel_daemon):
    """As a file does: a loop that looks up or copies per request and forgets to
    close stays within the table, and what is closed or moved is not closed twice."""
    with kernel.connect(autostart=False) as k:
        ep = k.endpoint()
        for _ in range(CAP_TABLE_LIMIT + 100):  # more than the table holds
            ep.copy(Rights.SEND)
        assert _settles(lambda: ep.info().derived, 0) == 0
        kept, closed, moved = ep.copy(), ep.copy(), ep.mint(badge=5)
        closed.close()
        box = k.endpoint()
        sender = threading.Thread(
            target=box.send, args=(b"",), kwargs={"caps": [moved], "timeout": 10}
        )
        sender.start()
        got = box.recv(timeout=10)
        sender.join(10)
        arrived = got.caps[0]  # the mint, now in a new slot of this process
        assert not moved._owned  # it went away: dropping it asks the kernel nothing
        del closed, moved  # closed, and moved away: their stale numbers touch nothing
        time.sleep(0.1)
        assert ep.info().derived == 2  # kept and arrived
        assert arrived.info().badge == 5
        del arrived, got
        assert _settles(lambda: ep.info().derived, 1) == 1
        assert kept.info().object_id == ep.info().object_id
        names = k.names.endpoint  # the name server's slot is named here, not owned
        del names
        k._names = None  # a new stub for the same slot: the old one is dropped
        assert isinstance(k.names.list(), list)


def test_a_message_dropped_unread_frees_the_capabilities_it_carried(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        a, b, box = k.endpoint(), k.endpoint(), k.endpoint()

        def derived() -> int:
            return a.info().derived + b.info().derived

        for look in (False, True):
            sender = threading.Thread(
                target=lambda: box.send(b"", caps=[a.as_copy(), b.as_mint(badge=1)])
            )
            sender.start()
            msg = box.recv(timeout=10)
            sender.join(10)
            assert derived() == 2
            if look:
                assert [c.info().badge for c in msg.caps] == [0, 1]
            del msg
            assert _settles(derived, 0) == 0


async def test_an_asyncio_capability_dropped_unclosed_frees_its_slot(kernel_daemon):
    async with kernel.connect_async(autostart=False) as k:
        ep = await k.endpoint()
        for _ in range(CAP_TABLE_LIMIT + 100):
            await ep.copy(Rights.SEND)
        deadline = time.monotonic() + 5.0
        while (await ep.info()).derived and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)  # a finalizer's close is not waited for
        assert (await ep.info()).derived == 0
        kept = await ep.mint(badge=2)
        closed = await ep.copy()
        await closed.close()
        del closed
        assert (await ep.info()).derived == 1
        assert (await kept.info()).badge == 2


def test_a_capability_dropped_while_its_connection_submits_is_closed_with_the_next_submit(
    kernel_daemon,
):
    """A finalizer never waits for the submit lock (its thread may hold it): the
    close waits for the next submit, which sends it first."""
    with kernel.connect(autostart=False) as k:
        ep = k.endpoint()
        child = ep.copy()
        with k._conn._submit_lock:  # as if this thread were inside a submit
            del child
        assert k._conn._deferred  # not lost: waiting for the next submit
        assert _settles(lambda: ep.info().derived, 0) == 0
        assert not k._conn._deferred


def test_a_finalizers_close_waits_while_the_submission_ring_is_full(kernel_daemon):
    """With the kernel stopped, the ring fills: a finalizer's close waits in the
    connection for room (the next submit sends it); a caller that may block is
    told it was not sent, so it can wait for a close's answer instead."""
    with kernel.connect(autostart=False) as k:
        ep = k.endpoint()
        child = ep.copy()
        conn = k._conn
        os.kill(kernel_daemon.pid, signal.SIGSTOP)
        try:
            fillers = []
            while conn.sq.push(Op.CAP_INFO, 10**9 + len(fillers), 0, 0, 0, b"", ()):
                fillers.append(None)  # refused at once once the kernel runs: slot 0
            assert not conn.submit_unwaited(Op.CAP_INFO, block=True)
            del child
            assert len(conn._deferred) == 1
        finally:
            os.kill(kernel_daemon.pid, signal.SIGCONT)
        assert _settles(lambda: ep.info().derived, 0) == 0
        assert not conn._deferred
