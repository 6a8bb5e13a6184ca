"""A pipe end as a Python file object (`r.makefile("r")`, `w.makefile("w")`), as
os.fdopen() gives one for an OS pipe and socket.makefile() for a socket.

Everything that takes a file then takes a pipe end: `for line in r.makefile("r")`,
`print(..., file=w.makefile("w"))`, csv, json.load. The buffered layers come from
`io`, so small writes are gathered into one kernel operation per buffer (8 KiB by
default): a stream of short lines costs a few writes, not one per line.

Closing the file closes the capability (unless `closefd=False`): closing the last
write end is what gives readers EOF, as closing a pipe's fd does.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

from .. import abi
from ..errors import IPCError

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, WriteableBuffer

    from .sync import PipeReaderCap, PipeWriterCap


class PipeIO(io.RawIOBase):
    """The unbuffered layer: readinto() is one read, write() one write (with the
    pipe end's atomicity: all of a write up to 4096 bytes goes in at once)."""

    def __init__(
        self, end: PipeReaderCap | PipeWriterCap, timeout: float | None, closefd: bool
    ) -> None:
        super().__init__()
        self._end = end
        self._timeout = timeout
        self._closefd = closefd

    def readable(self) -> bool:
        return self._end.kind == "pipe read end"

    def writable(self) -> bool:
        return self._end.kind == "pipe write end"

    def readinto(self, buffer: WriteableBuffer) -> int:
        if not self.readable():
            raise io.UnsupportedOperation("a pipe's write end is not readable")
        view = memoryview(buffer).cast("B")
        data = self._end.read(min(len(view), abi.MAX_PAYLOAD), timeout=self._timeout)  # type: ignore[union-attr]
        view[: len(data)] = data
        return len(data)  # 0: EOF, no writer left

    def write(self, data: ReadableBuffer) -> int:
        if not self.writable():
            raise io.UnsupportedOperation("a pipe's read end is not writable")
        return int(self._end.write(memoryview(data), timeout=self._timeout))  # type: ignore[union-attr]

    def close(self) -> None:
        if self.closed:
            return
        try:
            super().close()
        finally:
            if self._closefd:
                try:
                    self._end.close()
                except IPCError:
                    pass  # gone already (revoked, or the connection ended)

    def __repr__(self) -> str:
        return f"<PipeIO {self._end!r}>"


def makefile(
    end: PipeReaderCap | PipeWriterCap,
    mode: str,
    buffering: int = -1,
    *,
    encoding: str | None = None,
    errors: str | None = None,
    newline: str | None = None,
    timeout: float | None = None,
    closefd: bool = True,
) -> io.IOBase:
    """A file object over a pipe end: `mode` "r"/"rb" for a read end, "w"/"wb" for a
    write end; `buffering` the buffer's size (-1: io.DEFAULT_BUFFER_SIZE; 1: line
    buffered, text only); `timeout` applies to every read or write."""
    want = "r" if end.kind == "pipe read end" else "w"
    binary = mode == want + "b"
    if mode not in (want, want + "b"):
        raise ValueError(f"a {end.kind} opens with mode {want!r} or {want + 'b'!r}, not {mode!r}")
    if buffering == 0 or buffering < -1 or (buffering == 1 and binary):
        raise ValueError("buffering is -1, 1 (line-buffered text) or a buffer size; "
                         "for unbuffered bytes call read() or write() itself")  # fmt: skip
    if binary and (encoding or errors or newline):
        raise ValueError("encoding, errors and newline are for text mode only")
    raw = PipeIO(end, timeout, closefd)
    size = io.DEFAULT_BUFFER_SIZE if buffering in (-1, 1) else buffering
    buffered = io.BufferedReader(raw, size) if want == "r" else io.BufferedWriter(raw, size)
    if binary:
        return buffered
    return io.TextIOWrapper(
        buffered, encoding or "utf-8", errors, newline, line_buffering=buffering == 1
    )
