"""What the two faces' memory and semaphore capabilities share: argument checks,
the mapping of a received descriptor, and units a cancelled wait still won."""

from __future__ import annotations

import mmap
import os

from .. import abi
from ._conn import Completion, Connection

MAP_AS_ALLOWED, MAP_READ_ONLY, MAP_WRITABLE = 0, 1, 2  # kernel/daemon/objects/memory.py


def memory_size_arg(size: int) -> int:
    if not isinstance(size, int) or not 0 < size <= abi.MAX_MEMORY_SIZE:
        raise ValueError(f"size must be an integer from 1 to {abi.MAX_MEMORY_SIZE} bytes")
    return size


def map_mode(writable: bool | None) -> int:
    """MEMORY_MAP's arg: None maps as the capability allows (writable if it has WRITE)."""
    if writable is None:
        return MAP_AS_ALLOWED
    return MAP_WRITABLE if writable else MAP_READ_ONLY


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
