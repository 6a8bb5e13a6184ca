"""The ring between two real processes sharing a memfd mapping.

The child (forked, left only through os._exit) produces; the parent consumes and
checks every record. Everything is bounded in time: the child is killed if it
outlives the test and the consumer gives up at a deadline.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import random
import select
import signal
import time
import traceback
import warnings
import zlib
from collections.abc import Callable, Iterator

import pytest

from kernel import abi
from kernel._core.ring import Ring

POOL = random.Random(0xC0FFEE).randbytes(1 << 16)  # both processes hold the same bytes


def payload_of(seq: int) -> bytes:
    """Deterministic payload of a varying size (0 to ~2 KiB, a few larger)."""
    r = (seq * 2654435761) & 0xFFFFFFFF
    n = r % 97 if seq % 3 else r % 2000
    if seq % 1009 == 0:
        n = 8000
    start = r % (len(POOL) - n)
    return POOL[start : start + n]


def caps_of(seq: int) -> tuple[int, ...]:
    return tuple(seq + i for i in range(seq % 4))


@contextlib.contextmanager
def shared_region(ring_size: int) -> Iterator[tuple[mmap.mmap, int]]:
    fd = os.memfd_create("mkipc-test-ring", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, abi.CONTROL_SIZE + ring_size)
        mm = mmap.mmap(fd, abi.CONTROL_SIZE + ring_size)
        try:
            yield mm, fd
        finally:
            mm.close()
    finally:
        os.close(fd)


def make_ring(mm: mmap.mmap, ring_size: int) -> Ring:
    return Ring(
        mm, abi.CONTROL_SIZE, ring_size, abi.OFF_SQ_TAIL, abi.OFF_SQ_HEAD, abi.OFF_SQ_WAITING
    )


@contextlib.contextmanager
def forked(child: Callable[[], None], timeout: float) -> Iterator[Callable[[], int]]:
    """Run `child` in a forked process; yields a function that waits for its exit code.

    The child never returns into pytest: it leaves through os._exit (1 on an
    exception, whose traceback goes to the pipe-less stderr fd 2).
    """
    with warnings.catch_warnings():
        # 3.12+ warns when forking with threads alive; here the only extra thread is
        # pytest's faulthandler watchdog, and the child touches nothing it could hold.
        warnings.filterwarnings("ignore", r".*multi-threaded.*fork", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
            signal.alarm(int(timeout) + 5)  # the child can never outlive the test for long
            child()
            code = 0
        except BaseException:
            with contextlib.suppress(BaseException):
                os.write(2, traceback.format_exc().encode())
        finally:
            os._exit(code)

    deadline = time.monotonic() + timeout
    status: list[int] = []

    def wait() -> int:
        while not status:
            done, st = os.waitpid(pid, os.WNOHANG)
            if done:
                status.append(os.waitstatus_to_exitcode(st))
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                status.append(-signal.SIGKILL)
                break
            time.sleep(0.001)
        return status[0]

    try:
        yield wait
    finally:
        if not status:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


def test_100k_records_stream_between_processes_in_order_and_intact():
    count, ring_size = 100_000, 1 << 16

    with shared_region(ring_size) as (mm, _):

        def produce() -> None:
            prod = make_ring(mm, ring_size)
            for seq in range(count):
                payload = payload_of(seq)
                while not prod.submit(
                    abi.Op.ENDPOINT_SEND,
                    seq,
                    seq & 0xFFFFFFFF,
                    -1,
                    zlib.crc32(payload),
                    payload,
                    caps_of(seq),
                ):
                    os.sched_yield()

        cons = make_ring(mm, ring_size)
        try:
            with forked(produce, timeout=60) as wait:
                deadline = time.monotonic() + 60
                seq = 0
                while seq < count:
                    h = cons.read()
                    if h is None:
                        assert time.monotonic() < deadline, f"stalled at record {seq}"
                        cons.spin(1_000_000)
                        continue
                    payload = cons.payload(h)
                    assert h.req_id == seq, f"record {h.req_id} arrived in place of {seq}"
                    assert h.slot == seq
                    assert zlib.crc32(payload) == h.arg, f"record {seq}: checksum mismatch"
                    assert payload == payload_of(seq)
                    assert cons.caps(h) == caps_of(seq)
                    cons.consume(h)
                    seq += 1
                assert wait() == 0
            assert cons.read() is None
            tail = int.from_bytes(mm[abi.OFF_SQ_TAIL : abi.OFF_SQ_TAIL + 8], "little")
            assert tail // ring_size > 100  # the ring wrapped many times
        finally:
            cons.close()


def _published(mm: mmap.mmap, off: int) -> int:
    return int.from_bytes(mm[off : off + 8], "little")


def test_consumer_sleeping_on_an_eventfd_never_misses_a_wakeup():
    """prepare_sleep() / peer_waiting(): the Dekker-style handshake around the eventfd.

    Now and then the producer stops until the consumer has drained the ring, so a
    lost wakeup for the last record before such a stop cannot be papered over by
    the next record's wakeup: the consumer would sleep until its poll() timeout
    with a record published, which it reports as a lost wakeup.
    """
    count, ring_size = 20_000, 4096
    efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    stall_ms = 1000  # far longer than any producer pause

    with shared_region(ring_size) as (mm, _):

        def produce() -> None:
            prod = make_ring(mm, ring_size)
            rng = random.Random(99)
            for seq in range(count):
                payload = payload_of(seq)[:300]
                while not prod.submit(
                    abi.Op.ENDPOINT_SEND, seq, 0, -1, zlib.crc32(payload), payload
                ):
                    # full: the consumer is awake and draining (it only sleeps on empty)
                    os.sched_yield()
                if prod.peer_waiting():
                    os.eventfd_write(efd, 1)
                r = rng.random()
                if r < 0.1:  # wait until drained: only this record's wakeup can do that
                    while _published(mm, abi.OFF_SQ_HEAD) != _published(mm, abi.OFF_SQ_TAIL):
                        os.sched_yield()
                elif r < 0.12:
                    time.sleep(rng.random() * 0.0005)
                elif r < 0.3:
                    for _ in range(rng.randrange(200)):  # short pauses: races on the flag
                        pass

        cons = make_ring(mm, ring_size)
        poller = select.poll()
        poller.register(efd, select.POLLIN)
        sleeps = 0
        try:
            with forked(produce, timeout=30) as wait:
                deadline = time.monotonic() + 30
                seq = 0
                while seq < count:
                    assert time.monotonic() < deadline, f"stalled at record {seq}"
                    h = cons.read()
                    if h is None:
                        if not cons.prepare_sleep():
                            continue  # a record arrived between read() and the flag
                        sleeps += 1
                        events = poller.poll(stall_ms)
                        cons.end_sleep()
                        if events:
                            with contextlib.suppress(BlockingIOError):
                                os.eventfd_read(efd)
                        else:
                            assert not cons.readable(), f"wakeup lost for record {seq}"
                        continue
                    payload = cons.payload(h)
                    assert h.req_id == seq
                    assert zlib.crc32(payload) == h.arg
                    cons.consume(h)
                    seq += 1
                assert wait() == 0
            assert sleeps > 1000, f"the consumer slept only {sleeps} times: protocol not exercised"
        finally:
            cons.close()
            os.close(efd)


@pytest.mark.parametrize("ring_size", [4096, 1 << 20])
def test_consumer_in_another_process_sees_records_exactly_once(ring_size):
    """The parent produces; the forked child consumes and reports a digest through a pipe."""
    count = 5_000
    rfd, wfd = os.pipe()
    with shared_region(ring_size) as (mm, _):

        def consume() -> None:
            cons = make_ring(mm, ring_size)
            crc, seq = 0, 0
            t_end = time.monotonic() + 20
            while seq < count and time.monotonic() < t_end:
                h = cons.read()
                if h is None:
                    cons.spin(1_000_000)
                    continue
                if h.req_id != seq:
                    raise AssertionError(f"record {h.req_id} in place of {seq}")
                crc = zlib.crc32(cons.payload(h), crc)
                cons.consume(h)
                seq += 1
            os.write(wfd, f"{seq} {crc}".encode())

        prod = make_ring(mm, ring_size)
        try:
            with forked(consume, timeout=30) as wait:
                os.close(wfd)
                want = 0
                for seq in range(count):
                    payload = payload_of(seq)[: prod.max_record - abi.HDR_SIZE]
                    want = zlib.crc32(payload, want)
                    while not prod.submit(1, seq, 0, -1, 0, payload):
                        os.sched_yield()
                assert wait() == 0
                got = os.read(rfd, 100).decode()
            assert got == f"{count} {want}"
        finally:
            prod.close()
            os.close(rfd)
