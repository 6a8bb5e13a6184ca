"""Memory objects (DESIGN §4): shared memory that only capability holders can map.

The kernel creates a sealed memfd and never maps it. MEMORY_MAP sends the holder a
descriptor on its bootstrap socket (a `MemoryFd` frame, just before the completion):
the read-write one if the capability has WRITE and the caller asks for it, otherwise
one opened read-only, which the Linux kernel refuses to map writable. Bulk data thus
crosses no ring and no copy (DESIGN §8).

Why the inode's mode is 0400: a read-only descriptor of a memfd could otherwise be
reopened read-write through /proc/self/fd/N by whoever holds it. With 0400 only the
kernel's own uid can reopen it at all, and only read-only (root can do anything,
and a process of the kernel's uid could chmod the inode first: it shares the
kernel's protection domain, as it could also ptrace the kernel).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from capabilities import DEFAULT_MEMORY_RIGHTS, Rights

from ... import abi
from ..._core.kcore import KernelObject, OpError
from ..._core.ring import Header
from ...abi import Op
from ...errors import Status
from ..bootstrap import send_frame
from ..process import Proc

if TYPE_CHECKING:
    from ..state import KernelState


class MemoryObject(KernelObject):
    """A sealed memfd of `size` bytes; `owner` is charged for it until it is destroyed."""

    def __init__(self, fd: int, size: int, owner: Proc) -> None:
        self.kind = abi.ObjectKind.MEMORY
        self.fd = fd
        self.size = size
        self.owner = owner  # charged for it (memory_create) until it is destroyed

    def destroy(self) -> None:
        """The last capability is gone: mappings made from it stay valid (their pages
        live until the last one is unmapped), but nobody can map it again."""
        os.close(self.fd)
        _credit(self.owner, self.size)


def _charge(proc: Proc, size: int) -> None:
    """Its bytes to the creator and its uid, and to the uid a descriptor the kernel
    keeps open (quota.py)."""
    proc.charge("memory bytes", size)
    try:
        proc.charge("memory objects", 1)
    except OpError:
        proc.credit("memory bytes", size)
        raise


def _credit(proc: Proc, size: int) -> None:
    proc.credit("memory bytes", size)
    proc.credit("memory objects", 1)


def memory_create(k: KernelState, proc: Proc, h: Header) -> None:
    """MEMORY_CREATE: a new memory object of `arg` bytes, zero-filled."""
    size = h.arg
    if not 0 < size <= abi.MAX_MEMORY_SIZE:
        raise OpError(
            Status.INVALID_ARGS,
            f"size must be 1 to {abi.MAX_MEMORY_SIZE} bytes, not {size}",
        )
    _charge(proc, size)
    try:
        fd = _make_memfd(size)
    except OSError as e:
        _credit(proc, size)
        raise OpError(Status.NO_RESOURCES, e.strerror or str(e)) from None
    slot = k.new_object(proc, MemoryObject(fd, size, proc), DEFAULT_MEMORY_RIGHTS)
    proc.complete(h.opcode, h.req_id, Status.OK, arg=slot)


def memory_map(k: KernelState, proc: Proc, h: Header) -> None:
    """MEMORY_MAP: hand the caller a descriptor to map. Rights: MAP and READ; WRITE
    for a writable one. Completes with the size in `arg`."""
    if h.arg not in (abi.MAP_AS_ALLOWED, abi.MAP_READ_ONLY, abi.MAP_WRITABLE):
        raise OpError(Status.INVALID_ARGS, f"unknown mode {h.arg}")
    need = Rights.MAP | Rights.READ | (Rights.WRITE if h.arg == abi.MAP_WRITABLE else 0)
    cap = k.lookup(proc, h.slot, abi.ObjectKind.MEMORY, need)
    obj = cap.obj
    assert isinstance(obj, MemoryObject)
    writable = h.arg != abi.MAP_READ_ONLY and bool(cap.rights & Rights.WRITE)
    fd = obj.fd if writable else _reopen_read_only(obj.fd)
    try:
        send_frame(proc.sock, abi.MemoryFd(h.req_id, writable), [fd])
    except OSError as e:  # e.g. a process that never reads its socket filled it
        raise OpError(Status.NO_RESOURCES, f"could not hand over the descriptor: {e}") from None
    finally:
        if not writable:
            os.close(fd)
    proc.complete(h.opcode, h.req_id, Status.OK, arg=obj.size)


def memory_size(k: KernelState, proc: Proc, h: Header) -> None:
    """MEMORY_SIZE: the object's size in bytes, in `arg`. Any holder may ask."""
    obj = k.lookup(proc, h.slot, abi.ObjectKind.MEMORY, Rights.NONE).obj
    assert isinstance(obj, MemoryObject)
    proc.complete(h.opcode, h.req_id, Status.OK, arg=obj.size)


def _make_memfd(size: int) -> int:
    """A memfd of `size` bytes that nobody can resize (a shrink would make every
    mapper's access past the new end a SIGBUS) and whose inode only the kernel's
    uid may reopen, read-only (see the module's docstring)."""
    fd = os.memfd_create("mkipc-memory", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, size)
        seals = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
        os.fchmod(fd, 0o400)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _reopen_read_only(fd: int) -> int:
    try:
        return os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise OpError(Status.NO_RESOURCES, e.strerror or str(e)) from None


HANDLERS: dict[int, Callable[[KernelState, Proc, Header], None]] = {
    Op.MEMORY_CREATE: memory_create,
    Op.MEMORY_MAP: memory_map,
    Op.MEMORY_SIZE: memory_size,
}
