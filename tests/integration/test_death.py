"""Death: of a server, of a caller, of any process (its objects go), of the kernel."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from peerlib import PEERS, spawned

import kernel

pytestmark = pytest.mark.integration


class Blocked(threading.Thread):
    """Run one blocking operation in a thread; keep its outcome and when it ended."""

    def __init__(self, op: Callable[[], object]) -> None:
        super().__init__(daemon=True)
        self.op = op
        self.error: BaseException | None = None
        self.ended = 0.0

    def run(self) -> None:
        try:
            self.op()
        except BaseException as e:
            self.error = e
        self.ended = time.monotonic()


def wait_for_log(daemon, text: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while text not in (log := daemon.log()):
        assert time.monotonic() < deadline, f"{text!r} never appeared in the kernel log:\n{log}"
        time.sleep(0.01)
    return log


# ------------------------------------------------------------------ servers and callers


def test_a_server_killed_while_callers_await_replies_fails_each_caller_promptly(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        ep, ready = k.endpoint(), k.notification()
        with spawned(k, "echo_server.py", "hold", ep=ep, ready=ready) as server:
            callers = [Blocked(lambda i=i: ep.call(b"call %d" % i, timeout=30)) for i in range(3)]
            for c in callers:
                c.start()
            taken = 0
            while taken != 0b111:  # the server took all three calls: replies pending
                taken |= ready.wait(timeout=10)
            killed = time.monotonic()
            server.kill()
            for c in callers:
                c.join(5)
            assert server.wait(timeout=10) == -signal.SIGKILL
        for c in callers:
            assert isinstance(c.error, kernel.PeerClosedError), c.error
            assert isinstance(c.error, ConnectionError)
            assert "died before replying" in str(c.error)
            assert c.ended - killed < 2.0


def test_a_caller_killed_mid_call_makes_the_servers_reply_raise_peer_closed(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        ep, back = k.endpoint(), k.endpoint()
        with spawned(k, "actor.py", "call", "0", "hello?", ep=ep, back=back) as caller:
            msg = ep.recv(timeout=10)
            assert msg.is_call
            assert msg.sender.pid == caller.pid
            caller.kill()
            caller.wait(timeout=10)  # returns once the kernel has cleaned the caller up
            with pytest.raises(kernel.PeerClosedError, match="caller died"):
                msg.reply(b"nobody listens")
        n = k.notification()  # the server's connection is unharmed
        n.signal(1)
        assert n.poll() == 1


def test_a_dead_receiver_no_longer_waits_on_the_endpoint(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        ep, back = k.endpoint(), k.endpoint()
        with spawned(k, "actor.py", "recv", "0", ep=ep, back=back) as receiver:
            wait_for_log(kernel_daemon, f"pid {receiver.pid} uid")
            time.sleep(0.3)  # let it block in recv
            receiver.kill()
            receiver.wait(timeout=10)
        with pytest.raises(kernel.WouldBlock):  # nobody to hand a message to
            ep.send_nowait(b"for the dead")


def test_a_process_that_dies_leaves_nothing_behind_in_the_kernel(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        ep, n = k.endpoint(), k.notification()
        with spawned(k, "actor.py", "objects", "0", "20", n=n, ep=ep) as child:
            assert n.wait(timeout=10) == 1  # it holds 40 objects of its own, and ours
            child.kill()
            assert child.wait(timeout=10) == -signal.SIGKILL
            log = kernel_daemon.log()
            assert f"(pid {child.pid}) is gone: closed its connection" in log
        ep.close()  # our copy of the endpoint it held; now nobody holds it
    # Nobody is connected any more: whatever the kernel still holds at exit leaked.
    assert kernel_daemon.stop() == 0
    log = kernel_daemon.log()
    assert "kernel shutting down: failing 0 waiting operations" in log
    assert "kernel exit: 0 live objects, 0 bundles" in log
    assert "the kernel shut down" not in log  # no process was left to clean up at exit


# ------------------------------------------------------------------ the kernel itself


def start_blocked(
    kinds: list[tuple[str, str]],
    env: dict[str, str] | None = None,
) -> list[subprocess.Popen[str]]:
    """Start blocked.py for each (face, op) at once; return when all are about to block."""
    procs = [
        subprocess.Popen(
            [sys.executable, str(PEERS / "blocked.py"), face, op],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for face, op in kinds
    ]
    for proc in procs:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            for p in procs:
                p.kill()
            raise AssertionError(proc.communicate(timeout=10))
    return procs


def finish_blocked(procs: list[subprocess.Popen[str]]) -> list[tuple[int, str, str]]:
    out = []
    for proc in procs:
        try:
            stdout, stderr = proc.communicate(timeout=10)
        finally:
            proc.kill()
            proc.wait()
        out.append((proc.returncode, stdout.strip(), stderr))
    return out


def test_kernel_shutdown_fails_blocked_clients_promptly_with_peer_closed(kernel_daemon):
    procs = start_blocked(
        [("sync", "recv"), ("sync", "call"), ("async", "recv"), ("async", "call")]
    )
    try:
        with kernel.connect(autostart=False) as k:
            mine = Blocked(lambda: k.endpoint().recv(timeout=30))
            mine.start()
            time.sleep(0.3)  # everyone is blocked in the kernel now
            stopped = time.monotonic()
            assert kernel_daemon.stop() == 0
            mine.join(5)
            assert isinstance(mine.error, kernel.PeerClosedError), mine.error
            assert mine.ended - stopped < 2.0
            with pytest.raises(kernel.PeerClosedError):  # and the connection stays dead
                k.notification()
    finally:
        results = finish_blocked(procs)
    for code, out, err in results:
        assert code == 0, (out, err)
        name, seconds = out.split()
        assert name == "PeerClosedError"
    assert "kernel shutting down: failing 5 waiting operations" in kernel_daemon.log()


def test_a_kernel_crash_fails_blocked_clients_promptly(tmp_path):
    # Not the fixture's kernel: this one is SIGKILLed, which the fixture would report.
    sock_dir = Path(f"/tmp/mkd-{os.getpid()}-{time.monotonic_ns()}")
    sock_dir.mkdir(mode=0o700)
    path = str(sock_dir / "k.sock")
    log = tmp_path / "kernel.log"
    with open(log, "wb") as f:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "kernel", "kernel", "--socket", path],
            stdout=f,
            stderr=f,
            stdin=subprocess.DEVNULL,
        )
    procs = []
    try:
        deadline = time.monotonic() + 10
        while "kernel listening on" not in log.read_text():
            assert daemon.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.005)
        procs = start_blocked(
            [("sync", "recv"), ("async", "recv")], env={**os.environ, "MKIPC_SOCKET": path}
        )
        with kernel.connect(path, autostart=False) as k:
            mine = Blocked(lambda: k.endpoint().call(b"x", timeout=30))
            mine.start()
            time.sleep(0.3)
            crashed = time.monotonic()
            daemon.kill()
            daemon.wait(10)
            mine.join(5)
            assert isinstance(mine.error, kernel.PeerClosedError), mine.error
            assert mine.ended - crashed < 2.0
    finally:
        daemon.kill()
        daemon.wait(10)
        results = finish_blocked(procs)
        for f in sock_dir.iterdir():
            f.unlink()
        sock_dir.rmdir()
    for code, out, err in results:
        assert code == 0, (out, err)
        assert out.split()[0] == "PeerClosedError"
        assert float(out.split()[1]) < 2.5  # blocked ~0.3 s before the crash
