"""Pipes (DESIGN §4): a byte stream through a bounded buffer, with a read end and a
write end that are separate objects, each with its own capabilities.

The ends are what make EOF and EPIPE fall out of capability lifetimes: when the last
capability to the write end goes (closed, revoked, its holders dead), readers get
what is buffered and then EOF (an empty read); when the last one to the read end
goes, waiting and later writes fail with BROKEN_PIPE. Named pipes are ends
registered with the name server.

Writes: a write of at most PIPE_BUF bytes is atomic (it waits until it fits whole);
a longer one puts in what fits and waits with the rest, and may interleave with
other writers, as POSIX allows. A write completes with the bytes it wrote: all of
them, or, if its deadline passed after some went in, fewer (POSIX's short write);
with none, it times out. A read returns what is buffered, up to its max_size, and
waits only while the pipe is empty and a writer is left.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from capabilities import DEFAULT_PIPE_READER_RIGHTS, DEFAULT_PIPE_WRITER_RIGHTS, Rights

from ... import abi
from ..._core.kcore import KernelObject, OpError, fail_waiters, hold
from ..._core.ring import Header
from ...abi import Op
from ...errors import Status
from ..pending import Pending
from ..process import Proc

if TYPE_CHECKING:
    from ..state import KernelState


class PipeOp(Pending):
    """A read (`max_size`) or a write (`data` left to write, `written` so far) waiting."""

    data = memoryview(b"")  # what is left to write: slicing it copies nothing
    written = 0
    max_size = 0

    def expire(self) -> None:
        """The deadline passed: a write that wrote something returns its count."""
        self.finish()
        if self.written:
            self.proc.complete(self.op, self.req_id, Status.OK, arg=self.written)
        else:
            what = "the pipe had no room" if self.op == Op.PIPE_WRITE else "no data arrived"
            reason = f"{what} before the deadline".encode()
            self.proc.complete(self.op, self.req_id, Status.TIMED_OUT, payload=reason)


class Pipe:
    """What the two ends share. Invariant: readers wait only while `buffer` is empty
    and writers only while it is full (for an atomic write: too full for it)."""

    def __init__(self, capacity: int, owner: Proc) -> None:
        self.capacity, self.owner = capacity, owner
        self.buffer = bytearray()
        self.readers: deque[PipeOp] = deque()
        self.writers: deque[PipeOp] = deque()
        self.reader_alive = self.writer_alive = True

    def room(self) -> int:
        return self.capacity - len(self.buffer)

    def put(self, op: PipeOp) -> bool:
        """Write what `op` may write now; True when all of it is in."""
        if op.written == 0 and len(op.data) <= abi.PIPE_BUF:  # atomic: all or nothing
            n = len(op.data) if len(op.data) <= self.room() else 0
        else:
            n = min(len(op.data), self.room())
        self.buffer += op.data[:n]
        op.data, op.written = op.data[n:], op.written + n
        return not op.data

    def flow(self) -> None:
        """Move bytes as far as they go: waiting writers' into the buffer, the buffer
        to waiting readers, until neither moves (a read makes room for a writer, a
        write brings data for a reader)."""
        moved = True
        while moved:
            moved = False
            while self.writers:
                op = self.writers[0]
                before = op.written
                done = self.put(op)
                moved = moved or op.written != before
                if not done:
                    break
                op.finish()
                op.proc.complete(op.op, op.req_id, Status.OK, arg=op.written)
            while self.readers and (self.buffer or not self.writer_alive):
                op = self.readers[0]
                op.finish()
                _complete_read(self, op)
                moved = True

    def end_gone(self, reader: bool) -> None:
        if reader:
            self.reader_alive = False
            self.buffer.clear()  # nobody can read it any more
            fail_waiters(self.writers, b"broken pipe: no read end is left", Status.BROKEN_PIPE)
        else:
            self.writer_alive = False
            self.flow()  # what is buffered, then EOF
        if not (self.reader_alive or self.writer_alive):  # the reservation goes with both
            self.owner.credit("buffer bytes", self.capacity)


class PipeEnd(KernelObject):
    def __init__(self, pipe: Pipe, reader: bool) -> None:
        self.kind = abi.ObjectKind.PIPE_READER if reader else abi.ObjectKind.PIPE_WRITER
        self.pipe, self.reader = pipe, reader

    def destroy(self) -> None:
        self.pipe.end_gone(self.reader)


def _complete_read(pipe: Pipe, op: PipeOp) -> None:
    data = bytes(pipe.buffer[: op.max_size])  # empty: EOF
    del pipe.buffer[: len(data)]
    op.proc.complete(op.op, op.req_id, Status.OK, payload=data)


# ------------------------------------------------------------------ handlers


def pipe_create(k: KernelState, proc: Proc, h: Header) -> None:
    """PIPE_CREATE: a pipe of `arg` bytes; completes with the read end's slot in `arg`
    and the write end's in the 8-byte payload."""
    if not abi.PIPE_BUF <= h.arg <= abi.MAX_PIPE_CAPACITY:  # an atomic write always fits
        raise OpError(
            Status.INVALID_ARGS,
            f"capacity must be {abi.PIPE_BUF} to {abi.MAX_PIPE_CAPACITY} bytes",
        )
    proc.charge("buffer bytes", h.arg)
    pipe = Pipe(h.arg, proc)
    reader_end, writer_end = PipeEnd(pipe, True), PipeEnd(pipe, False)
    try:  # new_object drops the end it could not place; the other must go too
        reader = k.new_object(proc, reader_end, DEFAULT_PIPE_READER_RIGHTS)
    except OpError:
        k.release_unnamed(writer_end)
        raise
    try:
        writer = k.new_object(proc, writer_end, DEFAULT_PIPE_WRITER_RIGHTS)
    except OpError:
        k.remove_cap(proc, reader, "its pipe could not be made")
        raise
    proc.complete(h.opcode, h.req_id, Status.OK, arg=reader, payload=writer.to_bytes(8, "little"))


def pipe_write(k: KernelState, proc: Proc, h: Header) -> None:
    """PIPE_WRITE: the payload into the pipe; completes with the count written.
    Rights: WRITE on the write end."""
    cap = k.lookup(proc, h.slot, abi.ObjectKind.PIPE_WRITER, Rights.WRITE)
    pipe = cap.obj.pipe
    if not pipe.reader_alive:
        raise OpError(Status.BROKEN_PIPE, "broken pipe: no read end is left")
    op = PipeOp(proc, h.req_id, h.opcode, h.deadline)
    op.data, op.cap = memoryview(proc.sq.payload(h)), cap
    if not pipe.writers and pipe.put(op):
        proc.complete(h.opcode, h.req_id, Status.OK, arg=op.written)
    elif k.expired(h.deadline):
        op.expire()
    else:
        hold(proc, op, len(op.data))  # counted as a waiting endpoint send's is
        op.enqueue(pipe.writers)
        k.timers.arm(op)
    pipe.flow()


def pipe_read(k: KernelState, proc: Proc, h: Header) -> None:
    """PIPE_READ: up to `arg` bytes (1 to MAX_PAYLOAD); empty at EOF. Rights: READ on
    the read end."""
    cap = k.lookup(proc, h.slot, abi.ObjectKind.PIPE_READER, Rights.READ)
    pipe = cap.obj.pipe
    if not 0 < h.arg <= abi.MAX_PAYLOAD:
        raise OpError(Status.INVALID_ARGS, f"max_size must be 1 to {abi.MAX_PAYLOAD} bytes")
    op = PipeOp(proc, h.req_id, h.opcode, h.deadline)
    op.max_size, op.cap = h.arg, cap
    if pipe.buffer or not pipe.writer_alive:
        _complete_read(pipe, op)
        pipe.flow()
    elif k.expired(h.deadline):
        raise OpError(Status.TIMED_OUT, "the pipe is empty")
    else:
        op.enqueue(pipe.readers)
        k.timers.arm(op)


HANDLERS: dict[int, Callable[[KernelState, Proc, Header], None]] = {
    Op.PIPE_CREATE: pipe_create,
    Op.PIPE_WRITE: pipe_write,
    Op.PIPE_READ: pipe_read,
}
