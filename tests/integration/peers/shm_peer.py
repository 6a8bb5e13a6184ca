"""The other process of the memory-object and semaphore tests.

usage: shm_peer.py ACT [ARG]
  consume ARG   bounded-buffer consumer: ARG records of 8 bytes through the ring of
                slots in "mem", with semaphores "full" (wait) and "empty" (post);
                sends the sum of the records on "back"
  read ARG      wait on "full", then send ARG bytes from the start of "mem" on "back"
  write ARG     map "mem" writable, write ARG (bytes) at its start, post "full"
  tryro         try to write through the read-only "mem" three ways; send the three
                outcomes (exception class names) on "back"
  wait          wait on "sem" forever; send b"took" on "back" (or the error's class)
  hold ARG      create and map ARG memory objects, send b"ready" on "back", then sleep
                for a minute (killed by the test: its objects must go with it)
Every wait is bounded (20 s) except `wait`'s; the exit code is 0 when the act completed.
"""

from __future__ import annotations

import mmap
import os
import struct
import sys
import time

import kernel

LIMIT = 20.0
SLOTS = 4  # records the ring in "mem" holds (tests/integration/test_memory.py)


def consume(caps: dict, count: int) -> None:
    total = 0
    with caps["mem"].map(writable=False) as m:
        for i in range(count):
            caps["full"].wait(timeout=LIMIT)
            (value,) = struct.unpack_from("<Q", m, 8 * (i % SLOTS))
            total += value
            caps["empty"].post()
    caps["back"].send(str(total).encode(), timeout=LIMIT)


def try_read_only(caps: dict) -> None:
    outcomes = []
    try:
        caps["mem"].map(writable=True)
        outcomes.append("mapped")
    except kernel.AccessDeniedError as e:
        outcomes.append(type(e).__name__)
    with caps["mem"].map() as m:  # as the capability allows: read-only
        try:
            m[0:1] = b"X"
            outcomes.append("wrote")
        except TypeError as e:
            outcomes.append(type(e).__name__)
    fd = caps["mem"].open_fd()
    try:
        mmap.mmap(fd, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE).close()
        outcomes.append("mapped")
    except PermissionError as e:
        outcomes.append(type(e).__name__)
    finally:
        os.close(fd)
    caps["back"].send(" ".join(outcomes).encode(), timeout=LIMIT)


def main() -> int:
    act = sys.argv[1]
    arg = sys.argv[2] if len(sys.argv) > 2 else ""
    with kernel.connect(autostart=False) as k:
        caps = k.inherited
        if act == "consume":
            consume(caps, int(arg))
        elif act == "read":
            caps["full"].wait(timeout=LIMIT)
            with caps["mem"].map() as m:
                caps["back"].send(bytes(m[: int(arg)]), timeout=LIMIT)
        elif act == "write":
            with caps["mem"].map(writable=True) as m:
                m[: len(arg)] = arg.encode()
            caps["full"].post()
        elif act == "tryro":
            try_read_only(caps)
        elif act == "hold":
            held = [k.memory(4096) for _ in range(int(arg))]
            maps = [mem.map() for mem in held]
            caps["back"].send(b"ready", timeout=LIMIT)
            time.sleep(60)
            del maps
        elif act == "wait":
            try:
                caps["sem"].wait()
                caps["back"].send(b"took", timeout=LIMIT)
            except kernel.IPCError as e:
                caps["back"].send(type(e).__name__.encode(), timeout=LIMIT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
