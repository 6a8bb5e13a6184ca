"""Shared memory and semaphores: the textbook bounded buffer, across two processes.

    python examples/shm/bounded_buffer.py

The producer creates a memory object holding a ring of SLOTS records and two
semaphores, `empty` (free slots) and `full` (records to take), then spawns the
consumer with capabilities to all three. The consumer's capability to the memory
has no WRITE right, so its mapping is read-only: the kernel gave it a descriptor
opened read-only. The records themselves never pass through the kernel.
"""

import struct
import sys

import kernel
from kernel import Rights

SLOTS, RECORDS = 8, 10_000
RECORD = struct.Struct("<Qd")  # a sequence number and a reading


def consume() -> None:
    with kernel.connect() as k:
        mem, empty, full = (k.inherited[n] for n in ("mem", "empty", "full"))
        total = 0.0
        with mem.map() as m:
            for i in range(RECORDS):
                full.wait(timeout=10.0)
                seq, reading = RECORD.unpack_from(m, RECORD.size * (i % SLOTS))
                assert seq == i, f"record {seq} where {i} was due"
                total += reading
                empty.post()
            try:
                m[0] = 0
            except TypeError as e:
                print(f"the consumer cannot write: {e}")
        print(f"consumer: {RECORDS} records in order, total {total:.1f}")


def produce() -> None:
    with kernel.connect() as k:  # starts a private kernel if none runs
        mem = k.memory(RECORD.size * SLOTS)
        empty, full = k.semaphore(SLOTS), k.semaphore(0)
        read_only = mem.copy(Rights.MAP | Rights.READ | Rights.COPY)
        consumer = k.spawn(
            [sys.executable, __file__, "consume"],
            caps={"mem": read_only, "empty": empty, "full": full},
        )
        with mem.map() as m:
            for i in range(RECORDS):
                empty.wait(timeout=10.0)
                RECORD.pack_into(m, RECORD.size * (i % SLOTS), i, i * 0.5)
                full.post()
        print(f"producer: expected total {sum(i * 0.5 for i in range(RECORDS)):.1f}")
        sys.exit(consumer.wait(timeout=30.0))


if __name__ == "__main__":
    consume() if sys.argv[1:] == ["consume"] else produce()
