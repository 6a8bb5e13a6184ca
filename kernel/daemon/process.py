"""A connected process as the kernel sees it: credentials, rings, caps, pending ops."""

from __future__ import annotations

import mmap
import os
import socket
from collections import deque
from typing import TYPE_CHECKING, Any

from capabilities import CapTable

from .. import abi
from .._core.ring import Header, Ring

if TYPE_CHECKING:
    from .pending import Pending

MAX_PENDING = 4096
"""Operations one process may have waiting in the kernel at once."""

MAX_OVERFLOW = 16384
"""Completions the kernel holds for a process whose completion ring is full."""


class Proc:
    """Kernel-side state of one connected process. Invariant: alive == (sock is open)."""

    def __init__(self, ident: int, sock: socket.socket, creds: tuple[int, int, int]) -> None:
        self.ident = ident
        self.sock = sock
        self.pid, self.uid, self.gid = creds
        self.caps = CapTable()
        self.pending: dict[int, Pending] = {}
        self.overflow: deque[tuple[Any, ...]] = deque()
        self.alive = True
        self.claimed_token: str | None = None
        self.dirty = False  # completions posted since the last doorbell check
        self.doomed: str | None = None  # set when the process must be disconnected
        self.memfd, self.mm = _make_region()
        self.sq = Ring(
            self.mm,
            abi.CONTROL_SIZE,
            abi.RING_SIZE,
            abi.OFF_SQ_TAIL,
            abi.OFF_SQ_HEAD,
            abi.OFF_SQ_WAITING,
        )
        self.cq = Ring(
            self.mm,
            abi.CONTROL_SIZE + abi.RING_SIZE,
            abi.RING_SIZE,
            abi.OFF_CQ_TAIL,
            abi.OFF_CQ_HEAD,
            abi.OFF_CQ_WAITING,
        )
        self.sq_efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.cq_efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)

    def __repr__(self) -> str:
        return f"<process {self.ident} pid={self.pid} uid={self.uid}>"

    @property
    def creds(self) -> tuple[int, int, int]:
        return self.pid, self.uid, self.gid

    def complete(
        self,
        opcode: int,
        req_id: int,
        status: int,
        slot: int = 0,
        arg: int = 0,
        payload: bytes = b"",
        badge: int = 0,
        creds: tuple[int, int, int] = (0, 0, 0),
    ) -> None:
        """Post a completion; keep it in order behind earlier ones if the ring is full."""
        if not self.alive:
            return
        self.dirty = True
        args = (opcode, req_id, status, slot, arg, payload, (), badge, *creds)
        if self.overflow or not self.cq.complete(*args):
            self._hold(args)

    def forward(
        self,
        src: Ring,
        h: Header,
        opcode: int,
        req_id: int,
        slot: int,
        arg: int,
        badge: int,
        creds: tuple[int, int, int],
    ) -> None:
        """Post a completion whose payload is copied straight from `src` (one copy)."""
        if not self.alive:
            return
        self.dirty = True
        if self.overflow or not self.cq.forward(
            src, h, opcode, req_id, 0, slot, arg, badge, *creds
        ):
            self._hold((opcode, req_id, 0, slot, arg, src.payload(h), (), badge, *creds))

    def _hold(self, args: tuple[Any, ...]) -> None:
        if len(self.overflow) >= MAX_OVERFLOW:
            # Raising here would blame whichever process we were serving; mark instead.
            self.doomed = "it does not drain its completion ring"
            return
        self.overflow.append(args)

    def flush_overflow(self) -> bool:
        """Move held completions into the ring; True if any moved."""
        moved = False
        while self.overflow and self.cq.complete(*self.overflow[0]):
            self.overflow.popleft()
            moved = True
        return moved

    def fds_for_client(self) -> list[int]:
        return [self.memfd, self.sq_efd, self.cq_efd]

    def close(self) -> None:
        """Release the region and descriptors. The caller has already detached us."""
        self.alive = False
        self.sq.close()
        self.cq.close()
        self.mm.close()
        for fd in (self.memfd, self.sq_efd, self.cq_efd):
            os.close(fd)
        self.sock.close()


def _make_region() -> tuple[int, mmap.mmap]:
    """A sealed memfd: the process cannot shrink it under our mapping (no SIGBUS)."""
    import fcntl

    size = abi.CONTROL_SIZE + 2 * abi.RING_SIZE
    fd = os.memfd_create("mkipc-rings", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, size)
        fcntl.fcntl(
            fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL
        )
        mm = mmap.mmap(fd, size)
    except BaseException:
        os.close(fd)
        raise
    mm[0:8] = abi.RING_MAGIC
    mm[8:12] = abi.ABI_VERSION.to_bytes(4, "little")
    mm[16:24] = abi.RING_SIZE.to_bytes(8, "little")
    mm[24:32] = abi.RING_SIZE.to_bytes(8, "little")
    return fd, mm
