"""One-way throughput over os.pipe and a socketpair: the OS baselines of the send path.

A timed operation is a burst: an 8-byte count N, then N messages back to back (pipelined: the
writer never waits for the reader except when the kernel buffer is full), then the receiver's
8-byte count of the whole messages it read. A burst whose count differs fails the row.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct

from kernel.bench.mechanisms import (
    FdEchoMechanism,
    PeerLostError,
    read_exact,
    register,
    write_all,
)

__all__ = ["BURST_BYTES", "MAX_BATCH", "OneWayPipe", "OneWaySocketpair", "burst_size"]

MAX_BATCH = 256  # messages per burst for small payloads
BURST_BYTES = 4 * 1024 * 1024  # ...fewer for large ones, so one burst stays about this size
_COUNT = struct.Struct("<Q")


def burst_size(payload_size: int) -> int:
    """Messages per burst for ``payload_size``: at least 4, so a burst is always pipelined."""
    return max(4, min(MAX_BATCH, BURST_BYTES // payload_size))


class _FdOneWay(FdEchoMechanism):
    batch = MAX_BATCH  # > 1 marks a throughput row even before setup() picks the burst size

    def setup(self, payload_size: int) -> None:
        self.batch = burst_size(payload_size)
        super().setup(payload_size)

    def roundtrip(self) -> None:
        tx, payload = self._tx, self._payload
        write_all(tx, _COUNT.pack(self.batch))
        for _ in range(self.batch):
            write_all(tx, payload)
        (received,) = _COUNT.unpack(read_exact(self._rx, _COUNT.size))
        if received != self.batch:
            raise PeerLostError(f"the receiver counted {received} of {self.batch} messages")

    def _spawn_sink(self, rx: int, tx: int, payload_size: int) -> None:
        self._spawn(__name__, [str(rx), str(tx), str(payload_size)], sorted({rx, tx}))


@register
class OneWayPipe(_FdOneWay):
    name = "os.pipe.send"

    def _connect(self, payload_size: int) -> tuple[int, int]:
        data_r, data_w = os.pipe()
        ack_r, ack_w = os.pipe()
        self._own(data_r, data_w, ack_r, ack_w)
        self._spawn_sink(rx=data_r, tx=ack_w, payload_size=payload_size)
        return data_w, ack_r


@register
class OneWaySocketpair(_FdOneWay):
    name = "os.socketpair.send"

    def _connect(self, payload_size: int) -> tuple[int, int]:
        ours, theirs = (s.detach() for s in socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM))
        self._own(ours, theirs)
        self._spawn_sink(rx=theirs, tx=theirs, payload_size=payload_size)
        return ours, ours


def peer_main(argv: list[str]) -> None:
    """The receiver: ``<rx_fd> <tx_fd> <payload_size>``; counts each burst's whole messages."""
    rx, tx, size = (int(arg) for arg in argv)
    with contextlib.suppress(PeerLostError, BrokenPipeError, ConnectionResetError):
        while True:  # ends at EOF from the benchmark, or at the lifetime alarm
            (expected,) = _COUNT.unpack(read_exact(rx, _COUNT.size))
            received = 0
            for _ in range(expected):
                read_exact(rx, size)  # raises at EOF, so only whole messages count
                received += 1
            write_all(tx, _COUNT.pack(received))
