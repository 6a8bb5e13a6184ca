"""The name server's entries and armed notifies, kept in the kernel across its restarts.

The kernel hands every name server it starts the same queue (`names.store`, which
the kernel itself holds), as systemd keeps a service's fd store. Each entry is one
message in it: the entry's fields, and the registered capability itself, moved in.
The name server works with a copy (a child of the stored one), so that revoking
the stored one reaches every capability lookup minted, by this instance or by one
before it. An armed notify is one message too, carrying the notification to
signal. A message's type is its serial, so dropping an entry or firing a notify
takes exactly its message back. A name server that starts takes every message
out and keeps them again, with new serials.

A queue cannot carry a queue capability (a queue holding itself would never be
freed), so a registered queue is kept in memory only and is gone after a restart.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterator
from typing import cast

import msgspec

from kernel import CallTimeoutError, IPCError, QueueCap, QueueMessage
from kernel.client.sync import InheritedCap as Cap

log = logging.getLogger("mkipc.names")


class Kept(msgspec.Struct, frozen=True, array_like=True, tag="entry"):
    """An entry's fields as stored: what the name server needs to serve it again."""

    name: str
    kind: str
    uid: int
    gid: int
    mode: int
    rights: int
    pid: int
    conn: int  # the registrant's connection id
    exit_badge: int  # of the exit notice the registrant's end sends to the endpoint
    registered_ns: int


class Armed(msgspec.Struct, frozen=True, array_like=True, tag="notify"):
    """A notify waiting for its name (the notification travels with it)."""

    name: str
    present: bool
    bits: int
    uid: int
    gid: int
    conn: int  # the requester's connection id: its end drops the notify
    exit_badge: int


Stored = Kept | Armed

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Stored)


class Store:
    """The entries' queue, or none (a name server started by hand keeps nothing)."""

    def __init__(self, queue: QueueCap | None) -> None:
        self.queue = queue
        # Serials are message types (1 … 2**63-1) that never repeat across restarts.
        self._serials = itertools.count(time.monotonic_ns())

    def can_hold(self, cap: Cap) -> bool:
        return self.queue is not None and not isinstance(cap, QueueCap)

    def keep(self, item: Stored, cap: Cap) -> int:
        """Move `cap` into the store with `item`; its serial, or 0 if it stays with
        the caller (no store, a queue, a full store)."""
        if self.queue is None or not self.can_hold(cap):
            return 0
        serial = next(self._serials)
        try:
            self.queue.send(_encoder.encode(item), mtype=serial, caps=[cap], timeout=0)
        except IPCError as e:  # full (it is larger than the table can fill) or gone
            log.warning("%r kept in memory only: %s", item, e)
            return 0
        return serial

    def take(self, serial: int) -> Cap | None:
        """The stored capability of entry `serial`, out of the store (None: not
        stored, or revoked meanwhile)."""
        if self.queue is None or serial == 0:
            return None
        try:
            msg = self.queue.recv(mtype=serial, timeout=0)
        except IPCError as e:  # a timeout included: nothing of that type is there
            log.warning("entry %d was not in the store: %s", serial, e)
            return None
        return _carried(msg)

    def take_all(self) -> Iterator[tuple[Stored, Cap | None]]:
        """Everything stored, taken out (a name server that starts)."""
        if self.queue is None:
            return
        while True:
            try:
                msg = self.queue.recv(timeout=0)
            except CallTimeoutError:
                return  # all taken
            except IPCError as e:
                log.warning("the store cannot be read: %s", e)
                return
            cap = _carried(msg)
            try:
                item = _decoder.decode(msg.data)
            except msgspec.MsgspecError as e:  # not ours: only the name server holds it
                log.warning("dropping a malformed stored entry: %s", e)
                if cap is not None:
                    cap.close()
                continue
            yield item, cap


def _carried(msg: QueueMessage) -> Cap | None:
    """The capability an entry's message holds: what register accepted (never a
    reply capability), or None where it was revoked while stored."""
    return cast("Cap | None", msg.caps[0] if msg.caps else None)
