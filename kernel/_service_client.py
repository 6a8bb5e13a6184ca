"""The client side and wire format of kernel.Service (see kernel/service.py).

A request is the msgpack encoding of a tagged struct (a map with the tag field). A
reply is one status byte then msgpack: 0 and the handler's return value, or 1 and a
`Failure` array [kind, type name, message, args, traceback].
"""

from __future__ import annotations

import builtins
import threading
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar, overload

import msgspec

from ._core.faces import ServiceCaller, reply_body
from .client.aio import AsyncEndpointCap, AsyncKernel
from .client.session import Session
from .client.sync import EndpointCap, Kernel
from .errors import (
    InvalidArgumentError,
    InvalidCapabilityError,
    IPCError,
    PeerClosedError,
    ResourceLimitError,
    Status,
)

if TYPE_CHECKING:
    from .client.aio_session import AsyncSession

T = TypeVar("T")

OK = b"\x00"
FAILED = b"\x01"
"""The status byte that starts a reply."""

RAISED = 0
"""Failure kinds: the handler raised; the request could not be decoded or routed."""
BAD_REQUEST = 1

SAFE_BUILTINS: frozenset[str] = frozenset(
    "ArithmeticError AssertionError AttributeError FileExistsError FileNotFoundError "
    "IndexError IsADirectoryError KeyError LookupError NotADirectoryError "
    "NotImplementedError OverflowError PermissionError RuntimeError TypeError "
    "ValueError ZeroDivisionError".split()
)
"""Remote exceptions a client re-raises as the same builtin type. Left out on purpose:
TimeoutError and ConnectionError (they would pass for the call's own failures),
OSError itself, and anything whose constructor is not `cls(*args)`."""


class Failure(msgspec.Struct, array_like=True, frozen=True):
    """The body of a failed reply."""

    kind: int  # RAISED or BAD_REQUEST
    type: str  # "KeyError" for builtins, else "module.QualName"
    message: str  # str(exception)
    args: list[Any] = []  # the exception's args, when msgpack can carry them
    traceback: str = ""  # the remote traceback text ("" if the service sends none)


class RemoteError(IPCError):
    """A handler raised an exception that the client does not re-raise as itself.

    `type_name`, `message` and `traceback` describe the remote exception. A builtin
    that is re-raised as itself (KeyError, ValueError, ...) has one as `__cause__`.
    """

    def __init__(self, what: str, type_name: str, message: str, tb: str = "") -> None:
        super().__init__(f"{what}: {type_name}: {message}" if message else f"{what}: {type_name}")
        self.type_name = type_name
        self.message = message
        self.traceback = tb
        if tb and hasattr(self, "add_note"):  # 3.11+: shown under the exception
            self.add_note("remote traceback:\n" + tb.rstrip())


_encoder = msgspec.msgpack.Encoder()
_failures = msgspec.msgpack.Decoder(Failure)


class ServiceClient(ServiceCaller):
    """Calls a Service through an endpoint capability (blocking face; thread-safe).

    By default the first call opens a direct session to the service (`cap.session`):
    calls then go over rings shared with the service alone, about a third of the
    cost of a call through the kernel. A session carries one call at a time, so a
    call made while another is on it goes through the kernel instead, where the
    service's other workers take it: concurrency is as without sessions.
    `session=False` keeps every call on the kernel's path. `call()`'s common path
    is compiled (kernel/_core/faces.pyx ServiceCaller); the rest is here."""

    __slots__ = ("cap", "_what", "_use_session", "_lock")

    def __init__(self, cap: EndpointCap, *, name: str | None = None, session: bool = True) -> None:
        self.cap = cap
        self._what = f"service {name!r}" if name else f"service at slot {cap.slot:#x}"
        self._use_session = session
        self._lock = threading.Lock()  # opening the session
        self._bind_codec(_encoder.encode, _decoders)

    @classmethod
    def lookup(cls, k: Kernel, name: str, *, timeout: float | None = 0) -> ServiceClient:
        """Look `name` up, waiting up to `timeout` seconds for it to be registered."""
        return cls(k.names.lookup(name, timeout=timeout), name=name)

    def _call_slow(self, data: bytes, timeout: float | None, type_: Any) -> Any:
        """No session: open it (the first call), else the kernel's path."""
        if self._use_session and self._open(timeout):
            return self._call_session(data, timeout, type_)
        return self._call_kernel(data, timeout, type_)

    def _call_kernel(self, data: bytes, timeout: float | None, type_: Any) -> Any:
        return result(self.cap.call(data, timeout=timeout).data, type_, self._what)

    def _result(self, reply: bytes, type_: Any) -> Any:
        return result(reply, type_, self._what)

    def _open(self, timeout: float | None) -> bool:
        """Open the session on first use; False if the service declined one (it
        holds too many): this client then stays on the kernel path."""
        with self._lock:
            if self._session is None and self._use_session:
                try:
                    self._set_session(self.cap.session(timeout=timeout))
                except ResourceLimitError:
                    self._use_session = False
            return self._session is not None

    def close(self) -> None:
        """Close the session and the capability (fine if the service ended)."""
        session = self._session
        self._set_session(None)
        try:
            if isinstance(session, Session):
                session.close()
            self.cap.close()
        except (InvalidCapabilityError, PeerClosedError):
            pass

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class AsyncServiceClient:
    """Calls a Service from asyncio code; many calls may be in flight.

    The first call opens a direct session to the service; from then on every call
    rides it, any number in flight at once. The service loses no concurrency: its
    asyncio face runs a task per request, and its worker threads share the requests
    one of them takes off the rings (a handler that blocks hands the polling to
    another worker after about 1 ms). Calls made while the session opens, and all
    calls with `session=False` or once the service declined one, go through the
    kernel."""

    __slots__ = ("cap", "_what", "_use_session", "_session", "_opening")

    def __init__(
        self, cap: AsyncEndpointCap, *, name: str | None = None, session: bool = True
    ) -> None:
        self.cap = cap
        self._what = f"service {name!r}" if name else f"service at slot {cap.slot:#x}"
        self._use_session = session
        self._session: AsyncSession | None = None
        self._opening = False  # a call is opening the session: the others take the kernel

    @classmethod
    async def lookup(
        cls, k: AsyncKernel, name: str, *, timeout: float | None = 0
    ) -> AsyncServiceClient:
        """See ServiceClient.lookup."""
        return cls(await k.names.lookup(name, timeout=timeout), name=name)

    @overload
    async def call(self, request: msgspec.Struct, *, timeout: float | None = None) -> Any: ...
    @overload
    async def call(
        self, request: msgspec.Struct, *, timeout: float | None = None, type: type[T]
    ) -> T: ...
    async def call(
        self, request: msgspec.Struct, *, timeout: float | None = None, type: Any = Any
    ) -> Any:
        """See ServiceClient.call."""
        data = _encoder.encode(request)
        session = self._session
        if session is None and self._use_session and not self._opening:
            session = await self._open(timeout)
        if session is None:
            return result((await self.cap.call(data, timeout=timeout)).data, type, self._what)
        return result((await session.call(data, timeout=timeout)).data, type, self._what)

    async def _open(self, timeout: float | None) -> AsyncSession | None:
        """See ServiceClient._open."""
        self._opening = True
        try:
            self._session = await self.cap.session(timeout=timeout)
        except ResourceLimitError:
            self._use_session = False
        finally:
            self._opening = False
        return self._session

    async def close(self) -> None:
        session, self._session = self._session, None
        try:
            if session is not None:
                await session.close()
            await self.cap.close()
        except (InvalidCapabilityError, PeerClosedError):
            pass

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


# ------------------------------------------------------------ the reply codec

_decoders: dict[Any, msgspec.msgpack.Decoder[Any]] = {Any: msgspec.msgpack.Decoder()}


def result(data: bytes, type_: Any, what: str) -> Any:
    """Decode a reply: the value (as `type_`), or raise what the handler raised."""
    if data[:1] == OK:
        decoder = _decoders.get(type_)
        if decoder is None:
            decoder = _decoders[type_] = msgspec.msgpack.Decoder(type_)
        return decoder.decode(reply_body(data))
    if data[:1] != FAILED:
        raise InvalidArgumentError(f"{what}: the reply is not a service reply ({data[:16]!r})")
    raise _exception(_failures.decode(memoryview(data)[1:]), what)


def _exception(f: Failure, what: str) -> Exception:
    if f.kind == BAD_REQUEST:
        return InvalidArgumentError(f"{what}: {f.message}", Status.INVALID_ARGS)
    remote = RemoteError(what, f.type, f.message, f.traceback)
    if f.type in SAFE_BUILTINS:
        try:
            exc: Exception = getattr(builtins, f.type)(*f.args)
        except Exception:  # args that constructor does not take: keep the RemoteError
            return remote
        exc.__cause__ = remote
        return exc
    return remote


def failure(f: Failure) -> bytes:
    return FAILED + _encoder.encode(f)
