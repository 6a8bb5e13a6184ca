"""A connected process as the kernel sees it: credentials, rings, caps, pending ops."""

from __future__ import annotations

import mmap
import os
import socket
from collections import deque
from typing import Any

from capabilities import CapTable

from .. import abi
from .._core.kcore import Endpoint, Notification, ProcCore
from .._core.ring import SessionStates, ring_pair
from .quota import PROCESS_LIMITS, Ledger, charge, credit


class Proc(ProcCore):
    """Kernel-side state of one connected process. Invariant: alive == (sock is open)."""

    def __init__(
        self, ident: int, sock: socket.socket, creds: tuple[int, int, int], user: Ledger
    ) -> None:
        """`user` is the ledger of its uid; its connection is charged there already."""
        self.ident = ident
        self.user = user
        self.ledger = Ledger("the process", PROCESS_LIMITS)
        self.sock = sock
        self.pid, self.uid, self.gid = creds
        self.caps = CapTable()
        self.pending = {}
        self.overflow = deque()
        self.alive = True
        self.dirty = False
        self.doomed = None
        self.claimed_token: str | None = None
        self.bundles = 0  # inherit bundles it owns (spawns not waited for): MAX_BUNDLES
        self.names_slot = 0
        # (endpoint, badge) or (notification, bits) to tell at exit (CALLER_MONITOR)
        self.monitors: list[tuple[Endpoint | Notification, int]] = []
        self.memfd, self.mm = _make_region()
        self.sq, self.cq = ring_pair(self.mm, abi.RING_SIZE, abi.RING_SIZE)
        self.session_states = SessionStates(self.mm)  # only the kernel writes them
        self.sessions: dict[int, Any] = {}  # state word index -> daemon.sessions.Session
        self.sq_efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.cq_efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)

    def __repr__(self) -> str:
        return f"<process {self.ident} pid={self.pid} uid={self.uid}>"

    def flush_overflow(self) -> bool:
        """Move held completions into the ring; True if any moved."""
        moved = False
        while self.overflow and self.cq.complete(*self.overflow[0]):
            self.overflow_bytes -= len(self.overflow.popleft()[5])  # its payload
            moved = True
        return moved

    def charge(self, what: str, n: int) -> None:
        """Charge `n` of `what` that this process creates to it and to its uid
        (quota.py); `credit` gives it back when the object goes."""
        charge(what, n, self.ledger, self.user)

    def credit(self, what: str, n: int) -> None:
        credit(what, n, self.ledger, self.user)

    def fds_for_client(self) -> list[int]:
        return [self.memfd, self.sq_efd, self.cq_efd]

    def close(self) -> None:
        """Release the region and descriptors. The caller has already detached us."""
        self.alive = False
        self.sq.close()
        self.cq.close()
        self.session_states.close()
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
