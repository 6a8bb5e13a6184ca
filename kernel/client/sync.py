"""The blocking face. Thread-safe: many threads may call through one connection."""

from __future__ import annotations

import io
import mmap
import subprocess
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, overload

from capabilities import Rights

from .. import abi
from ..abi import Op
from ..errors import CallTimeoutError, IPCError, WouldBlock
from ._common import (
    CapBase,
    CapInfo,
    Credentials,
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
from ._conn import Completion, Connection, as_payload, deadline_from
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
)
from .pipefile import makefile
from .signals import Sig

Data = bytes | bytearray | memoryview

if TYPE_CHECKING:
    from typing import Self

    from .names import Names
    from .session import Session, SessionServer


class Kernel:
    """A connection to the kernel. Use `kernel.connect()` to make one."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        w = conn.welcome
        self.pid, self.uid, self.gid = w.pid, w.uid, w.gid
        self.inherited: dict[str, InheritedCap] = {
            name: _CAP_TYPES[ic.kind](self, ic.slot, owned=True) for name, ic in w.inherited.items()
        }
        self._names: Names | None = None

    @property
    def socket_path(self) -> str:
        return self._conn.path

    @property
    def names(self) -> Names:
        """The name server (DESIGN §6): register, lookup, unregister, list, watch."""
        if self._names is None:
            from .names import Names

            self._names = Names(self, names_slot(self._conn))
        return self._names

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Disconnect; the kernel deletes every capability this connection held."""
        self._conn.close()

    def _roundtrip(
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
        """Submit `op` on `cap` and wait for it (compiled: ConnectionCore.roundtrip);
        raises its error. The hot paths (call, recv, reply_recv) call that directly."""
        return self._conn.roundtrip(op, cap, verb, deadline_from(timeout), arg, payload, caps)

    def _wrap(self, kind: int, slot: int) -> CapBase:
        """A typed capability object for a slot the kernel handed us."""
        return _BY_KIND[kind](self, slot, owned=True)

    def endpoint(self) -> EndpointCap:
        """Create an endpoint; the new capability has every endpoint right."""
        c = self._roundtrip(Op.ENDPOINT_CREATE, None, "create endpoint")
        return EndpointCap(self, c.arg, owned=True)

    def notification(self) -> NotificationCap:
        """Create a notification (a 64-bit word of signal bits)."""
        c = self._roundtrip(Op.NOTIFICATION_CREATE, None, "create notification")
        return NotificationCap(self, c.arg, owned=True)

    def memory(self, size: int) -> MemoryCap:
        """Create a zero-filled memory object of `size` bytes (at most
        `kernel.abi.MAX_MEMORY_SIZE`), to share by handing out capabilities to it."""
        arg = memory_size_arg(size)
        c = self._roundtrip(Op.MEMORY_CREATE, None, "create memory object", arg=arg)
        return MemoryCap(self, c.arg, owned=True)

    def queue(self, capacity: int | None = 64, *, max_bytes: int = 1 << 20) -> QueueCap:
        """Create a message queue (System V style, typed messages).

        Args:
            capacity: messages it stores before senders wait; 0 makes every send
                wait for a receiver; None bounds only the bytes.
            max_bytes: bytes it stores (each message counts 64 beyond its data),
                reserved against this process's 256 MiB for queues.
        """
        arg, payload = queue_create_args(capacity, max_bytes)
        c = self._roundtrip(Op.QUEUE_CREATE, None, "create queue", arg=arg, payload=payload)
        return QueueCap(self, c.arg, owned=True)

    def pipe(self, capacity: int = abi.PIPE_CAPACITY) -> tuple[PipeReaderCap, PipeWriterCap]:
        """Create a pipe with a buffer of `capacity` bytes; returns its read end and
        its write end, separate capabilities to hand out separately."""
        arg = pipe_capacity(capacity)
        c = self._roundtrip(Op.PIPE_CREATE, None, "create pipe", arg=arg)
        writer = int.from_bytes(c.payload, "little")
        return PipeReaderCap(self, c.arg, owned=True), PipeWriterCap(self, writer, owned=True)

    def semaphore(self, value: int = 0) -> SemaphoreCap:
        """Create a counting semaphore whose count starts at `value`."""
        arg = initial_value(value)
        c = self._roundtrip(Op.SEMAPHORE_CREATE, None, "create semaphore", arg=arg)
        return SemaphoreCap(self, c.arg, owned=True)

    def spawn(
        self,
        argv: Sequence[str],
        *,
        caps: Mapping[str, CapBase] | None = None,
        env: Mapping[str, str] | None = None,
        **popen_kwargs: Any,
    ) -> Process:
        """Start a process that finds `caps` in `kernel.connect().inherited`.

        The child receives copies (same rights and badge) once it connects.
        """
        token = self._bundle(caps, "spawn")
        try:
            popen = subprocess.Popen(
                argv_list(argv), env=spawn_env(self._conn, token, env), **popen_kwargs
            )
        except BaseException:
            self._drop_bundle(token, "spawn clean-up")  # no child will claim it
            raise
        return Process(self, popen, token)

    def status(self) -> abi.KernelStatus:
        """Who holds what in the kernel (`mkipc status`): each process's capabilities
        by kind, waiting operations, sessions, spawns and watches, and each uid's
        use against its bounds. Root sees every process; others see their uid's."""
        return abi.decode_status(self._roundtrip(Op.KERNEL_STATUS, None, "status").payload)

    def _bundle(self, caps: Mapping[str, CapBase] | None, what: str) -> str:
        """Set copies of `caps` aside for a connection that claims the returned token
        (a spawned child, or a service's worker connection)."""
        slots, names = inherit_request(caps)
        c = self._roundtrip(Op.INHERIT_CREATE, None, what, payload=names, caps=slots)
        return c.payload.decode()

    def _drop_bundle(self, token: str, what: str, timeout: float | None = None) -> None:
        """Wait until the claimant is gone (or never came), then drop the bundle and
        its references."""
        self._roundtrip(Op.PROCESS_WAIT, None, what, timeout=timeout, payload=token.encode())


Caps = Sequence[Transferable]


class Message(MessageBase):
    __slots__ = ()
    _k: Kernel

    def reply(self, data: Data, *, caps: Caps = ()) -> None:
        """Answer the call. Raises PeerClosedError if the caller timed out or died.

        `caps` travel to the caller only if its endpoint capability had GRANT.
        """
        payload, slots = as_payload(data), transfer_slots(caps)  # validate first
        slot = self._take_reply_slot()  # one-shot
        try:
            ReplyCap(self._k, slot)._reply(payload, slots)
        except IPCError as e:
            self._give_back_reply_slot(slot, e)
            raise
        if caps:
            moved_away(caps)

    def monitor(self, target: EndpointCap | NotificationCap, badge: int) -> None:
        """When the process that made this call ends, the kernel sends a message on
        an endpoint `target` carrying `badge` (`msg.from_kernel` is True, sender pid
        0), or ORs `badge` (non-zero bits) into a notification `target`.

        Call it before replying: holding the reply capability is the authority to
        watch the caller. Raises PeerClosedError if the caller is already gone.
        Rights: SEND on an endpoint, SIGNAL on a notification.
        """
        slot, payload = self._monitor_request(target, badge, signals=True)
        self._k._roundtrip(
            Op.CALLER_MONITOR, ReplyCap(self._k, slot), "monitor", arg=badge, payload=payload
        )

    def monitor_call(self, endpoint: EndpointCap, badge: int) -> None:
        """If this call ends without an answer (the caller timed out, cancelled or
        died), the kernel sends a message on `endpoint` carrying `badge` and the reason
        as its data (`msg.from_kernel` is True). For a server that holds calls to
        answer later: it learns when one no longer needs an answer. Rights: SEND on
        `endpoint`; one watch per call."""
        slot, payload = self._monitor_request(endpoint, badge)
        self._k._roundtrip(
            Op.CALL_MONITOR, ReplyCap(self._k, slot), "monitor_call", arg=badge, payload=payload
        )


class ReplyCap(CapBase):
    """The one-shot right to answer one call (`msg.reply_cap`). It can be handed to a
    worker in a message; whoever holds it replies once. Rights: SEND, TRANSFER."""

    kind = "reply capability"
    _k: Kernel
    __slots__ = ()

    def reply(self, data: Data, *, caps: Caps = ()) -> None:
        """Answer the call this capability belongs to (once)."""
        self._reply(as_payload(data), transfer_slots(caps))
        if caps:
            moved_away(caps)

    def _reply(self, payload: Any, slots: tuple[int, ...]) -> None:
        self._k._roundtrip(Op.ENDPOINT_REPLY, self, "reply", payload=payload, caps=slots)

    def close(self) -> None:
        """Drop it unanswered: the caller gets PeerClosedError at once."""
        self._k._roundtrip(Op.CAP_CLOSE, self, "close")


class _Cap(CapBase):
    """Operations every (non-reply) capability has: derive, revoke, inspect, close."""

    _k: Kernel
    __slots__ = ()

    def copy(self, rights: Rights | None = None) -> Self:
        """A new slot naming the same object with these rights (default: the same).

        Rights: COPY; asking for a right this capability lacks raises AccessDeniedError.
        """
        c = self._k._roundtrip(Op.CAP_COPY, self, "copy", arg=rights_arg(rights))
        return type(self)(self._k, c.arg, owned=True)

    def mint(self, rights: Rights | None = None, *, badge: int) -> Self:
        """Like copy, and sets the badge every message sent through it will carry.

        Rights: COPY. A capability that already carries a badge cannot get another.
        """
        c = self._k._roundtrip(
            Op.CAP_MINT, self, "mint", arg=rights_arg(rights), payload=badge_payload(badge)
        )
        return type(self)(self._k, c.arg, owned=True)

    def revoke(self) -> int:
        """Delete every capability derived from this one, in every process; returns
        how many. This one stays. Rights: MANAGE."""
        return int(self._k._roundtrip(Op.CAP_REVOKE, self, "revoke").arg)

    def info(self) -> CapInfo:
        """Object kind, rights, badge and derivation counts, as the kernel sees them."""
        return cap_info(self._k._roundtrip(Op.CAP_INFO, self, "info"))

    def close(self) -> None:
        """Delete this capability from the process's table. (Dropping the last
        reference to it does that too, without waiting for the kernel's answer.)"""
        self._owned = False
        self._k._roundtrip(Op.CAP_CLOSE, self, "close")


class EndpointCap(_Cap):
    """Synchronous rendezvous: a send completes only when a receiver takes it."""

    kind = "endpoint"
    _k: Kernel
    __slots__ = ()

    def send(self, data: Data, *, timeout: float | None = None, caps: Caps = ()) -> None:
        """Block until a receiver takes `data`. Rights: SEND (and GRANT to carry `caps`).

        `caps` move to the receiver (`cap.as_copy()` sends a copy). A message that has
        to wait keeps them locked; if it fails they stay here, unchanged.
        """
        self._k._roundtrip(
            Op.ENDPOINT_SEND,
            self,
            "send",
            timeout=timeout,
            payload=as_payload(data),
            caps=transfer_slots(caps),
        )
        if caps:
            moved_away(caps)

    def send_nowait(self, data: Data, *, caps: Caps = ()) -> None:
        """Send only if a receiver waits right now; otherwise raise WouldBlock."""
        try:
            self.send(data, timeout=0, caps=caps)
        except CallTimeoutError:
            raise WouldBlock("send_nowait: no receiver is waiting on the endpoint") from None

    def call(self, data: Data, *, timeout: float | None = None, caps: Caps = ()) -> Message:
        """Send `data` and wait for the reply; the timeout covers both. Rights: SEND."""
        k = self._k
        deadline, payload, slots = deadline_from(timeout), as_payload(data), transfer_slots(caps)
        c = k._conn.roundtrip(Op.ENDPOINT_CALL, self, "call", deadline, 0, payload, slots)
        if caps:
            moved_away(caps)
        return Message(c, k)

    def bind(self, notification: NotificationCap) -> None:
        """Let receives on this endpoint also take `notification`'s word: a receive
        returns a signal message (`msg.is_signal`, the word in `msg.badge`, cleared)
        when bits are set, before any waiting message, so one thread waits for both
        (seL4's bound notification). One notification per endpoint and one endpoint
        per notification; the binding ends with either object, or `unbind()`.
        Rights: RECEIVE here, WAIT on `notification`."""
        self._k._roundtrip(Op.NOTIFICATION_BIND, self, "bind", arg=bound_slot(notification))

    def unbind(self) -> None:
        """Stop taking the bound notification's signals. Rights: RECEIVE."""
        self._k._roundtrip(Op.NOTIFICATION_UNBIND, self, "unbind")

    def session(self, *, timeout: float | None = None) -> Session:
        """Open a direct session to a server of this endpoint: its calls and sends go
        over rings shared with that server alone, not through the kernel (a call costs
        ~1/3 of `call`). Waits until a server accepts, or `timeout`. The session ends
        when either side closes it or dies, or when this capability (or an ancestor)
        is revoked. Rights: SEND."""
        from .session import open_session

        return open_session(self._k, self, timeout)

    def accept_session(self, offer: Message) -> SessionServer:
        """Accept the session a received `offer` asks for (`msg.session_offer`); the
        caller's `session()` returns once this does. Rights: RECEIVE."""
        from .session import accept_session

        return accept_session(self._k, self, offer)

    def decline_session(self, offer: Message, reason: str = "") -> None:
        """Refuse the session `offer` asks for: the caller's `session()` raises
        ResourceLimitError with `reason` (it can still call through the kernel).
        Rights: RECEIVE."""
        from .session import decline_session

        decline_session(self._k, self, offer, reason)

    def recv(self, *, timeout: float | None = None) -> Message:
        """Wait for a message. Rights: RECEIVE."""
        stash = self._k._conn.msg_stash.get(self.slot)
        if stash:
            return Message(stash.popleft(), self._k)
        k = self._k
        c = k._conn.roundtrip(Op.ENDPOINT_RECV, self, "recv", deadline_from(timeout))
        return Message(c, k)

    def reply_recv(
        self, msg: Message, data: Data, *, timeout: float | None = None, caps: Caps = ()
    ) -> Message:
        """Reply to `msg` and wait for the next message, in one kernel operation."""
        payload, slots = as_payload(data), transfer_slots(caps)  # validate first,
        deadline = deadline_from(timeout)  # the timeout too: an error after the take loses it
        slot = msg._take_reply_slot()  # one-shot
        k = self._k
        try:
            c = k._conn.roundtrip(
                Op.ENDPOINT_REPLY_RECV, self, "reply_recv", deadline, slot, payload, slots
            )
        except IPCError as e:
            msg._give_back_reply_slot(slot, e)
            raise
        if caps:
            moved_away(caps)
        return Message(c, k)


class NotificationCap(_Cap):
    """Asynchronous signals: bits OR into a word; wait returns the word and clears it."""

    kind = "notification"
    _k: Kernel
    __slots__ = ()

    def signal(self, bits: int) -> None:
        """OR `bits` (a non-zero 64-bit mask) into the word. Rights: SIGNAL."""
        if not 0 < bits < 1 << 64:
            raise ValueError("bits must be a non-zero 64-bit mask")
        self._k._roundtrip(Op.NOTIFICATION_SIGNAL, self, "signal", arg=bits)

    def wait(self, *, timeout: float | None = None) -> int:
        """Wait until some bit is set; return the word and clear it. Rights: WAIT."""
        stashed = self._k._conn.bits_stash.pop(self.slot, 0)
        if stashed:
            return stashed | self.poll()
        return int(self._k._roundtrip(Op.NOTIFICATION_WAIT, self, "wait", timeout=timeout).arg)

    def poll(self) -> int:
        """Return the word and clear it, without blocking (0 when nothing is set)."""
        stashed = self._k._conn.bits_stash.pop(self.slot, 0)
        return stashed | int(self._k._roundtrip(Op.NOTIFICATION_POLL, self, "poll").arg)


class MemoryCap(_Cap):
    """Shared memory that only capability holders can map: bulk data crosses no ring."""

    kind = "memory object"
    _k: Kernel
    __slots__ = ()

    def size(self) -> int:
        """The object's size in bytes. Rights: none."""
        return int(self._k._roundtrip(Op.MEMORY_SIZE, self, "size").arg)

    def map(self, *, writable: bool | None = None) -> mmap.mmap:
        """Map the whole object, shared with every other mapping of it.

        Args:
            writable: None maps it writable if this capability has WRITE, else
                read-only; True needs WRITE; False maps it read-only.

        The mapping outlives the capability (close it, or use it in `with`): closing
        or revoking the capability stops new mappings, not this one.
        Rights: MAP and READ; WRITE for a writable mapping. A read-only mapping
        cannot be made writable: the descriptor behind it was opened read-only.
        """
        c = self._k._roundtrip(Op.MEMORY_MAP, self, "map", arg=map_mode(writable))
        return map_received(self._k._conn, c)

    def open_fd(self, *, writable: bool | None = None) -> int:
        """A new descriptor of the object, for code that maps or reads it itself
        (`numpy.memmap`, `os.pread`); close it when done. Rights: as for map()."""
        c = self._k._roundtrip(Op.MEMORY_MAP, self, "open_fd", arg=map_mode(writable))
        return self._k._conn.memory_fd(c.req_id)[0]


class SemaphoreCap(_Cap):
    """A counting semaphore, to coordinate processes that share memory."""

    kind = "semaphore"
    _k: Kernel
    __slots__ = ()

    def post(self, n: int = 1) -> None:
        """Add `n` units; each wakes one waiter, oldest first. Rights: SIGNAL."""
        self._k._roundtrip(Op.SEMAPHORE_POST, self, "post", arg=post_count(n))

    def wait(self, *, timeout: float | None = None) -> None:
        """Take one unit, waiting until one is posted. Raises CallTimeoutError (a
        TimeoutError) after `timeout`. Rights: WAIT."""
        if not take_stashed_unit(self._k._conn, self.slot):
            self._k._roundtrip(Op.SEMAPHORE_WAIT, self, "wait", timeout=timeout)

    def try_wait(self) -> bool:
        """Take one unit if there is one; never blocks. Rights: WAIT."""
        try:
            self.wait(timeout=0)
        except CallTimeoutError:
            return False
        return True


class QueueCap(_Cap):
    """A message queue: typed messages wait in it for a receiver (System V msgsnd and
    msgrcv, with timeouts)."""

    kind = "queue"
    _k: Kernel
    __slots__ = ()

    def send(
        self, data: Data, *, mtype: int = 1, timeout: float | None = None, caps: Caps = ()
    ) -> None:
        """Queue `data` as a message of type `mtype` (>= 1); waits while the queue is
        full (capacity 0: until a receiver takes it). `caps` travel with it as with
        an endpoint send (moved, or `as_copy()`, `as_mint()`), queue capabilities
        excepted; the queue holds them while the message waits in it, and a send
        that fails leaves them here. Rights: SEND (and GRANT to carry `caps`)."""
        arg, payload, slots = message_type(mtype), as_payload(data), transfer_slots(caps)
        self._k._roundtrip(
            Op.QUEUE_SEND, self, "send", timeout=timeout, arg=arg, payload=payload, caps=slots
        )
        if caps:
            moved_away(caps)

    def send_nowait(self, data: Data, *, mtype: int = 1, caps: Caps = ()) -> None:
        """Queue `data` only if there is room now; otherwise raise WouldBlock."""
        try:
            self.send(data, mtype=mtype, timeout=0, caps=caps)
        except CallTimeoutError:
            raise WouldBlock("send_nowait: the queue is full") from None

    def recv(
        self,
        *,
        mtype: int = 0,
        max_size: int = abi.MAX_PAYLOAD,
        truncate: bool = False,
        except_type: bool = False,
        timeout: float | None = None,
    ) -> QueueMessage:
        """Take a message, waiting for one. As msgrcv(2): `mtype` 0 takes the first,
        t > 0 the first of type t (`except_type`: of any other type), t < 0 the first
        of the lowest type <= |t|. A message longer than `max_size` raises
        MessageTooLargeError and stays queued, unless `truncate` cuts it.
        Rights: RECEIVE."""
        params = recv_params(mtype, max_size, truncate, except_type)
        stashed = take_stashed_message(self._k._conn, self.slot, params, self._k._wrap)
        if stashed is not None:
            return stashed
        c = self._k._roundtrip(Op.QUEUE_RECV, self, "recv", timeout=timeout, payload=params)
        return queue_message(c, self._k._wrap)

    def recv_nowait(
        self,
        *,
        mtype: int = 0,
        max_size: int = abi.MAX_PAYLOAD,
        truncate: bool = False,
        except_type: bool = False,
    ) -> QueueMessage:
        """Take a message only if one is there now; otherwise raise WouldBlock."""
        try:
            return self.recv(
                mtype=mtype,
                max_size=max_size,
                truncate=truncate,
                except_type=except_type,
                timeout=0,
            )
        except CallTimeoutError:
            raise WouldBlock("recv_nowait: no message of the type asked for") from None


class PipeReaderCap(_Cap):
    """The read end of a pipe: a byte stream that ends (b"") once no writer is left."""

    kind = "pipe read end"
    _k: Kernel
    __slots__ = ()

    def read(self, max_size: int = abi.PIPE_CAPACITY, *, timeout: float | None = None) -> bytes:
        """Up to `max_size` bytes (at most kernel.MAX_PAYLOAD), waiting while the pipe
        is empty; b"" once it is empty and its write end is gone (EOF). Rights: READ."""
        size = read_size(max_size)
        stashed = take_stashed_bytes(self._k._conn, self.slot, size)
        if stashed is not None:
            return stashed
        return self._k._roundtrip(Op.PIPE_READ, self, "read", timeout=timeout, arg=size).payload

    @overload
    def makefile(
        self,
        mode: Literal["r"] = "r",
        buffering: int = -1,
        *,
        encoding: str | None = None,
        errors: str | None = None,
        newline: str | None = None,
        timeout: float | None = None,
        closefd: bool = True,
    ) -> io.TextIOWrapper: ...
    @overload
    def makefile(
        self, mode: Literal["rb"], buffering: int = -1, *, timeout: float | None = None,
        closefd: bool = True,
    ) -> io.BufferedReader: ...  # fmt: skip
    def makefile(self, mode: str = "r", buffering: int = -1, **kw: Any) -> io.IOBase:
        """This end as a file object, buffered (`for line in r.makefile()`): "r" text
        (utf-8 unless `encoding=`), "rb" bytes. Reads end at EOF; `timeout=` bounds
        each read. Closing the file closes this capability unless `closefd=False`."""
        return makefile(self, mode, buffering, **kw)

    def read_nowait(self, max_size: int = abi.PIPE_CAPACITY) -> bytes:
        """What is buffered now (b"" at EOF); WouldBlock if the pipe is empty."""
        try:
            return self.read(max_size, timeout=0)
        except CallTimeoutError:
            raise WouldBlock("read_nowait: the pipe is empty") from None


class PipeWriterCap(_Cap):
    """The write end of a pipe. Rights: WRITE."""

    kind = "pipe write end"
    _k: Kernel
    __slots__ = ()

    def write(self, data: Data, *, timeout: float | None = None) -> int:
        """Write all of `data`, waiting for room; returns the bytes written: all, or
        fewer if `timeout` passed after some went in (none: CallTimeoutError).
        Writes of at most PIPE_BUF (4096) bytes are atomic. Raises
        kernel.PipeClosedError (a BrokenPipeError) when no read end is left.
        Rights: WRITE."""
        deadline, written = deadline_from(timeout), 0
        conn = self._k._conn
        for chunk in chunks(data):
            try:
                c = conn.roundtrip(Op.PIPE_WRITE, self, "write", deadline, 0, chunk)
            except CallTimeoutError:
                if written:
                    return written
                raise
            written += c.arg
            if c.arg < len(chunk):
                break
        return written

    @overload
    def makefile(
        self,
        mode: Literal["w"] = "w",
        buffering: int = -1,
        *,
        encoding: str | None = None,
        errors: str | None = None,
        newline: str | None = None,
        timeout: float | None = None,
        closefd: bool = True,
    ) -> io.TextIOWrapper: ...
    @overload
    def makefile(
        self, mode: Literal["wb"], buffering: int = -1, *, timeout: float | None = None,
        closefd: bool = True,
    ) -> io.BufferedWriter: ...  # fmt: skip
    def makefile(self, mode: str = "w", buffering: int = -1, **kw: Any) -> io.IOBase:
        """This end as a file object, buffered (`print(..., file=w.makefile())`): "w"
        text (utf-8 unless `encoding=`), "wb" bytes. Small writes are gathered into
        one pipe write per buffer (8 KiB; `buffering=1`: per line); flush() or
        close() sends what is left. Closing the file closes this capability unless
        `closefd=False`: the last write end closed is the readers' EOF."""
        return makefile(self, mode, buffering, **kw)

    def write_nowait(self, data: Data) -> int:
        """Write what fits now (atomic writes: all or nothing); WouldBlock if nothing."""
        try:
            return self.write(data, timeout=0)
        except CallTimeoutError:
            raise WouldBlock("write_nowait: the pipe is full") from None


InheritedCap = (
    EndpointCap
    | NotificationCap
    | MemoryCap
    | SemaphoreCap
    | QueueCap
    | PipeReaderCap
    | PipeWriterCap
)

_CAP_TYPES: dict[str, type[InheritedCap]] = {
    "endpoint": EndpointCap,
    "notification": NotificationCap,
    "memory object": MemoryCap,
    "semaphore": SemaphoreCap,
    "queue": QueueCap,
    "pipe read end": PipeReaderCap,
    "pipe write end": PipeWriterCap,
}
_BY_KIND: dict[int, type[CapBase]] = {
    abi.ObjectKind.ENDPOINT: EndpointCap,
    abi.ObjectKind.NOTIFICATION: NotificationCap,
    abi.ObjectKind.REPLY: ReplyCap,
    abi.ObjectKind.MEMORY: MemoryCap,
    abi.ObjectKind.SEMAPHORE: SemaphoreCap,
    abi.ObjectKind.QUEUE: QueueCap,
    abi.ObjectKind.PIPE_READER: PipeReaderCap,
    abi.ObjectKind.PIPE_WRITER: PipeWriterCap,
}


class Process(ProcessBase):
    """A process started by `Kernel.spawn`."""

    _k: Kernel

    def monitor(self, n: NotificationCap, bits: int = Sig.CHLD) -> None:
        """When this process ends, the kernel ORs `bits` into `n`: SIGCHLD on
        capabilities, for a `kernel.Signals` handler or a bound endpoint's receive.

        The kernel watches the process itself (a pidfd), so a child that fails
        before it ever connects is signalled too; one that has ended already is
        signalled at once. Only the parent may watch a process. Each watch holds a
        descriptor in the kernel until it fires (256 per process, 1024 per uid).
        Rights: SIGNAL on `n`.
        """
        self._k._roundtrip(Op.PROCESS_MONITOR, n, "monitor", **self._monitor_request(n, bits))

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the process to exit and for the kernel to have cleaned it up.

        Raises CallTimeoutError (a TimeoutError) if that takes longer than `timeout`.
        """
        deadline = deadline_from(timeout)
        code = self._exit_code(timeout)
        if not self._reaped:
            what = f"wait for pid {self.pid}"
            self._k._roundtrip(Op.PROCESS_WAIT, None, what, **self._reap_request(deadline))
            self._reaped = True
        return code


__all__ = [
    "Kernel",
    "EndpointCap",
    "NotificationCap",
    "MemoryCap",
    "SemaphoreCap",
    "QueueCap",
    "QueueMessage",
    "PipeReaderCap",
    "PipeWriterCap",
    "Message",
    "Process",
    "Credentials",
    "abi",
]
