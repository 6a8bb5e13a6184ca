"""What the two faces' memory, semaphore, queue and pipe capabilities share: argument
checks, the mapping of a received descriptor, and what a cancelled operation still
won (a unit, a message, bytes) kept for the next one."""

from __future__ import annotations

import mmap
import os
from collections.abc import Callable
from typing import NamedTuple

from .. import abi
from ._common import CapBase, Credentials
from ._conn import Completion, Connection


def memory_size_arg(size: int) -> int:
    if not isinstance(size, int) or not 0 < size <= abi.MAX_MEMORY_SIZE:
        raise ValueError(f"size must be an integer from 1 to {abi.MAX_MEMORY_SIZE} bytes")
    return size


def map_mode(writable: bool | None) -> int:
    """MEMORY_MAP's arg: None maps as the capability allows (writable if it has WRITE)."""
    if writable is None:
        return abi.MAP_AS_ALLOWED
    return abi.MAP_WRITABLE if writable else abi.MAP_READ_ONLY


def map_received(conn: Connection, c: Completion) -> mmap.mmap:
    """A shared mapping of the whole object MEMORY_MAP `c` handed over; the descriptor
    is closed (the mapping keeps the memory)."""
    fd, writable = conn.memory_fd(c.req_id)
    prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
    try:
        return mmap.mmap(fd, c.arg, flags=mmap.MAP_SHARED, prot=prot)
    finally:
        os.close(fd)


def post_count(n: int) -> int:
    if not isinstance(n, int) or not 0 < n <= abi.MAX_SEMAPHORE_VALUE:
        raise ValueError(f"n must be an integer from 1 to {abi.MAX_SEMAPHORE_VALUE}")
    return n


def initial_value(value: int) -> int:
    if not isinstance(value, int) or not 0 <= value <= abi.MAX_SEMAPHORE_VALUE:
        raise ValueError(f"value must be an integer from 0 to {abi.MAX_SEMAPHORE_VALUE}")
    return value


def take_stashed_unit(conn: Connection, slot: int) -> bool:
    """Take a unit an earlier, cancelled wait on `slot` won as it was withdrawn."""
    units = conn.units_stash.get(slot, 0)
    if not units:
        return False
    if units == 1:
        del conn.units_stash[slot]
    else:
        conn.units_stash[slot] = units - 1
    return True


# ------------------------------------------------------------------ queues


class QueueMessage(NamedTuple):
    """A message taken from a queue. `badge` and `sender` are the kernel's: the badge
    of the capability it was sent through, and the sender's pid/uid/gid. `caps` are
    the capabilities it carried, now in this process's table; None stands where one
    was revoked while the message waited in the queue."""

    data: bytes
    mtype: int
    badge: int
    sender: Credentials
    caps: tuple[CapBase | None, ...] = ()


Wrap = Callable[[int, int], CapBase]  # the face's _wrap(kind, slot)


def queue_create_args(capacity: int | None, max_bytes: int) -> tuple[int, bytes]:
    """QUEUE_CREATE's (arg, payload)."""
    if capacity is not None and (
        not isinstance(capacity, int) or not 0 <= capacity <= abi.MAX_QUEUE_CAPACITY
    ):
        raise ValueError(f"capacity must be None or an integer from 0 to {abi.MAX_QUEUE_CAPACITY}")
    if not isinstance(max_bytes, int) or not 0 < max_bytes <= abi.MAX_QUEUE_BYTES:
        raise ValueError(f"max_bytes must be an integer from 1 to {abi.MAX_QUEUE_BYTES}")
    arg = abi.QUEUE_UNBOUNDED if capacity is None else capacity
    return arg, max_bytes.to_bytes(8, "little")


def message_type(mtype: int) -> int:
    if not isinstance(mtype, int) or not 0 < mtype <= abi.MAX_QUEUE_TYPE:
        raise ValueError(f"mtype must be an integer from 1 to {abi.MAX_QUEUE_TYPE}")
    return mtype


def recv_params(mtype: int, max_size: int, truncate: bool, except_type: bool) -> bytes:
    """QUEUE_RECV's payload: the selector (msgrcv's msgtyp), max_size and flags."""
    if not isinstance(mtype, int) or not -abi.MAX_QUEUE_TYPE <= mtype <= abi.MAX_QUEUE_TYPE:
        raise ValueError("mtype must be an integer: 0, a type, or minus the highest type")
    if not isinstance(max_size, int) or max_size < 0:
        raise ValueError("max_size must be a non-negative integer")
    if except_type and mtype <= 0:
        raise ValueError("except_type needs a positive mtype")
    flags = (abi.QUEUE_TRUNCATE if truncate else 0) | (abi.QUEUE_EXCEPT if except_type else 0)
    return abi.QUEUE_RECV_PARAMS.pack(mtype, max_size, flags)


def queue_message(c: Completion, wrap: Wrap) -> QueueMessage:
    caps: tuple[CapBase | None, ...] = ()
    if c.caps:  # (most carry none: no generator per message)
        kinds = c.flags
        caps = tuple(wrap(kinds >> 4 * i & 0xF, s) if s else None for i, s in enumerate(c.caps))
    return QueueMessage(c.payload, c.arg, c.badge, Credentials(c.pid, c.uid, c.gid), caps)


def take_stashed_message(
    conn: Connection, slot: int, params: bytes, wrap: Wrap
) -> QueueMessage | None:
    """A message an earlier, cancelled receive on `slot` won as it was withdrawn, if it
    is one this receive would take (it left the queue: it must not be lost)."""
    stash = conn.queue_stash.get(slot)
    if not stash:
        return None
    selector, max_size, flags = abi.QUEUE_RECV_PARAMS.unpack(params)
    for c in stash:
        if abi.queue_selects(c.arg, selector, flags) and (
            len(c.payload) <= max_size or flags & abi.QUEUE_TRUNCATE
        ):
            stash.remove(c)
            m = queue_message(c, wrap)
            return m._replace(data=m.data[:max_size])
    return None


# ------------------------------------------------------------------ pipes


def pipe_capacity(capacity: int) -> int:
    if not isinstance(capacity, int) or not abi.PIPE_BUF <= capacity <= abi.MAX_PIPE_CAPACITY:
        raise ValueError(
            f"capacity must be an integer from {abi.PIPE_BUF} to {abi.MAX_PIPE_CAPACITY}"
        )
    return capacity


def read_size(max_size: int) -> int:
    if not isinstance(max_size, int) or not 0 < max_size <= abi.MAX_PAYLOAD:
        raise ValueError(f"max_size must be an integer from 1 to {abi.MAX_PAYLOAD}")
    return max_size


def chunks(data: bytes | bytearray | memoryview) -> list[memoryview]:
    """A write's pieces of at most MAX_PAYLOAD bytes (one record each)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes-like, not {type(data).__name__}")
    view = memoryview(data).cast("B")
    return [view[i : i + abi.MAX_PAYLOAD] for i in range(0, len(view), abi.MAX_PAYLOAD)]


def unread(conn: Connection, slot: int, data: bytes | bytearray) -> None:
    """Put bytes taken from the pipe back in front of the stream (readline's rest,
    or what a cancelled or failed readuntil had gathered): the next read gets
    them first."""
    if data:
        conn.pipe_stash.setdefault(slot, bytearray())[:0] = data


def take_stashed_bytes(conn: Connection, slot: int, max_size: int) -> bytes | None:
    """Bytes an earlier, cancelled read on `slot` took from the pipe as it was
    withdrawn: they come first, so the stream loses nothing."""
    stashed = conn.pipe_stash.get(slot)
    if not stashed:
        return None
    data = bytes(stashed[:max_size])
    del stashed[:max_size]
    if not stashed:
        del conn.pipe_stash[slot]
    return data
