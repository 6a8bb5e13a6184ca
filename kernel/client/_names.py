"""What both faces' name server stubs share: building requests, reading replies.

The stubs only make the call (blocking or awaited); every rule about names,
deadlines and errors is here, once.
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple

from capabilities import Rights
from capabilities.policy import check_mode
from services.names import protocol as p

from ..errors import InvalidCapabilityError, error_for
from ._common import CapBase

CALL_GRACE_S = 5.0
"""How long the name server may take to answer, on top of any waiting a request asks
for: it answers in microseconds, so this only matters if it is stuck or restarting."""


class NameEntry(NamedTuple):
    """An entry as `names.list()` and `names.watch()` report it."""

    name: str
    kind: str  # "endpoint", "notification", ...
    uid: int  # owner: the registrant's kernel-verified uid and gid
    gid: int
    mode: int  # System V style: owner / group / other, read 4 and write 2
    rights: Rights  # what lookup hands out
    pid: int  # the registrant
    served: int  # lookups answered
    registered_ns: int  # CLOCK_MONOTONIC when it was registered


def entry(e: p.Entry) -> NameEntry:
    return NameEntry(
        e.name, e.kind, e.uid, e.gid, e.mode, Rights(e.rights), e.pid, e.served, e.registered_ns
    )


def check_name(name: object) -> str:
    if not isinstance(name, str):
        raise TypeError(f"a name is a str, not {type(name).__name__}")
    if not 0 < len(name.encode("utf-8", "surrogatepass")) <= p.MAX_NAME:
        raise ValueError(f"a name has 1 to {p.MAX_NAME} bytes (UTF-8), not {len(name)}")
    return name


def notify_request(name: str, bits: int, present: bool) -> p.Notify:
    if not isinstance(bits, int) or not 0 < bits < 1 << 64:
        raise ValueError(f"bits are a non-zero 64-bit mask, not {bits!r}")
    return p.Notify(check_name(name), int(bits), bool(present))


def deadline_ns(timeout: float | None) -> int:
    """The wire deadline for a wait: -1 forever, 0 none, else absolute monotonic ns."""
    if timeout is None:
        return -1
    if not timeout >= 0:
        raise ValueError("timeout must be non-negative or None")
    return 0 if timeout == 0 else time.monotonic_ns() + max(1, int(timeout * 1e9))


REGISTRABLE = (
    "endpoint",
    "notification",
    "memory object",
    "semaphore",
    "queue",
    "pipe read end",
    "pipe write end",
)
"""Kinds of capability a name can hold (not reply capabilities: they are one-shot)."""


RESENDS = 3
"""Times a lookup, watch or list goes out again when the name server died with it in
hand: the kernel restarts it, and the new one serves the same entries. Reads only: a
register or unregister the dead one may have carried out is not repeated."""


def left(timeout: float | None, started: float) -> float | None:
    """What is left of a call's `timeout` (None: no bound) since `started` (monotonic)."""
    return None if timeout is None else max(0.0, timeout - (time.monotonic() - started))


def call_timeout(timeout: float | None) -> float | None:
    """The call's own timeout: the wait it asks for plus the grace for the answer."""
    return None if timeout is None else timeout + CALL_GRACE_S


def register_request(
    name: str, cap: CapBase, mode: int, rights: Rights | int | None, replace: bool
) -> bytes:
    """The request; the stub sends it with `cap.as_copy()` (the kernel makes the copy
    at the send, so the registrant's own `cap` stays usable while the request waits
    for the name server: its workers may be receiving)."""
    if not isinstance(cap, CapBase) or cap.kind not in REGISTRABLE:
        raise TypeError(
            f"register needs a capability of one of these kinds: {', '.join(REGISTRABLE)}; "
            f"not {cap!r}"
        )
    if rights is not None and not 0 <= int(rights) <= int(Rights.ALL):
        raise ValueError(f"rights must be a combination of kernel.Rights, not {rights!r}")
    req = p.Register(
        check_name(name), check_mode(mode), None if rights is None else int(rights), replace
    )
    return p.encode(req)


def answer(data: bytes, what: str) -> p.Ok | p.Listing:
    """The name server's reply, or the exception its Error names."""
    resp = p.decode_response(data)
    if isinstance(resp, p.Error):
        raise error_for(resp.status, what, resp.message)
    return resp


def looked_up(caps: list[Any], kind: type[Any], what: str) -> Any:
    """The capability a lookup reply carried, checked against the kind asked for."""
    if len(caps) != 1:
        raise InvalidCapabilityError(f"{what}: the reply carried {len(caps)} capabilities")
    cap = caps[0]
    if not isinstance(cap, kind):
        raise InvalidCapabilityError(
            f"{what}: the name holds a {cap.kind}, not a {kind.kind} (pass kind=...)"
        )
    return cap
