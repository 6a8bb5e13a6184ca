"""What the blocking and asyncio faces share: values, cap bookkeeping, spawn set-up."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from capabilities import Rights

from .. import abi
from .._core.conn import CapCore, MessageCore
from ..errors import CallTimeoutError, InvalidCapabilityError, IPCError, Status, error_for
from ._conn import Completion, Connection


class Credentials(NamedTuple):
    """Kernel-verified identity of a message's sender (SO_PEERCRED at its connect)."""

    pid: int
    uid: int
    gid: int


MSG_FROM_KERNEL = int(abi.MSG_FROM_KERNEL)
MSG_SESSION_OFFER = int(abi.MSG_SESSION_OFFER) | MSG_FROM_KERNEL
MSG_SIGNAL = int(abi.MSG_SIGNAL) | MSG_FROM_KERNEL


class CapInfo(NamedTuple):
    """What `cap.info()` reports about a capability."""

    kind: str  # "endpoint", "notification", ...
    rights: Rights
    badge: int  # 0 = unbadged
    slot: int  # its slot in this process's table
    object_id: int  # the same for every capability to the same object
    object_caps: int  # capabilities naming the object, in every process
    derived: int  # capabilities derived from this one, at any depth, anywhere
    parent_slot: int | None  # what it was derived from, if that is in this process


def cap_info(c: Completion) -> CapInfo:
    w = abi.decode_info(c.payload)
    return CapInfo(
        w.kind,
        Rights(w.rights),
        w.badge,
        w.slot,
        w.object_id,
        w.object_caps,
        w.derived,
        w.parent_slot,
    )


def rights_arg(rights: Rights | int | None) -> int:
    """None keeps the source's rights; otherwise a subset of them (the kernel checks)."""
    if rights is None:
        return abi.RIGHTS_SAME
    if not 0 <= int(rights) <= int(Rights.ALL):
        raise ValueError(f"rights must be a combination of kernel.Rights, not {rights!r}")
    return int(rights)


def badge_payload(badge: int) -> bytes:
    if not isinstance(badge, int) or not 0 <= badge < 1 << 64:
        raise ValueError("badge must be an integer in 0 .. 2**64 - 1")
    return badge.to_bytes(8, "little")


class MessageBase(MessageCore):
    """A received message or a reply. `data` is bytes; `badge` and `sender` come from
    the kernel, never from the sender's own claims; `caps` are the capabilities it
    carried, now in this process's table. The fields and `caps` are in C (MessageCore)."""

    __slots__ = ()

    @property
    def sender(self) -> Credentials:
        """Kernel-verified pid/uid/gid of the sender (a new tuple per access: keep it
        rather than reading it again in a hot loop)."""
        c = self._c
        return Credentials(c.pid, c.uid, c.gid)

    @property
    def sender_id(self) -> int:
        """The kernel's id of the sending connection: unique for the kernel's lifetime
        (a pid can be reused, and one process may hold several connections); 0 for the
        kernel itself."""
        return self._c.sender_id

    @property
    def from_kernel(self) -> bool:
        """True for a message the kernel sent itself (a monitored caller ended: its
        `badge` is the one given to `monitor`). No process can forge this."""
        return bool(self._c.arg & MSG_FROM_KERNEL)

    @property
    def is_signal(self) -> bool:
        """True for the word of the notification bound to the endpoint
        (`ep.bind(n)`): the word is in `badge`, there is no data, and it was taken
        (cleared) for this receive. Such a message is also `from_kernel`."""
        return self._c.arg & MSG_SIGNAL == MSG_SIGNAL

    @property
    def session_offer(self) -> bool:
        """True for the kernel's message that a caller asks for a direct session
        (`ep.session()`): accept it with `ep.accept_session(msg)`. `badge` is the
        caller's capability's, `sender_id` the caller's; `data` is the kernel's."""
        return self._c.arg & MSG_SESSION_OFFER == MSG_SESSION_OFFER

    def _monitor_request(
        self, target: CapBase, badge: int, signals: bool = False
    ) -> tuple[int, bytes]:
        """(reply slot, payload) of a CALLER_MONITOR or CALL_MONITOR; the message stays
        answerable. `target` is an endpoint, or with `signals` also a notification."""
        if not self._reply_slot:
            raise InvalidCapabilityError(
                "monitor: this message was sent, not called, or was already answered"
            )
        kind = getattr(target, "kind", None)
        if signals and kind == "notification":
            if not badge:
                raise ValueError("monitor: the bits to signal must not be 0")
        elif kind != "endpoint":
            wants = "an endpoint or a notification" if signals else "an endpoint"
            raise TypeError(f"monitor needs {wants} capability, not {target!r}")
        badge_payload(badge)  # validates the range
        return self._reply_slot, target.slot.to_bytes(8, "little")

    @property
    def is_call(self) -> bool:
        """True when the sender waits for a reply (it used call, not send)."""
        return self._reply_slot != 0

    @property
    def reply_cap(self) -> Any:
        """Take the one-shot reply capability out of the message, e.g. to hand it to a
        worker in another message; this message can then no longer be replied to."""
        return self._k._wrap(abi.ObjectKind.REPLY, self._take_reply_slot())

    def _give_back_reply_slot(self, slot: int, error: IPCError) -> None:
        """After a failed reply: keep the one-shot slot if the kernel says it still holds
        the reply capability (it refused before consuming it), so the call can be answered.

        (Callers use a plain try/except: a contextlib manager costs ~1 µs, and this is
        on a server's per-message path.)"""
        if error.reply_kept:
            self._reply_slot = slot

    def _take_reply_slot(self) -> int:
        slot, self._reply_slot = self._reply_slot, 0
        if not slot:
            raise InvalidCapabilityError(
                "reply: this message was sent, not called, or was already answered or handed off"
            )
        return slot

    def __repr__(self) -> str:
        kind = "call" if self.is_call else "message"
        return f"<{kind} of {len(self.data)} bytes from pid {self.sender.pid} badge {self.badge}>"


class CapBase(CapCore):
    """A capability: an opaque slot in this process's table (seL4 CPtr, Zircon handle).

    An object that owns its slot (every endpoint or notification capability the
    library hands out) closes it when it is collected unclosed, as a file does
    (CapCore's finalizer, without waiting for the kernel's answer): a capability
    nobody can reach any more must not keep a slot of the table. Objects that only
    name a slot (the name server's stub, a reply capability used for one reply)
    do not own it. One whose capability moved away in a message holds a stale
    slot number: it stops owning it when the message goes out (moved_away), and a
    close of it would be refused anyway (generation bits), touching nothing."""

    kind = ""
    __slots__ = ()

    def __init__(self, k: Any, slot: int, *, owned: bool = False) -> None:
        self._k = k
        self.slot = slot
        self._owned = owned

    def __repr__(self) -> str:
        return f"<{type(self).__name__} slot={self.slot:#x}>"

    def _what(self, verb: str) -> str:
        return f"{self.kind} {verb} (slot {self.slot:#x})"

    def as_copy(self) -> CopyOf:
        """Mark this capability to be sent as a copy (it stays here) instead of moved."""
        return CopyOf(self)

    def as_mint(self, rights: Rights | None = None, *, badge: int) -> MintOf:
        """Mark this capability to be sent as a new child with `rights` (default: the
        same) and `badge`, made by the kernel in transit: mint and send in one step.
        Needs COPY and TRANSFER; the usual mint rules apply (no new rights, a badge
        is set once)."""
        badge_payload(badge)  # validates the range
        rights_arg(rights)  # likewise
        return MintOf(self, None if rights is None else int(rights), badge)


class CopyOf(NamedTuple):
    """In `caps=[...]`: send a copy of `cap` (needs COPY as well as TRANSFER)."""

    cap: CapBase


class MintOf(NamedTuple):
    """In `caps=[...]`: send a child of `cap` with `rights` (None: the same) and `badge`."""

    cap: CapBase
    rights: int | None
    badge: int


Transferable = CapBase | CopyOf | MintOf


def transfer_slots(caps: Sequence[Transferable]) -> tuple[int, ...]:
    """The capability words a message carries: plain capabilities move, CopyOf ones are
    copied, MintOf ones take two words (slot with rights and flag, then the badge)."""
    out: list[int] = []
    for item in caps:
        if isinstance(item, CopyOf):
            out.append(item.cap.slot | abi.TRANSFER_COPY)
        elif isinstance(item, MintOf):
            out += _mint_words(item)
        elif isinstance(item, CapBase):
            out.append(item.slot)
        else:
            raise TypeError(
                f"caps items must be capabilities, cap.as_copy() or cap.as_mint(), not {item!r}"
            )
    if len(out) > abi.MAX_TRANSFER:
        raise ValueError(
            f"a message carries at most {abi.MAX_TRANSFER} capability words (a mint takes two)"
        )
    return tuple(out)


def moved_away(caps: Sequence[Transferable]) -> None:
    """After a message carrying `caps` went out: the capabilities it moved are in
    another table now, so their objects here stop owning the (stale) slot numbers
    and will not ask the kernel to close them when collected."""
    for item in caps:
        if isinstance(item, CapBase):
            item._owned = False


def _mint_words(m: MintOf) -> list[int]:
    if m.rights is None:
        rights = abi.TRANSFER_SAME_RIGHTS
    else:
        rights = m.rights << abi.TRANSFER_RIGHTS_SHIFT
    return [m.cap.slot | rights | abi.TRANSFER_MINT, m.badge]


def bound_slot(notification: CapBase) -> int:
    """NOTIFICATION_BIND's `arg`: the notification's slot."""
    if getattr(notification, "kind", None) != "notification":
        raise TypeError(f"bind needs a notification capability, not {notification!r}")
    return notification.slot


def names_slot(conn: Connection) -> int:
    """This process's name server slot, or a clear error if the kernel runs without one."""
    slot = conn.welcome.names_slot
    if not slot:
        raise error_for(
            Status.NOT_SUPPORTED, "names", "this kernel runs without a name server (--no-names)"
        )
    return slot


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


class ProcessBase:
    """A process started by spawn: the parts both faces share (waiting differs)."""

    def __init__(self, k: Any, popen: subprocess.Popen[Any], token: str) -> None:
        self._k = k
        self.popen = popen
        self.pid = popen.pid
        self._token = token
        self._reaped = False

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode

    def kill(self) -> None:
        self.popen.kill()

    def terminate(self) -> None:
        self.popen.terminate()

    def _exit_code(self, timeout: float | None) -> int:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise CallTimeoutError(
                f"wait for pid {self.pid}: still running after {timeout} s"
            ) from None

    def _monitor_request(self, n: CapBase, bits: int) -> dict[str, Any]:
        """Arguments of the PROCESS_MONITOR round trip: `bits` into `n` at the end."""
        if getattr(n, "kind", None) != "notification":
            raise TypeError(f"monitor needs a notification capability, not {n!r}")
        if not 0 < bits < 1 << 64:
            raise ValueError(f"monitor: bits are a non-zero 64-bit mask, not {bits:#x}")
        return {"arg": int(bits), "payload": self.pid.to_bytes(8, "little")}

    def _reap_request(self, deadline: int) -> dict[str, Any]:
        """Arguments of the PROCESS_WAIT round trip, with what is left of the deadline."""
        remaining = None if deadline < 0 else max(0.0, (deadline - time.monotonic_ns()) / 1e9)
        return {"timeout": remaining, "payload": self._token.encode()}
