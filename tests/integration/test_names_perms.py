"""The name server's permission matrix (System V ipc_perm), with peers of other uids.

The kernel runs with `--socket-mode 0666` in a directory every uid can traverse.
CI runs as root: each peer imports kernel first, then drops to an unprivileged
uid/gid (setgroups, setresgid, setresuid) and connects (peers/names_peer.py).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import KernelDaemon
from peerlib import PEERS, NamesPeer

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="switching uids needs root"),
]

OWNER = (1000, 1000)
GROUP = (1001, 1000)  # another uid in the owner's group
OTHER = (1002, 1002)
CLASSES = {"owner": OWNER, "group": GROUP, "other": OTHER}
SHIFT = {"owner": 6, "group": 3, "other": 0}
MODES = [0o600, 0o640, 0o604, 0o660, 0o606, 0o066, 0o444, 0o222, 0o000]


def allowed(cls: str, mode: int, bit: int) -> bool:
    """ipc_perm: root may do all; otherwise only the caller's first matching class counts."""
    return cls == "root" or bool((mode >> SHIFT[cls]) & bit)


def as_user(uid_gid: tuple[int, int] | None) -> tuple[str, ...]:
    return () if uid_gid is None else ("--uid", str(uid_gid[0]), "--gid", str(uid_gid[1]))


def _start(mode: str | None) -> tuple[KernelDaemon, Path]:
    short = Path(os.environ.get("TMPDIR", "/tmp")) / f"mk-perm-{os.getpid()}-{time.monotonic_ns()}"
    short.mkdir()
    short.chmod(0o755)  # other uids must reach the socket
    daemon = KernelDaemon(short)
    daemon.start(*(("--socket-mode", mode) if mode else ()))
    return daemon, short


def _stop(daemon: KernelDaemon, short: Path) -> None:
    code = daemon.stop()
    log = daemon.log()
    for f in short.iterdir():
        f.unlink()
    short.rmdir()
    assert code == 0, f"kernel exit code {code}:\n{log}"
    assert "kernel exit: 0 live objects, 0 bundles" in log, log
    assert "Traceback" not in log, log


@pytest.fixture
def shared_kernel(monkeypatch: pytest.MonkeyPatch) -> Iterator[KernelDaemon]:
    """A kernel every uid may connect to (`--socket-mode 0666`)."""
    daemon, short = _start("0666")
    monkeypatch.setenv("MKIPC_SOCKET", daemon.path)
    monkeypatch.delenv("MKIPC_INHERIT", raising=False)
    yield daemon
    _stop(daemon, short)


@pytest.fixture
def peers(shared_kernel) -> Iterator[dict[str, NamesPeer]]:
    out: dict[str, NamesPeer] = {}
    try:
        for cls, ids in [*CLASSES.items(), ("root", None)]:
            out[cls] = NamesPeer(*as_user(ids))
        for cls, peer in out.items():
            assert peer.hello.get("ready"), peer.hello
            want = CLASSES.get(cls, (0, 0))
            assert (peer.hello["uid"], peer.hello["gid"]) == want
        yield out
    finally:
        for peer in out.values():
            peer.close()


def test_the_kernel_reports_each_peers_own_uid_and_gid(peers):
    owner = peers["owner"]
    entry = owner.ok("register", name="who", mode=0o644)["entry"]
    assert (entry["uid"], entry["gid"], entry["pid"]) == (*OWNER, owner.pid)


def test_lookup_needs_read_and_list_shows_only_readable_entries(peers):
    owner = peers["owner"]
    for mode in MODES:
        owner.ok("register", name=f"r.{mode:03o}", mode=mode)
    for cls, peer in peers.items():
        readable = []
        for mode in MODES:
            name = f"r.{mode:03o}"
            out = peer("lookup", name=name, key=name)
            if allowed(cls, mode, 4):
                assert out.get("ok"), (cls, oct(mode), out)
                readable.append(name)
                reply = peer.ok("call", key=name, data="hi")["data"]
                assert reply.split("|")[::2] == ["hi", str(owner.pid)]
            else:
                assert out["type"] == "AccessDeniedError", (cls, oct(mode), out)
                assert out["perm"], out  # a PermissionError
                assert "needs read permission" in out["msg"], out
                assert f"mode {mode:#o}" in out["msg"], out
                assert f"class {cls}" in out["msg"], out
            watched = peer("watch", name=name, timeout=1)
            assert watched.get("ok") == allowed(cls, mode, 4), (cls, oct(mode), watched)
        assert peer.ok("list", prefix="r.")["names"] == sorted(readable), cls


def test_notify_signals_only_those_who_may_read_the_entry(peers):
    owner = peers["owner"]
    for peer in peers.values():
        for mode in MODES:  # armed before the names exist: nothing to refuse yet
            peer.ok("notify", name=f"n.{mode:03o}", bits=1 << 9, key=f"n.{mode:03o}")
    for mode in MODES:
        owner.ok("register", name=f"n.{mode:03o}", mode=mode)  # fires before it returns
    for cls, peer in peers.items():
        for mode in MODES:
            word = peer.ok("poll", key=f"n.{mode:03o}")["word"]
            assert word == (1 << 9 if allowed(cls, mode, 4) else 0), (cls, oct(mode))
        for mode in MODES:  # the entries exist now: arming is checked at once
            out = peer("notify", name=f"n.{mode:03o}", bits=1, key=f"again.{mode:03o}")
            assert out.get("ok") == allowed(cls, mode, 4), (cls, oct(mode), out)


def test_unregister_and_replace_need_write(peers):
    owner = peers["owner"]
    for mode in MODES:
        owner.ok("register", name=f"w.{mode:03o}", mode=mode)
    for cls, peer in peers.items():
        for mode in MODES:
            name = f"w.{mode:03o}"
            if allowed(cls, mode, 2):
                continue  # the allowed cases take the entry: see below
            for op, kw in (("unregister", {}), ("register", {"replace": True})):
                out = (
                    peer(op, name=name, mode=0o666, **kw)
                    if op == "register"
                    else peer(op, name=name)
                )
                assert out["type"] == "AccessDeniedError", (cls, op, oct(mode), out)
                assert out["perm"], out
                assert "needs write permission" in out["msg"], out
            # a live registrant's name is not taken without replace=True, by anyone
            out = peer("register", name=name, mode=0o666)
            assert out["type"] == "AlreadyExistsError", out
    # every entry is still the owner's
    entries = owner.ok("list", prefix="w.")["names"]
    readable_by_owner = [f"w.{m:03o}" for m in MODES if allowed("owner", m, 4)]
    assert entries == sorted(readable_by_owner)
    for cls, peer in peers.items():
        for mode in MODES:
            if not allowed(cls, mode, 2):
                continue
            name, other = f"u.{mode:03o}.{cls}", f"p.{mode:03o}.{cls}"
            owner.ok("register", name=name, mode=mode)
            owner.ok("register", name=other, mode=mode)
            peer.ok("unregister", name=name)
            taken = peer.ok("register", name=other, mode=0o600, replace=True)["entry"]
            assert (taken["uid"], taken["pid"]) == (CLASSES.get(cls, (0, 0))[0], peer.pid)
            root_view = peers["root"].ok("list", prefix=f"u.{mode:03o}.{cls}")["names"]
            assert root_view == []


def test_root_may_do_all(peers):
    owner, root = peers["owner"], peers["root"]
    owner.ok("register", name="locked", mode=0o000)
    assert root.ok("lookup", name="locked")["rights"]
    assert root.ok("list", prefix="locked")["names"] == ["locked"]
    root.ok("register", name="locked", mode=0o600, replace=True)
    assert owner("lookup", name="locked")["type"] == "AccessDeniedError"  # root's now
    root.ok("unregister", name="locked")


def test_the_default_socket_mode_refuses_other_uids_at_connect(monkeypatch):
    daemon, short = _start(None)  # default: 0600
    monkeypatch.setenv("MKIPC_SOCKET", daemon.path)
    try:
        with NamesPeer(*as_user(OTHER)) as stranger:
            hello = stranger.hello
        assert hello.get("ok") is False, hello
        assert hello["perm"] or "permission" in hello["msg"].lower(), hello
        with NamesPeer() as root:  # the kernel's own user (root) still may
            assert root.hello.get("ready"), root.hello
            root.ok("register", name="fine", mode=0o666)
    finally:
        _stop(daemon, short)


def test_one_uid_cannot_take_every_waiting_place(peers):
    """Waiting lookups hold places in the name server; one uid may hold at most
    MAX_WAITERS_PER_UID of them, so another uid can still wait."""
    import subprocess
    import sys

    from services.names.server import MAX_WAITERS_PER_UID

    waiters = subprocess.Popen(  # root's: uid 0 fills its share
        [sys.executable, str(PEERS / "names_waiters.py"), str(MAX_WAITERS_PER_UID)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert waiters.stdout is not None
        assert waiters.stdout.readline().strip() == "waiting"
        refused = peers["root"]("lookup", name="svc.nothing", timeout=0.05)
        assert refused["type"] == "ResourceLimitError", refused
        assert f"uid 0 already has {MAX_WAITERS_PER_UID}" in refused["msg"]
        waited = peers["other"]("lookup", name="svc.nothing", timeout=0.05)
        assert waited["type"] == "CallTimeoutError", waited  # it could wait, and timed out
    finally:
        waiters.kill()
        waiters.wait(timeout=10)
        if waiters.stdout is not None:
            waiters.stdout.close()
