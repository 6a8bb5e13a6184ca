"""Two named pipes (mkfifo(3)) in a private temporary directory, one per direction.

Opening a FIFO blocks until the other side opens it too (fifo(7)), so the order is fixed to
avoid both a deadlock and an early EOF: this process opens the echo FIFO for reading without
blocking; the peer opens the echo FIFO for writing (instant), then the ping FIFO for reading;
this process retries a non-blocking open of the ping FIFO for writing, which fails with ENXIO
until the peer's reader exists. Both names are removed once both ends are open.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import time
from collections.abc import Callable

from kernel.bench.mechanisms import FdEchoMechanism, PeerLostError, peer_main_on_fds, register

_OPEN_TIMEOUT_S = 10.0
_OPEN_RETRY_S = 0.002


@register
class OsFifo(FdEchoMechanism):
    name = "os.fifo"

    def unavailable(self) -> str | None:
        return None if hasattr(os, "mkfifo") else "os.mkfifo is not available on this OS"

    def _connect(self, payload_size: int) -> tuple[int, int]:
        tmpdir = tempfile.mkdtemp(prefix="mkipc-bench-")  # mode 0700: nobody else opens them
        try:
            ping, echo = os.path.join(tmpdir, "ping"), os.path.join(tmpdir, "echo")
            os.mkfifo(ping, 0o600)
            os.mkfifo(echo, 0o600)
            echo_r = os.open(echo, os.O_RDONLY | os.O_NONBLOCK)
            self._own(echo_r)
            peer = self._spawn(__name__, [ping, echo, str(payload_size)], [])
            ping_w = _open_writer(ping, peer.alive)
            self._own(ping_w)
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)
        os.set_blocking(echo_r, True)
        os.set_blocking(ping_w, True)
        return ping_w, echo_r


def _open_writer(path: str, peer_alive: Callable[[], bool]) -> int:
    """Open ``path`` for writing once a reader exists, within _OPEN_TIMEOUT_S."""
    deadline = time.monotonic() + _OPEN_TIMEOUT_S
    while True:  # bounded by the deadline
        try:
            return os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno != errno.ENXIO:
                raise
        if not peer_alive() or time.monotonic() > deadline:
            raise PeerLostError(f"os.fifo: the peer did not open {path}")
        time.sleep(_OPEN_RETRY_S)


def peer_main(argv: list[str]) -> None:
    """``<ping_path> <echo_path> <payload_size>``: open in the order the docstring explains."""
    ping, echo, size = argv
    echo_w = os.open(echo, os.O_WRONLY)
    ping_r = os.open(ping, os.O_RDONLY)
    peer_main_on_fds(ping_r, echo_w, int(size))
