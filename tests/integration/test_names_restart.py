"""The kernel restarts a name server that dies; its entries are gone, nothing else is."""

from __future__ import annotations

import os
import re
import signal
import time

import pytest

import kernel

pytestmark = pytest.mark.integration


def name_server_pid(kernel_pid: int) -> int:
    with open(f"/proc/{kernel_pid}/task/{kernel_pid}/children") as f:
        (pid,) = (int(p) for p in f.read().split())
    return pid


def wait_for(predicate, seconds: float = 10.0):
    deadline = time.monotonic() + seconds
    while not (result := predicate()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)
    return result


def test_a_killed_name_server_is_restarted_with_no_entries_and_serves_again(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        ep = k.endpoint()
        k.names.register("before.crash", ep)
        old = name_server_pid(kernel_daemon.pid)
        os.kill(old, signal.SIGKILL)  # a grandchild of this test: the kernel started it
        wait_for(lambda: "restarting it" in kernel_daemon.log())
        # Requests wait in the endpoint's queue until the new name server receives them.
        with pytest.raises(kernel.NotFoundError):
            k.names.lookup("before.crash")
        assert name_server_pid(kernel_daemon.pid) != old
        k.names.register("after.crash", ep)
        looked_up = k.names.lookup("after.crash", timeout=5.0)
        got = []

        import threading

        t = threading.Thread(target=lambda: got.append(ep.recv(timeout=5.0)))
        t.start()
        looked_up.send(b"hello", timeout=5.0)
        t.join(5.0)
        assert got[0].data == b"hello"
        assert got[0].badge != 0  # a lookup's badge, from the new name server
        assert [e.name for e in k.names.list()] == ["after.crash"]


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
    may fire into its successor; badges never repeat, so they drop nothing by mistake."""
    import subprocess
    import sys

    code = (
        "import sys, kernel\n"
        "with kernel.connect(autostart=False) as k:\n"
        "    k.names.register('early', k.endpoint())\n"
        "    print('registered', flush=True)\n"
        "    sys.stdin.readline()\n"
    )
    with kernel.connect(autostart=False) as k:
        early = k.spawn(
            [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        try:
            assert early.popen.stdout.readline().strip() == "registered"
            os.kill(name_server_pid(kernel_daemon.pid), signal.SIGKILL)
            wait_for(lambda: "restarting it" in kernel_daemon.log())
            k.names.register("late", k.endpoint())  # the new name server monitors us
            early.kill()  # its monitor, set by the old name server, fires now
            early.wait(timeout=10)
            k.names.register("probe", k.endpoint())  # a round trip after that notice
            assert [e.name for e in k.names.list()] == ["late", "probe"]
        finally:
            early.kill()
            early.wait(timeout=10)
            early.popen.stdin.close()
            early.popen.stdout.close()
