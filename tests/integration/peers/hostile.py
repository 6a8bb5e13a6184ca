"""A client that breaks the ring protocol on purpose (DESIGN §3: the ring is hostile input).

usage: hostile.py KIND
  bad_tail    publish a submission tail that is not a multiple of 8
  huge_tail   publish a submission tail far beyond the ring
  bad_size    a record whose size field does not match its contents
  many_caps   a record claiming more capability slots than a record may carry
  bad_pad     a padding record whose size is not "up to the end of the ring"
  random      seeded random bytes as records
  sock_data   write bytes to the bootstrap socket after the handshake
  no_drain    submit polls (straight into the ring) and never read a completion,
              until the kernel closes the socket
  no_drain_forever  submit 200000 polls through Connection.submit and never read a
              completion: the kernel gives up on us long before the last one
  no_drain_big  send itself messages of MAX_PAYLOAD bytes (a receive posted, then a
              send, straight into the ring) and never read a completion

Prints "ready" once connected (so that the test can check other clients), then does
the damage, waits until the kernel closes the socket, and checks that the next
operation raises PeerClosedError. Prints one line "<outcome> <seconds>" and exits 0
when that is what happened.
"""

from __future__ import annotations

import mmap
import os
import random
import select
import signal
import socket
import struct
import sys
import threading
import time

import kernel
from kernel import abi
from kernel._core.ring import Ring
from kernel.abi import Op


def record(
    opcode: int, payload: bytes = b"", *, size: int | None = None, ncaps: int | None = None
) -> bytes:
    """A submission record as the library's own ring writer lays it out, then bent.

    Only the framing word at the start of every record is bent (size: u32 at 0,
    opcode: u16 at 4, ncaps: u16 at 6), so this follows the header layout in
    kernel/_core/ring.pxd wherever its other fields move.
    """
    mm = mmap.mmap(-1, abi.CONTROL_SIZE + 8192)
    ring = Ring(mm, abi.CONTROL_SIZE, 8192, abi.OFF_SQ_TAIL, abi.OFF_SQ_HEAD, abi.OFF_SQ_WAITING)
    assert ring.submit(max(opcode, 1), 1, 0, -1, 0, payload)
    true_size = struct.unpack_from("<I", mm, abi.CONTROL_SIZE)[0]
    data = bytearray(mm[abi.CONTROL_SIZE : abi.CONTROL_SIZE + true_size])
    ring.close()
    mm.close()
    struct.pack_into("<IH", data, 0, true_size if size is None else size, opcode)
    if ncaps is not None:
        struct.pack_into("<H", data, 6, ncaps)
    return bytes(data)


def publish(conn, data: bytes, tail_delta: int | None = None) -> None:
    """Write `data` at the current submission tail and publish a new tail."""
    mm = conn.mm
    tail = int.from_bytes(mm[abi.OFF_SQ_TAIL : abi.OFF_SQ_TAIL + 8], "little")
    pos = abi.CONTROL_SIZE + tail % conn.welcome.sq_size
    mm[pos : pos + len(data)] = data
    new_tail = tail + (len(data) if tail_delta is None else tail_delta)
    mm[abi.OFF_SQ_TAIL : abi.OFF_SQ_TAIL + 8] = (new_tail % 2**64).to_bytes(8, "little")
    os.eventfd_write(conn.sq_efd, 1)


def damage(k: kernel.Kernel, kind: str) -> None:
    conn = k._conn
    if kind == "bad_tail":
        publish(conn, record(Op.NOTIFICATION_CREATE), tail_delta=abi.HDR_SIZE + 4)
    elif kind == "huge_tail":
        publish(conn, record(Op.NOTIFICATION_CREATE), tail_delta=1 << 40)
    elif kind == "bad_size":  # claims 64 more bytes than header and payload need
        rec = record(Op.ENDPOINT_SEND, b"x" * 64)
        publish(conn, record(Op.ENDPOINT_SEND, b"x" * 64, size=len(rec) + 64) + bytes(64))
    elif kind == "many_caps":
        publish(conn, record(Op.ENDPOINT_SEND, ncaps=4000) + bytes(8 * 4000))
    elif kind == "bad_pad":  # a pad must run to the end of the ring
        publish(conn, record(Op.PAD, size=abi.HDR_SIZE))
    elif kind == "random":
        publish(conn, random.Random(1234).randbytes(8192))
    elif kind == "sock_data":
        conn.sock.send(b"x")
    elif kind == "no_drain":
        # Straight into the ring, never blocking on a full one: stop at the kernel's EOF.
        req_id = 1 << 40
        while not select.select([conn.sock], [], [], 0)[0]:
            if conn.sq.submit(Op.NOTIFICATION_POLL, req_id, 0, 0, 0, b""):
                req_id += 1
            else:
                select.select([conn.sock], [], [], 0.001)
            if conn.sq.peer_waiting():
                os.eventfd_write(conn.sq_efd, 1)
        conn.check_socket()  # EOF: the library marks the connection lost
    elif kind == "no_drain_big":
        ep, big, req_id, n = k.endpoint(), b"x" * abi.MAX_PAYLOAD, 1 << 40, 0
        while not select.select([conn.sock], [], [], 0)[0]:
            op, data = (Op.ENDPOINT_SEND, big) if n % 2 else (Op.ENDPOINT_RECV, b"")
            if conn.sq.submit(op, req_id + n, ep.slot, -1, 0, data):
                n += 1
            else:
                select.select([conn.sock], [], [], 0.001)
            if conn.sq.peer_waiting():
                os.eventfd_write(conn.sq_efd, 1)
        conn.check_socket()
    elif kind == "no_drain_forever":
        # The library's own submit path, which waits for ring space as the kernel drains.
        for _ in range(200_000):
            conn.submit(Op.NOTIFICATION_POLL, 0)
    else:
        raise SystemExit(f"unknown kind {kind}")


def stuck(signum: int, frame: object) -> None:
    raise TimeoutError("still blocked after the kernel closed the connection")


def alarm_after_eof(sock: socket.socket) -> None:
    """Once the kernel has closed our socket, give the library 0.5 s to notice."""
    if select.select([sock], [], [], 2.0)[0]:
        signal.setitimer(signal.ITIMER_REAL, 0.5)


def main() -> int:
    kind = sys.argv[1]
    with kernel.connect(autostart=False) as k:
        k.notification()  # the connection works before the damage
        print("ready", flush=True)
        signal.signal(signal.SIGALRM, stuck)
        t0 = time.monotonic()
        signal.setitimer(signal.ITIMER_REAL, 2.5)  # in any case
        watcher = threading.Thread(target=alarm_after_eof, args=(k._conn.sock,), daemon=True)
        watcher.start()
        try:
            damage(k, kind)
            # The kernel closes the socket when it gives up on us; only then try again,
            # so that the next request cannot overwrite the damage before it is read.
            select.select([k._conn.sock], [], [], 2.0)
            k.notification()
        except kernel.PeerClosedError:
            outcome = "PeerClosedError"
        except Exception as e:
            outcome = f"{type(e).__name__}:{e}".replace(" ", "_")
        else:
            outcome = "still-connected"
        watcher.join(3)  # it may still arm the timer: only then disarm it
        signal.setitimer(signal.ITIMER_REAL, 0)
    print(outcome, f"{time.monotonic() - t0:.3f}", flush=True)
    return 0 if outcome == "PeerClosedError" else 1


if __name__ == "__main__":
    sys.exit(main())
