"""A per-process capability table: slot numbers with generation bits (DESIGN §5).

A slot is ``generation << 16 | index`` with a 32-bit generation (slots are 64-bit
in the ring ABI). Closing a slot bumps its index's
generation, so a stale slot number never resolves to the next capability put
in the same place; an index whose generation would wrap is retired for good,
and freed indices are reused oldest first. Slot 0 is never valid. The table remembers why the last
occupant of each index left, so a late use gets a precise error.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Any

from .rights import Rights

INDEX_BITS = 16
INDEX_MASK = (1 << INDEX_BITS) - 1
GEN_MASK = 0xFFFF_FFFF
DEFAULT_LIMIT = 4096


class SlotError(Exception):
    """A slot that resolves to nothing; `reason` says why, `limit` marks a full table."""

    def __init__(self, reason: str, *, limit: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.limit = limit


class Capability:
    """(object, rights, badge), as held in one slot of one process."""

    __slots__ = ("obj", "rights", "badge", "slot")

    def __init__(self, obj: Any, rights: Rights, badge: int = 0) -> None:
        self.obj = obj
        self.rights = rights
        self.badge = badge
        self.slot = 0

    def __repr__(self) -> str:
        return f"Capability({self.obj!r}, {self.rights!r}, badge={self.badge}, slot={self.slot:#x})"


class CapTable:
    def __init__(self, limit: int = DEFAULT_LIMIT, *, gen_mask: int = GEN_MASK) -> None:
        if not 0 < limit <= INDEX_MASK:
            raise ValueError(f"limit must be in 1..{INDEX_MASK}")
        if not 0 < gen_mask <= GEN_MASK:
            raise ValueError(f"gen_mask must be in 1..{GEN_MASK:#x}")
        self.limit = limit
        self.gen_mask = gen_mask   # narrower only in tests, to reach the wrap quickly
        self._caps: list[Capability | None] = [None]  # index 0 unused
        self._gens: list[int] = [0]
        self._free: deque[int] = deque()
        self._gone: dict[int, tuple[int, str]] = {}  # index -> (last slot, why it left)
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[Capability]:
        return (c for c in self._caps if c is not None)

    def insert(self, cap: Capability) -> int:
        if self._count >= self.limit:
            raise SlotError(f"capability table full ({self.limit} capabilities)", limit=True)
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
        self._count += 1
        cap.slot = (self._gens[index] << INDEX_BITS) | index
        return cap.slot

    def lookup(self, slot: int) -> Capability:
        index = slot & INDEX_MASK
        cap = self._caps[index] if 0 < index < len(self._caps) else None
        if cap is not None and cap.slot == slot:
            return cap
        gone = self._gone.get(index)
        if gone is not None and gone[0] == slot:
            raise SlotError(f"slot {slot:#x} {gone[1]}")
        raise SlotError(f"slot {slot:#x} names no capability in this process")

    def remove(self, slot: int, why: str = "was closed") -> Capability:
        cap = self.lookup(slot)
        index = slot & INDEX_MASK
        self._caps[index] = None
        gen = self._gens[index] + 1
        self._gone[index] = (slot, why)
        if gen <= self.gen_mask:   # else: retired, so its slot numbers never come back
            self._gens[index] = gen
            self._free.append(index)
        self._count -= 1
        return cap

    def clear(self) -> list[Capability]:
        """Empty the table (the process died); returns what it held."""
        held = list(self)
        for cap in held:
            self.remove(cap.slot, "was deleted when its process died")
        return held
