# cython: language_level=3
#
# THE record and region layout shared by the kernel and every client (DESIGN §3).
# kernel/abi.py mirrors these numbers for Python readers and tests; a unit
# test checks that the two agree.
#
# The region is one memfd per process, mapped by the kernel and by that process:
#
#   offset  size  field
#   0       8     magic  b"MKIPCRNG"
#   8       4     layout version
#   16      8     SQ data size (bytes, power of two)      kernel writes once
#   24      8     CQ data size (bytes, power of two)      kernel writes once
#   64      8     SQ tail     producer = process   (own cache line)
#   128     8     SQ head     consumer = kernel    (own cache line)
#   192     4     SQ waiting  set by the kernel before it sleeps
#   256     8     CQ tail     producer = kernel
#   320     8     CQ head     consumer = process
#   384     4     CQ waiting  set by the process before it sleeps
#   448     4     CQ room     a session server's replies wait for room (port.pyx)
#   2048    2048  session states: MAX_SESSIONS int64 words, written by the kernel
#                 only (SessionStates): 0 free, 1 open, < 0 the Status it ended with
#   4096    ...   SQ data, then CQ data
#
# A direct session's region (kernel/daemon/sessions.py) has the same control page
# over its two rings (SQ: the caller's requests, CQ: the server's replies), with
# the call words at 2048 instead of session states:
#
#   2048    2048  call words: MAX_TRACKED_CALLS uint64; word (req_id % 256) settles
#                 a call: req_id | 1 << 63 answered (the server), req_id | 1 << 62
#                 withdrawn (the caller), by compare-and-swap; port.pyx has the protocol
#
# Head and tail are free-running byte counters (they never wrap in practice:
# 2**64 bytes). A record never wraps: when it does not fit before the end of the
# data area the producer writes a PAD record up to the end and starts at 0.
#
# A record is an mk_hdr, then ncaps uint64 capability slots, then payload_len
# bytes, padded to a multiple of 8. `size` counts all of it.

from libc.stdint cimport int32_t, int64_t, uint16_t, uint32_t, uint64_t

cdef extern from "atomics.h":
    uint64_t mk_load_acquire_u64(const uint64_t *p) nogil
    void mk_store_release_u64(uint64_t *p, uint64_t v) nogil
    uint32_t mk_load_u32(const uint32_t *p) nogil
    void mk_store_u32(uint32_t *p, uint32_t v) nogil
    uint32_t mk_exchange_u32(uint32_t *p, uint32_t v) nogil
    bint mk_cas_u64(uint64_t *p, uint64_t expected, uint64_t desired) nogil
    void mk_fence() nogil
    void mk_cpu_relax() nogil
    void mk_yield() nogil

ctypedef struct mk_hdr:
    uint32_t size          # whole record, multiple of 8
    uint16_t opcode        # kernel/abi.py Op
    uint16_t ncaps         # capability slots after the header
    uint64_t req_id        # chosen by the process, echoed in its completion
    uint64_t slot          # SQ: capability used; CQ: reply capability of a received call
    uint32_t payload_len
    int32_t status         # CQ: kernel/errors.py Status
    int64_t deadline       # SQ: CLOCK_MONOTONIC ns; -1 forever, 0 return at once
    uint64_t arg           # operation specific (notification bits, rights, ...)
    uint64_t badge         # CQ: badge of the sender's capability
    uint32_t flags
    uint32_t pid           # CQ: kernel-verified credentials of the sender
    uint32_t uid
    uint32_t gid

cdef int64_t now_ns() noexcept nogil
cdef bint spin_for(const uint64_t *tail_p, uint64_t head, int64_t budget_ns,
                   int64_t yield_after_ns, int64_t crowded_ns, bint *crowded) noexcept nogil
cdef bint sole_thread() noexcept
cdef bint spin_gil(const uint64_t *tail_p, uint64_t head, int64_t budget_ns,
                   int64_t yield_after_ns, int64_t crowded_ns, bint *crowded) noexcept
cdef int64_t adapt_spin(int64_t spin_ns, bint found, bint crowded,
                        int64_t lo, int64_t hi) noexcept nogil
cdef int64_t spin_until(int64_t budget, int64_t deadline) noexcept nogil


cdef enum:
    HDR_SIZE = 72
    CONTROL_SIZE = 4096
    OFF_SQ_TAIL = 64
    OFF_SQ_HEAD = 128
    OFF_SQ_WAITING = 192
    OFF_CQ_TAIL = 256
    OFF_CQ_HEAD = 320
    OFF_CQ_WAITING = 384
    OFF_CQ_ROOM = 448
    OFF_SESSIONS = 2048
    MAX_SESSIONS = 256
    OFF_CALLS = 2048
    MAX_TRACKED_CALLS = 256
    OP_PAD = 0
    MAX_CAPS_PER_RECORD = 64


cdef class Header:
    cdef mk_hdr h
    cdef uint64_t pos      # offset of the record in the ring's data area
    cdef uint64_t at       # absolute consumer position it was read at (lap included)
    cdef Ring ring         # the ring it was read from


cdef class Completion:
    cdef readonly uint32_t opcode
    cdef readonly uint64_t req_id
    cdef readonly int32_t status
    cdef readonly uint64_t slot
    cdef readonly uint64_t arg
    cdef readonly uint64_t badge
    cdef readonly uint32_t pid, uid, gid
    cdef readonly uint32_t flags
    cdef readonly uint64_t sender_id   # a message's sending connection (kernel: 0)
    cdef readonly bytes payload
    cdef readonly tuple caps


cdef class Ring:
    cdef char *data
    cdef uint64_t size
    cdef uint64_t mask
    cdef uint64_t *tail_p
    cdef uint64_t *head_p
    cdef uint32_t *waiting_p
    cdef uint64_t tail     # producer's private copy (valid when we produce)
    cdef uint64_t head     # consumer's private copy (valid when we consume)
    cdef Py_buffer buf
    cdef bint has_buf
    cdef public bint crowded   # the last spin() found more runnable processes than cores

    cdef Header next_record(self)
    cdef Completion take_completion(self)
    cdef int push_record(self, uint16_t opcode, uint64_t req_id, uint64_t slot,
                         int64_t deadline, uint64_t arg, const unsigned char[::1] payload,
                         tuple caps) except -1
    cdef int consume_record(self, Header h) except -1
    cdef int _check_open(self) except -1
    cdef int _check_current(self, Header h) except -1
    cdef int _write(self, mk_hdr *h, const uint64_t *caps,
                    const char *payload, Py_ssize_t n) except -1
    cdef char *_reserve(self, uint64_t need) except? NULL
    cdef object _write_with_caps(self, mk_hdr *h, tuple caps,
                                 const unsigned char[::1] payload)


cdef class SessionStates:
    """The session state words of one region (see the byte map above)."""
    cdef int64_t *words
    cdef Py_buffer buf
    cdef bint has_buf
    cdef int64_t *_word(self, Py_ssize_t index) except NULL
