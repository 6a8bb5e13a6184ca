"""Autostart: with no kernel running, connect() starts one (only one), which exits when idle.

The scenarios run in subprocesses: MKIPC_IDLE_EXIT is read when the client library
is imported. Every kernel started here is found by the pid it logs in `<socket>.log`
and killed at the end if it is still running.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import kernel

pytestmark = pytest.mark.integration

PEERS = Path(__file__).parent / "peers"
CLIENT = str(PEERS / "autostart_client.py")
IDLE_EXIT = 1.0


class Scene:
    def __init__(self) -> None:
        # AF_UNIX paths are limited to 107 bytes: keep it short, as tests/conftest.py does
        self.dir = Path(f"/tmp/mka-{os.getpid()}-{time.monotonic_ns()}")
        self.dir.mkdir(mode=0o700)
        self.path = str(self.dir / "kernel.sock")
        self.env = {k: v for k, v in os.environ.items() if k != "MKIPC_INHERIT"}
        self.env.update(MKIPC_SOCKET=self.path, MKIPC_IDLE_EXIT=str(IDLE_EXIT))

    def log(self) -> str:
        try:
            return Path(self.path + ".log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def kernel_pids(self) -> list[int]:
        return [int(p) for p in re.findall(r"kernel listening on .* \(pid (\d+)\)", self.log())]

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, CLIENT, *args],
            env=self.env,
            timeout=30,
            capture_output=True,
            text=True,
        )

    def wait_idle_exit(self, timeout: float = 6.0) -> None:
        deadline = time.monotonic() + timeout
        while os.path.exists(self.path) or any(map(alive, self.kernel_pids())):
            assert time.monotonic() < deadline, f"the kernel did not exit:\n{self.log()}"
            time.sleep(0.05)

    def cleanup(self) -> None:
        for pid in self.kernel_pids():
            if alive(pid) and self.path in cmdline(pid):
                os.kill(pid, signal.SIGKILL)
        for f in self.dir.iterdir():
            f.unlink()
        self.dir.rmdir()


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def alive(pid: int) -> bool:
    """Running (a zombie left for an absent init to reap counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


@pytest.fixture
def scene() -> Iterator[Scene]:
    s = Scene()
    try:
        yield s
    finally:
        s.cleanup()


def test_connect_starts_a_kernel_that_works_and_exits_when_idle(scene):
    done = scene.run("sync")
    assert done.returncode == 0, done.stderr
    [pid] = scene.kernel_pids()
    assert pid != os.getpid()
    log = scene.log()
    assert f"pid {done.stdout.strip()} uid" in log  # the client was served by it
    t0 = time.monotonic()
    scene.wait_idle_exit()
    assert time.monotonic() - t0 < 5.0
    log = scene.log()
    assert "no process for" in log
    assert "kernel exit: 0 live objects, 0 bundles" in log
    assert "Traceback" not in log


def test_async_connect_starts_a_kernel_too(scene):
    done = scene.run("async")
    assert done.returncode == 0, done.stderr
    [pid] = scene.kernel_pids()
    assert f"pid {done.stdout.strip()} uid" in scene.log()
    # no need to wait for its idle exit: the scene's clean-up kills it by its pid


def test_clients_connecting_at_the_same_time_start_only_one_kernel(scene):
    go = scene.dir / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, CLIENT, "sync", str(go)],
            env=scene.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "ready"
        go.touch()
        outs = [p.communicate(timeout=30) for p in procs]
    finally:
        for p in procs:
            p.kill()
            p.communicate()
    assert [p.returncode for p in procs] == [0] * 4, outs
    assert len(scene.kernel_pids()) == 1, scene.log()
    log = scene.log()
    for out, _ in outs:
        assert f"pid {out.strip()} uid" in log  # all four were served by that kernel
    assert "already listens" not in log


def test_the_kernel_outlives_ctrl_c_at_the_callers_terminal_and_shares_its_session(scene):
    """Ctrl-C signals the terminal's foreground process group: the kernel has a group of
    its own. It stays in the caller's session, the unit by which sched_autogroup shares
    a CPU: in a session of its own it answered the callers it shared a CPU with more
    slowly (docs/benchmarks.md, session 21)."""
    holder = subprocess.Popen(
        [sys.executable, CLIENT, "hold"],
        env=scene.env,
        stdout=subprocess.PIPE,
        text=True,
        process_group=0,  # as a shell starts a job
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "connected"
        [pid] = scene.kernel_pids()
        assert os.getsid(pid) == os.getsid(holder.pid) == os.getsid(0)
        assert os.getpgid(pid) == pid != os.getpgid(holder.pid)
        os.killpg(holder.pid, signal.SIGINT)
        assert holder.wait(10) == -signal.SIGINT
    finally:
        holder.kill()
        holder.communicate()
    assert alive(pid)
    with kernel.connect(scene.path, autostart=False) as k:
        assert k.notification().poll() == 0
    assert scene.kernel_pids() == [pid]
    assert "Traceback" not in scene.log()


def test_a_stale_socket_file_left_by_a_dead_kernel_is_replaced(scene):
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(scene.path)  # a socket file nobody listens on
    stale.close()
    done = scene.run("sync")
    assert done.returncode == 0, done.stderr
    assert len(scene.kernel_pids()) == 1


def test_without_autostart_connect_fails_when_no_kernel_runs(scene):
    with pytest.raises(kernel.PeerClosedError, match="no kernel listens"):
        kernel.connect(scene.path, autostart=False)
    assert list(scene.dir.iterdir()) == []  # no kernel, lock or log was made


async def test_without_autostart_async_connect_fails_when_no_kernel_runs(scene):
    with pytest.raises(kernel.PeerClosedError, match="no kernel listens"):
        async with kernel.connect_async(scene.path, autostart=False):
            pass
    assert list(scene.dir.iterdir()) == []


def test_the_socket_path_appears_only_once_the_kernel_accepts_connections(scene):
    proc = subprocess.Popen(
        [sys.executable, str(PEERS / "slow_listen_kernel.py"), scene.path],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(scene.path):
            assert proc.poll() is None
            assert time.monotonic() < deadline
            time.sleep(0.005)
        with kernel.connect(scene.path, autostart=False) as k:
            k.notification()
    finally:
        proc.terminate()
        proc.wait(10)
