"""The name server's wire protocol: msgspec structs over its endpoint (DESIGN §6).

A request is one call on the name server endpoint; its payload is one of the
`Request` structs (msgpack, tagged). `register` carries the capability in the
message; a successful `lookup` reply carries the derived capability back. Every
reply is an `Ok`, a `Listing` or an `Error` whose status is a `kernel.Status`.

Deadlines are absolute CLOCK_MONOTONIC nanoseconds (one clock for every process
on the host): -1 waits forever, 0 does not wait.

Tags are the wire names: never rename or reuse one; add new requests with new tags.
"""

from __future__ import annotations

import msgspec

MAX_NAME = 255
"""Longest name in bytes (UTF-8)."""


class Register(msgspec.Struct, tag="register", frozen=True):
    """Put the capability carried by this message under `name`."""

    name: str
    mode: int = 0o660
    rights: int | None = None  # what lookup hands out; None: the kind's default
    replace: bool = False  # take over a live entry (needs write permission on it)


class Lookup(msgspec.Struct, tag="lookup", frozen=True):
    """A derived capability for `name`, badged for this caller; waits until `deadline`."""

    name: str
    deadline: int = 0


class Unregister(msgspec.Struct, tag="unregister", frozen=True):
    name: str
    revoke: bool = False  # also delete every capability lookup handed out


class List(msgspec.Struct, tag="list", frozen=True):
    prefix: str = ""


class Watch(msgspec.Struct, tag="watch", frozen=True):
    """Wait until `name` is registered (present=True) or gone (present=False)."""

    name: str
    present: bool = True
    deadline: int = -1


class Notify(msgspec.Struct, tag="notify", frozen=True):
    """Set `bits` in the notification this request carries (SIGNAL) once `name` is
    registered (present=True) or gone (present=False): at once if it is already.
    One-shot; it ends early if the requester ends."""

    name: str
    bits: int
    present: bool = True


Request = Register | Lookup | Unregister | List | Watch | Notify


class Entry(msgspec.Struct, frozen=True):
    """What anyone allowed to read an entry may know about it."""

    name: str
    kind: str  # "endpoint", "notification", ...
    uid: int  # owner (the registrant's kernel-verified uid and gid)
    gid: int
    mode: int
    rights: int  # what lookup hands out
    pid: int  # the registrant
    served: int  # lookups answered
    registered_ns: int  # CLOCK_MONOTONIC at registration


class Ok(msgspec.Struct, tag="ok", frozen=True):
    entry: Entry | None = None  # lookup, watch(present=True), register


class Listing(msgspec.Struct, tag="listing", frozen=True):
    entries: list[Entry]


class Error(msgspec.Struct, tag="error", frozen=True):
    status: int  # kernel.Status
    message: str


Response = Ok | Listing | Error

_encoder = msgspec.msgpack.Encoder()
_requests = msgspec.msgpack.Decoder(Request)
_responses = msgspec.msgpack.Decoder(Response)


def encode(msg: Request | Response) -> bytes:
    return _encoder.encode(msg)


def decode_request(data: bytes) -> Request:
    """Raises msgspec.ValidationError / DecodeError with a readable message."""
    req: Request = _requests.decode(data)
    return req


OK = Ok()
OK_BYTES = _encoder.encode(OK)
"""The answer of every lookup (its capability travels beside it), encoded once."""


def decode_response(data: bytes) -> Response:
    if data == OK_BYTES:  # a lookup's answer: no decoder on the hot path
        return OK
    resp: Response = _responses.decode(data)
    return resp
