"""`k.names`: the name server stub, in both faces (DESIGN §6, services/names).

Every process holds a capability to the name server in a well-known slot
(abi.NAMES_SLOT). Requests are calls on it; see services/names/protocol.py.
"""

from __future__ import annotations

import time
from typing import TypeVar

from capabilities import Rights
from services.names import protocol as p

from ..errors import InvalidCapabilityError, PeerClosedError
from . import _names as n
from ._common import CapBase
from .aio import (
    AsyncEndpointCap,
    AsyncKernel,
    AsyncMemoryCap,
    AsyncMessage,
    AsyncNotificationCap,
    AsyncPipeReaderCap,
    AsyncPipeWriterCap,
    AsyncQueueCap,
    AsyncSemaphoreCap,
)
from .sync import (
    EndpointCap,
    Kernel,
    MemoryCap,
    Message,
    NotificationCap,
    PipeReaderCap,
    PipeWriterCap,
    QueueCap,
    SemaphoreCap,
)

C = TypeVar(
    "C",
    EndpointCap,
    NotificationCap,
    MemoryCap,
    SemaphoreCap,
    QueueCap,
    PipeReaderCap,
    PipeWriterCap,
)
AC = TypeVar(
    "AC",
    AsyncEndpointCap,
    AsyncNotificationCap,
    AsyncMemoryCap,
    AsyncSemaphoreCap,
    AsyncQueueCap,
    AsyncPipeReaderCap,
    AsyncPipeWriterCap,
)
NameEntry = n.NameEntry


class Names:
    """The blocking stub: `k.names.register(...)`, `k.names.lookup(...)`, ..."""

    def __init__(self, k: Kernel, slot: int) -> None:
        self.endpoint = EndpointCap(k, slot)

    def _call(
        self,
        req: p.Request | bytes,
        what: str,
        *,
        timeout: float | None = n.CALL_GRACE_S,
        caps: list[EndpointCap | NotificationCap] | None = None,
        resend: bool = False,
    ) -> tuple[p.Ok | p.Listing, Message]:
        """The call, and its answer. With `resend` (a read), it goes out again if the
        name server died with it (n.RESENDS), within the same `timeout`."""
        data = req if isinstance(req, bytes) else p.encode(req)
        started, attempt = time.monotonic(), 0
        while True:
            try:
                msg = self.endpoint.call(data, timeout=n.left(timeout, started), caps=caps or ())
                break
            except PeerClosedError:
                attempt += 1
                if not resend or attempt > n.RESENDS:
                    raise
        try:
            return n.answer(msg.data, what), msg
        except BaseException:
            _close_all(msg)
            raise

    def register(
        self,
        name: str,
        cap: CapBase,
        *,
        mode: int = 0o660,
        rights: Rights | None = None,
        replace: bool = False,
    ) -> NameEntry:
        """Register a copy of `cap` under `name` (you keep `cap`).

        `mode` is System V style: lookup needs read (4), replacing or unregistering
        needs write (2), for the caller's class (owner / group / other). `rights` is
        what lookup hands out (default: an endpoint's SEND, GRANT, COPY and TRANSFER,
        never RECEIVE; a memory object's MAP and READ, not WRITE). The entry
        disappears when this process ends.

        Raises AlreadyExistsError if the name is taken (replace=True takes it over,
        with write permission), AccessDeniedError, InvalidArgumentError.
        """
        data = n.register_request(name, cap, mode, rights, replace)
        what = f"names.register({name!r})"
        msg = self.endpoint.call(data, timeout=n.CALL_GRACE_S, caps=[cap.as_copy()])
        resp = n.answer(msg.data, what)
        assert isinstance(resp, p.Ok)
        assert resp.entry is not None
        return n.entry(resp.entry)

    def lookup(
        self,
        name: str,
        *,
        timeout: float | None = 0,
        kind: type[C] = EndpointCap,  # type: ignore[assignment]
    ) -> C:
        """A capability to what `name` holds, derived for you: the entry's rights and
        a badge no other lookup got, so the service can tell its clients apart.

        Waits up to `timeout` seconds for the name to be registered (None: forever;
        0: not at all). Raises NotFoundError (timeout 0) or CallTimeoutError if it
        is not, AccessDeniedError without read permission.
        """
        what = f"names.lookup({n.check_name(name)!r})"
        req = p.Lookup(name, n.deadline_ns(timeout))
        _, msg = self._call(req, what, timeout=n.call_timeout(timeout), resend=True)
        try:
            cap: C = n.looked_up(msg.caps, kind, what)
        except InvalidCapabilityError:
            _close_all(msg)
            raise
        return cap

    def unregister(self, name: str, *, revoke: bool = False) -> None:
        """Remove `name` (write permission). With revoke=True every capability lookup
        handed out for it is deleted too, in every process."""
        self._call(p.Unregister(n.check_name(name), revoke), f"names.unregister({name!r})")

    def list(self, prefix: str = "") -> list[NameEntry]:
        """Entries whose name starts with `prefix` that you may read, sorted by name."""
        resp, _ = self._call(p.List(prefix), "names.list", resend=True)
        assert isinstance(resp, p.Listing)
        return [n.entry(e) for e in resp.entries]

    def watch(
        self, name: str, *, present: bool = True, timeout: float | None = None
    ) -> NameEntry | None:
        """Wait until `name` is registered (or, with present=False, until it is gone);
        returns the entry (None when gone). Raises CallTimeoutError after `timeout`."""
        req = p.Watch(n.check_name(name), present, n.deadline_ns(timeout))
        what = f"names.watch({name!r})"
        resp, _ = self._call(req, what, timeout=n.call_timeout(timeout), resend=True)
        assert isinstance(resp, p.Ok)
        return n.entry(resp.entry) if resp.entry is not None else None

    def notify(
        self, name: str, target: NotificationCap, bits: int, *, present: bool = True
    ) -> None:
        """Have the name server set `bits` in `target` once `name` is registered
        (present=False: once it is gone), at once if it is already: "name appeared"
        as a notification's bits, for a `kernel.Signals` handler or a bound
        endpoint's receive. One-shot; it ends early if this process ends.

        The name server gets a copy of `target` with SIGNAL (and TRANSFER, to travel:
        `target` needs COPY and TRANSFER) and signals only for an entry you may read.
        Raises AccessDeniedError for an existing entry you may not read,
        ResourceLimitError past 256 waits per uid.
        """
        req = n.notify_request(name, bits, present)
        signal_only = target.copy(Rights.SIGNAL | Rights.TRANSFER)
        self._call(req, f"names.notify({name!r})", caps=[signal_only])


class AsyncNames:
    """The asyncio stub: the same requests as `Names`, awaited."""

    def __init__(self, k: AsyncKernel, slot: int) -> None:
        self.endpoint = AsyncEndpointCap(k, slot)

    async def _call(
        self,
        req: p.Request | bytes,
        what: str,
        *,
        timeout: float | None = n.CALL_GRACE_S,
        caps: list[AsyncEndpointCap | AsyncNotificationCap] | None = None,
        resend: bool = False,
    ) -> tuple[p.Ok | p.Listing, AsyncMessage]:
        """See Names._call."""
        data = req if isinstance(req, bytes) else p.encode(req)
        started, attempt = time.monotonic(), 0
        while True:
            try:
                left = n.left(timeout, started)
                msg = await self.endpoint.call(data, timeout=left, caps=caps or ())
                break
            except PeerClosedError:
                attempt += 1
                if not resend or attempt > n.RESENDS:
                    raise
        try:
            return n.answer(msg.data, what), msg
        except BaseException:
            await _aclose_all(msg)
            raise

    async def register(
        self,
        name: str,
        cap: CapBase,
        *,
        mode: int = 0o660,
        rights: Rights | None = None,
        replace: bool = False,
    ) -> NameEntry:
        """See Names.register."""
        data = n.register_request(name, cap, mode, rights, replace)
        what = f"names.register({name!r})"
        msg = await self.endpoint.call(data, timeout=n.CALL_GRACE_S, caps=[cap.as_copy()])
        resp = n.answer(msg.data, what)
        assert isinstance(resp, p.Ok)
        assert resp.entry is not None
        return n.entry(resp.entry)

    async def lookup(
        self,
        name: str,
        *,
        timeout: float | None = 0,
        kind: type[AC] = AsyncEndpointCap,  # type: ignore[assignment]
    ) -> AC:
        """See Names.lookup."""
        what = f"names.lookup({n.check_name(name)!r})"
        req = p.Lookup(name, n.deadline_ns(timeout))
        _, msg = await self._call(req, what, timeout=n.call_timeout(timeout), resend=True)
        try:
            cap: AC = n.looked_up(msg.caps, kind, what)
        except InvalidCapabilityError:
            await _aclose_all(msg)
            raise
        return cap

    async def unregister(self, name: str, *, revoke: bool = False) -> None:
        """See Names.unregister."""
        req = p.Unregister(n.check_name(name), revoke)
        await self._call(req, f"names.unregister({name!r})")

    async def list(self, prefix: str = "") -> list[NameEntry]:
        """See Names.list."""
        resp, _ = await self._call(p.List(prefix), "names.list", resend=True)
        assert isinstance(resp, p.Listing)
        return [n.entry(e) for e in resp.entries]

    async def watch(
        self, name: str, *, present: bool = True, timeout: float | None = None
    ) -> NameEntry | None:
        """See Names.watch."""
        req = p.Watch(n.check_name(name), present, n.deadline_ns(timeout))
        what = f"names.watch({name!r})"
        resp, _ = await self._call(req, what, timeout=n.call_timeout(timeout), resend=True)
        assert isinstance(resp, p.Ok)
        return n.entry(resp.entry) if resp.entry is not None else None

    async def notify(
        self, name: str, target: AsyncNotificationCap, bits: int, *, present: bool = True
    ) -> None:
        """See Names.notify."""
        req = n.notify_request(name, bits, present)
        signal_only = await target.copy(Rights.SIGNAL | Rights.TRANSFER)
        await self._call(req, f"names.notify({name!r})", caps=[signal_only])


def _close_all(msg: Message) -> None:
    for cap in msg.caps:
        cap.close()


async def _aclose_all(msg: AsyncMessage) -> None:
    for cap in msg.caps:
        await cap.close()
