"""A pipe end as a file object (`makefile`): lines, buffering, EOF on close."""

from __future__ import annotations

import asyncio
import io
import sys

import pytest
from peerlib import PEERS, spawned
from peers.pipe_peer import pattern

import kernel

pytestmark = pytest.mark.integration


def test_lines_printed_in_another_process_are_read_line_by_line_to_eof(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        r, w = k.pipe()
        with spawned(k, "pipe_peer.py", "lines", "5000", w=w) as writer:
            w.close()  # the child's file holds the last write end
            with r.makefile("r", timeout=20) as lines:
                got = list(lines)
            assert writer.wait(timeout=10) == 0
        assert got == [f"line {i}: {'x' * (i % 50)}\n" for i in range(5000)]


def test_binary_read_takes_a_whole_stream_to_eof(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        r, w = k.pipe()
        with spawned(k, "pipe_peer.py", "write", "1000000", w=w) as writer:
            w.close()
            with r.makefile("rb", timeout=20) as f:
                assert f.read() == pattern(1_000_000)
            assert writer.wait(timeout=10) == 0


def test_writes_wait_in_the_buffer_until_it_fills_a_flush_or_a_newline(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        r, w = k.pipe()
        f = w.makefile("w", closefd=False)
        f.write("gathered ")
        with pytest.raises(kernel.WouldBlock):
            r.read_nowait()  # nothing has reached the pipe yet
        f.flush()
        assert r.read_nowait() == b"gathered "
        big = io.DEFAULT_BUFFER_SIZE + 1
        f.write("x" * big)  # past the buffer: written through at once
        got = len(r.read(1 << 16, timeout=5))
        assert got >= io.DEFAULT_BUFFER_SIZE
        f.close()  # sends whatever was left
        while got < big:
            got += len(r.read(1 << 16, timeout=5))
        assert got == big
        lined = w.makefile("w", buffering=1, closefd=False)
        lined.write("one line\n")  # line-buffered: sent at the newline
        assert r.read(timeout=5) == b"one line\n"
        lined.close()
        w.write(b"still open")  # closefd=False left the capability open
        assert r.read(timeout=5) == b"still open"


def test_closing_the_file_closes_the_end_and_gives_readers_eof(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        r, w = k.pipe()
        with w.makefile("wb") as f:
            f.write(b"last words")
        with pytest.raises(kernel.InvalidCapabilityError):
            w.write(b"more")  # the file closed it
        assert r.read(timeout=5) == b"last words"
        assert r.read(timeout=5) == b""  # EOF
        f.close()  # closing twice is fine


def test_a_read_past_its_timeout_raises_and_the_modes_are_checked(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        r, w = k.pipe()
        with r.makefile("rb", timeout=0.1, closefd=False) as f:
            with pytest.raises(kernel.CallTimeoutError):
                f.read(1)
        for end, mode in ((r, "w"), (r, "wb"), (w, "r"), (r, "rt"), (r, "rbb"), (w, "a")):
            with pytest.raises(ValueError, match="opens with mode"):
                end.makefile(mode)  # type: ignore[call-overload]
        with pytest.raises(ValueError, match="buffering"):
            r.makefile("rb", 0)
        with pytest.raises(ValueError, match="buffering"):
            r.makefile("rb", 1)
        with pytest.raises(ValueError, match="text mode only"):
            w.makefile("wb", encoding="utf-8")  # type: ignore[call-overload]
        text = w.makefile("w", encoding="latin-1", closefd=False)
        text.write("é")
        text.flush()
        assert r.read(timeout=5) == "é".encode("latin-1")
        text.close()
        assert not r.makefile("r", closefd=False).writable()


# ------------------------------------------------------------------ the asyncio face


async def test_async_lines_from_another_process_to_eof(kernel_daemon):
    async with kernel.connect_async(autostart=False) as k:
        r, w = await k.pipe()
        writer = await k.spawn(
            [sys.executable, str(PEERS / "pipe_peer.py"), "lines", "3000"], caps={"w": w}
        )
        await w.close()  # the child's file holds the last write end
        got = [line async for line in r]
        assert await writer.wait(timeout=20) == 0
        assert got == [f"line {i}: {'x' * (i % 50)}\n".encode() for i in range(3000)]


async def test_async_readuntil_and_readexactly_keep_what_follows(kernel_daemon):
    async with kernel.connect_async(autostart=False) as k:
        r, w = await k.pipe()
        await w.write(b"key=value;rest")
        assert await r.readuntil(b"=") == b"key="
        assert await r.readexactly(6) == b"value;"
        assert await r.read() == b"rest"  # the rest stayed in front of the stream
        await w.write(b"ab")
        await w.close()
        with pytest.raises(asyncio.IncompleteReadError) as e:
            await r.readexactly(5)
        assert e.value.partial == b"ab"
        assert await r.readline() == b""  # EOF
        with pytest.raises(ValueError):
            await r.readexactly(-1)
        with pytest.raises(ValueError):
            await r.readuntil(b"")


async def test_async_reads_that_fail_or_are_cancelled_lose_nothing(kernel_daemon):
    async with kernel.connect_async(autostart=False) as k:
        r, w = await k.pipe()
        await w.write(b"no newline yet")
        with pytest.raises(kernel.CallTimeoutError):
            await r.readline(timeout=0.1)
        waiting = asyncio.ensure_future(r.readuntil(b"!"))
        await asyncio.sleep(0.1)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await w.write(b"x" * 100)
        with pytest.raises(asyncio.LimitOverrunError):
            await r.readuntil(b"!", limit=50)
        await w.write(b"!")
        assert await r.readuntil(b"!") == b"no newline yet" + b"x" * 100 + b"!"
