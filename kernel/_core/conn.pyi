# Stub for the compiled kernel._core.conn (see conn.pyx).
from typing import Any

from typing_extensions import disjoint_base

from .ring import Completion, Ring

@disjoint_base
class ConnectionCore:
    sq: Ring
    cq: Ring
    results: dict[int, Completion]
    abandoned: dict[int, int]
    _sleeping: dict[int, Any]
    _deferred: list[tuple[int, int, int]]
    lost: str | None
    _submit_lock: Any
    _poll_lock: Any
    _ids: Any
    sq_efd: int
    _spin_ns: int
    spin_min_ns: int
    spin_max_ns: int
    crowded_ns: int
    def submit(
        self,
        op: int,
        slot: int = 0,
        deadline: int = -1,
        arg: int = 0,
        payload: Any = b"",
        caps: tuple[int, ...] = (),
    ) -> int: ...
    def submit_unwaited(
        self, op: int, arg: int = 0, *, slot: int = 0, block: bool = False
    ) -> bool: ...
    def roundtrip(
        self,
        op: int,
        cap: Any,
        verb: str,
        deadline: int = -1,
        arg: int = 0,
        payload: Any = b"",
        caps: tuple[int, ...] = (),
    ) -> Completion: ...
    def take(self) -> Completion | None: ...
    def wait(self, req_id: int) -> Completion: ...

@disjoint_base
class MessageCore:
    data: bytes
    badge: int
    _c: Completion
    _reply_slot: int
    _k: Any
    _caps: list[Any] | None
    def __init__(self, c: Completion, k: Any) -> None: ...
    @property
    def caps(self) -> list[Any]: ...

@disjoint_base
class CapCore:
    _k: Any
    slot: int
    _owned: bool
