"""The kernel restarts a name server that dies; its successor serves the same entries
(kept in the kernel: services/names/store.py), and nothing else is lost."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest
from peerlib import name_server_pid, restart_name_server, wait_for

import kernel

pytestmark = pytest.mark.integration


@contextlib.contextmanager
def child_that(k: kernel.Kernel, statement: str) -> Iterator[kernel.Process]:
    """A child that runs `statement` on its own connection (`k`), says so, and stays
    until it is killed."""
    code = (
        "import sys, kernel\n"
        "with kernel.connect(autostart=False) as k:\n"
        f"    {statement}\n"
        "    print('done', flush=True)\n"
        "    sys.stdin.readline()\n"
    )
    child = k.spawn(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.popen.stdout is not None
        assert child.popen.stdout.readline().strip() == "done"
        yield child
    finally:
        child.kill()
        child.wait(timeout=10)
        for pipe in (child.popen.stdin, child.popen.stdout):
            if pipe is not None:
                pipe.close()


def recv_one(ep: kernel.EndpointCap, send) -> kernel.Message:
    got = []
    t = threading.Thread(target=lambda: got.append(ep.recv(timeout=5.0)))
    t.start()
    send()
    t.join(5.0)
    return got[0]


def test_a_killed_name_server_is_restarted_and_serves_its_entries_again(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        ep = k.endpoint()
        k.names.register("before.crash", ep, mode=0o640)
        [entry] = k.names.list()
        before = k.names.lookup("before.crash")
        restart_name_server(kernel_daemon)
        # Requests wait in the endpoint's queue until the new name server receives them.
        after = k.names.lookup("before.crash")
        # The same owner, mode, rights, pid and registration time; `served` counts anew.
        assert [e._replace(served=0) for e in k.names.list()] == [entry]
        msgs = [recv_one(ep, lambda c=c: c.send(b"hi", timeout=5.0)) for c in (before, after)]
        assert [m.data for m in msgs] == [b"hi", b"hi"]
        assert 0 != msgs[0].badge != msgs[1].badge != 0  # badges never repeat
        k.names.register("after.crash", ep)
        assert [e.name for e in k.names.list()] == ["after.crash", "before.crash"]
    assert "restored 1 entries and 0 notifies" in kernel_daemon.log()


def test_revoking_after_a_restart_reaches_what_lookup_handed_out_before_it(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        ep = k.endpoint()
        k.names.register("svc", ep)
        before = k.names.lookup("svc")
        restart_name_server(kernel_daemon)
        after = k.names.lookup("svc")
        k.names.unregister("svc", revoke=True)
        for cap in (before, after):
            with pytest.raises(kernel.InvalidCapabilityError):
                cap.send(b"x", timeout=1.0)
        assert ep.info().kind == "endpoint"  # the registrant's own stays
        with pytest.raises(kernel.NotFoundError):
            k.names.lookup("svc")


def test_a_registrant_that_ends_with_the_name_server_loses_its_entries(kernel_daemon):
    """Its exit notice reaches the successor, or the successor finds it gone."""
    with (
        kernel.connect(autostart=False) as k,
        child_that(k, "k.names.register('gone', k.endpoint())") as child,
    ):
        handed_out = k.names.lookup("gone")
        child.kill()
        restart_name_server(kernel_daemon)
        child.wait(timeout=10)
        k.names.register("probe", k.endpoint())  # a round trip after the restore
        wait_for(lambda: [e.name for e in k.names.list()] == ["probe"])
        with pytest.raises(kernel.InvalidCapabilityError):
            handed_out.send(b"x", timeout=1.0)


def test_a_registered_queue_is_not_kept_across_a_restart(kernel_daemon):
    """A queue cannot carry a queue capability (store.py): it stays in memory only."""
    with kernel.connect(autostart=False) as k:
        k.names.register("q", k.queue(4))
        k.names.register("ep", k.endpoint())
        restart_name_server(kernel_daemon)
        assert [e.name for e in k.names.list()] == ["ep"]


def test_the_kernel_gives_up_on_a_name_server_that_keeps_dying(kernel_daemon):
    def started() -> list[int]:
        log = kernel_daemon.log()
        return [int(p) for p in re.findall(r"name server started [(]pid ([0-9]+)[)]", log)]

    def progressed(count: int) -> bool:
        return len(started()) > count or "giving up" in kernel_daemon.log()

    killed: set[int] = set()
    with kernel.connect(autostart=False) as k:
        while "giving up" not in kernel_daemon.log():
            pid = wait_for(lambda: [p for p in started() if p not in killed])[0]
            os.kill(pid, signal.SIGKILL)  # each one the kernel started: ours, transitively
            killed.add(pid)
            wait_for(lambda count=len(killed): progressed(count))  # noqa: B008
            assert len(killed) <= 6, "the kernel kept restarting its name server"
        assert len(killed) == 6  # the first start and NAMES_RESTARTS = 5 restarts
        with pytest.raises(kernel.CallTimeoutError):  # nobody serves names now: a clear timeout
            k.names.endpoint.call(b"", timeout=0.2)
        assert k.endpoint().info().kind == "endpoint"  # everything else still works


def test_a_monitor_from_before_a_restart_does_not_drop_a_later_registrant(kernel_daemon):
    """The previous name server's exit monitors stay with the processes it watched and
    fire into its successor, which drops the entries it restored for them; badges never
    repeat, so they drop nothing by mistake."""
    with (
        kernel.connect(autostart=False) as k,
        child_that(k, "k.names.register('early', k.endpoint())") as early,
    ):
        os.kill(name_server_pid(kernel_daemon.pid), signal.SIGKILL)
        wait_for(lambda: "restarting it" in kernel_daemon.log())
        k.names.register("late", k.endpoint())  # the new name server monitors us
        early.kill()  # its monitor, set by the old name server, fires now
        early.wait(timeout=10)
        k.names.register("probe", k.endpoint())  # a round trip after that notice
        assert [e.name for e in k.names.list()] == ["late", "probe"]


def test_a_starting_name_server_drops_what_no_process_is_left_to_serve(kernel_daemon):
    """An entry whose registrant ended unheard (its exit notice went with the instance
    that took it), and one whose capability was revoked while it was stored, are not
    served again. The name server here is this process's own instance, on its own
    endpoint and store."""
    from services.names.server import NameServer
    from services.names.store import Kept, _encoder

    with kernel.connect(autostart=False) as k:
        me = next(p.conn for p in k.status().processes if p.pid == os.getpid())
        store, served, revoked = k.queue(8), k.endpoint(), k.endpoint()

        def keep(name: str, conn: int, target: kernel.EndpointCap, serial: int) -> None:
            kept = Kept(name, "endpoint", 0, 0, 0o600, int(kernel.Rights.SEND), 1, conn,
                        serial, 1)  # fmt: skip
            store.send(_encoder.encode(kept), mtype=serial, caps=[target.as_copy()])

        keep("alive", me, served, 1)
        keep("ghost", 1 << 40, served, 2)  # no connection has that id
        keep("revoked", me, revoked, 3)
        revoked.revoke()  # deletes the stored copy: the message keeps a hole
        ns = NameServer(k, k.endpoint(), store)
        ns.restore()
        assert list(ns.entries) == ["alive"]
        assert len(list(ns.store.take_all())) == 1  # "alive", kept again


def hold_a_call(k: kernel.Kernel) -> None:
    """Wait until the name server holds a call of ours (a reply capability)."""

    def held() -> bool:
        return any(p.name_server and p.caps.get("reply capability") for p in k.status().processes)

    wait_for(held)


def test_a_lookup_waiting_in_a_name_server_that_dies_is_answered_by_its_successor(
    kernel_daemon,
):
    """Reads (lookup, watch, list) go out again, within their timeout, when the name
    server dies with them in hand (kernel/client/_names.py RESENDS)."""
    with kernel.connect(autostart=False) as k:
        got: list[object] = []

        def look() -> None:
            try:
                got.append(k.names.lookup("later", timeout=10.0))
            except Exception as e:  # the test's failure, shown by the assert below
                got.append(e)

        t = threading.Thread(target=look)
        t.start()
        hold_a_call(k)
        restart_name_server(kernel_daemon)
        k.names.register("later", k.endpoint())
        t.join(10.0)
        assert len(got) == 1
        assert isinstance(got[0], kernel.EndpointCap), got


async def test_an_async_watch_waiting_in_a_name_server_that_dies_is_answered_too(
    kernel_daemon,
):
    async with kernel.connect_async(autostart=False) as k:
        watch = asyncio.ensure_future(k.names.watch("later.async", timeout=10.0))
        with kernel.connect(autostart=False) as observer:
            await asyncio.to_thread(hold_a_call, observer)
            await asyncio.to_thread(restart_name_server, kernel_daemon)
        await k.names.register("later.async", await k.endpoint())
        entry = await asyncio.wait_for(watch, 10.0)
        assert entry is not None
        assert entry.name == "later.async"


def test_a_notify_armed_before_a_restart_fires_after_it(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        n = k.notification()
        k.names.notify("appears", n, 0b100)
        k.names.notify("appears", n, 0b001, present=False)  # already so: fires at once
        assert n.wait(timeout=5.0) == 0b001
        restart_name_server(kernel_daemon)
        k.names.register("appears", k.endpoint())
        assert n.wait(timeout=5.0) == 0b100
    assert "restored 0 entries and 1 notifies" in kernel_daemon.log()


def stored_messages(k: kernel.Kernel) -> int:
    """How many messages the name server's store holds (status: its one queue)."""
    status = k.status()
    ns = next(p.conn for p in status.processes if p.name_server)
    [store] = [o for o in status.objects if o.kind == "queue" and ns in o.holders]
    return store.state["messages"]


def test_a_notify_restored_after_a_restart_ends_with_its_requester(kernel_daemon):
    with (
        kernel.connect(autostart=False) as k,
        child_that(k, "k.names.notify('never', k.notification(), 1)") as child,
    ):
        assert stored_messages(k) == 1
        restart_name_server(kernel_daemon)
        k.names.list()  # the successor has restored it
        assert stored_messages(k) == 1
        child.kill()  # its exit notice, set by the earlier instance, drops the notify
        child.wait(timeout=10)
        wait_for(lambda: stored_messages(k) == 0)
