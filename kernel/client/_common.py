"""What the blocking and asyncio faces share: values, cap bookkeeping, spawn set-up."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from .. import abi
from ..errors import InvalidCapabilityError
from ._conn import Completion, Connection


class Credentials(NamedTuple):
    """Kernel-verified identity of a message's sender (SO_PEERCRED at its connect)."""

    pid: int
    uid: int
    gid: int


MSG_IS_CALL = int(abi.MSG_IS_CALL)


class MessageBase:
    """A received message or a reply. `data` is bytes; `badge` and `sender` come from
    the kernel, never from the sender's own claims."""

    __slots__ = ("data", "badge", "_c", "_reply_slot", "_endpoint")

    def __init__(self, c: Completion, endpoint: Any = None) -> None:
        self.data: bytes = c.payload
        self.badge: int = c.badge
        self._c = c
        self._reply_slot = c.slot if c.arg & MSG_IS_CALL else 0
        self._endpoint = endpoint

    @property
    def sender(self) -> Credentials:
        """Kernel-verified pid/uid/gid of the sender (built on first use: it is not free)."""
        c = self._c
        return Credentials(c.pid, c.uid, c.gid)

    @property
    def is_call(self) -> bool:
        """True when the sender waits for a reply (it used call, not send)."""
        return self._reply_slot != 0

    def _take_reply_slot(self) -> int:
        slot, self._reply_slot = self._reply_slot, 0
        if not slot:
            raise InvalidCapabilityError(
                "reply: this message was sent, not called, or was already answered"
            )
        return slot

    def __repr__(self) -> str:
        kind = "call" if self.is_call else "message"
        return f"<{kind} of {len(self.data)} bytes from pid {self.sender.pid} badge {self.badge}>"


class CapBase:
    """A capability: an opaque slot in this process's table (seL4 CPtr, Zircon handle)."""

    kind = ""
    __slots__ = ("_k", "slot", "__weakref__")

    def __init__(self, k: Any, slot: int) -> None:
        self._k = k
        self.slot = slot

    def __repr__(self) -> str:
        return f"<{type(self).__name__} slot={self.slot:#x}>"

    def _what(self, verb: str) -> str:
        return f"{self.kind} {verb} (slot {self.slot:#x})"


def conn_from(conn: Connection) -> Connection:
    return conn


def spawn_env(conn: Connection, token: str, env: Mapping[str, str] | None) -> dict[str, str]:
    out = dict(os.environ if env is None else env)
    out["MKIPC_SOCKET"] = conn.path
    out["MKIPC_INHERIT"] = token
    return out


def inherit_request(caps: Mapping[str, CapBase] | None) -> tuple[tuple[int, ...], bytes]:
    names = list(caps or {})
    for name in names:
        if not isinstance(caps[name], CapBase):  # type: ignore[index]
            raise TypeError(f"caps[{name!r}] is not a capability")
    slots = tuple(caps[n].slot for n in names)  # type: ignore[index]
    return slots, abi.encode_names(names)


def argv_list(argv: Sequence[str]) -> list[str]:
    if isinstance(argv, str):
        raise TypeError("argv must be a sequence of strings, not one string")
    return [os.fspath(a) for a in argv]
