"""What the library rows (pyzmq, Pyro5, gRPC, iceoryx2) share: a server peer that says when
it is ready, and that ends when this process closes its control pipe.

Libraries own their sockets, so the fd-echo trick (closing our end is the peer's EOF) does not
reach them. Instead every server peer holds the read end of a control pipe and a thread that
ends the process at EOF; the peer also writes one line (its address, or just "ready") to a
ready pipe once it serves, so set-up waits for a real server rather than sleeping.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import select
import shutil
import tempfile
import threading
import time
from collections.abc import Sequence

from kernel.bench.mechanisms import Mechanism, PeerLostError, PeerProcess

__all__ = ["ServedMechanism", "announce", "exit_on_eof", "missing_package"]

_READY_TIMEOUT_S = 20.0  # a fresh interpreter importing grpc or Pyro5 takes a while


def missing_package(module: str, pip_name: str) -> str | None:
    """A note for the report if ``module`` cannot be imported, else None."""
    if importlib.util.find_spec(module) is None:
        return f"needs {pip_name} (pip install 'mkipc[bench]')"
    return None


class ServedMechanism(Mechanism):
    """Base of the library rows: peers started with a control pipe and a ready line."""

    def __init__(self) -> None:
        self._peers: list[PeerProcess] = []
        self._control_r = -1  # every peer inherits this end...
        self._control_w = -1  # ...and ends when this process closes this one
        self._tmpdir: str | None = None

    def _private_dir(self) -> str:
        """A fresh directory for UNIX socket paths, removed at teardown."""
        if self._tmpdir is None:
            self._tmpdir = tempfile.mkdtemp(prefix="mkb-")
        return self._tmpdir

    def _start_peer(self, module: str, argv: Sequence[str]) -> str:
        """Start ``<module>.peer_main([control_fd, ready_fd, *argv])``; return its ready line."""
        control_r = self._control_pipe()
        ready_r, ready_w = os.pipe()
        try:
            fds = (control_r, ready_w)
            peer = PeerProcess(module, [*map(str, fds), *argv], fds, self.peer_lifetime_s)
            self._peers.append(peer)
            os.close(ready_w)
            ready_w = -1
            return _read_ready_line(ready_r, peer)
        finally:
            os.close(ready_r)
            if ready_w >= 0:
                os.close(ready_w)

    def _control_pipe(self) -> int:
        """The read end every peer inherits; one pipe serves all peers of this mechanism."""
        if self._control_w < 0:
            self._control_r, self._control_w = os.pipe()
        return self._control_r

    def peer_pids(self) -> list[int]:
        return [peer.pid for peer in self._peers]

    def teardown(self) -> None:
        self._close_client()
        if self._control_w >= 0:
            for fd in (self._control_w, self._control_r):
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._control_r = self._control_w = -1
        for peer in self._peers:
            peer.stop()
        self._peers.clear()
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def _close_client(self) -> None:
        """Close this process's side of the library (sockets, channels, proxies)."""


def _read_ready_line(fd: int, peer: PeerProcess) -> str:
    """The peer's first line on ``fd``; PeerLostError if it exits or stays silent too long."""
    deadline = time.monotonic() + _READY_TIMEOUT_S
    data = b""
    while not data.endswith(b"\n"):  # bounded by the deadline
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise PeerLostError(f"the server peer did not start in {_READY_TIMEOUT_S:g} s")
        chunk = os.read(fd, 4096)
        if not chunk:
            peer.stop(0.5)
            raise PeerLostError("the server peer exited before it was ready")
        data += chunk
    return data.decode().strip()


def announce(ready_fd: int, line: str = "ready") -> None:
    """Peer side: tell the benchmark this server is up (and where), then close the pipe."""
    os.write(ready_fd, line.encode() + b"\n")
    os.close(ready_fd)


def exit_on_eof(control_fd: int, stop: threading.Event | None = None) -> None:
    """Peer side: end this process as soon as the benchmark closes the control pipe.

    By os._exit, because a library's serve loop may not return for a signal or a flag, and
    its threads have nothing to flush; or, if ``stop`` is given, by setting it, for a serve
    loop that checks it and has shared state of its own to clean up.
    """

    def watch() -> None:
        with contextlib.suppress(OSError):
            while os.read(control_fd, 1):  # bounded: the benchmark never writes to it
                pass
        if stop is None:
            os._exit(0)
        stop.set()

    threading.Thread(target=watch, name="mkipc-bench-control", daemon=True).start()
