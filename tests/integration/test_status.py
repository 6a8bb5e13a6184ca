"""`mkipc status` / Kernel.status(): who holds what in the kernel (its ipcs).

Another uid's view (only its own) is in test_user_limits.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
from peerlib import PEERS

import kernel

pytestmark = pytest.mark.integration


@contextlib.contextmanager
def _connected_child(k: kernel.Kernel, **caps: object) -> Iterator[kernel.Process]:
    """peers/blocked.py, once it has connected and made its own endpoint (it is
    about to block in recv); killed and reaped on the way out."""
    blocked = [sys.executable, str(PEERS / "blocked.py"), "sync", "recv"]
    child = k.spawn(blocked, caps=caps, stdout=subprocess.PIPE, text=True)
    try:
        assert child.popen.stdout is not None
        assert child.popen.stdout.readline() == "ready\n"
        yield child
    finally:
        child.kill()
        child.wait(timeout=10)
        if child.popen.stdout is not None:
            child.popen.stdout.close()


def _mine(st: kernel.abi.KernelStatus, pid: int) -> kernel.abi.ProcessStatus:
    [p] = [p for p in st.processes if p.pid == pid]
    return p


def test_status_lists_each_process_with_what_it_holds(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        k.names.list()  # answered once the name server is up (its call waits till then)
        ep, n, _q = k.endpoint(), k.notification(), k.queue()  # kept: dropped ones close
        r, w = k.pipe()
        sleeper = k.spawn(["sleep", "30"])
        try:
            with _connected_child(k, ep=ep) as child:
                sleeper.monitor(n)
                st = k.status()
                me = _mine(st, os.getpid())
                assert st.pid == kernel_daemon.pid
                assert me.caps == {"endpoint": 2, "notification": 1, "pipe read end": 1,
                                   "pipe write end": 1, "queue": 1}  # fmt: skip
                assert (me.spawned, me.watched, me.pending, me.parent) == (2, 1, 0, 0)
                names = [p for p in st.processes if p.name_server]
                assert len(names) == 1
                assert names[0].pending == 1  # its receive
                kid = _mine(st, child.pid)
                # the name server's, the inherited one and its own (blocked.py makes one)
                assert (kid.parent, kid.caps, kid.spawned) == (me.conn, {"endpoint": 3}, 0)
                [mine] = [u for u in st.users if u.uid == os.getuid()]
                assert mine.used["objects"] >= 5
                assert mine.used["watched processes"] == 1
                assert mine.limits["connections"] == kernel.abi.MAX_CONNECTIONS_PER_UID
                assert st.hidden == 0
                assert st.live_objects >= 6
        finally:
            sleeper.kill()
            sleeper.wait(timeout=10)


def test_status_shows_each_objects_holders_contents_and_waiters(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        q, sem, (r, w) = k.queue(capacity=8), k.semaphore(3), k.pipe(8192)
        q.send(b"12345", mtype=2)
        q.send(b"678", mtype=1)
        w.write(b"buffered")
        ep = k.endpoint()
        with _connected_child(k, q=q) as child:
            st = k.status()
            me, kid = _mine(st, os.getpid()), _mine(st, child.pid)
            by_oid = {o.oid: o for o in st.objects}
            queue = by_oid[q.info().object_id]
            assert queue.kind == "queue"
            assert sorted(queue.holders) == sorted([me.conn, kid.conn])  # the child's copy
            assert queue.caps == 2
            assert queue.state == {"messages": 2, "capacity": 8, "used_bytes": 8 + 2 * 64,
                                   "max_bytes": queue.state["max_bytes"], "senders": 0,
                                   "receivers": 0}  # fmt: skip
            assert queue.state["max_bytes"] >= 8 + 2 * 64
            assert by_oid[sem.info().object_id].state == {"value": 3, "waiters": 0}
            pipe_state = {"buffered": 8, "capacity": 8192, "readers": 0, "writers": 0}
            assert by_oid[r.info().object_id].state == pipe_state
            assert by_oid[w.info().object_id].state == pipe_state
            assert by_oid[ep.info().object_id].state == {"senders": 0, "receivers": 0, "bound": 0}
            assert st.objects_hidden == 0


def test_mkipc_status_prints_a_table_and_json(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        k.names.list()  # the name server is up
        ep = k.endpoint()  # noqa: F841 - kept: a dropped capability closes itself
        run = [sys.executable, "-m", "kernel", "status", "--socket", kernel_daemon.path]
        table = subprocess.run(run, capture_output=True, text=True, timeout=30, check=True)
        lines = table.stdout.splitlines()
        assert lines[0].startswith(f"kernel pid {kernel_daemon.pid} (uid {os.geteuid()})")
        assert lines[1].split()[:3] == ["CONN", "PID", "UID:GID"]
        assert any(line.split()[1] == str(os.getpid()) for line in lines[2:] if line[0].isdigit())
        assert any("(the name server)" in line for line in lines)
        assert any(line.startswith("uid 0: connections ") for line in lines)
        out = subprocess.run([*run, "--json"], capture_output=True, text=True, timeout=30)
        st = json.loads(out.stdout)
        assert os.getpid() in [p["pid"] for p in st["processes"]]
        assert "endpoint" in [o["kind"] for o in st["objects"]]
        objects = subprocess.run([*run, "--objects"], capture_output=True, text=True, timeout=30)
        lines = objects.stdout.splitlines()
        assert "OBJECT  KIND" in "\n".join(lines)
        assert any("senders 0, receivers" in line for line in lines)


def test_mkipc_status_without_a_kernel_says_so(tmp_path):
    run = [sys.executable, "-m", "kernel", "status", "--socket", str(tmp_path / "none.sock")]
    out = subprocess.run(run, capture_output=True, text=True, timeout=30)
    assert out.returncode == 1
    assert out.stderr.startswith("mkipc status: ")


async def test_the_asyncio_face_has_status(kernel_daemon):
    async with kernel.connect_async(autostart=False) as k:
        n = await k.notification()  # kept: a dropped capability closes itself
        st = await k.status()
        assert _mine(st, os.getpid()).caps["notification"] == 1
        await n.close()
