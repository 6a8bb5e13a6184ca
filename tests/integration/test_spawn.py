"""Spawning: named capabilities inherited at start, and waiting for the kernel's clean-up."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest
from peerlib import raising_in_thread

import kernel

pytestmark = pytest.mark.integration

PEERS = Path(__file__).parent / "peers"
INSPECT = str(PEERS / "inspect_child.py")


def reap(proc) -> None:
    proc.kill()
    proc.wait(timeout=10)


def test_named_caps_given_at_spawn_reach_the_child(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        ep, n = k.endpoint(), k.notification()
        child = k.spawn([sys.executable, INSPECT], caps={"ep": ep, "n": n})
        try:
            assert n.wait(timeout=10) == 1
            report = json.loads(ep.call(b"report", timeout=10).data)
            assert child.wait(timeout=10) == 0
        finally:
            reap(child)
    assert report["inherited"] == {"ep": "EndpointCap", "n": "NotificationCap"}
    assert report["pid"] == child.pid
    assert not report["token_in_env"]  # one-shot: not for grandchildren
    assert report["second_connection"] == []  # nor for a second connection
    assert f"pid {child.pid} uid" in kernel_daemon.log()


def test_a_child_sees_only_what_it_was_given(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        k.endpoint()
        given, withheld_n, withheld_ep = k.endpoint(), k.notification(), k.endpoint()
        foreign = [hex(c.slot) for c in (given, withheld_n, withheld_ep)]
        child = k.spawn([sys.executable, INSPECT, *foreign], caps={"ep": given})
        try:
            report = json.loads(given.call(b"report", timeout=10).data)
            assert child.wait(timeout=10) == 0
        finally:
            reap(child)
    assert report["inherited"] == {"ep": "EndpointCap"}
    # Our slot numbers mean nothing in the child's table (DESIGN §5).
    for slot in foreign:
        assert report["foreign"][slot].startswith("InvalidCapabilityError"), report


def test_process_wait_returns_the_exit_code_once_the_kernel_cleaned_up(kernel_daemon):
    code = "import kernel, sys; k = kernel.connect(autostart=False); k.endpoint(); sys.exit(3)"
    with kernel.connect(autostart=False) as k:
        child = k.spawn([sys.executable, "-c", code], caps={"n": k.notification()})
        try:
            assert child.wait(timeout=10) == 3
            assert child.returncode == 3
            # wait() only returned after the kernel dropped the process and its objects
            assert f"(pid {child.pid}) is gone" in kernel_daemon.log()
            assert child.wait(timeout=0) == 3  # again: at once
        finally:
            reap(child)


def test_process_wait_raises_timeout_error_while_the_child_keeps_running(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        child = k.spawn([sys.executable, str(PEERS / "actor.py"), "hang", "0"])
        try:
            t0 = time.monotonic()
            with pytest.raises(kernel.CallTimeoutError, match="still running") as info:
                child.wait(timeout=0.3)
            assert isinstance(info.value, TimeoutError)
            assert 0.3 <= time.monotonic() - t0 < 1.5
            assert child.returncode is None
            child.terminate()
            assert child.wait(timeout=10) == -signal.SIGTERM
        finally:
            reap(child)


def test_a_child_that_never_connects_still_lets_wait_return(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        ep = k.endpoint()
        children = [
            k.spawn([sys.executable, "-c", code], caps={"ep": ep})
            for code in ("pass", "raise SystemExit(5)")
        ]
        try:
            assert [c.wait(timeout=10) for c in children] == [0, 5]
        finally:
            for c in children:
                reap(c)
    # teardown: the unclaimed capabilities were released ("0 bundles")


def test_spawning_with_a_closed_cap_raises_and_starts_nothing(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        ep = k.endpoint()
        ep.close()
        with pytest.raises(kernel.InvalidCapabilityError, match="closed"):
            k.spawn([sys.executable, "-c", "raise SystemExit('must not run')"], caps={"ep": ep})
        with pytest.raises(TypeError):
            k.spawn([sys.executable, "-c", "pass"], caps={"ep": "not a capability"})
        with pytest.raises(TypeError):
            k.spawn(f"{sys.executable} -c pass")
    assert "inherited" not in kernel_daemon.log()


def test_a_spawn_that_fails_to_start_the_program_keeps_no_capability_alive(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        ep = k.endpoint()
        with pytest.raises(FileNotFoundError):
            k.spawn(["/nonexistent/mkipc-test-program"], caps={"ep": ep})
        receiver, outcome = raising_in_thread(lambda: ep.recv(timeout=0.6))
        time.sleep(0.1)  # blocked in recv
        ep.close()  # the last capability to the endpoint: it is destroyed
        receiver.join(5)
        assert len(outcome) == 1
        assert isinstance(outcome[0], kernel.PeerClosedError), outcome[0]  # not a timeout


def test_an_unknown_inherit_token_is_refused_at_connect(kernel_daemon, monkeypatch):
    monkeypatch.setenv("MKIPC_INHERIT", "0" * 32)
    with pytest.raises(kernel.IPCError, match="inherit token"):
        kernel.connect(autostart=False)
    assert "MKIPC_INHERIT" not in os.environ  # consumed, even when refused
    with kernel.connect(autostart=False) as k:
        assert k.inherited == {}
    assert "bootstrap refused: unknown or already used inherit token" in kernel_daemon.log()


async def test_spawn_and_wait_on_the_async_face(kernel_daemon):
    async with kernel.connect_async(autostart=False) as k:
        ep, n = await k.endpoint(), await k.notification()
        child = await k.spawn([sys.executable, INSPECT], caps={"ep": ep, "n": n})
        try:
            assert await n.wait(timeout=10) == 1
            report = json.loads((await ep.call(b"report", timeout=10)).data)
            assert await child.wait(timeout=10) == 0
        finally:
            child.kill()
            await child.wait(timeout=10)
    assert report["inherited"] == {"ep": "EndpointCap", "n": "NotificationCap"}
    assert report["pid"] == child.pid


def test_spawns_not_waited_for_are_bounded_as_zombies_are(kernel_daemon):
    """Each spawn keeps a record in the kernel until Process.wait() (or the parent's
    end): past MAX_BUNDLES a spawn fails with ResourceLimitError instead of growing
    the kernel without bound, and starts nothing; a wait makes room again."""
    from kernel.daemon.state import MAX_BUNDLES

    with kernel.connect(autostart=False) as k:
        tokens = [k._bundle({}, "set aside") for _ in range(MAX_BUNDLES)]
        with pytest.raises(kernel.ResourceLimitError, match="not waited for"):
            k.spawn([sys.executable, "-c", "raise SystemExit(3)"])
        k._drop_bundle(tokens.pop(), "wait")  # what Process.wait() does once it ended
        assert k.spawn([sys.executable, "-c", "raise SystemExit(3)"]).wait(timeout=30) == 3
