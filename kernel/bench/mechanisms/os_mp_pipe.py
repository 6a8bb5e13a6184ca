"""multiprocessing.Pipe: what a Python user reaches for first, a socketpair with
``send_bytes``/``recv_bytes`` length framing (multiprocessing/connection.py).

The peer wraps its end in ``Connection(fd)`` inside a PeerProcess rather than being started by
``multiprocessing.Process``: the start method does not touch the per-message path, and this way
the benchmark does not depend on re-importing the caller's ``__main__`` ("spawn").
"""

from __future__ import annotations

import contextlib
import multiprocessing
from multiprocessing.connection import Connection

from kernel.bench.mechanisms import Mechanism, PeerLostError, PeerProcess, make_payload, register


@register
class OsMpPipe(Mechanism):
    name = "mp.Pipe"

    def __init__(self) -> None:
        self._conn: Connection | None = None
        self._peer: PeerProcess | None = None
        self._payload = b""

    def setup(self, payload_size: int) -> None:
        self.teardown()
        self._payload = make_payload(payload_size)
        ours, theirs = multiprocessing.Pipe(duplex=True)
        self._conn = ours
        with theirs:  # only the peer holds its end afterwards: our close is its EOF
            fd = theirs.fileno()
            self._peer = PeerProcess(__name__, [str(fd)], [fd], self.peer_lifetime_s)

    def roundtrip(self) -> None:
        conn = self._conn
        assert conn is not None, "mp.Pipe: roundtrip before setup"
        conn.send_bytes(self._payload)
        if len(conn.recv_bytes()) != len(self._payload):
            raise PeerLostError("mp.Pipe: the echo has the wrong size")

    def peer_pids(self) -> list[int]:
        return [] if self._peer is None else [self._peer.pid]

    def teardown(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._peer is not None:
            self._peer.stop()
            self._peer = None


def peer_main(argv: list[str]) -> None:
    """``<fd>``: echo messages on the Connection until EOF."""
    conn = Connection(int(argv[0]))
    with contextlib.suppress(EOFError, BrokenPipeError, ConnectionResetError):
        while True:  # ends at EOF from the benchmark, or at the lifetime alarm
            conn.send_bytes(conn.recv_bytes())
