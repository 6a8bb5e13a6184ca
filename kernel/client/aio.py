"""The asyncio face (uvloop-friendly): many calls in flight, cancellation-safe.

The core is the same as the blocking face's; only waiting differs. The event loop
watches the completion eventfd, and the waiting flag stays set while the loop is
idle, so the kernel rings the doorbell exactly when a completion lands.
"""

from __future__ import annotations

import asyncio
import inspect
import mmap
import subprocess
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

from capabilities import Rights

from .. import abi
from ..abi import Op
from ..errors import CallTimeoutError, IPCError, PeerClosedError, WouldBlock
from ._common import (
    CapBase,
    CapInfo,
    MessageBase,
    ProcessBase,
    Transferable,
    argv_list,
    badge_payload,
    bound_slot,
    cap_info,
    inherit_request,
    moved_away,
    names_slot,
    rights_arg,
    spawn_env,
    transfer_slots,
)
from ._conn import Completion, Connection, as_payload, deadline_from, failure
from ._objects import (
    QueueMessage,
    chunks,
    initial_value,
    map_mode,
    map_received,
    memory_size_arg,
    message_type,
    pipe_capacity,
    post_count,
    queue_create_args,
    queue_message,
    read_size,
    recv_params,
    take_stashed_bytes,
    take_stashed_message,
    take_stashed_unit,
    unread,
)
from .signals import Sig

Data = bytes | bytearray | memoryview

if TYPE_CHECKING:
    from typing import Self

    from .aio_session import AsyncSession, AsyncSessionServer
    from .names import AsyncNames


class AsyncKernel:
    """A connection to the kernel for asyncio code: `async with kernel.connect_async() as k`."""

    def __init__(self, socket: str | None = None, *, autostart: bool = True) -> None:
        self._socket = socket
        self._autostart = autostart
        self._conn: Connection | None = None
        # req_id -> (future, slot of the capability the op used)
        self._futures: dict[int, tuple[asyncio.Future[Completion], int]] = {}
        self.inherited: dict[str, AsyncInheritedCap] = {}
        self._names: AsyncNames | None = None
        # Open sessions (aio_session._AsyncSide), not kept alive by this: one dropped
        # unclosed closes itself.
        self._sessions: weakref.WeakSet[Any] = weakref.WeakSet()

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __await__(self) -> Any:
        return self.open().__await__()

    async def open(self) -> AsyncKernel:
        """Connect (in a worker thread: it may have to start a kernel first)."""
        self._loop = asyncio.get_running_loop()
        conn = await asyncio.to_thread(Connection, self._socket, autostart=self._autostart)
        self._conn = conn
        w = conn.welcome
        self.pid, self.uid, self.gid = w.pid, w.uid, w.gid
        self.inherited = {
            n: _CAP_TYPES[ic.kind](self, ic.slot, owned=True) for n, ic in w.inherited.items()
        }
        self._loop.add_reader(conn.cq_efd, self._on_doorbell)
        self._loop.add_reader(conn.sock.fileno(), self._on_socket)
        if not conn.cq.prepare_sleep():
            self._loop.call_soon(self._on_doorbell)
        return self

    @property
    def socket_path(self) -> str:
        return self._open().path

    @property
    def names(self) -> AsyncNames:
        """The name server (DESIGN §6): `await k.names.lookup(...)` and so on."""
        if self._names is None:
            from .names import AsyncNames

            self._names = AsyncNames(self, names_slot(self._open()))
        return self._names

    def close(self) -> None:
        """Disconnect; pending operations fail with PeerClosedError."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        self._loop.remove_reader(conn.cq_efd)
        self._loop.remove_reader(conn.sock.fileno())
        self._fail_all(PeerClosedError("the connection was closed"))
        for side in list(self._sessions):  # the kernel ends them with the connection
            side._abandon(PeerClosedError("the connection was closed"))
        conn.close()

    def _open(self) -> Connection:
        if self._conn is None:
            raise PeerClosedError("the connection is not open (use `async with`)")
        return self._conn

    # ------------------------------------------------------------ completions

    def _on_doorbell(self) -> None:
        conn = self._conn
        if conn is None:
            return
        conn.clear_doorbell()
        while True:
            conn.cq.end_sleep()
            for c in conn.drain():
                entry = self._futures.pop(c.req_id, None)
                if entry is None:
                    continue
                fut, slot = entry
                if fut.done():  # cancelled, but its task has not withdrawn it yet:
                    conn.stash_result(c, slot)  # keep what it won (a message, bits)
                else:
                    fut.set_result(c)
            if conn.cq.prepare_sleep():  # re-checks the ring after setting the flag
                return

    def _on_socket(self) -> None:
        try:
            self._open().check_socket()
        except PeerClosedError as e:
            conn = self._conn
            assert conn is not None
            self._loop.remove_reader(conn.sock.fileno())
            self._fail_all(e)

    def _fail_all(self, exc: Exception) -> None:
        futures, self._futures = self._futures, {}
        for fut, _ in futures.values():
            if not fut.done():
                fut.set_exception(exc)

    async def _roundtrip(
        self,
        op: int,
        cap: CapBase | None,
        verb: str,
        *,
        timeout: float | None = None,
        arg: int = 0,
        payload: Any = b"",
        caps: tuple[int, ...] = (),
    ) -> Completion:
        conn = self._open()
        slot = cap.slot if cap is not None else 0
        req_id = conn.submit(op, slot, deadline_from(timeout), arg, payload, caps)
        fut: asyncio.Future[Completion] = self._loop.create_future()
        self._futures[req_id] = (fut, slot)
        try:
            c = await fut
        except asyncio.CancelledError:
            self._withdraw(conn, req_id, slot, fut)
            raise
        if c.status:
            raise failure(c, cap, verb)
        return c

    def _withdraw(
        self, conn: Connection, req_id: int, slot: int, fut: asyncio.Future[Completion]
    ) -> None:
        """Trio's abort_fn: take the op back from the kernel, or keep a result that won."""
        if self._futures.pop(req_id, None) is not None:
            conn.cancel(req_id, slot)
        elif fut.done() and not fut.cancelled() and fut.exception() is None:
            conn.stash_result(fut.result(), slot)  # completed as we were cancelled

    # ------------------------------------------------------------ objects

    def _wrap(self, kind: int, slot: int) -> CapBase:
        """A typed capability object for a slot the kernel handed us."""
        return _BY_KIND[kind](self, slot, owned=True)

    async def endpoint(self) -> AsyncEndpointCap:
        """Create an endpoint; the new capability has every endpoint right."""
        c = await self._roundtrip(Op.ENDPOINT_CREATE, None, "create endpoint")
        return AsyncEndpointCap(self, c.arg, owned=True)

    async def notification(self) -> AsyncNotificationCap:
        c = await self._roundtrip(Op.NOTIFICATION_CREATE, None, "create notification")
        return AsyncNotificationCap(self, c.arg, owned=True)

    async def memory(self, size: int) -> AsyncMemoryCap:
        """Create a zero-filled memory object of `size` bytes."""
        arg = memory_size_arg(size)
        c = await self._roundtrip(Op.MEMORY_CREATE, None, "create memory object", arg=arg)
        return AsyncMemoryCap(self, c.arg, owned=True)

    async def queue(self, capacity: int | None = 64, *, max_bytes: int = 1 << 20) -> AsyncQueueCap:
        """Create a message queue; as Kernel.queue."""
        arg, payload = queue_create_args(capacity, max_bytes)
        c = await self._roundtrip(Op.QUEUE_CREATE, None, "create queue", arg=arg, payload=payload)
        return AsyncQueueCap(self, c.arg, owned=True)

    async def pipe(
        self, capacity: int = abi.PIPE_CAPACITY
    ) -> tuple[AsyncPipeReaderCap, AsyncPipeWriterCap]:
        """Create a pipe; as Kernel.pipe."""
        c = await self._roundtrip(Op.PIPE_CREATE, None, "create pipe", arg=pipe_capacity(capacity))
        writer = int.from_bytes(c.payload, "little")
        return (
            AsyncPipeReaderCap(self, c.arg, owned=True),
            AsyncPipeWriterCap(self, writer, owned=True),
        )

    async def semaphore(self, value: int = 0) -> AsyncSemaphoreCap:
        """Create a counting semaphore whose count starts at `value`."""
        arg = initial_value(value)
        c = await self._roundtrip(Op.SEMAPHORE_CREATE, None, "create semaphore", arg=arg)
        return AsyncSemaphoreCap(self, c.arg, owned=True)

    async def status(self) -> abi.KernelStatus:
        """Who holds what in the kernel; see the blocking face's Kernel.status."""
        c = await self._roundtrip(Op.KERNEL_STATUS, None, "status")
        return abi.decode_status(c.payload)

    async def spawn(
        self,
        argv: Sequence[str],
        *,
        caps: Mapping[str, CapBase] | None = None,
        env: Mapping[str, str] | None = None,
        **popen_kwargs: Any,
    ) -> AsyncProcess:
        """Start a process that finds `caps` in its `inherited` mapping."""
        slots, names = inherit_request(caps)
        c = await self._roundtrip(Op.INHERIT_CREATE, None, "spawn", payload=names, caps=slots)
        token = c.payload.decode()
        # Popen returns once the child has exec'd; only waiting for it could block,
        # and AsyncProcess.wait does that in a thread.
        env = spawn_env(self._open(), token, env)
        try:
            popen = subprocess.Popen(argv_list(argv), env=env, **popen_kwargs)  # noqa: ASYNC220
        except BaseException:
            # No child will claim the bundle: waiting on it drops it and its references.
            await self._roundtrip(Op.PROCESS_WAIT, None, "spawn clean-up", payload=token.encode())
            raise
        return AsyncProcess(self, popen, token)


Caps = Sequence[Transferable]


class AsyncMessage(MessageBase):
    __slots__ = ()
    _k: AsyncKernel

    async def reply(self, data: Data, *, caps: Caps = ()) -> None:
        """Answer the call. Raises PeerClosedError if the caller timed out or died."""
        payload, slots = as_payload(data), transfer_slots(caps)  # validate first
        slot = self._take_reply_slot()  # one-shot
        try:
            await AsyncReplyCap(self._k, slot)._reply(payload, slots)
        except IPCError as e:
            self._give_back_reply_slot(slot, e)
            raise
        if caps:
            moved_away(caps)

    async def monitor(self, target: AsyncEndpointCap | AsyncNotificationCap, badge: int) -> None:
        """When the caller's process ends, the kernel sends a message with `badge`
        on an endpoint, or ORs it into a notification; see the blocking face's
        Message.monitor."""
        slot, payload = self._monitor_request(target, badge, signals=True)
        cap = AsyncReplyCap(self._k, slot)
        await self._k._roundtrip(Op.CALLER_MONITOR, cap, "monitor", arg=badge, payload=payload)

    async def monitor_call(self, endpoint: AsyncEndpointCap, badge: int) -> None:
        """If this call ends unanswered, the kernel sends a message with `badge` on
        `endpoint`; see the blocking face's Message.monitor_call."""
        slot, payload = self._monitor_request(endpoint, badge)
        cap = AsyncReplyCap(self._k, slot)
        await self._k._roundtrip(Op.CALL_MONITOR, cap, "monitor_call", arg=badge, payload=payload)


class AsyncReplyCap(CapBase):
    """The one-shot right to answer one call; see the blocking face's ReplyCap."""

    kind = "reply capability"
    _k: AsyncKernel
    __slots__ = ()

    async def reply(self, data: Data, *, caps: Caps = ()) -> None:
        await self._reply(as_payload(data), transfer_slots(caps))
        if caps:
            moved_away(caps)

    async def _reply(self, payload: Any, slots: tuple[int, ...]) -> None:
        await self._k._roundtrip(Op.ENDPOINT_REPLY, self, "reply", payload=payload, caps=slots)

    async def close(self) -> None:
        await self._k._roundtrip(Op.CAP_CLOSE, self, "close")


class _AsyncCap(CapBase):
    """Operations every (non-reply) capability has; see the blocking face's docs."""

    _k: AsyncKernel
    __slots__ = ()

    async def copy(self, rights: Rights | None = None) -> Self:
        c = await self._k._roundtrip(Op.CAP_COPY, self, "copy", arg=rights_arg(rights))
        return type(self)(self._k, c.arg, owned=True)

    async def mint(self, rights: Rights | None = None, *, badge: int) -> Self:
        c = await self._k._roundtrip(
            Op.CAP_MINT, self, "mint", arg=rights_arg(rights), payload=badge_payload(badge)
        )
        return type(self)(self._k, c.arg, owned=True)

    async def revoke(self) -> int:
        return int((await self._k._roundtrip(Op.CAP_REVOKE, self, "revoke")).arg)

    async def info(self) -> CapInfo:
        return cap_info(await self._k._roundtrip(Op.CAP_INFO, self, "info"))

    async def close(self) -> None:
        self._owned = False
        await self._k._roundtrip(Op.CAP_CLOSE, self, "close")


class AsyncEndpointCap(_AsyncCap):
    kind = "endpoint"
    _k: AsyncKernel
    __slots__ = ()

    async def send(self, data: Data, *, timeout: float | None = None, caps: Caps = ()) -> None:
        await self._k._roundtrip(
            Op.ENDPOINT_SEND,
            self,
            "send",
            timeout=timeout,
            payload=as_payload(data),
            caps=transfer_slots(caps),
        )
        if caps:
            moved_away(caps)

    async def send_nowait(self, data: Data, *, caps: Caps = ()) -> None:
        try:
            await self.send(data, timeout=0, caps=caps)
        except CallTimeoutError:
            raise WouldBlock("send_nowait: no receiver is waiting on the endpoint") from None

    async def call(
        self, data: Data, *, timeout: float | None = None, caps: Caps = ()
    ) -> AsyncMessage:
        c = await self._k._roundtrip(
            Op.ENDPOINT_CALL,
            self,
            "call",
            timeout=timeout,
            payload=as_payload(data),
            caps=transfer_slots(caps),
        )
        if caps:
            moved_away(caps)
        return AsyncMessage(c, self._k)

    async def bind(self, notification: AsyncNotificationCap) -> None:
        """Let receives here also take `notification`'s word (see EndpointCap.bind)."""
        arg = bound_slot(notification)
        await self._k._roundtrip(Op.NOTIFICATION_BIND, self, "bind", arg=arg)

    async def unbind(self) -> None:
        await self._k._roundtrip(Op.NOTIFICATION_UNBIND, self, "unbind")

    async def session(self, *, timeout: float | None = None) -> AsyncSession:
        """Open a direct session to a server of this endpoint (see the blocking
        `EndpointCap.session`); many calls may be in flight on it. Rights: SEND."""
        from .aio_session import open_session

        return await open_session(self._k, self, timeout)

    async def accept_session(self, offer: AsyncMessage) -> AsyncSessionServer:
        """Accept the session a received `offer` asks for. Rights: RECEIVE."""
        from .aio_session import accept_session

        return await accept_session(self._k, self, offer)

    async def decline_session(self, offer: AsyncMessage, reason: str = "") -> None:
        """Refuse the session `offer` asks for (see EndpointCap.decline_session)."""
        from .aio_session import decline_session

        await decline_session(self._k, self, offer, reason)

    async def recv(self, *, timeout: float | None = None) -> AsyncMessage:
        stash = self._k._open().msg_stash.get(self.slot)
        if stash:
            return AsyncMessage(stash.popleft(), self._k)
        c = await self._k._roundtrip(Op.ENDPOINT_RECV, self, "recv", timeout=timeout)
        return AsyncMessage(c, self._k)

    async def reply_recv(
        self, msg: AsyncMessage, data: Data, *, timeout: float | None = None, caps: Caps = ()
    ) -> AsyncMessage:
        payload, slots = as_payload(data), transfer_slots(caps)  # validate first,
        deadline_from(timeout)  # the timeout too: an error after the take loses the reply
        slot = msg._take_reply_slot()  # one-shot
        try:
            c = await self._k._roundtrip(
                Op.ENDPOINT_REPLY_RECV,
                self,
                "reply_recv",
                timeout=timeout,
                arg=slot,
                payload=payload,
                caps=slots,
            )
        except IPCError as e:
            msg._give_back_reply_slot(slot, e)
            raise
        if caps:
            moved_away(caps)
        return AsyncMessage(c, self._k)


Handler = Callable[[int], Awaitable[None] | None]


class AsyncNotificationCap(_AsyncCap):
    kind = "notification"
    _k: AsyncKernel
    __slots__ = ()

    async def signal(self, bits: int) -> None:
        if not 0 < bits < 1 << 64:
            raise ValueError("bits must be a non-zero 64-bit mask")
        await self._k._roundtrip(Op.NOTIFICATION_SIGNAL, self, "signal", arg=bits)

    async def wait(self, *, timeout: float | None = None) -> int:
        stashed = self._k._open().bits_stash.pop(self.slot, 0)
        if stashed:
            return stashed | await self.poll()
        c = await self._k._roundtrip(Op.NOTIFICATION_WAIT, self, "wait", timeout=timeout)
        return int(c.arg)

    async def poll(self) -> int:
        stashed = self._k._open().bits_stash.pop(self.slot, 0)
        c = await self._k._roundtrip(Op.NOTIFICATION_POLL, self, "poll")
        return stashed | int(c.arg)

    def on_signal(self, handler: Handler) -> asyncio.Task[None]:
        """Run `handler(bits)` (a function or coroutine function) whenever bits arrive.

        Returns the task; cancel it to stop. Bits that arrive while the handler
        runs are kept for its next call, never lost.
        """

        async def loop() -> None:
            while True:
                result = handler(await self.wait())
                if inspect.isawaitable(result):
                    await result

        return asyncio.ensure_future(loop())


class AsyncMemoryCap(_AsyncCap):
    """Shared memory that only capability holders can map (see MemoryCap)."""

    kind = "memory object"
    _k: AsyncKernel
    __slots__ = ()

    async def size(self) -> int:
        return int((await self._k._roundtrip(Op.MEMORY_SIZE, self, "size")).arg)

    async def map(self, *, writable: bool | None = None) -> mmap.mmap:
        """Map the whole object; as MemoryCap.map. Rights: MAP, READ (WRITE to write)."""
        c = await self._k._roundtrip(Op.MEMORY_MAP, self, "map", arg=map_mode(writable))
        return map_received(self._k._open(), c)

    async def open_fd(self, *, writable: bool | None = None) -> int:
        c = await self._k._roundtrip(Op.MEMORY_MAP, self, "open_fd", arg=map_mode(writable))
        return self._k._open().memory_fd(c.req_id)[0]


class AsyncSemaphoreCap(_AsyncCap):
    """A counting semaphore (see SemaphoreCap); a cancelled wait loses no unit."""

    kind = "semaphore"
    _k: AsyncKernel
    __slots__ = ()

    async def post(self, n: int = 1) -> None:
        await self._k._roundtrip(Op.SEMAPHORE_POST, self, "post", arg=post_count(n))

    async def wait(self, *, timeout: float | None = None) -> None:
        if not take_stashed_unit(self._k._open(), self.slot):
            await self._k._roundtrip(Op.SEMAPHORE_WAIT, self, "wait", timeout=timeout)

    async def try_wait(self) -> bool:
        try:
            await self.wait(timeout=0)
        except CallTimeoutError:
            return False
        return True


class AsyncQueueCap(_AsyncCap):
    """A message queue (see QueueCap); a cancelled recv loses no message."""

    kind = "queue"
    _k: AsyncKernel
    __slots__ = ()

    async def send(
        self, data: Data, *, mtype: int = 1, timeout: float | None = None, caps: Caps = ()
    ) -> None:
        arg, payload, slots = message_type(mtype), as_payload(data), transfer_slots(caps)
        await self._k._roundtrip(
            Op.QUEUE_SEND, self, "send", timeout=timeout, arg=arg, payload=payload, caps=slots
        )
        if caps:
            moved_away(caps)

    async def send_nowait(self, data: Data, *, mtype: int = 1, caps: Caps = ()) -> None:
        try:
            await self.send(data, mtype=mtype, timeout=0, caps=caps)
        except CallTimeoutError:
            raise WouldBlock("send_nowait: the queue is full") from None

    async def recv(
        self,
        *,
        mtype: int = 0,
        max_size: int = abi.MAX_PAYLOAD,
        truncate: bool = False,
        except_type: bool = False,
        timeout: float | None = None,
    ) -> QueueMessage:
        params = recv_params(mtype, max_size, truncate, except_type)
        stashed = take_stashed_message(self._k._open(), self.slot, params, self._k._wrap)
        if stashed is not None:
            return stashed
        c = await self._k._roundtrip(Op.QUEUE_RECV, self, "recv", timeout=timeout, payload=params)
        return queue_message(c, self._k._wrap)

    async def recv_nowait(
        self,
        *,
        mtype: int = 0,
        max_size: int = abi.MAX_PAYLOAD,
        truncate: bool = False,
        except_type: bool = False,
    ) -> QueueMessage:
        try:
            return await self.recv(
                mtype=mtype,
                max_size=max_size,
                truncate=truncate,
                except_type=except_type,
                timeout=0,
            )
        except CallTimeoutError:
            raise WouldBlock("recv_nowait: no message of the type asked for") from None


class AsyncPipeReaderCap(_AsyncCap):
    """The read end of a pipe (see PipeReaderCap); a cancelled read loses no byte."""

    kind = "pipe read end"
    _k: AsyncKernel
    __slots__ = ()

    async def read(
        self, max_size: int = abi.PIPE_CAPACITY, *, timeout: float | None = None
    ) -> bytes:
        size = read_size(max_size)
        stashed = take_stashed_bytes(self._k._open(), self.slot, size)
        if stashed is not None:
            return stashed
        c = await self._k._roundtrip(Op.PIPE_READ, self, "read", timeout=timeout, arg=size)
        return c.payload

    async def read_nowait(self, max_size: int = abi.PIPE_CAPACITY) -> bytes:
        try:
            return await self.read(max_size, timeout=0)
        except CallTimeoutError:
            raise WouldBlock("read_nowait: the pipe is empty") from None

    async def readuntil(
        self, separator: bytes = b"\n", *, limit: int = 1 << 16, timeout: float | None = None
    ) -> bytes:
        """The bytes up to and including `separator`, as asyncio.StreamReader's
        readuntil: asyncio.IncompleteReadError at EOF before it (its `partial` holds
        the rest), asyncio.LimitOverrunError if `limit` bytes pass without it. On
        any error, timeout or cancellation, what was gathered goes back in front of
        the stream: nothing is lost."""
        if not separator:
            raise ValueError("the separator must not be empty")
        deadline, got = deadline_from(timeout), bytearray()
        try:
            while (end := got.find(separator)) < 0:
                if len(got) > limit:
                    raise asyncio.LimitOverrunError(f"no {separator!r} in {limit} bytes", 0)
                chunk = await self.read(abi.PIPE_CAPACITY, timeout=_left(deadline))
                if not chunk:
                    raise asyncio.IncompleteReadError(bytes(got), None)
                got += chunk
        except BaseException as e:
            if not isinstance(e, asyncio.IncompleteReadError):  # at EOF it is returned
                unread(self._k._open(), self.slot, got)
            raise
        end += len(separator)
        unread(self._k._open(), self.slot, got[end:])
        return bytes(got[:end])

    async def readline(self, *, limit: int = 1 << 16, timeout: float | None = None) -> bytes:
        """One line with its b"\\n"; at EOF what is left (b"" when nothing is)."""
        try:
            return await self.readuntil(b"\n", limit=limit, timeout=timeout)
        except asyncio.IncompleteReadError as e:
            return e.partial

    async def readexactly(self, n: int, *, timeout: float | None = None) -> bytes:
        """Exactly `n` bytes; asyncio.IncompleteReadError (with what came) at EOF
        before them. Cancelled or timed out, what it gathered goes back in front."""
        if n < 0:
            raise ValueError(f"readexactly needs a size of 0 or more, not {n}")
        deadline, got = deadline_from(timeout), bytearray()
        try:
            while len(got) < n:
                size = min(n - len(got), abi.MAX_PAYLOAD)
                chunk = await self.read(size, timeout=_left(deadline))
                if not chunk:
                    raise asyncio.IncompleteReadError(bytes(got), n)
                got += chunk
        except BaseException as e:
            if not isinstance(e, asyncio.IncompleteReadError):
                unread(self._k._open(), self.slot, got)
            raise
        return bytes(got)

    def __aiter__(self) -> AsyncIterator[bytes]:
        """`async for line in r`: its lines, each with its b"\\n", to EOF."""
        return self._lines()

    async def _lines(self) -> AsyncIterator[bytes]:
        while line := await self.readline():
            yield line


def _left(deadline: int) -> float | None:
    """What remains of an absolute deadline (ns, -1 forever) as a timeout."""
    return None if deadline < 0 else max(0.0, (deadline - time.monotonic_ns()) / 1e9)


class AsyncPipeWriterCap(_AsyncCap):
    """The write end of a pipe (see PipeWriterCap). A cancelled write may have
    written part of its data, as an interrupted write(2) may."""

    kind = "pipe write end"
    _k: AsyncKernel
    __slots__ = ()

    async def write(self, data: Data, *, timeout: float | None = None) -> int:
        deadline, written = deadline_from(timeout), 0
        for chunk in chunks(data):
            try:
                c = await self._k._roundtrip(
                    Op.PIPE_WRITE, self, "write", timeout=_left(deadline), payload=chunk
                )
            except CallTimeoutError:
                if written:
                    return written
                raise
            written += c.arg
            if c.arg < len(chunk):
                break
        return written

    async def write_nowait(self, data: Data) -> int:
        try:
            return await self.write(data, timeout=0)
        except CallTimeoutError:
            raise WouldBlock("write_nowait: the pipe is full") from None


AsyncInheritedCap = (
    AsyncEndpointCap
    | AsyncNotificationCap
    | AsyncMemoryCap
    | AsyncSemaphoreCap
    | AsyncQueueCap
    | AsyncPipeReaderCap
    | AsyncPipeWriterCap
)

_CAP_TYPES: dict[str, type[AsyncInheritedCap]] = {
    "endpoint": AsyncEndpointCap,
    "notification": AsyncNotificationCap,
    "memory object": AsyncMemoryCap,
    "semaphore": AsyncSemaphoreCap,
    "queue": AsyncQueueCap,
    "pipe read end": AsyncPipeReaderCap,
    "pipe write end": AsyncPipeWriterCap,
}
_BY_KIND: dict[int, type[CapBase]] = {
    abi.ObjectKind.ENDPOINT: AsyncEndpointCap,
    abi.ObjectKind.NOTIFICATION: AsyncNotificationCap,
    abi.ObjectKind.REPLY: AsyncReplyCap,
    abi.ObjectKind.MEMORY: AsyncMemoryCap,
    abi.ObjectKind.SEMAPHORE: AsyncSemaphoreCap,
    abi.ObjectKind.QUEUE: AsyncQueueCap,
    abi.ObjectKind.PIPE_READER: AsyncPipeReaderCap,
    abi.ObjectKind.PIPE_WRITER: AsyncPipeWriterCap,
}


class AsyncProcess(ProcessBase):
    """A process started by `AsyncKernel.spawn`."""

    _k: AsyncKernel

    async def monitor(self, n: AsyncNotificationCap, bits: int = Sig.CHLD) -> None:
        """When this process ends, the kernel ORs `bits` into `n`; see the blocking
        face's Process.monitor. Rights: SIGNAL on `n`."""
        await self._k._roundtrip(Op.PROCESS_MONITOR, n, "monitor", **self._monitor_request(n, bits))

    async def wait(self, timeout: float | None = None) -> int:
        """Wait for exit and for the kernel's clean-up; CallTimeoutError after `timeout`."""
        deadline = deadline_from(timeout)
        code = await asyncio.to_thread(self._exit_code, timeout)
        if not self._reaped:
            what = f"wait for pid {self.pid}"
            await self._k._roundtrip(Op.PROCESS_WAIT, None, what, **self._reap_request(deadline))
            self._reaped = True
        return code
