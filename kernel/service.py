"""A service in a few lines (issue #4 item 6): a name, typed requests, N workers.

    class Get(msgspec.Struct, tag=True):
        key: str

    svc = kernel.Service("demo.kv", mode=0o666)

    @svc.handler
    def get(req: Get, ctx: kernel.RequestContext) -> str | None:   # ctx is optional
        return store.get(req.key)

    svc.run(workers=4)                  # threads; or `await svc.serve(k, workers=4)`

    kv = kernel.ServiceClient.lookup(k, "demo.kv", timeout=10.0)
    kv.call(Get("a"), timeout=1.0)      # the handler's return value, or its exception

The handler for a request is chosen by the request's type: the union of the
handlers' annotated (tagged) Struct types is one msgspec decoder, so a request costs
one msgpack decode. SIGINT/SIGTERM stop a service cleanly: the name goes first (no
new lookups), every worker finishes the request in hand, then the endpoint is
revoked and closed, so calls still queued fail at once instead of timing out.

A client's calls go over a direct session when they can (kernel/_service_sessions.py:
accepted here, opened by ServiceClient on its first call): about a third of the cost
of a call through the kernel. A stop answers what the session handlers hold too.
`workers` bounds the handlers that run at once, whichever way their requests came:
with one worker a handler never runs beside itself.

The clients and the wire format (for clients in other languages) are in
kernel/_service_client.py.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import operator
import os
import secrets
import signal
import threading
import time
import traceback
import typing
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Any, NamedTuple, TypeVar

import msgspec

from capabilities import Rights

from ._core.serve import Answerer, Slots, encode_ok
from ._service_client import BAD_REQUEST, RAISED, SAFE_BUILTINS, Failure, failure
from ._service_client import AsyncServiceClient as AsyncServiceClient
from ._service_client import RemoteError as RemoteError
from ._service_client import ServiceClient as ServiceClient
from ._service_sessions import AsyncSessionPool, SessionPool
from .abi import MAX_PAYLOAD
from .client._common import Credentials, MessageBase
from .client._conn import Connection
from .client.aio import AsyncEndpointCap, AsyncKernel, AsyncMessage
from .client.sync import EndpointCap, Kernel, Message
from .errors import CallTimeoutError, IPCError, PeerClosedError, Status

log = logging.getLogger("mkipc.service")

F = TypeVar("F", bound=Callable[..., Any])
_encoder = msgspec.msgpack.Encoder()

CLIENT_RIGHTS = Rights.SEND | Rights.COPY | Rights.TRANSFER
"""What a lookup of a Service hands out unless `rights` says otherwise: a service
takes no capabilities, so not GRANT. A request carrying some then fails in the
kernel (AccessDeniedError) instead of being received and its capabilities closed."""


class RequestContext:
    """Who sent a request. A handler gets one if it takes a second parameter."""

    __slots__ = ("_msg",)

    def __init__(self, msg: MessageBase) -> None:
        self._msg = msg

    @property
    def badge(self) -> int:
        """The badge of the caller's capability: unique per lookup, 0 for unbadged."""
        return self._msg.badge

    @property
    def sender(self) -> Credentials:
        """Kernel-verified pid/uid/gid of the caller."""
        return self._msg.sender

    @property
    def sender_id(self) -> int:
        """The kernel's id of the caller's connection (unique for the kernel's life)."""
        return self._msg.sender_id

    def __repr__(self) -> str:
        return f"<RequestContext badge={self.badge} sender={self.sender}>"


class _Route(NamedTuple):
    func: Callable[..., Any]
    with_ctx: bool
    is_async: bool


class Service:
    """A named endpoint served by handlers. See the module docstring.

    Args:
        name: registered with the name server while the service runs.
        handlers: functions (or coroutine functions, for `serve`) whose first
            parameter is annotated with a tagged msgspec Struct; more can be added
            with the `@svc.handler` decorator.
        mode, rights, replace: passed to `names.register`; `rights` (what a lookup
            hands out) defaults to CLIENT_RIGHTS.
        tracebacks: send the handler's traceback text with an error reply.
        shutdown_timeout: how long a stop waits for in-flight requests (seconds).
    """

    def __init__(
        self,
        name: str,
        handlers: Iterable[Callable[..., Any]] = (),
        *,
        mode: int = 0o660,
        rights: Rights | None = None,
        replace: bool = False,
        tracebacks: bool = True,
        shutdown_timeout: float = 10.0,
    ) -> None:
        self.name = name
        self.mode = mode
        self.rights = CLIENT_RIGHTS if rights is None else rights
        self.replace = replace
        self.tracebacks = tracebacks
        self.shutdown_timeout = shutdown_timeout
        self._routes: dict[type[msgspec.Struct], _Route] = {}
        self._decoder: msgspec.msgpack.Decoder[Any] | None = None
        self._stop_requested = False
        self._wake: Callable[[], None] | None = None
        self._serving = False
        for func in handlers:
            self.handler(func)

    def handler(self, func: F) -> F:
        """Route requests of `func`'s first parameter's type to it (a decorator)."""
        if self._serving:  # run() built its answerer from the handlers it had
            raise RuntimeError(f"service {self.name!r} is serving: add handlers before it runs")
        req_type, route = _route(func)
        if req_type in self._routes:
            raise ValueError(f"{req_type.__name__} already has a handler")
        self._routes[req_type] = route
        self._decoder = None
        return func

    @property
    def request_types(self) -> list[type[msgspec.Struct]]:
        return list(self._routes)

    def stop(self) -> None:
        """Stop serving, as SIGTERM does (thread-safe; run/serve then return)."""
        self._stop_requested = True
        if self._wake is not None:
            self._wake()

    # ------------------------------------------------------------ requests

    def _request_decoder(self) -> msgspec.msgpack.Decoder[Any]:
        if self._decoder is None:
            if not self._routes:
                raise ValueError(f"service {self.name!r} has no handlers")
            union = functools.reduce(operator.or_, self._routes)
            self._decoder = msgspec.msgpack.Decoder(union)
        return self._decoder

    def _decode(self, data: bytes) -> tuple[Any, _Route] | bytes:
        """The request and its route, or the failure reply for a bad request."""
        try:
            req = self._request_decoder().decode(data)
        except msgspec.MsgspecError as e:
            return self._bad_request(e)
        return req, self._routes[type(req)]

    def _bad_request(self, e: msgspec.MsgspecError) -> bytes:
        tags = ", ".join(repr(t.__struct_config__.tag) for t in self._routes)
        why = f"malformed or unknown request ({e}); {self.name!r} takes {tags}"
        return failure(Failure(BAD_REQUEST, "InvalidArgumentError", why))

    def _answerer(self) -> Answerer:
        """The blocking face's answer to a request, compiled (kernel/_core/serve.pyx);
        built when serving starts, once the handlers are known."""
        return Answerer(
            self._request_decoder(), self._routes, _encoder, RequestContext,
            self._bad_request, self._raised, MAX_PAYLOAD,
        )  # fmt: skip

    async def _aanswer(self, msg: AsyncMessage, buf: bytearray) -> bytes | bytearray:
        decoded = self._decode(msg.data)
        if isinstance(decoded, bytes):
            return decoded
        req, route = decoded
        try:
            result = route.func(req, RequestContext(msg)) if route.with_ctx else route.func(req)
            if route.is_async:
                result = await result
            return self._ok(result, buf)
        except Exception as e:
            return self._raised(e, req)

    def _ok(self, result: Any, buf: bytearray) -> bytes | bytearray:
        return encode_ok(_encoder.encode_into, result, buf, MAX_PAYLOAD)  # one buf per worker

    def _raised(self, e: Exception, req: Any) -> bytes:
        cls = type(e)
        name = (
            cls.__name__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
        )
        level = logging.DEBUG if name in SAFE_BUILTINS else logging.ERROR
        log.log(level, "%s: handler for %s raised %s", self.name, type(req).__name__, name,
                exc_info=e)  # fmt: skip
        tb = "".join(traceback.format_exception(cls, e, e.__traceback__)) if self.tracebacks else ""
        message = _text(e)
        try:
            return failure(Failure(RAISED, name, message, list(e.args), tb))
        except (TypeError, ValueError):  # args msgpack cannot carry
            return failure(Failure(RAISED, name, message, [message], tb))

    # ------------------------------------------------------------ blocking face

    def run(self, k: Kernel | None = None, *, workers: int = 1, signals: bool = True) -> None:
        """Register the name and serve with `workers` threads until stopped.

        Returns after SIGINT/SIGTERM (handlers are installed when `signals` is true and
        this is the main thread) or `stop()`. Raises PeerClosedError if the kernel went
        away, AlreadyExistsError if the name is taken (see `replace`).
        """
        _check_workers(workers)
        for route in self._routes.values():
            if route.is_async:
                raise TypeError(
                    f"handler {route.func.__qualname__} is a coroutine function: "
                    "serve it with `await svc.serve(...)` on an asyncio loop"
                )
        answerer = self._answerer()  # fails here, not on the first request
        own = k is None
        self._serving = True
        try:
            if k is None:
                k = Kernel(Connection())
            ep = k.endpoint()
            try:
                k.names.register(
                    self.name, ep, mode=self.mode, rights=self.rights, replace=self.replace
                )
                self._run(k, ep, answerer, workers, signals)
            finally:
                _retire(ep)
        finally:
            self._stop_requested = self._serving = False
            if own and k is not None:
                k.close()

    def _run(
        self, k: Kernel, ep: EndpointCap, answerer: Answerer, workers: int, signals: bool
    ) -> None:
        token = secrets.token_bytes(16)
        errors: list[BaseException] = []
        r, w = os.pipe()
        os.set_blocking(w, False)  # it is also the signal wake-up fd
        self._wake = functools.partial(_poke, w)
        old = _install_signals(lambda signum, frame: self.stop(), w) if signals else None
        slots = Slots(workers)  # `workers` handlers at once, over both paths
        self._sessions = SessionPool(
            self.name, answerer, workers, slots, functools.partial(self._fatal, errors)
        )
        own = _worker_connections(k, ep, workers) if workers > 1 else []
        eps = [wep for _, wep, _ in own] or [ep]
        threads = [
            threading.Thread(
                target=self._thread, args=(wep, token, answerer, slots, errors),
                name=f"{self.name}[{i}]",
                daemon=True,  # a handler stuck past shutdown_timeout must not hold the exit
            )
            for i, wep in enumerate(eps)
        ]  # fmt: skip
        try:
            for t in threads:
                t.start()
            while not self._stop_requested:  # the loop's jump runs a signal's handler
                os.read(r, 1)  # a signal, stop() or a worker that ended writes here
        finally:
            self._shutdown(k, ep, token, threads)
            _close_worker_connections(k, own)
            _restore_signals(old)
            self._wake = None
            os.close(r)
            os.close(w)
        if errors:
            raise errors[0]

    def _thread(
        self,
        ep: EndpointCap,
        token: bytes,
        answerer: Answerer,
        slots: Slots,
        errors: list[BaseException],
    ) -> None:
        try:
            self._worker(ep, token, answerer.answer, slots)
        except BaseException as e:
            self._fatal(errors, e)

    def _fatal(self, errors: list[BaseException], e: BaseException) -> None:
        """A worker ended on what a handler let out (SystemExit, KeyboardInterrupt)
        or a lost kernel: stop, and run() raises it."""
        errors.append(e)
        self.stop()

    def _worker(
        self,
        ep: EndpointCap,
        token: bytes,
        answer: Callable[[Message, bytearray], bytes | bytearray],
        slots: Slots,
    ) -> None:
        buf = bytearray(1)  # [_OK]; the rest is each reply's msgpack
        msg = ep.recv()
        while True:
            # DESIGN §6: lookups always mint a badge, so badge 0 is us (or a process
            # we gave the unbadged capability); the random token tells stop apart.
            if not msg.badge and msg.data == token:
                return
            if msg.session_offer:  # a client wants its own rings: serve it on them
                self._sessions.accept(ep, msg)
                msg = ep.recv()
                continue
            if not msg.is_call:
                self._drop(msg)
                msg = ep.recv()
                continue
            slots.take()
            try:
                out = answer(msg, buf)
            finally:
                slots.give()
            if msg._c.caps:  # the raw completion's slots: cheaper than msg.caps
                self._drop(msg)
            try:
                msg = ep.reply_recv(msg, out)
            except PeerClosedError as e:
                if e.status != Status.CALLER_GONE:
                    raise
                msg = ep.recv()  # the caller timed out or ended: serve the next

    def _drop(self, msg: Message) -> None:
        """Close what a request carried: a service takes no capabilities."""
        for cap in msg.caps:
            cap.close()

    def _shutdown(
        self,
        k: Kernel,
        ep: EndpointCap,
        token: bytes,
        threads: list[threading.Thread],
    ) -> None:
        self._unregister(k)
        deadline = time.monotonic() + self.shutdown_timeout
        # One stop message per live worker (a worker that raised is gone already).
        for _ in range(sum(t.is_alive() for t in threads)):
            try:
                ep.send(token, timeout=max(0.0, deadline - time.monotonic()))
            except CallTimeoutError:
                log.warning("%s: workers still busy after %s s; leaving them",
                            self.name, self.shutdown_timeout)  # fmt: skip
                break
            except IPCError:
                break  # the kernel is gone; the workers have ended too
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        self._sessions.close(deadline)

    def _unregister(self, k: Kernel) -> None:
        try:
            if any(e.name == self.name and e.pid == k.pid for e in k.names.list(self.name)):
                k.names.unregister(self.name)
        except IPCError as e:
            log.warning("%s: unregister: %s", self.name, e)

    # ------------------------------------------------------------ asyncio face

    async def serve(
        self, k: AsyncKernel | None = None, *, workers: int = 1, signals: bool = True
    ) -> None:
        """Register the name and serve with `workers` tasks until stopped.

        Handlers may be coroutine functions (awaited) or functions (called on the
        loop: keep them quick). Stops on SIGINT/SIGTERM (when `signals` is true and
        the loop runs in the main thread) or `stop()`; cancelling serve() cancels
        the handlers in flight.
        """
        _check_workers(workers)
        self._request_decoder()
        own = k is None
        self._serving = True
        try:
            if k is None:
                k = await AsyncKernel().open()
            ep = await k.endpoint()
            try:
                await k.names.register(
                    self.name, ep, mode=self.mode, rights=self.rights, replace=self.replace
                )
                await self._serve(k, ep, workers, signals)
            finally:
                await _aretire(ep)
        finally:
            self._stop_requested = self._serving = False
            if own and k is not None:
                k.close()

    async def _serve(
        self, k: AsyncKernel, ep: AsyncEndpointCap, workers: int, signals: bool
    ) -> None:
        loop = asyncio.get_running_loop()
        token = secrets.token_bytes(16)
        stopped = asyncio.Event()

        def wake() -> None:
            loop.call_soon_threadsafe(stopped.set)

        self._wake = wake
        slots = asyncio.Semaphore(workers)  # `workers` handlers at once, over both paths
        self._asessions = AsyncSessionPool(self.name, self._aanswer, slots)
        installed = _add_loop_signals(loop, self.stop) if signals else []
        tasks = [asyncio.ensure_future(self._aworker(ep, token, slots)) for _ in range(workers)]
        waiter = asyncio.ensure_future(stopped.wait())
        try:
            if not self._stop_requested:
                await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            self._wake = None
            for sig in installed:
                loop.remove_signal_handler(sig)
            await self._ashutdown(k, ep, token, tasks)
        for t in tasks:
            if not t.cancelled() and t.exception() is not None:
                raise t.exception()  # type: ignore[misc]

    async def _aworker(self, ep: AsyncEndpointCap, token: bytes, slots: asyncio.Semaphore) -> None:
        buf = bytearray(1)
        msg = await ep.recv()
        while True:
            if not msg.badge and msg.data == token:  # see _worker
                return
            if msg.session_offer:
                await self._asessions.accept(ep, msg)
                msg = await ep.recv()
                continue
            if not msg.is_call:
                await self._adrop(msg)
                msg = await ep.recv()
                continue
            async with slots:
                out = await self._aanswer(msg, buf)
            if msg._c.caps:
                await self._adrop(msg)
            try:
                msg = await ep.reply_recv(msg, out)
            except PeerClosedError as e:
                if e.status != Status.CALLER_GONE:
                    raise
                msg = await ep.recv()

    async def _adrop(self, msg: AsyncMessage) -> None:
        for cap in msg.caps:
            await cap.close()

    async def _ashutdown(
        self, k: AsyncKernel, ep: AsyncEndpointCap, token: bytes, tasks: list[asyncio.Task[None]]
    ) -> None:
        try:
            if any(e.name == self.name and e.pid == k.pid for e in await k.names.list(self.name)):
                await k.names.unregister(self.name)
        except IPCError as e:
            log.warning("%s: unregister: %s", self.name, e)
        deadline = time.monotonic() + self.shutdown_timeout
        for _ in range(sum(not t.done() for t in tasks)):
            try:
                await ep.send(token, timeout=max(0.0, deadline - time.monotonic()))
            except CallTimeoutError:
                log.warning("%s: workers still busy after %s s; cancelling them",
                            self.name, self.shutdown_timeout)  # fmt: skip
                break
            except IPCError:
                break
        _, late = await asyncio.wait(tasks, timeout=max(0.0, deadline - time.monotonic()))
        for t in late:
            t.cancel()
        if late:
            await asyncio.wait(late)
        await self._asessions.close(deadline)


# ------------------------------------------------------------ helpers


def _text(e: BaseException) -> str:
    try:
        return str(e)
    except Exception:
        return f"<{type(e).__name__}: str() failed>"


def _route(func: Callable[..., Any]) -> tuple[type[msgspec.Struct], _Route]:
    """Check a handler's shape: (request) or (request, ctx), request a tagged Struct."""
    where = getattr(func, "__qualname__", repr(func))
    params = list(inspect.signature(func).parameters.values())
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required_rest = [p for p in params if p not in positional and p.default is p.empty
                     and p.kind is p.KEYWORD_ONLY]  # fmt: skip
    if not 1 <= len(positional) <= 2 or required_rest:
        raise TypeError(f"handler {where} must take (request) or (request, ctx)")
    try:
        hints = typing.get_type_hints(func)
    except Exception as e:
        raise TypeError(f"handler {where}: cannot resolve its annotations: {e}") from None
    req_type = hints.get(positional[0].name)
    if not (isinstance(req_type, type) and issubclass(req_type, msgspec.Struct)):
        raise TypeError(f"handler {where}: annotate its first parameter with a msgspec Struct")
    if req_type.__struct_config__.tag is None:
        raise TypeError(
            f"handler {where}: {req_type.__name__} needs a tag to be routed: "
            f"class {req_type.__name__}(msgspec.Struct, tag=True)"
        )
    is_async = inspect.iscoroutinefunction(func)
    return req_type, _Route(func, len(positional) == 2, is_async)


def _check_workers(workers: int) -> None:
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer, not {workers!r}")


def _poke(fd: int) -> None:
    try:
        os.write(fd, b"\0")
    except OSError:  # closed: the service already stopped
        pass


_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_Handler = Callable[[int, FrameType | None], Any] | int | None


class _Installed(NamedTuple):
    handlers: dict[signal.Signals, _Handler]
    wakeup_fd: int


def _install_signals(
    handler: Callable[[int, FrameType | None], None], wakeup_fd: int
) -> _Installed | None:
    """Python runs a signal's handler in the main thread, which waits in os.read()
    on `wakeup_fd`'s pipe. The kernel may deliver the signal to any other thread
    (with a session worker busy it sometimes did: the service then never stopped);
    the wake-up fd makes the C handler write to the pipe whichever thread got it."""
    if threading.current_thread() is not threading.main_thread():
        return None
    handlers = {sig: signal.signal(sig, handler) for sig in _SIGNALS}
    return _Installed(handlers, signal.set_wakeup_fd(wakeup_fd))


def _restore_signals(old: _Installed | None) -> None:
    if old is None:
        return
    signal.set_wakeup_fd(old.wakeup_fd)
    for sig, handler in old.handlers.items():
        signal.signal(sig, signal.SIG_DFL if handler is None else handler)


def _add_loop_signals(loop: asyncio.AbstractEventLoop, stop: Callable[[], None]) -> list[int]:
    if threading.current_thread() is not threading.main_thread():
        return []
    for sig in _SIGNALS:
        loop.add_signal_handler(sig, stop)
    return list(_SIGNALS)


def _worker_connections(
    k: Kernel, ep: EndpointCap, n: int
) -> list[tuple[Kernel, EndpointCap, str]]:
    """One connection, with its own rings, per worker thread: a completion then wakes
    the thread it belongs to directly, not a poller that wakes it in turn (threads
    sharing one connection paid two wakeups per request: 33 µs against 12 µs p50).
    Each gets a copy of the endpoint through an in-process inheritance bundle."""
    out: list[tuple[Kernel, EndpointCap, str]] = []
    try:
        for _ in range(n):
            token = k._bundle({"ep": ep}, "service worker")
            wk = Kernel(Connection(k.socket_path, autostart=False, inherit=token))
            wep = wk.inherited["ep"]
            assert isinstance(wep, EndpointCap)
            out.append((wk, wep, token))
    except BaseException:
        _close_worker_connections(k, out)
        raise
    return out


def _close_worker_connections(k: Kernel, conns: list[tuple[Kernel, EndpointCap, str]]) -> None:
    """Close them, then let the kernel drop their bundles (PROCESS_WAIT returns once
    it has cleaned the connection up)."""
    for wk, _, token in conns:
        wk.close()
        try:
            k._drop_bundle(token, "service worker clean-up", timeout=5.0)
        except IPCError as e:
            log.warning("service worker clean-up: %s", e)


def _retire(ep: EndpointCap) -> None:
    """Revoke what lookups handed out, then close: the endpoint dies, and calls still
    queued on it fail at once (PeerClosedError) instead of waiting out their timeout."""
    try:
        ep.revoke()
        ep.close()
    except IPCError as e:
        log.debug("retire endpoint: %s", e)


async def _aretire(ep: AsyncEndpointCap) -> None:
    try:
        await ep.revoke()
        await ep.close()
    except IPCError as e:
        log.debug("retire endpoint: %s", e)
