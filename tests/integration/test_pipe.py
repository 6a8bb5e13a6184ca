"""Pipes: a byte stream with a read end and a write end, EOF and EPIPE (DESIGN §4)."""

from __future__ import annotations

import asyncio
import sys
import threading
import time

import pytest
from peerlib import PEERS, spawned
from peers.pipe_peer import pattern

import kernel
from kernel import Rights, abi
from kernel.abi import Op

pytestmark = pytest.mark.integration


def read_to_eof(r: kernel.PipeReaderCap) -> bytes:
    out = bytearray()
    while chunk := r.read(timeout=10):
        out += chunk
    return bytes(out)


def test_a_stream_from_another_process_arrives_whole_and_ends_with_eof(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        r, w = k.pipe()
        with spawned(k, "pipe_peer.py", "write", "1000000", w=w) as writer:
            w.close()  # the child's copy is the last writer: its exit is EOF
            assert read_to_eof(r) == pattern(1_000_000)
            assert writer.wait(timeout=10) == 0
        assert r.read_nowait() == b""  # EOF stays EOF


def test_buffered_bytes_are_read_before_the_eof_of_a_writer_that_died(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        r, w = k.pipe()
        proc = k.spawn(
            [sys.executable, str(PEERS / "pipe_peer.py"), "linger", "last"], caps={"w": w}
        )
        w.close()
        try:
            assert r.read(timeout=10) == b"last"
            with pytest.raises(kernel.WouldBlock):
                r.read_nowait()  # the writer lives: empty is not EOF
        finally:
            proc.kill()
            proc.wait(timeout=10)
        assert r.read(timeout=10) == b""


def test_a_write_with_no_reader_left_is_a_broken_pipe(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        r, w = k.pipe(abi.PIPE_BUF)
        w.write(bytes(abi.PIPE_BUF))  # full
        errors: list[BaseException] = []

        def blocked_writer() -> None:
            try:
                w.write(b"more", timeout=10)
            except kernel.IPCError as e:
                errors.append(e)

        t = threading.Thread(target=blocked_writer)
        t.start()
        time.sleep(0.1)
        r.close()  # the last reader goes: the waiting write fails at once
        t.join(10)
        assert isinstance(errors[0], kernel.PipeClosedError)
        assert isinstance(errors[0], BrokenPipeError)
        with pytest.raises(BrokenPipeError, match="no read end is left"):
            w.write(b"again")


def test_a_reader_in_another_process_sees_every_byte(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        r, w = k.pipe()
        back = k.endpoint()
        with spawned(k, "pipe_peer.py", "drain", r=r, back=back) as reader:
            r.close()
            assert w.write(bytes(300_000), timeout=10) == 300_000  # more than one record
            w.close()  # EOF for the reader
            assert back.recv(timeout=10).data == b"300000"
            assert reader.wait(timeout=10) == 0


def test_small_writes_are_atomic_and_a_long_one_may_be_short_on_timeout(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        r, w = k.pipe(abi.PIPE_BUF)
        assert w.write(bytes(4000)) == 4000
        with pytest.raises(kernel.CallTimeoutError, match="no room"):
            w.write(b"x" * 200, timeout=0.05)  # atomic: all or nothing
        with pytest.raises(kernel.WouldBlock):
            w.write_nowait(b"x" * 200)
        assert w.write(b"y" * 5000, timeout=0.05) == 96  # fills what is left, then times out
        assert r.read(10_000) == bytes(4000) + b"y" * 96
        with pytest.raises(kernel.CallTimeoutError, match="no data arrived"):
            r.read(timeout=0.05)


def test_ends_rights_and_sizes_are_checked(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        r, w = k.pipe()
        assert (r.info().kind, w.info().kind) == ("pipe read end", "pipe write end")
        with pytest.raises(kernel.InvalidCapabilityError, match="not a pipe write end"):
            k._roundtrip(Op.PIPE_WRITE, r, "write", payload=b"x")
        with pytest.raises(kernel.AccessDeniedError, match="lacks the WRITE right"):
            w.copy(Rights.COPY).write(b"x")
        with pytest.raises(kernel.AccessDeniedError, match="lacks the READ right"):
            r.copy(Rights.COPY).read_nowait()
        for size in (0, abi.MAX_PAYLOAD + 1):
            with pytest.raises(ValueError, match="max_size must be"):
                r.read(size)
        with pytest.raises(kernel.InvalidArgumentError, match="max_size must be 1 to"):
            k._roundtrip(Op.PIPE_READ, r, "read", arg=0)  # the kernel checks too
        for capacity in (abi.PIPE_BUF - 1, abi.MAX_PIPE_CAPACITY + 1):
            with pytest.raises(ValueError, match="capacity must be"):
                k.pipe(capacity)
        with pytest.raises(kernel.InvalidArgumentError, match="capacity must be 4096 to"):
            k._roundtrip(Op.PIPE_CREATE, None, "create", arg=1)
        with pytest.raises(TypeError, match="bytes-like"):
            w.write("text")  # type: ignore[arg-type]


def test_pipes_and_queues_share_the_reserved_bytes_quota(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        n = abi.MAX_RESERVED_BYTES // abi.MAX_PIPE_CAPACITY
        pipes = [k.pipe(abi.MAX_PIPE_CAPACITY) for _ in range(n)]
        with pytest.raises(kernel.ResourceLimitError, match="of queue and pipe buffers"):
            k.queue(max_bytes=1)
        r, w = pipes.pop()
        r.close()
        with pytest.raises(kernel.ResourceLimitError):  # the write end holds the pipe
            k.queue(max_bytes=1)
        w.close()
        k.queue(max_bytes=1).close()  # both ends gone: its reservation came back


def test_a_named_pipe_through_the_name_server(kernel_daemon):
    with kernel.connect(autostart=False) as owner, kernel.connect(autostart=False) as client:
        r, w = owner.pipe()
        owner.names.register("test.fifo", w, mode=0o666)
        w.close()  # the name server's copy keeps the write end
        theirs = client.names.lookup("test.fifo", kind=kernel.PipeWriterCap)
        assert theirs.info().rights == Rights.WRITE | Rights.COPY | Rights.TRANSFER
        theirs.write(b"through a name")
        assert r.read(timeout=5) == b"through a name"


def test_bytes_taken_by_a_withdrawn_read_come_first_in_the_next(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        r, w = k.pipe()
        w.write(b"first ")
        conn = k._conn
        req = conn.submit(Op.PIPE_READ, r.slot, -1, 3, b"", ())
        conn.cancel(req, r.slot)
        w.write(b"second")  # a round trip: the orphaned read's bytes are stashed
        assert bytes(conn.pipe_stash[r.slot]) == b"fir"
        assert r.read(2) == b"fi"
        assert r.read() == b"r"
        assert r.read() == b"st second"


async def test_the_asyncio_face_and_a_cancelled_read_that_takes_nothing(kernel_daemon):
    async with kernel.connect_async(autostart=False) as k:
        r, w = await k.pipe()
        assert isinstance(r, kernel.AsyncPipeReaderCap)
        waiting = asyncio.ensure_future(r.read())
        await asyncio.sleep(0.05)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await asyncio.sleep(0.05)
        writing = asyncio.ensure_future(w.write(bytes(range(256)) * 1100, timeout=10))
        got = bytearray()
        while len(got) < 281_600:  # more than the pipe holds and than one record carries
            got += await r.read(timeout=5)
        assert bytes(got) == bytes(range(256)) * 1100  # the withdrawn read took nothing
        assert await writing == 281_600
        await w.close()
        assert await r.read(timeout=5) == b""
