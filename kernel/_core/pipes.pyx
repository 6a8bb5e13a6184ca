# cython: language_level=3, embedsignature=True, freethreading_compatible=True
# cython: auto_pickle=False
"""Pipes' read and write, compiled (the rules are in kernel/daemon/objects/pipe.py).

A pipe round trip between two processes is four kernel operations (a write and a
read on each side); in Python each cost a few µs more than kcore's endpoint path,
as the semaphore's did before it moved into kcore. The kernel's dispatch reaches
these through its table of cold handlers, one C call away.
"""

from collections import deque

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from libc.stdint cimport uint64_t

from capabilities._table cimport Capability
from kernel._core.kcore cimport (
    Core, KernelObject, Pending, ProcCore, _fail_queue, _hold, init_pending,
)
from kernel._core.ring cimport Header

from capabilities import Rights

from kernel import abi
from kernel._core.kcore import OpError
from kernel.errors import Status

cdef Py_ssize_t PIPE_BUF = abi.PIPE_BUF
cdef uint64_t MAX_PAYLOAD = abi.MAX_PAYLOAD
cdef int KIND_PIPE_READER = abi.ObjectKind.PIPE_READER
cdef int KIND_PIPE_WRITER = abi.ObjectKind.PIPE_WRITER
cdef uint64_t R_READ = Rights.READ
cdef uint64_t R_WRITE = Rights.WRITE
cdef int OP_PIPE_WRITE = abi.Op.PIPE_WRITE
cdef int ST_OK = Status.OK
cdef int ST_TIMED_OUT = Status.TIMED_OUT
cdef int ST_BROKEN_PIPE = Status.BROKEN_PIPE


cdef class PipeOp(Pending):
    """A read (`max_size`) or a write (`data` left to write, `written` so far) waiting."""

    cdef public object data          # a memoryview of what is left: slicing copies nothing
    cdef public Py_ssize_t written
    cdef public Py_ssize_t max_size

    def expire(self):
        """The deadline passed: a write that wrote something returns its count
        (POSIX's short write); otherwise the op times out."""
        self.finish()
        if self.written:
            self.proc.post(self.op, self.req_id, ST_OK, 0, self.written, NULL, 0, 0, None)
            return
        what = "the pipe had no room" if self.op == OP_PIPE_WRITE else "no data arrived"
        self.proc.complete(self.op, self.req_id, ST_TIMED_OUT, 0, 0,
                           f"{what} before the deadline".encode())


cdef PipeOp _new_op(ProcCore proc, Header h, Capability cap):
    cdef PipeOp op = <PipeOp>init_pending(PipeOp.__new__(PipeOp), proc, h)
    op.cap = cap   # revoking or closing it fails the op at once
    return op


cdef class Pipe:
    """What the two ends share. Invariant: readers wait only while `buffer` is empty
    and writers only while it is full (for an atomic write: too full for it)."""

    cdef public Py_ssize_t capacity
    cdef public object owner         # the creating Proc, charged for `capacity`
    cdef public bytearray buffer
    cdef public object readers       # deque[PipeOp]
    cdef public object writers       # deque[PipeOp]
    cdef public bint reader_alive
    cdef public bint writer_alive

    def __init__(self, Py_ssize_t capacity, owner):
        self.capacity, self.owner = capacity, owner
        self.buffer = bytearray()
        self.readers, self.writers = deque(), deque()
        self.reader_alive = self.writer_alive = True

    cdef bint put(self, PipeOp op) except -1:
        """Write what `op` may write now; True when all of it is in."""
        cdef Py_ssize_t left = len(op.data)
        cdef Py_ssize_t room = self.capacity - PyByteArray_GET_SIZE(self.buffer)
        cdef Py_ssize_t n
        if op.written == 0 and left <= PIPE_BUF:   # atomic: all or nothing
            n = left if left <= room else 0
        else:
            n = min(left, room)
        if n:
            self.buffer += op.data[:n]
            op.data = op.data[n:]
            op.written += n
        return n == left

    cpdef flow(self):
        """Move bytes as far as they go: waiting writers' into the buffer, the buffer
        to waiting readers, until neither moves (a read makes room for a writer, a
        write brings data for a reader)."""
        cdef bint moved = True, done
        cdef PipeOp op
        cdef Py_ssize_t before
        while moved:
            moved = False
            while self.writers:
                op = <PipeOp>self.writers[0]
                before = op.written
                done = self.put(op)
                moved = moved or op.written != before
                if not done:
                    break
                op.finish()
                op.proc.post(op.op, op.req_id, ST_OK, 0, op.written, NULL, 0, 0, None)
            while self.readers and (PyByteArray_GET_SIZE(self.buffer) or not self.writer_alive):
                op = <PipeOp>self.readers[0]
                op.finish()
                self.complete_read(op.proc, op.op, op.req_id, op.max_size)
                moved = True

    cdef int complete_read(self, ProcCore proc, int opcode, uint64_t req_id,
                           Py_ssize_t max_size) except -1:
        """Hand a reader up to `max_size` buffered bytes, straight from the buffer
        (none: EOF)."""
        cdef Py_ssize_t n = min(max_size, PyByteArray_GET_SIZE(self.buffer))
        proc.post(opcode, req_id, ST_OK, 0, 0, PyByteArray_AS_STRING(self.buffer), n, 0, None)
        if n:
            del self.buffer[:n]
        return 0

    cpdef end_gone(self, bint reader):
        if reader:
            self.reader_alive = False
            self.buffer.clear()   # nobody can read it any more
            _fail_queue(self.writers, b"broken pipe: no read end is left", ST_BROKEN_PIPE)
        else:
            self.writer_alive = False
            self.flow()   # what is buffered, then EOF
        if not (self.reader_alive or self.writer_alive):   # the reservation goes with both
            self.owner.credit("buffer bytes", self.capacity)


cdef class PipeEnd(KernelObject):
    cdef public Pipe pipe
    cdef public bint reader

    def __init__(self, Pipe pipe, bint reader):
        self.kind = KIND_PIPE_READER if reader else KIND_PIPE_WRITER
        self.pipe, self.reader = pipe, reader

    cpdef destroy(self):
        self.pipe.end_gone(self.reader)


def pipe_write(Core k, ProcCore proc, Header h):
    """PIPE_WRITE: the payload into the pipe; completes with the count written.
    Rights: WRITE on the write end."""
    cdef Capability cap = k.lookup(proc, h.h.slot, KIND_PIPE_WRITER, R_WRITE)
    cdef Pipe pipe = (<PipeEnd>cap.obj).pipe
    if not pipe.reader_alive:
        raise OpError(Status.BROKEN_PIPE, "broken pipe: no read end is left")
    cdef PipeOp op = _new_op(proc, h, cap)
    op.data = memoryview(proc.sq.payload(h))
    if not pipe.writers and pipe.put(op):
        proc.post(op.op, op.req_id, ST_OK, 0, op.written, NULL, 0, 0, None)
    elif k.expired(h.h.deadline):
        op.expire()
    else:
        _hold(proc, op, len(op.data))   # counted as a waiting endpoint send's is
        op.enqueue(pipe.writers)
        k.timers.arm(op)
    pipe.flow()


def pipe_read(Core k, ProcCore proc, Header h):
    """PIPE_READ: up to `arg` bytes (1 to MAX_PAYLOAD); empty at EOF. Rights: READ on
    the read end."""
    cdef Capability cap = k.lookup(proc, h.h.slot, KIND_PIPE_READER, R_READ)
    cdef Pipe pipe = (<PipeEnd>cap.obj).pipe
    if not 0 < h.h.arg <= MAX_PAYLOAD:
        raise OpError(Status.INVALID_ARGS, f"max_size must be 1 to {MAX_PAYLOAD} bytes")
    cdef PipeOp op
    if PyByteArray_GET_SIZE(pipe.buffer) or not pipe.writer_alive:
        pipe.complete_read(proc, h.h.opcode, h.h.req_id, h.h.arg)
        pipe.flow()
    elif k.expired(h.h.deadline):
        raise OpError(Status.TIMED_OUT, "the pipe is empty")
    else:
        op = _new_op(proc, h, cap)
        op.max_size = h.h.arg
        op.enqueue(pipe.readers)
        k.timers.arm(op)
