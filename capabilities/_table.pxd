# cython: language_level=3
# The capability table's compiled types; cimported by the kernel's hot path.

from libc.stdint cimport uint64_t


cdef class Capability:
    cdef public object obj          # the kernel object (kernel._core.kcore.KernelObject)
    cdef public uint64_t rights     # capabilities.Rights bits
    cdef public uint64_t badge
    cdef public uint64_t slot       # 0 while not in a table
    cdef public object holder       # its CapTable, spawn bundle or message (InFlight), or None
    cdef public bint in_transit     # locked in a message waiting for its receiver
    cdef public Capability parent   # what it was derived from (DESIGN §5 derivation tree)
    # What was derived from it; None means nothing yet (the kernel's per-call reply
    # capabilities skip allocating a list).
    cdef public list children


cdef class CapTable:
    cdef public int limit
    cdef public uint64_t gen_mask
    cdef public int count
    cdef list _caps                 # index -> Capability or None; index 0 unused
    cdef list _gens                 # index -> current generation
    cdef object _free               # deque of free indices, oldest first
    cdef dict _gone                 # index -> (last slot, why it left)

    cpdef uint64_t insert(self, Capability cap) except 0
    cdef Capability find(self, uint64_t slot)       # lookup() for C callers
    cdef Capability take(self, uint64_t slot, str why)   # remove() for C callers
