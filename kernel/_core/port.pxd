# cython: language_level=3
"""A direct session's port (port.pyx), declared for the compiled client faces
(faces.pyx) that call its C methods."""

from libc.stdint cimport int64_t, uint16_t, uint32_t, uint64_t

from kernel._core.ring cimport MAX_TRACKED_CALLS, Ring, SessionStates, mk_hdr

cdef extern from "<poll.h>" nogil:
    ctypedef unsigned long nfds_t
    struct pollfd:
        int fd
        short events
        short revents
    int poll(pollfd *fds, nfds_t nfds, int timeout)
    enum: POLLIN


cdef enum:
    OP_SEND = 10      # the record opcodes (kernel/abi.py Op.ENDPOINT_*)
    OP_CALL = 11
    OP_REPLY = 13
    W_OK = 0          # _send()'s codes: written, or the ring is full, or (a reply)
    W_FULL = 1        # its caller gave up first: nothing written. W_LATE differs from
    W_LATE = 7        # every other code of port.pyx, as one hook maps them all


cdef class SessionPort:
    cdef Ring out
    cdef Ring inbox
    cdef SessionStates states
    cdef Py_ssize_t index
    cdef int peer_efd
    cdef Py_ssize_t max_payload
    cdef readonly uint64_t badge      # the kernel's, for messages this side receives
    cdef readonly object sender       # the peer's Credentials, as the kernel verified them
    cdef readonly uint64_t sender_id
    cdef readonly uint64_t sid
    cdef int my_efd                   # our doorbell, and the kernel's socket: wait() polls both
    cdef int sock_fd
    cdef int64_t spin_ns, spin_min, spin_max, yield_after_ns, crowded_ns
    cdef bint crowded                 # the last spin's yield let others run >= crowded_ns
    cdef bint broken                  # the peer broke the ring format: mark_broken()
    cdef uint64_t *calls              # the call words (ring.pxd), shared with the peer
    cdef uint64_t owner[MAX_TRACKED_CALLS]   # caller: the call that owns each word
    cdef uint32_t *room_p             # the reply ring's flag: the server keeps replies back
    cdef list overflow                # server: committed replies the ring had no room for
    cdef bint took                    # caller: take_record() took one since its last None

    cdef int64_t _state(self) except? -1
    cdef int _put(self, uint16_t op, uint64_t req_id, payload) except -2
    cdef uint64_t *_call_word(self, uint64_t req_id) noexcept
    cdef bint _claim(self, uint64_t req_id) noexcept
    cdef bint _commit(self, uint64_t req_id) noexcept
    cdef int _drop(self, uint64_t req_id) except -1
    cdef bint _keeps_too_many(self)
    cdef int _deliver(self, mk_hdr *h, const char *p, Py_ssize_t n) except -1
    cdef int _flush(self) except -1
    cdef void _room_bell(self) noexcept
    cdef void _settle(self, uint64_t req_id) noexcept
    cpdef bint withdraw(self, uint64_t req_id)
    cdef void _doorbell(self) noexcept
    cdef int64_t _send(self, uint16_t op, uint64_t req_id, payload) except? -1000
    cdef int64_t _recv_many(self, list out, Py_ssize_t max_n) except? -1000
    cdef object _take_reply(self, uint64_t req_id)
    cdef object _call(self, uint64_t req_id, payload, int64_t deadline)
    cdef int64_t _recv_wait(self, list out, Py_ssize_t max_n, int64_t deadline) except? -1000
    cdef int64_t _wait(self, int64_t deadline) except? -1000
    cdef int64_t _sleep(self, int64_t deadline) except? -1000
    cdef bint _spin(self, int64_t deadline)
