"""kernel.Service across processes: typed calls, error replies, workers, shutdown.

The service runs in its own OS process (peers/service_peer.py), served by threads
("sync": `svc.run`) or asyncio tasks ("async": `await svc.serve`); it is always
ended by its pid. Clients run in this process, in both faces.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from peerlib import PEERS, readme_script, restart_name_server, run_script
from peers.service_peer import Big, Echo, Exit, Fail, Meet, Overlap, Term, Who

import kernel

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
FACES = ["sync", "async"]
SYS_TGKILL = 234  # x86-64: signal one thread of another process


class Running:
    """A service process; `log()` is its stderr so far."""

    def __init__(self, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.proc = proc
        self.log_path = log

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> int:
        """Send `sig` by pid and return the exit code."""
        os.kill(self.proc.pid, sig)
        return self.proc.wait(15)


@contextlib.contextmanager
def service(
    tmp_path: Path,
    name: str,
    face: str,
    workers: int = 1,
    grant: bool = False,
    signals: bool = False,
) -> Iterator[Running]:
    log = tmp_path / f"{name}.log"
    argv = [sys.executable, str(PEERS / "service_peer.py"), name, face, str(workers)]
    with open(log, "wb") as f:
        proc = subprocess.Popen(
            argv + (["grant"] if grant else []) + (["signals"] if signals else []),
            stdout=f,
            stderr=f,
            stdin=subprocess.DEVNULL,
        )
    try:
        yield Running(proc, log)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(15)


@pytest.mark.parametrize("face", FACES)
def test_typed_calls_reach_handlers_with_the_callers_badge_and_credentials(
    kernel_daemon, tmp_path, face
):
    with service(tmp_path, "t.calls", face), kernel.connect(autostart=False) as k:
        a = kernel.ServiceClient.lookup(k, "t.calls", timeout=10.0)
        b = kernel.ServiceClient.lookup(k, "t.calls", timeout=10.0)
        assert a.call(Echo("hi"), timeout=5.0) == "hi"
        badge_a, pid, uid, gid = a.call(Who(), timeout=5.0)
        assert (pid, uid, gid) == (os.getpid(), os.getuid(), os.getgid())
        assert a.call(Who(), timeout=5.0, type=tuple[int, int, int, int])[0] == badge_a
        badge_b = b.call(Who(), timeout=5.0)[0]
        assert 0 != badge_a != badge_b != 0  # one badge per lookup
        a.close()
        b.close()


@pytest.mark.parametrize("face", FACES)
def test_handler_exceptions_are_re_raised_in_the_client(kernel_daemon, tmp_path, face):
    with service(tmp_path, "t.errors", face), kernel.connect(autostart=False) as k:
        svc = kernel.ServiceClient.lookup(k, "t.errors", timeout=10.0)
        with pytest.raises(KeyError) as key:
            svc.call(Fail("key"), timeout=5.0)
        assert key.value.args == ("missing",)
        cause = key.value.__cause__
        assert isinstance(cause, kernel.RemoteError)
        assert "raise ERRORS[req.kind]()" in cause.traceback
        with pytest.raises(ValueError) as value:
            svc.call(Fail("value"), timeout=5.0)
        assert value.value.args == ("bad value", 42)
        with pytest.raises(PermissionError, match="not yours"):
            svc.call(Fail("permission"), timeout=5.0)
        with pytest.raises(kernel.RemoteError) as custom:
            svc.call(Fail("custom"), timeout=5.0)
        assert custom.value.type_name == "__main__.CustomError"
        assert custom.value.message == "custom failure"
        assert "CustomError: custom failure" in custom.value.traceback
        # A remote TimeoutError must not pass for this call's own timeout.
        with pytest.raises(kernel.RemoteError) as timeout:
            svc.call(Fail("timeout"), timeout=5.0)
        assert not isinstance(timeout.value, TimeoutError)
        assert timeout.value.type_name == "TimeoutError"
        with pytest.raises(ValueError, match="object object"):  # args msgpack cannot carry
            svc.call(Fail("unencodable"), timeout=5.0)
        svc.close()


@pytest.mark.parametrize("face", FACES)
def test_a_request_carrying_capabilities_is_refused_by_the_kernel(kernel_daemon, tmp_path, face):
    """A service takes no capabilities, so a lookup hands out no GRANT (CLIENT_RIGHTS)."""
    with service(tmp_path, "t.nocaps", face), kernel.connect(autostart=False) as k:
        svc = kernel.ServiceClient.lookup(k, "t.nocaps", timeout=10.0)
        assert svc.cap.info().rights == kernel.service.CLIENT_RIGHTS
        n = k.notification()
        with pytest.raises(kernel.AccessDeniedError, match="GRANT"):
            svc.cap.call(msgspec.msgpack.encode(Echo("x")), caps=[n.as_copy()], timeout=5.0)
        assert n.info().derived == 0  # nothing reached the service
        assert svc.call(Echo("still served"), timeout=5.0) == "still served"
        svc.close()


@pytest.mark.parametrize("face", FACES)
def test_a_service_closes_the_capabilities_a_request_carries(kernel_daemon, tmp_path, face):
    """Registered with GRANT, a service still takes none: it closes them, or every
    such request would keep a slot of its table."""
    with service(tmp_path, "t.caps", face, grant=True), kernel.connect(autostart=False) as k:
        svc = kernel.ServiceClient.lookup(k, "t.caps", timeout=10.0)
        n = k.notification()
        for i in range(3):
            data = msgspec.msgpack.encode(Echo(f"gift {i}"))
            reply = svc.cap.call(data, caps=[n.as_copy()], timeout=5.0).data
            assert msgspec.msgpack.decode(reply[1:]) == f"gift {i}"
            assert n.info().derived == 0  # the service closed its copy before it answered
        svc.close()


class Unknown(msgspec.Struct, tag="unknown"):
    pass


class EchoWithAnInt(msgspec.Struct, tag="echo"):
    text: int


@pytest.mark.parametrize("face", FACES)
def test_bad_requests_get_clear_errors_and_the_service_keeps_serving(kernel_daemon, tmp_path, face):
    with service(tmp_path, "t.bad", face) as run, kernel.connect(autostart=False) as k:
        svc = kernel.ServiceClient.lookup(k, "t.bad", timeout=10.0)
        with pytest.raises(kernel.InvalidArgumentError, match="'unknown'.*takes.*'echo'"):
            svc.call(Unknown(), timeout=5.0)
        with pytest.raises(kernel.InvalidArgumentError, match=r"Expected `str`, got `int`"):
            svc.call(EchoWithAnInt(5), timeout=5.0)
        for junk in (b"", b"\xc1", b"\x93\x01\x02\x03", b"\x81\xa4type\xa4echo"):
            reply = svc.cap.call(junk, timeout=5.0).data
            assert reply[:1] == b"\x01"
            failure = msgspec.msgpack.decode(reply[1:])
            assert failure[1] == "InvalidArgumentError"
            assert "malformed or unknown request" in failure[2]
        svc.cap.send(b"a plain send cannot be answered", timeout=5.0)
        with pytest.raises(ValueError, match="exceeds 262144 bytes"):
            svc.call(Big(kernel.MAX_PAYLOAD), timeout=5.0)
        assert svc.call(Echo("still here"), timeout=5.0) == "still here"
        svc.close()
        assert "Traceback" not in run.log()  # answered, never logged as a crash


@pytest.mark.parametrize("face", FACES)
async def test_results_small_and_large_decode_on_both_clients(kernel_daemon, tmp_path, face):
    """A reply is decoded from a copy past its status byte when small, from a view
    when large (faces.pyx reply_body): both sides of the 4096-byte line, both clients."""
    sizes = [0, 4090, 4094, 100_000]  # a 4090-character str replies in 4094 bytes
    with service(tmp_path, "t.sizes", face):
        with kernel.connect(autostart=False) as k:
            svc = kernel.ServiceClient.lookup(k, "t.sizes", timeout=10.0)
            assert [svc.call(Big(n), timeout=5.0) for n in sizes] == ["x" * n for n in sizes]
            assert svc._session is not None  # they came over the session
            svc.close()
        async with kernel.connect_async(autostart=False) as ak:
            asvc = await kernel.AsyncServiceClient.lookup(ak, "t.sizes", timeout=10.0)
            got = [await asvc.call(Big(n), timeout=5.0) for n in sizes]
            assert got == ["x" * n for n in sizes]
            await asvc.close()


@pytest.mark.parametrize("face", FACES)
async def test_a_graceful_stop_delivers_replies_kept_for_a_full_ring(kernel_daemon, tmp_path, face):
    """16 results of 200 kB answered while the client's loop is busy: 5 fit in its
    ring, the rest wait in the service. A SIGTERM then stops the service; before
    it closes the session it lets them out as the client drains (it closed at once
    and the client got PeerClosedError for 11 calls)."""
    with service(tmp_path, "t.linger", face) as run:
        async with kernel.connect_async(autostart=False) as k:
            svc = await kernel.AsyncServiceClient.lookup(k, "t.linger", timeout=10.0)
            assert await svc.call(Echo("open"), timeout=5.0) == "open"
            calls = [asyncio.ensure_future(svc.call(Big(200_000), timeout=20.0)) for _ in range(16)]
            await asyncio.sleep(0)  # each task wrote its request and waits
            _hold_the_loop(0.3)  # the service answers meanwhile
            os.kill(run.proc.pid, signal.SIGTERM)
            _hold_the_loop(0.3)  # it is stopping, with the replies it kept
            assert await asyncio.gather(*calls) == ["x" * 200_000] * 16
            await svc.close()
        assert run.proc.wait(15) == 0


def _hold_the_loop(seconds: float) -> None:
    """What a blocking step in an asyncio program does: its loop runs nothing."""
    time.sleep(seconds)


@pytest.mark.parametrize("face", FACES)
async def test_workers_serve_concurrently(kernel_daemon, tmp_path, face):
    workers = 3
    with service(tmp_path, "t.workers", face, workers):
        async with kernel.connect_async(autostart=False) as k:
            svc = await kernel.AsyncServiceClient.lookup(k, "t.workers", timeout=10.0)
            # Each Meet returns only once all three are in their handlers at once.
            results = await asyncio.gather(
                *(svc.call(Meet(workers), timeout=30.0) for _ in range(workers))
            )
            assert len(results) == workers
            replies = await asyncio.gather(
                *(svc.call(Echo(str(i)), timeout=10.0, type=str) for i in range(50))
            )
            assert replies == [str(i) for i in range(50)]
            # Again now that the session is open: all three ride it, and still meet.
            results = await asyncio.gather(
                *(svc.call(Meet(workers), timeout=30.0) for _ in range(workers))
            )
            assert len(results) == workers
            await svc.close()


@pytest.mark.parametrize("face", FACES)
async def test_an_asyncio_clients_calls_in_flight_all_ride_its_session(
    kernel_daemon, tmp_path, face, monkeypatch
):
    """Once its session is open, an AsyncServiceClient's concurrent calls all go
    over it. They went through the kernel, all but one at a time: 76k calls/s with
    64 in flight, against 178k over the session. (Concurrency in the service is
    kept: test_workers_serve_concurrently meets three handlers over the session.)"""
    through_kernel: list[bytes] = []
    kernel_call = kernel.AsyncEndpointCap.call

    async def counted(self: kernel.AsyncEndpointCap, data: bytes, **kw: Any) -> Any:
        through_kernel.append(data)
        return await kernel_call(self, data, **kw)

    with service(tmp_path, "t.inflight", face):
        async with kernel.connect_async(autostart=False) as k:
            svc = await kernel.AsyncServiceClient.lookup(k, "t.inflight", timeout=10.0)
            assert await svc.call(Echo("open"), timeout=5.0) == "open"
            monkeypatch.setattr(kernel.AsyncEndpointCap, "call", counted)
            replies = await asyncio.gather(
                *(svc.call(Echo(str(i)), timeout=10.0) for i in range(64))
            )
            assert replies == [str(i) for i in range(64)]
            assert through_kernel == []
            await svc.close()


def test_threads_sharing_a_client_call_concurrently_over_its_session_and_the_kernel(
    kernel_daemon, tmp_path
):
    """One call at a time goes over the client's session; the others made meanwhile
    go through the kernel to other workers, so three threads meet in three handlers."""
    with service(tmp_path, "t.share", "sync", workers=3), kernel.connect(autostart=False) as k:
        svc = kernel.ServiceClient.lookup(k, "t.share", timeout=10.0)
        try:
            assert svc.call(Echo("open"), timeout=5.0) == "open"
            assert svc._session is not None
            met: list[int] = []
            threads = [
                threading.Thread(target=lambda: met.append(svc.call(Meet(3), timeout=30.0)))
                for _ in range(3)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join(40)
            assert sorted(met) == [0, 1, 2]  # threading.Barrier's indexes: all at once
            answers: list[str] = []

            def echo_many(i: int) -> None:
                answers.extend(svc.call(Echo(f"{i}.{n}"), timeout=10.0) for n in range(100))

            threads = [threading.Thread(target=echo_many, args=(i,)) for i in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(40)
            assert sorted(answers) == sorted(f"{i}.{n}" for i in range(4) for n in range(100))
        finally:
            svc.close()
        assert svc._session is None


@pytest.mark.parametrize("face", FACES)
@pytest.mark.parametrize("workers", [1, 2])
def test_workers_bound_the_handlers_at_once_over_sessions_and_the_kernel_path(
    kernel_daemon, tmp_path, face, workers
):
    """A handler written for `workers=1` must never run beside itself, however its
    callers reach the service: here two callers over sessions, one through the kernel."""
    with service(tmp_path, "t.bound", face, workers), kernel.connect(autostart=False) as k:
        clients = [kernel.ServiceClient.lookup(k, "t.bound", timeout=10.0) for _ in range(2)]
        clients.append(kernel.ServiceClient(clients[0].cap.copy(), session=False))
        seen: list[int] = []

        def calls(client: kernel.ServiceClient) -> None:
            seen.extend(client.call(Overlap(0.02), timeout=30.0) for _ in range(10))

        try:
            for c in clients:
                assert c.call(Echo("warm"), timeout=5.0) == "warm"  # sessions open first
            assert [c._session is not None for c in clients] == [True, True, False]
            threads = [threading.Thread(target=calls, args=(c,)) for c in clients]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            assert len(seen) == 30
            assert max(seen) == workers  # never more; and with two, two do overlap
        finally:
            for c in clients:
                c.close()


@pytest.mark.parametrize("face", FACES)
def test_a_blocking_handler_holds_up_only_its_own_caller(kernel_daemon, tmp_path, face):
    """Sessions share the workers: while one handler blocks, another worker serves
    the other sessions (it starts polling once the first has blocked ~1 ms)."""
    with service(tmp_path, "t.stall", face, workers=2), kernel.connect(autostart=False) as k:
        slow, quick = (kernel.ServiceClient.lookup(k, "t.stall", timeout=10.0) for _ in "ab")
        try:
            for c in (slow, quick):
                assert c.call(Echo("warm"), timeout=5.0) == "warm"
            assert slow._session is not None
            assert quick._session is not None
            done = threading.Event()
            blocked = threading.Thread(
                target=lambda: (slow.call(Overlap(1.0), timeout=30.0), done.set())
            )
            blocked.start()
            time.sleep(0.1)  # the slow call is in its handler
            assert [quick.call(Echo(str(i)), timeout=10.0) for i in range(100)] == [
                str(i) for i in range(100)
            ]
            assert not done.is_set()  # all answered while the slow handler still ran
            blocked.join(30)
            assert done.is_set()
        finally:
            slow.close()
            quick.close()


def test_a_session_caller_killed_while_its_handler_runs_leaves_the_others_served(
    kernel_daemon, tmp_path
):
    """The dead caller's reply has nowhere to go: it is dropped (logged at debug), its
    session leaves the group, and the service answers everyone else, then stops
    cleanly."""
    caller = (
        f"import sys; sys.path.insert(0, {str(PEERS)!r})\n"
        "import kernel\nfrom service_peer import Overlap\n"
        "with kernel.connect(autostart=False) as k:\n"
        "    svc = kernel.ServiceClient.lookup(k, 't.killed', timeout=10.0)\n"
        "    print('calling', flush=True)\n"
        "    svc.call(Overlap(1.0), timeout=60.0)\n"
    )
    with service(tmp_path, "t.killed", "sync", workers=2) as run:
        with kernel.connect(autostart=False) as k:
            other = kernel.ServiceClient.lookup(k, "t.killed", timeout=10.0)
            assert other.call(Echo("before"), timeout=5.0) == "before"
            doomed = subprocess.Popen(
                [sys.executable, "-c", caller], stdout=subprocess.PIPE, text=True
            )
            try:
                assert doomed.stdout is not None
                assert doomed.stdout.readline() == "calling\n"
                time.sleep(0.2)  # its call is in the handler by now
                doomed.kill()
                doomed.wait(10)
                for i in range(50):  # during the orphaned handler and after it
                    assert other.call(Echo(str(i)), timeout=10.0) == str(i)
                    time.sleep(0.03)
            finally:
                if doomed.poll() is None:
                    doomed.kill()
                    doomed.wait(10)
                doomed.stdout.close()
                other.close()
        assert run.signal(signal.SIGTERM) == 0, run.log()
        assert "clean exit" in run.log()
        assert "Traceback" not in run.log()


def _context_switches(pid: int) -> int:
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(FileNotFoundError):
            status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
            total += sum(int(line.split()[1]) for line in status.splitlines()
                         if "ctxt_switches:" in line)  # fmt: skip
    return total


def test_an_idle_service_with_sessions_and_workers_does_not_wake(kernel_daemon, tmp_path):
    """The stand-by workers watch for a blocked handler only while requests come:
    an idle service makes no wake-ups (it would cost every idle service CPU)."""
    with service(tmp_path, "t.quiet", "sync", workers=4) as run:
        with kernel.connect(autostart=False) as k:
            clients = [kernel.ServiceClient.lookup(k, "t.quiet", timeout=10.0) for _ in "ab"]
            try:
                for c in clients:
                    assert c.call(Echo("up"), timeout=5.0) == "up"
                time.sleep(0.5)  # well past the watcher's 50 ms before it stops looking
                before = _context_switches(run.proc.pid)
                time.sleep(1.0)
                woke = _context_switches(run.proc.pid) - before
                assert woke < 20, f"{woke} context switches in 1 s of idleness"
            finally:
                for c in clients:
                    c.close()


@pytest.mark.parametrize("face", FACES)
def test_a_service_is_found_again_after_the_name_server_crashes(kernel_daemon, tmp_path, face):
    """Its entry outlives the name server (services/names/store.py): a client that
    looked it up before goes on calling, and one that looks it up after finds it."""
    with service(tmp_path, "t.crash", face), kernel.connect(autostart=False) as k:
        before = kernel.ServiceClient.lookup(k, "t.crash", timeout=10.0)
        assert before.call(Echo("a"), timeout=5.0) == "a"
        restart_name_server(kernel_daemon)
        after = kernel.ServiceClient.lookup(k, "t.crash", timeout=10.0)
        assert after.call(Echo("b"), timeout=5.0) == "b"
        assert before.call(Echo("c"), timeout=5.0) == "c"
        assert before.call(Who(), timeout=5.0)[0] != after.call(Who(), timeout=5.0)[0]
        before.close()
        after.close()


@pytest.mark.parametrize("face", FACES)
def test_sigterm_finishes_the_call_in_flight_unregisters_and_exits_0(kernel_daemon, tmp_path, face):
    with service(tmp_path, "t.term", face, workers=2) as run, kernel.connect(autostart=False) as k:
        svc = kernel.ServiceClient.lookup(k, "t.term", timeout=10.0)
        # The handler sends SIGTERM to its own process and then finishes.
        assert svc.call(Term(), timeout=10.0) == "finished"
        assert run.proc.wait(15) == 0, run.log()
        assert "clean exit" in run.log()
        assert k.names.list("t.term") == []
        with pytest.raises(kernel.IPCError):  # revoked at shutdown: fails at once
            svc.call(Echo("late"), timeout=10.0)


@pytest.mark.parametrize(
    ("face", "sig"), [("sync", signal.SIGINT), ("async", signal.SIGTERM)], ids=["sync", "async"]
)
def test_an_idle_service_stops_cleanly_on_a_signal(kernel_daemon, tmp_path, face, sig):
    with service(tmp_path, "t.idle", face, workers=4) as run, kernel.connect(autostart=False) as k:
        svc = kernel.ServiceClient.lookup(k, "t.idle", timeout=10.0)
        assert svc.call(Echo("up"), timeout=5.0) == "up"
        assert run.signal(sig) == 0, run.log()
        assert k.names.list("t.idle") == []
        assert "Traceback" not in run.log()
        svc.close()


@pytest.mark.parametrize("path", ["session", "kernel"])
def test_a_handler_raising_system_exit_stops_the_service_on_either_path(
    kernel_daemon, tmp_path, path
):
    """run() raises what a handler let out beyond Exception, however the request came
    (a session worker thread used to die alone while the service ran on)."""
    with service(tmp_path, "t.exit", "sync") as run, kernel.connect(autostart=False) as k:
        found = kernel.ServiceClient.lookup(k, "t.exit", timeout=10.0)
        svc = found if path == "session" else kernel.ServiceClient(found.cap.copy(), session=False)
        try:
            with pytest.raises(kernel.IPCError):  # the service ended without an answer
                svc.call(Exit(3), timeout=20.0)
            # Before its shutdown_timeout (10 s): the kernel-path worker is told to stop
            # even though the error came from another worker.
            assert run.proc.wait(5) == 3, run.log()
            assert (svc._session is not None) == (path == "session")
        finally:
            svc.close()
            found.close()


@pytest.mark.parametrize("face", FACES)
def test_a_signal_delivered_to_a_worker_thread_still_stops_the_service(
    kernel_daemon, tmp_path, face
):
    """Python runs handlers in the main thread; the kernel may hand a process's signal
    to any thread. Sent to a worker thread, it stopped nothing before the wake-up fd."""
    with service(tmp_path, "t.tsig", face, workers=2) as run, kernel.connect(autostart=False) as k:
        svc = kernel.ServiceClient.lookup(k, "t.tsig", timeout=10.0)
        assert svc.call(Echo("up"), timeout=5.0) == "up"
        pid = run.proc.pid
        worker = min(int(t) for t in os.listdir(f"/proc/{pid}/task") if int(t) != pid)
        libc = ctypes.CDLL(None, use_errno=True)
        assert libc.syscall(SYS_TGKILL, pid, worker, signal.SIGTERM) == 0, ctypes.get_errno()
        assert run.proc.wait(15) == 0, run.log()
        assert "clean exit" in run.log()
        assert k.names.list("t.tsig") == []
        svc.close()


def test_stop_from_another_thread_and_run_with_a_given_kernel(kernel_daemon):
    svc = kernel.Service("t.inproc", [lambda_free_echo])
    with kernel.connect(autostart=False) as k:
        t = threading.Thread(target=svc.run, args=(k,), kwargs={"workers": 2})
        t.start()
        try:
            client = kernel.ServiceClient.lookup(k, "t.inproc", timeout=10.0)
            assert client.call(Echo("in process"), timeout=5.0) == "in process"
            with pytest.raises(RuntimeError, match="add handlers before it runs"):
                svc.handler(who)  # run() answers with the handlers it started with
        finally:
            svc.stop()
            t.join(15)
        assert not t.is_alive()
        assert k.names.list("t.inproc") == []
        client.close()
    svc.handler(who)  # stopped: it may grow again


def test_each_worker_thread_has_its_own_connection_and_leaves_nothing(kernel_daemon):
    """Worker threads sharing one connection woke each other for every request; with
    workers > 1 each gets its own connection (its endpoint by an in-process bundle),
    all closed and their bundles dropped when the service stops."""
    svc = kernel.Service("t.conns", [lambda_free_echo])
    with kernel.connect(autostart=False) as k:
        t = threading.Thread(target=svc.run, args=(k,), kwargs={"workers": 3})
        t.start()
        try:
            client = kernel.ServiceClient.lookup(k, "t.conns", timeout=10.0)
            for i in range(30):
                assert client.call(Echo(f"n{i}"), timeout=5.0) == f"n{i}"
        finally:
            svc.stop()
            t.join(15)
        assert not t.is_alive()
        client.close()
        log = kernel_daemon.log()
        mine = re.findall(rf"connected: pid {os.getpid()} .*inherited \['ep'\]", log)
        assert len(mine) == 3, log
        ep = k.endpoint()  # the kernel still serves this connection normally
        assert ep.info().object_caps == 1


def lambda_free_echo(req: Echo) -> str:
    return req.text


def who(req: Who) -> str:
    return "who"


async def test_serve_in_process_until_stopped(kernel_daemon):
    async def echo(req: Echo, ctx: kernel.RequestContext) -> list[object]:
        return [req.text, ctx.sender.pid]

    svc = kernel.Service("t.aserve", [echo])
    async with kernel.connect_async(autostart=False) as k:
        task = asyncio.ensure_future(svc.serve(k, workers=2, signals=False))
        client = await kernel.AsyncServiceClient.lookup(k, "t.aserve", timeout=10.0)
        assert await client.call(Echo("x"), timeout=5.0) == ["x", os.getpid()]
        with pytest.raises(RuntimeError, match="add handlers before it runs"):
            svc.handler(who)
        svc.stop()
        await asyncio.wait_for(task, 15)
        assert await k.names.list("t.aserve") == []
        await client.close()


@pytest.mark.parametrize("face", FACES)
def test_a_client_calls_over_a_session_and_the_kernel_path_gives_the_same_answers(
    kernel_daemon, tmp_path, face
):
    with service(tmp_path, "t.session", face, workers=2), kernel.connect(autostart=False) as k:
        fast = kernel.ServiceClient.lookup(k, "t.session", timeout=10.0)
        plain = kernel.ServiceClient(fast.cap.copy(), name="t.session", session=False)
        assert fast.call(Echo("hi"), timeout=5.0) == "hi"
        assert fast._session is not None  # the call went over a direct session
        assert fast._session.peer.pid != k.pid
        assert fast.call(Who(), timeout=5.0) == plain.call(Who(), timeout=5.0)  # same badge
        assert plain._session is None
        with pytest.raises(KeyError):
            fast.call(Fail("key"), timeout=5.0)
        with pytest.raises(kernel.InvalidArgumentError, match=r"Expected `str`, got `int`"):
            fast.call(Echo(1), timeout=5.0)  # type: ignore[arg-type]
        fast.close()
        plain.close()


async def test_an_async_client_keeps_one_call_on_its_session_and_the_rest_on_workers(
    kernel_daemon, tmp_path
):
    with service(tmp_path, "t.asession", "async", workers=2):
        async with kernel.connect_async(autostart=False) as k:
            svc = await kernel.AsyncServiceClient.lookup(k, "t.asession", timeout=10.0)
            replies = await asyncio.gather(
                *(svc.call(Echo(str(i)), timeout=10.0, type=str) for i in range(200))
            )
            assert replies == [str(i) for i in range(200)]
            assert svc._session is not None
            await svc.close()


def test_a_service_declines_a_fifth_session_from_one_caller_which_then_uses_the_kernel(
    kernel_daemon, tmp_path
):
    from kernel._service_sessions import MAX_SESSIONS_PER_CALLER

    with service(tmp_path, "t.limit", "sync"), kernel.connect(autostart=False) as k:
        svc = kernel.ServiceClient.lookup(k, "t.limit", timeout=10.0)
        held = [svc.cap.session(timeout=10.0) for _ in range(MAX_SESSIONS_PER_CALLER)]
        with pytest.raises(kernel.ResourceLimitError, match="per caller connection"):
            svc.cap.session(timeout=10.0)
        assert svc.call(Echo("still served"), timeout=5.0) == "still served"
        assert svc._session is None  # declined: this client stays on the kernel path
        for s in held:
            s.close()
        with kernel.connect(autostart=False) as other:  # another caller is not limited
            other_svc = kernel.ServiceClient.lookup(other, "t.limit", timeout=10.0)
            assert other_svc.call(Echo("x"), timeout=5.0) == "x"
            assert other_svc._session is not None
            other_svc.close()
        svc.close()


# ------------------------------------------------------------ the examples, as a user runs them


def test_kv_example_runs_as_its_readme_says(kernel_daemon):
    out = run_script(readme_script(ROOT / "examples/kv/README.md"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n") == ["blue", "colour", "shape", "exit status 1", ""]
    assert "no such key: colour" in out.stderr


def test_kv_client_started_before_the_server_waits_for_it(kernel_daemon):
    kv = ROOT / "examples/kv"
    client = subprocess.Popen(
        [sys.executable, str(kv / "client.py"), "keys"], stdout=subprocess.PIPE, text=True
    )
    server = subprocess.Popen([sys.executable, str(kv / "server.py"), "2"])
    try:
        out, _ = client.communicate(timeout=30)
        assert client.returncode == 0
        assert out == ""  # no keys yet: nothing printed
    finally:
        os.kill(server.pid, signal.SIGTERM)
        assert server.wait(15) == 0
        if client.poll() is None:
            os.kill(client.pid, signal.SIGKILL)
            client.wait(15)


def test_echo_example_runs_as_its_readme_says(kernel_daemon):
    out = run_script(readme_script(ROOT / "examples/echo/README.md"))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("b'PING' from pid ")
    assert lines[1].startswith("as expected: ")
    assert "RECEIVE" in lines[1]
    assert lines[2] == "100 replies, first b'REQ 0'"


def test_session_example_runs_as_its_readme_says(kernel_daemon):
    out = run_script(readme_script(ROOT / "examples/session/README.md"))
    assert out.returncode == 0, out.stderr
    timing, revoked = out.stdout.splitlines()
    assert re.fullmatch(
        r"5000 calls of 64 B, p50: through the kernel [\d.]+ us, over the session [\d.]+ us",
        timing,
    )
    assert revoked.startswith("after the revoke: session ")
    assert revoked.endswith("was revoked")


@pytest.mark.parametrize("face", FACES)
def test_a_term_signal_through_the_kernel_stops_a_service_gracefully(kernel_daemon, tmp_path, face):
    """kernel.Signals at its defaults turns Sig.TERM into the process's own SIGTERM,
    so the service stops as it does on kill(1): by capability, not by uid."""
    run_service = service(tmp_path, "t.sig", face, signals=True)
    with run_service as run, kernel.connect(autostart=False) as k:
        client = kernel.ServiceClient.lookup(k, "t.sig", timeout=10.0)
        assert client.call(Echo("up"), timeout=5.0) == "up"
        n = k.names.lookup("t.sig.signals", timeout=10.0, kind=kernel.NotificationCap)
        n.signal(kernel.Sig.TERM)
        assert run.proc.wait(15) == 0, run.log()
        assert "clean exit" in run.log()
        client.close()
