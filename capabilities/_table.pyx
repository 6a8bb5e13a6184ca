# cython: language_level=3, embedsignature=True, freethreading_compatible=True
# cython: boundscheck=False, wraparound=False, auto_pickle=False
"""A per-process capability table: slot numbers with generation bits (DESIGN §5).

A slot is ``generation << 16 | index`` (64-bit in the ring ABI). Closing a slot
bumps its index's generation, so a stale slot number never resolves to the next
capability put in the same place; an index whose generation would wrap is
retired for good, and freed indices are reused oldest first. Slot 0 is never
valid. The table remembers why the last occupant of each index left, so a late
use gets a precise error.
"""

from collections import deque

from libc.stdint cimport uint64_t

INDEX_BITS = 16
INDEX_MASK = (1 << INDEX_BITS) - 1
GEN_MASK = 0xFFFF_FFFF
DEFAULT_LIMIT = 4096

cdef uint64_t _INDEX_MASK = INDEX_MASK


cdef uint64_t _as_slot(object slot) except? 0:
    if not isinstance(slot, int) or not 0 <= slot < 2**64:
        raise SlotError(f"{slot!r} is not a slot number")
    return slot


class SlotError(Exception):
    """A slot that resolves to nothing; `reason` says why, `limit` marks a full table."""

    def __init__(self, reason, *, limit=False):
        super().__init__(reason)
        self.reason = reason
        self.limit = limit


cdef class Capability:
    """(object, rights, badge), as held in one slot of one process."""

    def __init__(self, obj, rights, badge=0):
        self.obj = obj
        self.rights = int(rights)
        self.badge = badge
        self.slot = 0
        self.children = []

    def __repr__(self):
        return (f"Capability({self.obj!r}, rights={self.rights:#x}, badge={self.badge}, "
                f"slot={self.slot:#x})")


cdef class CapTable:
    def __init__(self, int limit=DEFAULT_LIMIT, *, uint64_t gen_mask=GEN_MASK):
        if not 0 < limit <= INDEX_MASK:
            raise ValueError(f"limit must be in 1..{INDEX_MASK}")
        if not 0 < gen_mask <= GEN_MASK:
            raise ValueError(f"gen_mask must be in 1..{GEN_MASK:#x}")
        self.limit = limit
        self.gen_mask = gen_mask   # narrower only in tests, to reach the wrap quickly
        self.count = 0
        self._caps = [None]
        self._gens = [0]
        self._free = deque()
        self._gone = {}

    def __len__(self):
        return self.count

    def __iter__(self):
        return iter([c for c in self._caps if c is not None])

    cpdef uint64_t insert(self, Capability cap) except 0:
        cdef Py_ssize_t index
        if self.count >= self.limit:
            # The usual cause is a leak: a lookup or copy per request, kept and never closed.
            raise SlotError(f"capability table full ({self.limit} capabilities; each stays "
                            "until close(), or until nothing refers to it, like a file)",
                            limit=True)
        if self._free:
            index = self._free.popleft()
        else:
            index = len(self._caps)
            if index > INDEX_MASK:
                raise SlotError("capability table exhausted: every slot number was used",
                                limit=True)
            self._caps.append(None)
            self._gens.append(1)
        self._caps[index] = cap
        cap.holder = self
        self.count += 1
        cap.slot = (<uint64_t>self._gens[index] << INDEX_BITS) | <uint64_t>index
        return cap.slot

    def lookup(self, slot):
        """The capability in `slot`; SlotError says why there is none."""
        return self.find(_as_slot(slot))

    def remove(self, slot, str why="was closed"):
        """Delete `slot`; later uses of it fail with `why`."""
        return self.take(_as_slot(slot), why)

    cdef Capability find(self, uint64_t slot):
        cdef Py_ssize_t index = slot & _INDEX_MASK
        cdef Capability cap = None
        if 0 < index < len(self._caps):
            cap = <Capability>self._caps[index]
            if cap is not None and cap.slot == slot:
                return cap
        gone = self._gone.get(index)
        if gone is not None and gone[0] == slot:
            raise SlotError(f"slot {slot:#x} {gone[1]}")
        raise SlotError(f"slot {slot:#x} names no capability in this process")

    cdef Capability take(self, uint64_t slot, str why):
        cdef Capability cap = self.find(slot)
        cdef Py_ssize_t index = slot & _INDEX_MASK
        cdef uint64_t gen = <uint64_t>self._gens[index] + 1
        self._caps[index] = None
        cap.holder = None
        self._gone[index] = (slot, why)
        if gen <= self.gen_mask:   # else: retired, so its slot numbers never come back
            self._gens[index] = gen
            self._free.append(index)
        self.count -= 1
        return cap

    def discard(self, Capability cap, str why):
        """Remove `cap` wherever it sits in this table (revocation's entry point)."""
        self.take(cap.slot, why)

    def clear(self):
        """Empty the table (the process died); returns what it held."""
        held = list(self)
        for cap in held:
            self.take((<Capability>cap).slot, "was deleted when its process died")
        return held


# ------------------------------------------------------------------ derivation


def derive(Capability parent, uint64_t rights, uint64_t badge):
    """A new capability to the same object, a child of `parent` in the derivation tree.

    The caller has checked that `rights` is a subset of the parent's rights.
    """
    cdef Capability child = Capability(parent.obj, rights, badge)
    child.parent = parent
    if parent.children is None:
        parent.children = []
    parent.children.append(child)
    return child


def unlink(Capability cap):
    """Take `cap` out of the tree; its children move up to its parent, so revoking
    an ancestor still reaches them after `cap` itself is closed."""
    cdef Capability parent = cap.parent
    cdef Capability child
    cdef list moved = cap.children or []
    if parent is not None:
        parent.children.remove(cap)
        parent.children.extend(moved)
    for child in moved:
        child.parent = parent
    cap.children = []
    cap.parent = None


def descendants(Capability cap):
    """Every capability derived from `cap`, at any depth (not `cap` itself)."""
    out = []
    stack = list(cap.children or ())
    while stack:
        c = <Capability>stack.pop()
        out.append(c)
        stack.extend(c.children or ())
    return out
