"""Per-user limits (kernel/daemon/quota.py): what one uid's processes keep in the
kernel together is bounded, however many processes or connections they use, and a
user at a limit leaves room for the others.

The kernel runs with small limits (`mkipc kernel --user-limit NAME=N`) and
`--socket-mode 0666`; "another user" is a forked child that drops to uid 65534.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import KernelDaemon
from peerlib import session_in_process

import kernel

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="switching uids needs root"),
]

LIMITS = {
    "connections": 4,
    "sessions": 2,
    "objects": 40,
    "memory-objects": 3,
    "buffer-bytes": "2m",
    "watched-processes": 2,
}


@contextlib.contextmanager
def shared_kernel(
    monkeypatch: pytest.MonkeyPatch, *flags: str, wrapper: tuple[str, ...] = ()
) -> Iterator[KernelDaemon]:
    """A kernel every uid may connect to (`--socket-mode 0666`, no name server),
    stopped and checked on the way out: clean exit, nothing left alive."""
    short = Path(os.environ.get("TMPDIR", "/tmp")) / f"mk-lim-{os.getpid()}-{time.monotonic_ns()}"
    short.mkdir()
    short.chmod(0o755)  # the other uid must reach the socket
    daemon = KernelDaemon(short)
    daemon.start("--no-names", "--socket-mode", "0666", *flags, wrapper=wrapper)
    monkeypatch.setenv("MKIPC_SOCKET", daemon.path)
    monkeypatch.delenv("MKIPC_INHERIT", raising=False)
    yield daemon
    code, log = daemon.stop(), daemon.log()
    for f in short.iterdir():
        f.unlink()
    short.rmdir()
    assert code == 0, log
    assert "kernel exit: 0 live objects, 0 bundles" in log, log
    assert "Traceback" not in log, log


@pytest.fixture
def limited(monkeypatch: pytest.MonkeyPatch) -> Iterator[KernelDaemon]:
    with shared_kernel(monkeypatch, *[f"--user-limit={n}={v}" for n, v in LIMITS.items()]) as d:
        yield d


@pytest.fixture
def few_descriptors(monkeypatch: pytest.MonkeyPatch) -> Iterator[KernelDaemon]:
    """A kernel whose descriptor limit is 400 (prlimit): 336 for its users, the last
    42 of them (an eighth) kept for root."""
    with shared_kernel(monkeypatch, wrapper=("prlimit", "--nofile=400:400")) as daemon:
        yield daemon


def test_the_last_descriptors_are_kept_for_root(few_descriptors):
    """Four users at their bounds would hold more descriptors than the kernel has;
    when the others hold all they may, root can still connect and look."""
    read, write = os.pipe()
    go_read, go_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        os.close(read)
        os.close(go_write)
        out = "no refusal"
        try:
            os.setgid(65534)
            os.setuid(65534)
            held = []
            for _ in range(200):
                held.append(kernel.connect(autostart=False))
        except kernel.ResourceLimitError as e:
            out = f"{len(held)} {e}"
        except BaseException as e:
            out = f"{type(e).__name__}: {e}"
        os.write(write, out.encode())
        os.read(go_read, 1)  # hold them until the parent has looked
        os._exit(0)
    os.close(write)
    os.close(go_read)
    try:
        count, _, why = os.read(read, 4096).decode().partition(" ")  # one message
        os.close(read)
        assert count.isdigit(), f"{count} {why}"
        assert int(count) >= 60, why  # (336 - 42) / 4 connections, less root's
        assert "descriptors left for uid 65534" in why
        assert "kept for root" in why
        with kernel.connect(autostart=False) as root:  # from the reserve
            st = root.status()
            [other] = [u for u in st.users if u.uid == 65534]
            assert other.used["connections"] == int(count)
            assert (st.descriptor_limit, st.descriptor_reserve) == (336, 42)
            assert st.descriptors > 336 - 42 - 4  # no other uid may take the next
            assert st.descriptors <= 336
            n = root.notification()
            n.signal(1)
            assert n.poll() == 1
        kernel_fds = len(os.listdir(f"/proc/{few_descriptors.pid}/fd"))
        assert kernel_fds < 400 - 16, kernel_fds
    finally:
        os.write(go_write, b"x")
        os.close(go_write)
        os.waitpid(pid, 0)


def as_another_user(act: Callable[[kernel.Kernel], object]) -> str:
    """Run `act` on a new connection of uid 65534 in a forked child: what it returned
    if that is a str, else "ok", or the error it raised."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        os.close(read)
        try:
            os.setgid(65534)
            os.setuid(65534)
            with kernel.connect(autostart=False) as k:
                result = act(k)
            out = result if isinstance(result, str) else "ok"
        except BaseException as e:
            out = f"{type(e).__name__}: {e}"
        os.write(write, out.encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        out = f.read().decode()
    os.waitpid(pid, 0)
    return out


def test_one_uids_connections_are_bounded_and_another_uid_still_connects(limited):
    mine = [kernel.connect(autostart=False) for _ in range(4)]
    try:
        with pytest.raises(kernel.ResourceLimitError, match="uid 0 would have more than 4 conn"):
            kernel.connect(autostart=False)
        assert as_another_user(lambda k: k.notification()) == "ok"
        mine.pop().close()  # its connection is given back at once
        mine.append(kernel.connect(autostart=False))
    finally:
        for k in mine:
            k.close()


def test_queue_and_pipe_buffers_are_bounded_across_a_users_processes(limited):
    with kernel.connect(autostart=False) as a, kernel.connect(autostart=False) as b:
        q = a.queue(max_bytes=1 << 20)  # (kept: a dropped capability closes itself)
        r, w = b.pipe(1 << 20)
        match = "uid 0 would have more than 2 MiB of queue and pipe buffers"
        with pytest.raises(kernel.ResourceLimitError, match=match):
            a.queue(max_bytes=1)  # each process is within its own 256 MiB
        assert as_another_user(lambda k: k.queue(max_bytes=1 << 20)) == "ok"
        r.close()
        w.close()  # the pipe is gone: its megabyte comes back to the uid
        a.queue(max_bytes=1 << 20).close()
        q.close()


def test_objects_are_bounded_per_user_and_come_back_when_destroyed(limited):
    with kernel.connect(autostart=False) as k:
        made = [k.notification() for _ in range(38)]
        r, w = k.pipe()  # two objects: its two ends
        with pytest.raises(kernel.ResourceLimitError, match="uid 0 would have more than 40 obj"):
            k.endpoint()
        assert as_another_user(lambda other: other.endpoint()) == "ok"
        r.close()  # the read end is an object of its own: destroyed, it comes back
        ep = k.endpoint()
        with pytest.raises(kernel.ResourceLimitError):
            k.endpoint()
        ep.close()
        w.close()
        for n in made:
            n.close()
        fresh = [k.notification() for _ in range(40)]  # every one came back
        for n in fresh:
            n.close()


def test_memory_objects_are_bounded_per_user(limited):
    with kernel.connect(autostart=False) as a, kernel.connect(autostart=False) as b:
        kept = [a.memory(4096), b.memory(4096), b.memory(4096)]
        with pytest.raises(kernel.ResourceLimitError, match="uid 0 would have more than 3 memory"):
            a.memory(4096)
        assert as_another_user(lambda k: k.memory(4096)) == "ok"
        kept.pop().close()
        a.memory(4096).close()


def test_watched_processes_are_bounded_per_user_and_come_back_when_they_fire(limited):
    def watch_a_child(k: kernel.Kernel) -> None:
        child = k.spawn(["true"])
        child.monitor(k.notification())
        child.wait(timeout=10)

    with kernel.connect(autostart=False) as a, kernel.connect(autostart=False) as b:
        n = a.notification()
        children = [a.spawn(["sleep", "30"]), b.spawn(["sleep", "30"])]
        children[0].monitor(n)
        children[1].monitor(b.notification())
        third = a.spawn(["sleep", "30"])
        try:
            match = "uid 0 would have more than 2 watched"
            with pytest.raises(kernel.ResourceLimitError, match=match):
                third.monitor(n)
            assert as_another_user(watch_a_child) == "ok"
            children[0].kill()
            assert n.wait(timeout=10) == kernel.Sig.CHLD  # fired: its place comes back
            third.monitor(n)
        finally:
            for child in [*children, third]:
                child.kill()
                child.wait(timeout=10)


def test_status_shows_another_user_only_its_own(limited):
    def seen(k: kernel.Kernel) -> str:
        st = k.status()
        procs = [(p.uid, p.pid == os.getpid()) for p in st.processes]
        return repr((procs, st.hidden, [u.uid for u in st.users]))

    with kernel.connect(autostart=False) as mine:
        mine.notification()
        assert as_another_user(seen) == repr(([(65534, True)], 1, [65534]))
        st = mine.status()  # root sees every process and uid
        assert [p.uid for p in st.processes] == [0]  # the other one has gone
        assert [u.uid for u in st.users] == [0, 65534]
        assert st.hidden == 0


def test_sessions_are_bounded_per_user(limited):
    with kernel.connect(autostart=False) as k:
        ep = k.endpoint()
        opened = [session_in_process(ep, ep) for _ in range(2)]
        with pytest.raises(kernel.ResourceLimitError, match="uid 0 would have more than 2 sess"):
            ep.session(timeout=5)
        caller, server = opened.pop()
        caller.close()
        server.close()  # both ends closed: the session is gone
        again = session_in_process(ep, ep)
        for caller, server in [*opened, again]:
            caller.close()
            server.close()


def test_a_bad_user_limit_is_refused_at_start(tmp_path):
    daemon = KernelDaemon(tmp_path)
    with pytest.raises(RuntimeError, match="expected NAME=N"):
        daemon.start("--user-limit", "bogus=3")
