"""Helpers the integration tests share: where the peer scripts live, and a spawned
peer that is always killed and reaped."""

from __future__ import annotations

import contextlib
import mmap
import os
import re
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Self

import kernel
from kernel import abi

PEERS = Path(__file__).parent / "peers"
ROOT = Path(__file__).resolve().parents[2]


def readme_script(path: Path) -> str:
    """The README's ```sh block, as written."""
    block = re.search(r"```sh\n(.*?)```", path.read_text(), re.S)
    assert block is not None, f"no sh block in {path}"
    return block.group(1)


def run_script(script: str) -> subprocess.CompletedProcess[str]:
    """Run a README's commands as a user would, from the repository's root."""
    return subprocess.run(
        ["bash", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )


@contextlib.contextmanager
def spawned(k: kernel.Kernel, script: str, *args: str, **caps) -> Iterator[kernel.Process]:
    """Run peers/<script> with `caps` inherited; kill and reap it on the way out."""
    proc = k.spawn([sys.executable, str(PEERS / script), *args], caps=caps)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=10)


def spawn_callers(
    k: kernel.Kernel, ep: kernel.EndpointCap, count: int, calls: int, *args: str
) -> list[kernel.Process]:
    """`count` peers/caller.py processes (named c0, c1, ...), each making `calls`
    calls on the `ep` it inherits (`args`: e.g. "session"); their output is piped
    as text for the test to read."""
    return [
        k.spawn(
            [sys.executable, str(PEERS / "caller.py"), f"c{i}", str(calls), *args],
            caps={"ep": ep},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(count)
    ]


class NamesPeer:
    """peers/names_peer.py as a plain subprocess (it finds the kernel by $MKIPC_SOCKET):
    send it a command, read its JSON answer; every read is bounded. Use as a context
    manager: on the way out it is killed by pid and reaped."""

    def __init__(self, *args: str) -> None:
        import json
        import queue
        import subprocess
        import threading

        self._json = json
        self.popen = subprocess.Popen(
            [sys.executable, str(PEERS / "names_peer.py"), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.pid = self.popen.pid
        self._lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.hello = self.answer()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self._lines.put(line)
        self._lines.put("")

    def answer(self, timeout: float = 20.0) -> dict:
        import queue

        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"names_peer pid {self.pid} did not answer in {timeout} s") from None
        if not line:
            raise ConnectionError(f"names_peer pid {self.pid} exited ({self.popen.poll()})")
        return self._json.loads(line)

    def send(self, op: str, **kw: object) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(self._json.dumps({"op": op, **kw}) + "\n")
        self.popen.stdin.flush()

    def __call__(self, op: str, **kw: object) -> dict:
        self.send(op, **kw)
        return self.answer()

    def ok(self, op: str, **kw: object) -> dict:
        out = self(op, **kw)
        assert out.get("ok"), f"{op} {kw}: {out}"
        return out

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()

    def close(self) -> None:
        self.kill()
        self.popen.wait(timeout=10)
        self._reader.join(timeout=10)  # EOF once the process is gone
        for f in (self.popen.stdin, self.popen.stdout):
            if f is not None:
                try:
                    f.close()
                except OSError:
                    pass

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def accept_offer(ep: kernel.EndpointCap) -> kernel.SessionServer:
    """The next session offer on `ep`, accepted (other messages are dropped)."""
    while True:
        msg = ep.recv(timeout=20)
        if msg.session_offer:
            return ep.accept_session(msg)


def session_in_process(
    ep: kernel.EndpointCap, caller: kernel.EndpointCap
) -> tuple[kernel.Session, kernel.SessionServer]:
    """A session with both ends in this process: opened through `caller` from a
    thread (open waits for the accept), accepted here on `ep`."""
    opened: list[kernel.Session] = []
    t = threading.Thread(target=lambda: opened.append(caller.session(timeout=20)))
    t.start()
    server = accept_offer(ep)
    t.join(20)
    return opened[0], server


def raising_in_thread(wait: Callable[[], object]) -> tuple[threading.Thread, list[BaseException]]:
    """Start `wait()`, a blocking call the test expects to fail, in a thread of its
    own; the list holds what it raised once the thread has ended."""
    raised: list[BaseException] = []

    def run() -> None:
        try:
            wait()
        except BaseException as e:
            raised.append(e)

    t = threading.Thread(target=run)
    t.start()
    return t, raised


def forge_answered(mm: mmap.mmap, req_id: int, answered: bool = True) -> None:
    """Write call `req_id`'s word as if its server had answered it, or (False) as
    not settled yet. A peer maps the session's region too, so a hostile one can."""
    off = abi.OFF_CALLS + 8 * (req_id % abi.MAX_TRACKED_CALLS)
    struct.pack_into("<Q", mm, off, (req_id | 1 << 63) if answered else 0)


def never_written(e: kernel.CallTimeoutError) -> bool:
    """The call timed out before it could be written: the server fell 256 calls
    behind (each withdrawn call keeps its word until the server has seen it), so
    the session waited as for a full ring."""
    return "does not drain" in str(e)


# --- the kernel's name server, killed and restarted -----------------------------------


def wait_for(predicate: Callable[[], Any], seconds: float = 10.0) -> Any:
    deadline = time.monotonic() + seconds
    while not (result := predicate()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)
    return result


def name_server_pid(kernel_pid: int) -> int:
    with open(f"/proc/{kernel_pid}/task/{kernel_pid}/children") as f:
        (pid,) = (int(p) for p in f.read().split())
    return pid


def name_server_pid_or_none(kernel_pid: int) -> int | None:
    try:
        return name_server_pid(kernel_pid)
    except ValueError:  # between the old one's end and the new one's start
        return None


def restart_name_server(kernel_daemon: Any) -> None:
    """SIGKILL the kernel's name server and wait until its successor runs (the kernel
    started it: a grandchild of the test)."""
    old = name_server_pid(kernel_daemon.pid)
    restarts = kernel_daemon.log().count("restarting it")
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: kernel_daemon.log().count("restarting it") > restarts)
    wait_for(lambda: name_server_pid_or_none(kernel_daemon.pid) not in (None, old))
