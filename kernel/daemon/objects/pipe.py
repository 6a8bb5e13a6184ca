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

The pipe, its ends and its read and write are compiled (kernel/_core/pipes.pyx): a
round trip through a pipe is four of them. Creation is here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from capabilities import DEFAULT_PIPE_READER_RIGHTS, DEFAULT_PIPE_WRITER_RIGHTS

from ... import abi
from ..._core.kcore import OpError
from ..._core.pipes import Pipe, PipeEnd, pipe_read, pipe_write
from ..._core.ring import Header
from ...abi import Op
from ...errors import Status
from ..process import Proc

if TYPE_CHECKING:
    from ..state import KernelState


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


HANDLERS: dict[int, Callable[[KernelState, Proc, Header], None]] = {
    Op.PIPE_CREATE: pipe_create,
    Op.PIPE_WRITE: pipe_write,
    Op.PIPE_READ: pipe_read,
}
