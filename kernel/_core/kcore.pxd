# cython: language_level=3
# The kernel's per-message object model (DESIGN §4-5), compiled. Cold operations
# in kernel/daemon/ use these types through their public attributes.

from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t

from capabilities._table cimport Capability, CapTable
from kernel._core.ring cimport Header, Ring


cdef class KernelObject:
    cdef public int refs            # capabilities naming the object
    cdef public int kind            # kernel/abi.py ObjectKind
    cdef public uint64_t oid        # unique for the kernel's lifetime (CapInfo.object_id)
    cdef public object ledger       # its creator's uid's (daemon/quota.py), or None (replies)
    cpdef destroy(self)


cdef class Endpoint(KernelObject):
    cdef public object senders      # deque[Pending]: blocked send/call ops, payload copied
    cdef public object receivers    # deque[Pending]: blocked recv / reply_recv ops
    cdef public object bound        # the Notification bound to it (NOTIFICATION_BIND), or None


cdef class Notification(KernelObject):
    cdef public uint64_t word
    cdef public object waiters      # deque[Pending]
    cdef public object bound_to     # the Endpoint whose receivers also take its word, or None


cdef class Semaphore(KernelObject):
    cdef public uint64_t value      # invariant: value == 0 or not waiters
    cdef public object waiters      # deque[Pending]: SEMAPHORE_WAIT ops, oldest first


cdef class Reply(KernelObject):
    cdef public Pending caller      # None once the call is over
    cdef public str gone_reason
    cdef public tuple watch         # (Endpoint, badge) told if the call ends unanswered
    cpdef abandon(self, str reason)


cdef class Pending:
    # Invariant: phase == WAITING <=> the op sits in exactly one wait queue (`queue`);
    #            phase == AWAIT_REPLY <=> a call was delivered and `reply` points back here.
    cdef public ProcCore proc
    cdef public uint64_t req_id
    cdef public int op
    cdef public int64_t deadline
    cdef public uint64_t slot
    cdef public bytes payload
    cdef public uint64_t badge
    cdef public bint is_call
    cdef public object queue
    cdef public Reply reply
    cdef public int phase
    cdef public list transfers      # a waiting message's [(cap, None=move (locked) or InFlight)]
    cdef public bint grant          # the sender's endpoint cap had GRANT (replies may carry caps)
    cdef public Capability cap      # the capability the op waits through
    cdef public uint64_t msg_flags  # a kernel message's extra flags (MSG_SESSION_OFFER)
    cdef public Py_ssize_t held     # payload bytes counted in proc.held_bytes (a stored send)
    cpdef enqueue(self, object queue)
    cpdef dequeue(self)
    cpdef finish(self)


cdef class ProcCore:
    cdef public int ident
    cdef public uint32_t pid, uid, gid
    cdef public Ring sq, cq
    cdef public CapTable caps
    cdef public dict pending        # req_id -> Pending
    cdef public object overflow     # deque of completions waiting for CQ space
    cdef public Py_ssize_t overflow_bytes   # their payloads' bytes
    cdef public Py_ssize_t held_bytes       # payloads of its sends waiting for receivers
    cdef public bint alive
    cdef public bint dirty          # completions posted since the last doorbell check
    cdef public object doomed       # reason to disconnect, or None
    cdef public int cq_efd          # the process's completion doorbell
    cdef int post(self, uint32_t opcode, uint64_t req_id, int32_t status, uint64_t slot,
                  uint64_t arg, const char *payload, Py_ssize_t n, uint64_t badge,
                  ProcCore sender) except -1
    cdef int post_caps(self, uint32_t opcode, uint64_t req_id, uint64_t slot, uint64_t arg,
                       const char *payload, Py_ssize_t n, uint64_t badge, ProcCore sender,
                       list slots, uint32_t kinds) except -1
    cdef int _post(self, uint32_t opcode, uint64_t req_id, int32_t status, uint64_t slot,
                   uint64_t arg, const char *payload, Py_ssize_t n, uint64_t badge,
                   ProcCore sender, list slots, uint32_t kinds) except -1
    cpdef complete(self, int opcode, uint64_t req_id, int status, uint64_t slot=*,
                   uint64_t arg=*, bytes payload=*, uint64_t badge=*, ProcCore sender=*,
                   list slots=*, uint32_t kinds=*)


cdef class Core:
    cdef public object timers       # kernel.daemon.pending.Timers
    cdef public object clock        # () -> CLOCK_MONOTONIC ns
    cdef public dict cold           # opcode -> Python handler(k, proc, h)
    cdef public list trouble        # (proc, reason) for the control plane to disconnect
    cdef int64_t next_timer_check
    cdef public int64_t last_work   # CLOCK_MONOTONIC ns of the last work; spans pump() calls
    cpdef int pump(self, list procs, int64_t idle_ns, int64_t slice_ns) except -1
    cpdef int ring_doorbells(self, list procs) except -1
    cpdef bint expired(self, int64_t deadline)
    cpdef Capability lookup(self, ProcCore proc, uint64_t slot, int kind, uint64_t right)
    cpdef uint64_t insert_cap(self, ProcCore proc, Capability cap) except 0
    cpdef Capability remove_cap(self, ProcCore proc, uint64_t slot, str why)
    cpdef release(self, KernelObject obj)
    cpdef abandon(self, Pending op, str why)
    cpdef int drain(self, ProcCore proc) except -1
    cdef handle(self, ProcCore proc, Header h)
    cdef uint64_t _reply_kept(self, ProcCore proc, Header h)
    cdef void _arm(self, Pending op) except *
    cdef Capability _decode_message(self, ProcCore proc, Header h, uint64_t slot, int kind,
                                    uint64_t right)
    cdef uint64_t _install_reply(self, ProcCore receiver, Pending caller, bint grant) except 0
    cdef list _decode_transfers(self, ProcCore proc, Header h, Capability used,
                                uint64_t grant_right)
    cdef tuple _transfer(self, list transfers, ProcCore sender, ProcCore receiver)
    cdef _send(self, ProcCore proc, Header h, bint is_call)
    cdef _deliver_stored(self, Pending rx, Pending tx)
    cpdef kernel_send(self, Endpoint ep, uint64_t badge, bytes payload, uint64_t flags=*)
    cdef _recv(self, ProcCore proc, Header h, Capability cap)
    cdef Capability _decode_reply(self, ProcCore proc, Header h, uint64_t reply_slot)
    cdef _reply(self, ProcCore proc, Header h, Capability cap)
    cdef _reply_recv(self, ProcCore proc, Header h)
    cdef _signal(self, ProcCore proc, Header h, Capability cap)
    cdef _wait(self, ProcCore proc, Header h, Capability cap)
    cdef _poll(self, ProcCore proc, Header h, Capability cap)
    cdef int _raise_bits(self, Notification n, uint64_t bits) except -1
    cpdef bint signal_bound(self, Notification n) except -1
    cdef _sem_post(self, ProcCore proc, Header h, Capability cap)
    cdef _sem_wait(self, ProcCore proc, Header h, Capability cap)
    cdef _close(self, ProcCore proc, Header h, Capability cap)


# kcore's own rules, for the compiled objects (pipes.pyx, queues.pyx) to cimport:
cdef Pending init_pending(Pending op, ProcCore proc, Header h)   # fills a new waiting op
cdef void _fail_queue(object queue, bytes why, int status=*)   # fail every waiter
cdef int _hold(ProcCore proc, Pending op, Py_ssize_t n) except -1   # MAX_HELD_BYTES
cdef list _in_flight(list transfers, ProcCore sender)   # a waiting message's caps
cdef void _drop_copy(Capability cap) except *   # a carried cap that goes undelivered
