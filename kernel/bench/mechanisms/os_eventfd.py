"""Shared memory plus two eventfds: the shape of mkipc's own rings without the kernel daemon.

The ping copies the payload into the shared region and adds 1 to the peer's eventfd; the peer,
blocked in read(2) on that eventfd, copies the payload to the echo area and adds 1 to ours
(eventfd(2)). The eventfd read/write syscalls order the memory accesses around them, so no
atomics are needed here. The region is a memfd, never a name in /dev/shm (DESIGN §2).

Byte map of the region:
    [0]                      stop flag: non-zero tells the peer to exit
    [_PING : _PING + size]   the ping payload
    [_PING + size : ...+ size] the echo
"""

from __future__ import annotations

import contextlib
import mmap
import os

from kernel.bench.mechanisms import (
    Mechanism,
    PeerLostError,
    PeerProcess,
    make_payload,
    register,
)

_PING = 64  # offset of the ping area: its own cache line, away from the stop flag


@register
class OsEventfd(Mechanism):
    name = "os.eventfd+mmap"

    def __init__(self) -> None:
        self._mm: mmap.mmap | None = None
        self._to_peer = -1  # eventfd the peer waits on
        self._to_us = -1  # eventfd this process waits on
        self._peer: PeerProcess | None = None
        self._payload = b""
        self._echo = 0  # offset of the echo area
        self._aborted = False

    def unavailable(self) -> str | None:
        if not hasattr(os, "eventfd") or not hasattr(os, "memfd_create"):
            return "os.eventfd/os.memfd_create need Linux"
        return None

    def setup(self, payload_size: int) -> None:
        self.teardown()
        self._payload = make_payload(payload_size)
        self._echo = _PING + payload_size
        self._aborted = False
        try:
            self._start(payload_size)
        except BaseException:
            self.teardown()
            raise

    def _start(self, payload_size: int) -> None:
        memfd = os.memfd_create("mkipc-bench", os.MFD_CLOEXEC)
        try:
            os.ftruncate(memfd, _PING + 2 * payload_size)
            self._mm = mmap.mmap(memfd, _PING + 2 * payload_size)
            self._to_peer = os.eventfd(0, os.EFD_CLOEXEC)
            self._to_us = os.eventfd(0, os.EFD_CLOEXEC)
            argv = [str(memfd), str(self._to_peer), str(self._to_us), str(payload_size)]
            fds = [memfd, self._to_peer, self._to_us]
            self._peer = PeerProcess(__name__, argv, fds, self.peer_lifetime_s)
        finally:
            os.close(memfd)  # the mapping keeps the memory alive

    def roundtrip(self) -> None:
        mm = self._mm
        assert mm is not None, "os.eventfd+mmap: roundtrip before setup"
        mm[_PING : self._echo] = self._payload
        os.eventfd_write(self._to_peer, 1)
        os.eventfd_read(self._to_us)
        if self._aborted:
            raise PeerLostError("os.eventfd+mmap: aborted while waiting for the echo")
        _echo = mm[self._echo : self._echo + len(self._payload)]  # copy out, as a receiver must

    def peer_pids(self) -> list[int]:
        return [] if self._peer is None else [self._peer.pid]

    def abort(self) -> None:
        """Wake our own eventfd: the peer's death alone would leave us blocked in read."""
        self._aborted = True
        with contextlib.suppress(OSError):
            os.eventfd_write(self._to_us, 1)
        super().abort()

    def teardown(self) -> None:
        if self._mm is not None and self._to_peer >= 0:
            self._mm[0] = 1  # stop flag, published by the eventfd write below
            with contextlib.suppress(OSError):
                os.eventfd_write(self._to_peer, 1)
        if self._peer is not None:
            self._peer.stop()
            self._peer = None
        for fd in (self._to_peer, self._to_us):
            if fd >= 0:
                os.close(fd)
        self._to_peer = self._to_us = -1
        if self._mm is not None:
            self._mm.close()
            self._mm = None


def peer_main(argv: list[str]) -> None:
    """``<memfd> <to_peer_fd> <to_us_fd> <payload_size>``: echo until the stop flag is set."""
    memfd, to_peer, to_us, size = (int(arg) for arg in argv)
    mm = mmap.mmap(memfd, _PING + 2 * size)
    echo = _PING + size
    while True:  # ends at the stop flag, or at the lifetime alarm
        os.eventfd_read(to_peer)
        if mm[0]:
            return
        mm[echo : echo + size] = mm[_PING:echo]
        os.eventfd_write(to_us, 1)
