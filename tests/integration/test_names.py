"""The name server (issue #4) across real processes, in both faces.

Peers are peers/names_peer.py (a JSON-driven client, see peerlib.NamesPeer) and the
issue's two-process example (peers/names_demo_a.py, names_demo_b.py) as written.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from peerlib import PEERS, NamesPeer

import kernel
from capabilities import Rights
from kernel import Status
from kernel.errors import AlreadyExistsError, NotFoundError
from services.names import protocol as p

pytestmark = pytest.mark.integration

HANDOUT = Rights.SEND | Rights.GRANT | Rights.COPY | Rights.TRANSFER


def wait_for(cond, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout} s"
        time.sleep(0.005)


@contextlib.contextmanager
def serving(ep: kernel.EndpointCap) -> Iterator[list[int]]:
    """Answer calls on `ep` in a thread with b"<data>|<badge>|<pid>"; yields the badges seen.
    Stops (bounded) on the way out: the thread's recv has a short timeout."""
    seen: list[int] = []
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            try:
                msg = ep.recv(timeout=0.05)
            except kernel.CallTimeoutError:
                continue
            seen.append(msg.badge)
            msg.reply(b"%s|%d|%d" % (msg.data, msg.badge, os.getpid()))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        yield seen
    finally:
        stop.set()
        t.join(5)
        assert not t.is_alive()


# (An async test that serves in this process runs peer commands in a thread, so
# that the event loop keeps serving: `await asyncio.to_thread(peer.ok, ...)`.)


def parse(reply: str) -> tuple[str, int, int]:
    data, badge, pid = reply.rsplit("|", 2)
    return data, int(badge), int(pid)


# ------------------------------------------------------------------ the issue's example


@pytest.mark.parametrize("order", ["a_first", "b_first"])
def test_the_issues_two_process_example_runs_as_written(kernel_daemon, order):
    a_argv = [sys.executable, str(PEERS / "names_demo_a.py")]
    b_argv = [sys.executable, str(PEERS / "names_demo_b.py")]
    with kernel.connect(autostart=False) as k:
        procs: list[subprocess.Popen[bytes]] = []
        try:
            if order == "a_first":
                procs.append(a := subprocess.Popen(a_argv))
                k.names.watch("demo.echo", timeout=10.0)  # A registered
                procs.append(b := subprocess.Popen(b_argv))
            else:
                procs.append(b := subprocess.Popen(b_argv))
                wait_for(lambda: f"pid {b.pid} uid" in kernel_daemon.log(), "B connecting")
                assert k.names.list("demo.") == []  # B waits in its lookup
                procs.append(a := subprocess.Popen(a_argv))
            assert b.wait(timeout=20) == 0
            assert a.poll() is None  # A serves on
        finally:
            for proc in procs:
                proc.kill()
                proc.wait(timeout=10)


# ------------------------------------------------------------------ the five requests


def test_register_lookup_list_watch_unregister_across_processes_blocking(kernel_daemon):
    with kernel.connect(autostart=False) as k, NamesPeer() as peer:
        entry = peer.ok("register", name="svc.sync", mode=0o640)["entry"]
        assert (entry["pid"], entry["mode"], entry["uid"]) == (peer.pid, 0o640, os.getuid())
        assert entry["rights"] == HANDOUT

        watched = k.names.watch("svc.sync", timeout=5)
        assert watched is not None
        assert watched.pid == peer.pid
        cap = k.names.lookup("svc.sync")
        data, badge, pid = parse(cap.call(b"hello", timeout=5).data.decode())
        assert (data, pid) == ("hello", peer.pid)
        assert badge == cap.info().badge != 0

        listed = {e.name: e for e in k.names.list("svc.")}
        assert set(listed) == {"svc.sync"}
        assert listed["svc.sync"].served == 1
        assert listed["svc.sync"].kind == "endpoint"
        assert k.names.list("nope.") == []

        # the registrant unregisters; the test process sees it gone
        peer.ok("unregister", name="svc.sync")
        assert k.names.watch("svc.sync", present=False, timeout=5) is None
        with pytest.raises(NotFoundError, match="no entry named 'svc.sync'"):
            k.names.lookup("svc.sync", timeout=0)
        with pytest.raises(NotFoundError):
            k.names.unregister("svc.sync")
        # revoke=False (the default): the capability handed out keeps working
        assert parse(cap.call(b"still", timeout=5).data.decode())[0] == "still"
        cap.close()


async def test_register_lookup_list_watch_unregister_across_processes_async(kernel_daemon):
    async with kernel.connect_async(autostart=False) as k:
        ep = await k.endpoint()
        seen: list[int] = []

        async def serve() -> None:
            while True:
                msg = await ep.recv()
                seen.append(msg.badge)
                await msg.reply(b"%s|%d|%d" % (msg.data, msg.badge, os.getpid()))

        server = asyncio.get_running_loop().create_task(serve())
        try:
            entry = await k.names.register("svc.async", ep, mode=0o644)
            assert (entry.pid, entry.mode, entry.rights) == (os.getpid(), 0o644, HANDOUT)
            with NamesPeer() as sync_peer, NamesPeer("--async") as async_peer:
                badges = []
                for peer in (sync_peer, async_peer):
                    got = await asyncio.to_thread(peer.ok, "lookup", name="svc.async")
                    assert got["rights"] == HANDOUT
                    reply = (await asyncio.to_thread(peer.ok, "call", key="svc.async", data="x"))[
                        "data"
                    ]
                    data, badge, pid = parse(reply)
                    assert (data, pid, badge) == ("x", os.getpid(), got["badge"])
                    badges.append(badge)
                    assert (await asyncio.to_thread(peer.ok, "list", prefix="svc."))["names"] == [
                        "svc.async"
                    ]
                assert seen == badges
                assert len(set(badges)) == 2

                # a name an async-face peer registers, looked up by this (async) process
                async_peer.ok("register", name="svc.async.peer", mode=0o666)
                watched = await k.names.watch("svc.async.peer", timeout=5)
                assert watched is not None
                assert watched.pid == async_peer.pid
                cap = await k.names.lookup("svc.async.peer", timeout=5)
                reply = (await cap.call(b"y", timeout=5)).data.decode()
                assert parse(reply)[::2] == ("y", async_peer.pid)
                names = [e.name for e in await k.names.list("svc.")]
                assert names == ["svc.async", "svc.async.peer"]

                # watch(present=False) waits for the peer's unregister
                gone = asyncio.get_running_loop().create_task(
                    k.names.watch("svc.async.peer", present=False, timeout=5)
                )
                await queued(k)
                assert not gone.done()
                async_peer.ok("unregister", name="svc.async.peer")
                assert await asyncio.wait_for(gone, 5) is None
                with pytest.raises(NotFoundError):
                    await k.names.lookup("svc.async.peer")
                await cap.close()
            await k.names.unregister("svc.async")
            assert await k.names.list() == []
        finally:
            server.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await server


def test_a_looked_up_capability_cannot_receive_and_has_the_entrys_rights(kernel_daemon):
    with kernel.connect(autostart=False) as k, NamesPeer() as peer:
        ep = k.endpoint()
        k.names.register("svc.rights", ep, mode=0o666)
        k.names.register("svc.sendonly", ep, mode=0o666, rights=Rights.SEND)
        got = peer.ok("lookup", name="svc.rights")
        assert got["rights"] == HANDOUT
        denied = peer("recv", key="svc.rights")
        assert denied["type"] == "AccessDeniedError", denied
        assert denied["perm"], denied
        assert "RECEIVE" in denied["msg"] or "receive" in denied["msg"], denied
        assert peer.ok("lookup", name="svc.sendonly")["rights"] == Rights.SEND
        # what the registrant registered is never what lookup hands out
        mine = k.names.lookup("svc.rights")
        assert mine.info().object_id == ep.info().object_id
        assert mine.slot != ep.slot
        with pytest.raises(PermissionError):
            mine.recv(timeout=0)
        with pytest.raises(kernel.AccessDeniedError):  # no MANAGE: cannot revoke others
            mine.revoke()
        mine.close()


def test_register_refuses_rights_the_capability_lacks(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        ep = k.endpoint()
        weak = ep.copy(Rights.SEND | Rights.COPY | Rights.TRANSFER)
        with pytest.raises(kernel.AccessDeniedError, match="cannot give"):
            k.names.register("svc.weak", weak)  # default hand-out needs GRANT too
        k.names.register("svc.weak", weak, rights=Rights.SEND)
        assert k.names.lookup("svc.weak").info().rights == Rights.SEND


# ------------------------------------------------------------------ waiting lookups


def test_lookup_waits_for_a_later_registration_and_returns_soon_after_it(kernel_daemon):
    with kernel.connect(autostart=False) as k, NamesPeer() as peer:
        out: dict[str, object] = {}

        def look() -> None:
            try:
                out["cap"] = k.names.lookup("svc.late", timeout=10.0)
            except BaseException as e:
                out["error"] = e
            out["at"] = time.monotonic_ns()

        t = threading.Thread(target=look, daemon=True)
        t.start()
        time.sleep(0.3)  # ordering only (the async test below orders it exactly)
        assert t.is_alive()
        started = time.monotonic_ns()
        peer.ok("register", name="svc.late", mode=0o666)
        t.join(10)
        assert "error" not in out, out
        entry = k.names.list("svc.late")[0]
        assert entry.registered_ns >= started  # it did not return before the register
        assert (out["at"] - entry.registered_ns) / 1e9 < 0.2  # type: ignore[operator]
        cap = out["cap"]
        assert parse(cap.call(b"late", timeout=5).data.decode())[::2] == ("late", peer.pid)  # type: ignore[attr-defined]
        cap.close()  # type: ignore[attr-defined]


async def queued(k: kernel.AsyncKernel) -> None:
    """Let tasks just created submit their requests, then make one more round trip to
    the name server: it takes requests in order, so theirs are waiting there now."""
    await asyncio.sleep(0)
    await k.names.list()


def test_lookup_timeout_raises_call_timeout_and_zero_raises_not_found(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        t0 = time.monotonic()
        with pytest.raises(kernel.CallTimeoutError, match="before the deadline") as e:
            k.names.lookup("svc.never", timeout=0.3)
        took = time.monotonic() - t0
        assert isinstance(e.value, TimeoutError)
        assert 0.29 <= took < 2.0, took
        t0 = time.monotonic()
        with pytest.raises(NotFoundError, match="no entry named 'svc.never'"):
            k.names.lookup("svc.never", timeout=0)
        assert time.monotonic() - t0 < 1.0
        with pytest.raises(kernel.CallTimeoutError):
            k.names.watch("svc.never", timeout=0.1)
        with pytest.raises(kernel.CallTimeoutError, match="is not registered"):
            k.names.watch("svc.never", timeout=0)
        assert k.names.watch("svc.never", present=False, timeout=0) is None


async def test_async_lookup_waits_and_times_out(kernel_daemon):
    async with kernel.connect_async(autostart=False) as k:
        with pytest.raises(kernel.CallTimeoutError):
            await k.names.lookup("svc.never", timeout=0.2)
        with pytest.raises(NotFoundError):
            await k.names.lookup("svc.never", timeout=0)
        waiting = asyncio.get_running_loop().create_task(k.names.lookup("svc.soon", timeout=10))
        await queued(k)
        assert not waiting.done()
        with NamesPeer() as peer:
            peer.ok("register", name="svc.soon", mode=0o666)
            cap = await asyncio.wait_for(waiting, 5)
            reply = (await cap.call(b"a", timeout=5)).data.decode()
            assert parse(reply)[::2] == ("a", peer.pid)
            await cap.close()


# ------------------------------------------------------------------ badges


def test_badges_are_distinct_per_client_and_per_lookup_and_the_service_sees_them(
    kernel_daemon,
):
    with kernel.connect(autostart=False) as k, NamesPeer() as a, NamesPeer() as b:
        ep = k.endpoint()
        k.names.register("svc.badges", ep, mode=0o666)
        with serving(ep) as seen:
            expected = []
            for peer in (a, b):
                for key in ("first", "second"):
                    badge = peer.ok("lookup", name="svc.badges", key=key)["badge"]
                    reply = peer.ok("call", key=key, data=key)["data"]
                    assert parse(reply)[:2] == (key, badge)
                    expected.append(badge)
            mine = [k.names.lookup("svc.badges") for _ in range(2)]
            for cap in mine:
                expected.append(cap.info().badge)
                cap.call(b"me", timeout=5)
        assert seen == expected
        assert len(set(expected)) == 6
        assert 0 not in expected
        assert k.names.list("svc.badges")[0].served == 6
        for cap in mine:
            cap.close()


# ------------------------------------------------------------------ registrant death


async def test_registrant_death_frees_the_name_within_100ms_and_revokes_handouts(
    kernel_daemon,
):
    async with kernel.connect_async(autostart=False) as k:
        with NamesPeer() as first:
            first.ok("register", name="svc.mortal", mode=0o666)
            cap = await k.names.lookup("svc.mortal")
            assert parse((await cap.call(b"x", timeout=5)).data.decode())[2] == first.pid
            gone = asyncio.get_running_loop().create_task(
                k.names.watch("svc.mortal", present=False, timeout=5)
            )
            await queued(k)
            assert not gone.done()
            killed = time.monotonic()
            os.kill(first.pid, signal.SIGKILL)
            assert await asyncio.wait_for(gone, 5) is None
            freed_after = time.monotonic() - killed
        assert freed_after < 0.1, f"the name was freed {freed_after * 1000:.1f} ms after the kill"
        # what lookup handed out for it is revoked
        with pytest.raises(kernel.InvalidCapabilityError):
            await cap.info()
        # lookups wait for a new registrant and see it
        waiting = asyncio.get_running_loop().create_task(k.names.lookup("svc.mortal", timeout=10))
        await queued(k)
        assert not waiting.done()
        with NamesPeer() as second:
            second.ok("register", name="svc.mortal", mode=0o666)
            new = await asyncio.wait_for(waiting, 5)
            assert parse((await new.call(b"y", timeout=5)).data.decode())[2] == second.pid
            await new.close()


def test_a_later_process_takes_the_name_of_a_killed_registrant_within_100ms(kernel_daemon):
    with kernel.connect(autostart=False) as k, NamesPeer() as first:
        first.ok("register", name="svc.taken", mode=0o600)
        handed = k.names.lookup("svc.taken")
        ep = k.endpoint()
        with pytest.raises(AlreadyExistsError):
            k.names.register("svc.taken", ep)
        killed = time.monotonic()
        os.kill(first.pid, signal.SIGKILL)
        deadline = killed + 5.0
        while True:
            try:
                entry = k.names.register("svc.taken", ep)
                break
            except AlreadyExistsError:
                assert time.monotonic() < deadline, "the name was never freed"
        took = time.monotonic() - killed
        assert took < 0.1, f"re-registered {took * 1000:.1f} ms after the kill"
        assert entry.pid == os.getpid()
        with pytest.raises(kernel.InvalidCapabilityError):
            handed.info()
        first.close()
        with serving(ep):
            cap = k.names.lookup("svc.taken")
            assert parse(cap.call(b"z", timeout=5).data.decode())[2] == os.getpid()
        cap.close()


# ------------------------------------------------------------------ unregister, replace


def test_unregister_revoke_deletes_handouts_in_other_processes_and_plain_keeps_them(
    kernel_daemon,
):
    with NamesPeer() as owner, NamesPeer() as client:
        owner.ok("register", name="svc.keep", mode=0o666)
        owner.ok("register", name="svc.revoke", mode=0o666)
        for name in ("svc.keep", "svc.revoke"):
            client.ok("lookup", name=name)
            client.ok("call", key=name, data="before")
        owner.ok("unregister", name="svc.keep")
        owner.ok("unregister", name="svc.revoke", revoke=True)
        assert parse(client.ok("call", key="svc.keep", data="after")["data"])[0] == "after"
        dead = client("call", key="svc.revoke", data="after")
        assert dead["type"] == "InvalidCapabilityError", dead
        assert client.ok("list")["names"] == []


def test_replace_needs_replace_true_and_routes_new_lookups(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        ep1, ep2 = k.endpoint(), k.endpoint()
        k.names.register("svc.swap", ep1, mode=0o666)
        old = k.names.lookup("svc.swap")
        with pytest.raises(AlreadyExistsError, match="replace=True") as e:
            k.names.register("svc.swap", ep2)
        assert isinstance(e.value, FileExistsError)
        gone: list[object] = []

        def watch() -> None:
            try:
                gone.append(k.names.watch("svc.swap", present=False, timeout=0.5))
            except kernel.CallTimeoutError as e:
                gone.append(e)

        t = threading.Thread(target=watch, daemon=True)
        t.start()
        k.names.register("svc.swap", ep2, replace=True, mode=0o644)
        entry = k.names.list("svc.swap")[0]
        assert entry.mode == 0o644
        new = k.names.lookup("svc.swap")
        assert new.info().object_id == ep2.info().object_id
        assert old.info().object_id == ep1.info().object_id  # replacing does not revoke
        t.join(5)
        assert len(gone) == 1
        assert isinstance(gone[0], kernel.CallTimeoutError)  # a replaced name is never absent


# ------------------------------------------------------------------ load


def test_50_concurrent_lookups_while_registrations_churn(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        eps = [k.endpoint(), k.endpoint()]
        k.names.register("svc.churn", eps[0], mode=0o666)
        stop = threading.Event()
        churned = [0]

        def churn() -> None:
            i = 0
            while not stop.is_set() and i < 5000:
                i += 1
                if i % 3 == 0:
                    k.names.unregister("svc.churn")
                    k.names.register("svc.churn", eps[i % 2], mode=0o666)
                else:
                    k.names.register("svc.churn", eps[i % 2], mode=0o666, replace=True)
            churned[0] = i

        results: list[tuple[int, str]] = []
        errors: list[BaseException] = []

        def look(i: int) -> None:
            try:
                cap = k.names.lookup("svc.churn", timeout=10)
                badge = cap.info().badge
                reply = cap.call(b"n%d" % i, timeout=10).data.decode()
                data, seen, _ = parse(reply)
                assert (data, seen) == (f"n{i}", badge)
                results.append((badge, data))
                cap.close()
            except BaseException as e:
                errors.append(e)

        churner = threading.Thread(target=churn, daemon=True)
        lookers = [threading.Thread(target=look, args=(i,), daemon=True) for i in range(40)]
        peer_badges = []
        with serving(eps[0]), serving(eps[1]), NamesPeer() as peer:
            t0 = time.monotonic()
            churner.start()
            for t in lookers:
                t.start()
            try:
                for i in range(10):  # ten more from another process, one after another
                    got = peer.ok("lookup", name="svc.churn", key=f"c{i}", timeout=10)
                    reply = peer.ok("call", key=f"c{i}", data=f"p{i}")["data"]
                    assert parse(reply)[:2] == (f"p{i}", got["badge"])
                    peer_badges.append(got["badge"])
            finally:  # threads that use `k` end before it closes
                for t in lookers:
                    t.join(20)
                took = time.monotonic() - t0
                stop.set()
                churner.join(10)
        assert not errors, errors[:3]
        assert len(results) == 40
        badges = [b for b, _ in results] + peer_badges
        assert len(set(badges)) == 50
        assert churned[0] > 10, "registrations did not churn"
        assert took < 20


# ------------------------------------------------------------------ bad requests


def _raw(k: kernel.Kernel, data: bytes, caps=()) -> p.Error:
    msg = k.names.endpoint.call(data, timeout=5, caps=caps)
    resp = p.decode_response(msg.data)
    assert isinstance(resp, p.Error), resp
    assert msg.caps == []
    return resp


def _still_up(k: kernel.Kernel, daemon) -> None:
    ep = k.endpoint()
    k.names.register("svc.alive", ep)
    cap = k.names.lookup("svc.alive")
    assert cap.info().object_id == ep.info().object_id
    k.names.unregister("svc.alive", revoke=True)
    ep.close()
    assert "Traceback" not in daemon.log()


def test_bad_requests_get_clear_errors_and_the_name_server_stays_up(kernel_daemon):
    enc = msgspec.msgpack.encode
    with kernel.connect(autostart=False) as k:
        cases = [
            (enc({"type": "frobnicate", "name": "x"}), "malformed request", "frobnicate"),
            (b"\xc1\xc1\xc1", "malformed request", ""),
            (b"", "malformed request", ""),
            (enc({"type": "lookup", "name": 5}), "malformed request", "$.name"),
            (enc({"type": "lookup", "name": "x", "deadline": "soon"}), "malformed", "deadline"),
            (enc({"type": "register", "name": "x", "mode": "rw"}), "malformed", "mode"),
            (enc({"type": "list", "prefix": None}), "malformed", "prefix"),
            (enc(["lookup", "x"]), "malformed request", ""),
            (p.encode(p.Lookup("")), "1 to 255 bytes, not 0", ""),
            (p.encode(p.Lookup("x" * 256)), "1 to 255 bytes, not 256", ""),
            (p.encode(p.Unregister("é" * 5000)), "1 to 255 bytes, not 10000", ""),
            (p.encode(p.Watch("bad\nname")), "printable", ""),
            (p.encode(p.List("x" * 300)), "prefix", ""),
            (p.encode(p.Register("x")), "register carries one capability, not 0", ""),
        ]
        for data, text, detail in cases:
            err = _raw(k, data)
            assert err.status == Status.INVALID_ARGS, (data[:40], err)
            assert text in err.message, (data[:40], err)
            assert detail in err.message, (data[:40], err)
        _still_up(k, kernel_daemon)

        ep, other = k.endpoint(), k.endpoint()
        # two capabilities
        err = _raw(k, p.encode(p.Register("x")), caps=[ep.as_copy(), other.as_copy()])
        assert (err.status, "not 2" in err.message) == (Status.INVALID_ARGS, True), err
        # a badged capability
        err = _raw(k, p.encode(p.Register("x")), caps=[ep.mint(badge=9)])
        assert err.status == Status.INVALID_ARGS, err
        assert "unbadged" in err.message, err
        # a capability without COPY (moved: a copy would need COPY here)
        err = _raw(k, p.encode(p.Register("x")), caps=[ep.copy(ep.info().rights & ~Rights.COPY)])
        assert err.status == Status.ACCESS_DENIED, err
        assert "COPY" in err.message, err
        # a lookup (and a list) carrying a capability, of a name absent and present
        err = _raw(k, p.encode(p.Lookup("x")), caps=[ep.as_copy()])
        assert err.status == Status.INVALID_ARGS
        assert "carries no capabilities" in err.message
        k.names.register("svc.present", other)
        err = _raw(k, p.encode(p.Lookup("svc.present")), caps=[ep.as_copy()])
        assert err.status == Status.INVALID_ARGS
        assert "carries no capabilities" in err.message
        k.names.unregister("svc.present")
        err = _raw(k, p.encode(p.List()), caps=[ep.as_copy()])
        assert err.status == Status.INVALID_ARGS
        assert "carries no capabilities" in err.message
        # a mode out of range
        err = _raw(k, p.encode(p.Register("x", mode=0o7777)), caps=[ep.as_copy()])
        assert err.status == Status.INVALID_ARGS, err
        assert "mode" in err.message, err
        # a reply capability
        with serving_reply_cap(k) as reply_cap:
            err = _raw(k, p.encode(p.Register("x")), caps=[reply_cap])
        assert err.status == Status.WRONG_TYPE, err
        assert "reply" in err.message, err
        # a plain send, not a call: dropped (nothing to answer), what it carried too
        k.names.endpoint.send(p.encode(p.Register("x")), caps=[ep.as_copy()], timeout=5)
        assert k.names.list() == []
        assert ep.info().object_caps == 1
        _still_up(k, kernel_daemon)

        # the stub says the same things, as exceptions
        with pytest.raises(kernel.InvalidArgumentError, match="unbadged"):
            k.names.register("x", ep.mint(badge=3))
        with pytest.raises(ValueError, match="1 to 255 bytes"):
            k.names.lookup("")
        with pytest.raises(ValueError, match="1 to 255 bytes"):
            k.names.lookup("x" * 10_000)
        with pytest.raises(TypeError):
            k.names.lookup(5)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            k.names.register("x", "not a cap")  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            k.names.register("x", ep, mode=0o1000)
        _still_up(k, kernel_daemon)
        ep.close()
        other.close()


@contextlib.contextmanager
def serving_reply_cap(k: kernel.Kernel) -> Iterator[object]:
    """A reply capability of a call this process makes to itself (from a thread)."""
    ep = k.endpoint()
    outcome: list[BaseException | None] = []

    def call() -> None:
        try:
            ep.call(b"q", timeout=10)
            outcome.append(None)
        except BaseException as e:
            outcome.append(e)

    t = threading.Thread(target=call, daemon=True)
    t.start()
    msg = ep.recv(timeout=10)
    try:
        yield msg.reply_cap
    finally:
        t.join(10)
        ep.close()
    # the name server dropped it unanswered: the call failed, plainly
    assert len(outcome) == 1, outcome
    assert isinstance(outcome[0], kernel.PeerClosedError), outcome


# ------------------------------------------------------------------ --no-names


def test_a_kernel_without_a_name_server_says_so(tmp_path: Path, monkeypatch):
    from conftest import KernelDaemon

    short = Path(os.environ.get("TMPDIR", "/tmp")) / f"mk-nn-{os.getpid()}-{time.monotonic_ns()}"
    short.mkdir(mode=0o700)
    daemon = KernelDaemon(short)
    daemon.start("--no-names")
    try:
        with kernel.connect(daemon.path, autostart=False) as k:
            with pytest.raises(kernel.InvalidArgumentError, match="--no-names"):
                k.names  # noqa: B018
            assert k.endpoint().info().kind == "endpoint"  # the kernel itself works

        async def run() -> None:
            async with kernel.connect_async(daemon.path, autostart=False) as ak:
                with pytest.raises(kernel.IPCError, match="--no-names"):
                    ak.names  # noqa: B018

        asyncio.run(run())
    finally:
        code = daemon.stop()
        log = daemon.log()
        for f in short.iterdir():
            f.unlink()
        short.rmdir()
    assert code == 0, log
    assert "no name server" in log
    assert "name server started" not in log
    assert "kernel exit: 0 live objects, 0 bundles" in log, log
    assert "Traceback" not in log


# ------------------------------------------------------------------ waits of dead callers


def test_waiting_lookups_of_a_dead_process_do_not_use_up_the_name_servers_waits(kernel_daemon):
    from services.names.server import MAX_WAITERS_PER_UID

    waiters = subprocess.Popen(  # as many as this uid may have waiting
        [sys.executable, str(PEERS / "names_waiters.py"), str(MAX_WAITERS_PER_UID)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert waiters.stdout is not None
        assert waiters.stdout.readline().strip() == "waiting"  # bounded: it exits in 60 s
        with kernel.connect(autostart=False) as k:
            with pytest.raises(kernel.ResourceLimitError, match="already"):
                k.names.lookup("svc.mine", timeout=0.1)
            waiters.kill()
            waiters.wait(timeout=10)
            deadline = time.monotonic() + 5
            while True:
                try:
                    k.names.lookup("svc.mine", timeout=0.01)
                except kernel.CallTimeoutError:
                    break  # it waited: the dead process's waits are gone
                except kernel.ResourceLimitError:
                    assert time.monotonic() < deadline, "the dead process's waits never went"
    finally:
        waiters.kill()
        waiters.wait(timeout=10)
        if waiters.stdout is not None:
            waiters.stdout.close()


async def test_cancelled_waiting_lookups_of_a_live_process_give_their_places_back(kernel_daemon):
    """The name server asks the kernel to tell it when a waiting call is given up
    (CALL_MONITOR); a client that cancels its waits, and lives on, frees their places."""
    import asyncio

    from services.names.server import MAX_WAITERS_PER_UID

    async with kernel.connect_async(autostart=False) as k:
        waits = [
            asyncio.ensure_future(k.names.lookup("svc.never", timeout=None))
            for _ in range(MAX_WAITERS_PER_UID)
        ]
        deadline, refusal = time.monotonic() + 30, ""
        while not refusal:  # until all of them wait in the name server: then it refuses more
            assert time.monotonic() < deadline, "the waits never filled the name server"
            try:
                await k.names.lookup("svc.mine", timeout=0.01)
            except kernel.CallTimeoutError:
                continue
            except kernel.ResourceLimitError as e:
                refusal = str(e)
        assert "already" in refusal
        for w in waits:
            w.cancel()
        await asyncio.gather(*waits, return_exceptions=True)
        with pytest.raises(kernel.CallTimeoutError):  # it could wait: the places are free
            await k.names.lookup("svc.mine", timeout=0.05)


def test_an_entry_registered_without_manage_still_goes_whole_when_its_registrant_dies(
    kernel_daemon,
):
    """Revoking the handed-out capabilities needs MANAGE; without it the name server
    still drops the entry and closes its own copy (nothing of it stays behind)."""
    code = (
        "import sys, kernel\n"
        "with kernel.connect(autostart=False) as k:\n"
        "    k.names.register('no.manage', k.inherited['ep'])\n"
        "    print('registered', flush=True)\n"
        "    sys.stdin.readline()\n"
    )
    with kernel.connect(autostart=False) as k:
        ep = k.endpoint()
        no_manage = ep.copy(rights=kernel.Rights.ALL & ~kernel.Rights.MANAGE & ep.info().rights)
        child = k.spawn(
            [sys.executable, "-c", code],
            caps={"ep": no_manage},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert child.popen.stdout.readline().strip() == "registered"
            k.names.lookup("no.manage").close()
            child.kill()
            child.wait(timeout=10)
            k.names.watch("no.manage", present=False, timeout=5.0)
        finally:
            child.kill()
            child.wait(timeout=10)
            child.popen.stdin.close()
            child.popen.stdout.close()
        no_manage.close()
        assert ep.info().object_caps == 1  # only ours: the name server's copy is gone too
