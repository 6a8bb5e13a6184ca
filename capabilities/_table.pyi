# Stub for the compiled capabilities._table (see _table.pyx).
from collections.abc import Iterator
from typing import Any

from typing_extensions import disjoint_base

INDEX_BITS: int
INDEX_MASK: int
GEN_MASK: int
DEFAULT_LIMIT: int

class SlotError(Exception):
    reason: str
    limit: bool
    def __init__(self, reason: str, *, limit: bool = False) -> None: ...

@disjoint_base
class Capability:
    obj: Any
    rights: int
    badge: int
    slot: int
    holder: Any
    in_transit: bool
    parent: Capability | None
    children: list[Capability] | None
    def __init__(self, obj: Any, rights: int, badge: int = 0) -> None: ...

@disjoint_base
class CapTable:
    limit: int
    gen_mask: int
    count: int
    def __init__(self, limit: int = ..., *, gen_mask: int = ...) -> None: ...
    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[Capability]: ...
    def insert(self, cap: Capability) -> int: ...
    def lookup(self, slot: int) -> Capability: ...
    def remove(self, slot: int, why: str = ...) -> Capability: ...
    def discard(self, cap: Capability, why: str) -> None: ...
    def clear(self) -> list[Capability]: ...

def derive(parent: Capability, rights: int, badge: int) -> Capability: ...
def unlink(cap: Capability) -> None: ...
def descendants(cap: Capability) -> list[Capability]: ...
