"""Signals rebuilt on capabilities: kernel events as notification bits, and the
dispositions of kernel.Signals (catch / ignore / default / block).

The kernel tells of a process's end by ORing bits into a notification: a caller's
(`msg.monitor(n, bits)`, authority: its reply capability) and a child's
(`Process.monitor(n, bits)`, authority: being its parent; the kernel watches the
child by a pidfd). The dispatchers run in real processes (peers/signals_peer.py),
signalled by this one through a SIGNAL capability only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from peerlib import PEERS, ROOT, readme_script, run_script, spawned

import kernel
from capabilities import Rights
from kernel import Sig
from kernel.abi import Op

pytestmark = pytest.mark.integration


@contextlib.contextmanager
def _peer(
    k: kernel.Kernel, mode: str, n: kernel.NotificationCap, *args: str
) -> Iterator[tuple[kernel.Process, kernel.QueueCap]]:
    """peers/signals_peer.py taking its signals from `n`, reporting on a queue;
    killed and reaped on the way out."""
    out = k.queue(capacity=16)
    proc = k.spawn(
        [sys.executable, str(PEERS / "signals_peer.py"), mode, *args],
        caps={"n": n, "out": out.copy(Rights.SEND | Rights.COPY)},
    )
    try:
        yield proc, out
    finally:
        proc.kill()
        proc.wait(timeout=10)


def _kernel_fds(daemon) -> int:
    return len(os.listdir(f"/proc/{daemon.pid}/fd"))


# ------------------------------------------------------------------ kernel events


def test_a_callers_end_sets_the_bits_given_in_the_notification(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        ep, n = k.endpoint(), k.notification()
        with spawned(k, "actor.py", "callcreds", "0", ep=ep) as caller:
            msg = ep.recv(timeout=20)
            msg.monitor(n, Sig.USR2 | 1 << 40)
            assert n.poll() == 0  # nothing while the caller lives
            caller.kill()
            assert n.wait(timeout=5) == Sig.USR2 | 1 << 40
            assert caller.wait(timeout=10) != 0
        with pytest.raises(kernel.PeerClosedError):
            msg.reply(b"too late")


def test_a_callers_end_needs_signal_on_the_notification_and_some_bits(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        ep, n = k.endpoint(), k.notification()
        wait_only = n.copy(Rights.WAIT)
        with spawned(k, "actor.py", "callcreds", "0", ep=ep):
            msg = ep.recv(timeout=20)
            with pytest.raises(kernel.AccessDeniedError):
                msg.monitor(wait_only, 1)
            with pytest.raises(ValueError, match="not be 0"):
                msg.monitor(n, 0)
            slot = msg._reply_slot  # past the client's check: an error, not a disconnect
            raw = {"arg": 0, "payload": n.slot.to_bytes(8, "little")}
            with pytest.raises(kernel.InvalidArgumentError, match="non-zero"):
                k._roundtrip(Op.CALLER_MONITOR, kernel.ReplyCap(k, slot), "monitor", **raw)
            msg.reply(b"still answerable")
        assert n.poll() == 0


def test_a_childs_end_sets_chld_and_the_child_is_still_the_parents_to_reap(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        n = k.notification()
        script = "import kernel, time\nwith kernel.connect(): time.sleep(0.3)\nraise SystemExit(3)"
        child = k.spawn([sys.executable, "-c", script])
        child.monitor(n)
        assert n.poll() == 0
        assert n.wait(timeout=20) == Sig.CHLD
        assert child.wait(timeout=10) == 3


def test_a_child_that_never_connects_is_signalled_too(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        n = k.notification()
        child = k.spawn([sys.executable, "-c", "raise SystemExit('no kernel for me')"])
        child.monitor(n, Sig.CHLD | Sig.USR1)
        assert n.wait(timeout=20) == Sig.CHLD | Sig.USR1
        assert child.wait(timeout=10) == 1


def test_a_child_that_ended_already_is_signalled_at_once(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        n = k.notification()
        child = k.spawn(["true"])
        deadline = time.monotonic() + 10
        while not os.path.exists(f"/proc/{child.pid}") or _state(child.pid) != "Z":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        child.monitor(n)  # a zombie: ended, not yet reaped
        assert n.wait(timeout=5) == Sig.CHLD
        assert child.wait(timeout=10) == 0
        with pytest.raises(kernel.NotFoundError):
            child.monitor(n)  # reaped: no such process any more


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def test_only_a_parent_may_watch_a_process(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        n = k.notification()
        for pid in (1, os.getppid(), os.getpid()):  # none is our child (the kernel is)
            raw = {"arg": 1, "payload": pid.to_bytes(8, "little")}
            with pytest.raises(kernel.AccessDeniedError, match="not a child"):
                k._roundtrip(Op.PROCESS_MONITOR, n, "monitor", **raw)
        for pid in (0, -5, 2**22 + 12345, 2**31, 2**40, -(2**63)):
            raw = {"arg": 1, "payload": pid.to_bytes(8, "little", signed=True)}
            with pytest.raises((kernel.InvalidArgumentError, kernel.NotFoundError)):
                k._roundtrip(Op.PROCESS_MONITOR, n, "monitor", **raw)
        with pytest.raises(kernel.InvalidArgumentError):
            k._roundtrip(Op.PROCESS_MONITOR, n, "monitor", arg=1, payload=b"\x01\x02")
        child = k.spawn(["sleep", "30"])
        try:
            with pytest.raises(kernel.AccessDeniedError):
                child.monitor(n.copy(Rights.WAIT))  # SIGNAL is needed
            with pytest.raises(ValueError, match="non-zero"):
                child.monitor(n, 0)
            with pytest.raises(TypeError, match="notification"):
                child.monitor(k.endpoint())  # type: ignore[arg-type]
        finally:
            child.kill()
            child.wait(timeout=10)
        assert n.poll() == 0


def test_a_watch_ends_with_its_owner_and_gives_its_descriptor_back(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        n = k.notification()
        before = _kernel_fds(kernel_daemon)
        children = []
        with kernel.connect(autostart=False) as owner:
            n2 = owner.notification()
            for _ in range(5):
                child = owner.spawn(["sleep", "30"])
                child.monitor(n2)
                children.append(child)
            assert _kernel_fds(kernel_daemon) >= before + 5  # a pidfd each
            for child in children:
                child.kill()
                child.popen.wait(10)
            assert n2.wait(timeout=5) == Sig.CHLD
            for child in children:
                child.wait(timeout=10)
            still = owner.spawn(["sleep", "30"])
            still.monitor(n2)
            owner.close()  # the owner ends first: its watch goes, nobody is told
            still.kill()
            still.popen.wait(10)
        deadline = time.monotonic() + 5
        while _kernel_fds(kernel_daemon) > before and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _kernel_fds(kernel_daemon) == before
        assert n.poll() == 0


def test_chld_reaches_a_bound_endpoints_receive(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        ep, n = k.endpoint(), k.notification()
        ep.bind(n)
        child = k.spawn(["true"])
        child.monitor(n)
        msg = ep.recv(timeout=20)
        assert msg.is_signal
        assert msg.badge == Sig.CHLD
        assert child.wait(timeout=10) == 0


# ------------------------------------------------------------------ dispositions


def test_caught_signals_run_their_handler_and_ignored_ones_nothing(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        n = k.notification()
        with _peer(k, "catch", n) as (proc, out):
            assert out.recv(timeout=20).data == b"ready"
            sender = n.copy(Rights.SIGNAL)  # all a signaller needs
            sender.signal(Sig.HUP)
            sender.signal(Sig.USR2 | Sig.USR1)
            got = [out.recv(timeout=10).data for _ in range(2)]
            assert got == [b"USR1", b"USR2"]  # the lowest signal first, as Linux does
            with pytest.raises(kernel.CallTimeoutError):
                out.recv(timeout=0.3)  # HUP ignored: nothing reported
            assert proc.returncode is None


def test_the_default_of_term_is_the_os_default_it_ends_the_process(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        n = k.notification()
        with _peer(k, "default", n) as (proc, out):
            assert out.recv(timeout=20).data == b"ready"
            n.signal(Sig.CHLD)  # default: ignored, as by the OS
            n.signal(Sig.TERM)
            assert proc.wait(timeout=10) == -signal.SIGTERM


def test_the_default_of_int_is_keyboardinterrupt_in_the_main_thread(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        n = k.notification()
        with _peer(k, "default", n) as (proc, out):
            assert out.recv(timeout=20).data == b"ready"
            n.signal(Sig.INT)
            assert out.recv(timeout=10).data == b"interrupted"
            assert proc.wait(timeout=10) == 0


def test_a_sigchld_handler_reaps_every_child(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        n = k.notification()
        with _peer(k, "chld", n, "6") as (proc, out):
            assert out.recv(timeout=60).data == b"reaped 6"
            assert proc.wait(timeout=10) == 0


def test_dispositions_given_at_the_start_meet_signals_sent_before_it(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        n = k.notification()
        n.signal(Sig.CHLD | Sig.WINCH)  # before any dispatcher: they wait in the word
        # (both ignored by default: a regression fails this test, not the process)
        got: list[Sig] = []
        arrived = threading.Event()
        on = {Sig.CHLD: lambda s: (got.append(s), arrived.set()), Sig.HUP: signal.SIG_IGN}
        with kernel.Signals(n, on, blocked=Sig.WINCH) as sigs:
            assert arrived.wait(5)
            assert got == [Sig.CHLD]
            deadline = time.monotonic() + 5
            while sigs.pending != Sig.WINCH:  # blocked from the start: not the default
                assert time.monotonic() < deadline
                time.sleep(0.01)
            sigs.catch(Sig.WINCH, got.append)
            sigs.unblock(Sig.WINCH)
            assert got == [Sig.CHLD, Sig.WINCH]


def test_blocked_signals_wait_pending_and_come_once_when_unblocked(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        n = k.notification()
        got: list[tuple[Sig, str]] = []
        arrived = threading.Event()
        with kernel.Signals(n) as sigs:
            sigs.catch(Sig.USR1 | Sig.USR2, lambda s: (got.append((s, _thread())), arrived.set()))
            sigs.block(Sig.USR1)
            assert sigs.blocked == Sig.USR1
            n.signal(Sig.USR1)
            n.signal(Sig.USR1)  # twice: a set, handled once
            n.signal(Sig.USR2)
            assert arrived.wait(5)
            assert got == [(Sig.USR2, "mkipc-signals")]
            deadline = time.monotonic() + 5
            while sigs.pending != Sig.USR1:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            sigs.unblock(Sig.USR1)  # delivered here, before unblock returns
            assert got[1:] == [(Sig.USR1, threading.current_thread().name)]
            assert sigs.pending == 0
        assert n.poll() == 0


def _thread() -> str:
    return threading.current_thread().name


def test_a_handler_that_raises_is_logged_and_the_others_go_on(kernel_daemon, caplog):
    with kernel.connect(autostart=False) as k:
        n = k.notification()
        done = threading.Event()

        def broken(sig: Sig) -> None:
            raise RuntimeError("a bug in the handler")

        with kernel.Signals(n) as sigs, caplog.at_level(logging.ERROR, "mkipc.signals"):
            sigs.catch(Sig.USR1, broken)
            sigs.catch(Sig.USR2, lambda s: done.set())
            n.signal(Sig.USR1 | Sig.USR2)
            assert done.wait(5)
        assert "the handler of SIGUSR1 raised" in caplog.text


def test_closing_leaves_later_signals_in_the_word(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        n = k.notification()
        sigs = kernel.Signals(n)
        sigs.catch(Sig.USR1, lambda s: None)
        sigs.close()
        sigs.close()  # twice is fine
        n.signal(Sig.USR1)
        assert n.poll() == Sig.USR1
        with pytest.raises(ValueError, match="non-zero 64-bit"):
            sigs.ignore(0)
        with pytest.raises(TypeError, match="callable"):
            sigs.catch(Sig.USR1, "not a handler")  # type: ignore[arg-type]


def test_the_supervisor_example_runs_as_its_readme_says(kernel_daemon):
    out = run_script(readme_script(ROOT / "examples/supervisor/README.md"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "started w0, w1, w2",
        "w1 exited with 3: restarting it",
        "stopped w0, w1, w2 with TERM: exit codes [0, 0, 0]",
    ]


def test_sig_names_the_64_linux_signals():
    assert Sig.TERM == 1 << (signal.SIGTERM - 1)
    assert Sig.of(signal.SIGCHLD) is Sig.CHLD
    assert Sig.of(signal.SIGRTMIN).signum == signal.SIGRTMIN
    assert Sig.of(64) == 1 << 63
    for bad in (0, 65):
        with pytest.raises(ValueError):
            Sig.of(bad)
    with pytest.raises(ValueError, match="not one signal"):
        _ = (Sig.HUP | Sig.INT).signum
    assert str(Sig.HUP | Sig.TERM | Sig.of(41)) == "SIGHUP|SIGTERM|signal 41"


async def test_async_handlers_run_in_the_loop_and_closing_loses_nothing(kernel_daemon):
    async with kernel.connect_async(autostart=False) as k:
        n = await k.notification()
        got: list[Sig] = []
        arrived = asyncio.Event()

        async def handler(sig: Sig) -> None:
            await asyncio.sleep(0)
            got.append(sig)
            arrived.set()

        sigs = kernel.AsyncSignals(n)
        sigs.catch(Sig.USR1, handler)
        sigs.block(Sig.USR2)
        sigs.catch(Sig.USR2, handler)
        await n.signal(Sig.USR1 | Sig.USR2)
        await asyncio.wait_for(arrived.wait(), 5)
        assert got == [Sig.USR1]
        for _ in range(500):  # the dispatcher took the word: USR2 waits, blocked
            if sigs.pending == Sig.USR2:
                break
            await asyncio.sleep(0.01)
        await sigs.unblock(Sig.USR2)
        assert got == [Sig.USR1, Sig.USR2]
        sigs.close()
        await asyncio.sleep(0.05)
        await n.signal(Sig.HUP)
        assert await n.wait(timeout=5) == Sig.HUP  # the closed dispatcher took nothing


async def test_async_child_end_sets_chld(kernel_daemon):
    async with kernel.connect_async(autostart=False) as k:
        n = await k.notification()
        child = await k.spawn(["true"])
        await child.monitor(n)
        assert await n.wait(timeout=20) == Sig.CHLD
        assert await child.wait(timeout=10) == 0


def test_the_dispatcher_ends_quietly_with_its_connection_and_says_so_when_revoked(
    kernel_daemon, caplog
):
    with caplog.at_level(logging.WARNING, "mkipc.signals"):
        k = kernel.connect(autostart=False)
        quiet = kernel.Signals(k.notification())
        k.close()  # the program's own end: nothing to say
        quiet._thread.join(5)
        assert not quiet._thread.is_alive()
        assert "stopped taking signals" not in caplog.text
        with kernel.connect(autostart=False) as k:
            n = k.notification()
            revoked = kernel.Signals(n)
            n.revoke()  # its copy goes: the program did not ask for that
            revoked._thread.join(5)
            assert not revoked._thread.is_alive()
        assert "stopped taking signals" in caplog.text
