"""`mkipc demo`: start (or reuse) a kernel, spawn an echo server, call it, show latency.

The os.pipe ping-pong beside it runs in the same process, same payload, same
moment, so the ratio means something on a noisy machine.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

import kernel

CALLS = 5000
WARMUP = 500
PAYLOAD = b"x" * 64


def serve() -> None:
    with kernel.connect() as k:
        ep = k.inherited["echo"]
        assert isinstance(ep, kernel.EndpointCap)
        msg = ep.recv()
        while True:
            msg = ep.reply_recv(msg, msg.data)


def percentiles(samples: list[int]) -> tuple[float, float]:
    s = sorted(samples)
    return s[len(s) // 2] / 1000, s[min(len(s) - 1, int(len(s) * 0.99))] / 1000


def time_calls(ep: kernel.EndpointCap) -> list[int]:
    for _ in range(WARMUP):
        ep.call(PAYLOAD, timeout=5.0)
    out = []
    for _ in range(CALLS):
        t0 = time.perf_counter_ns()
        ep.call(PAYLOAD, timeout=5.0)
        out.append(time.perf_counter_ns() - t0)
    return out


def time_pipe() -> list[int]:
    """Round trips through two os.pipe()s to a forked echo child."""
    from_parent, to_child = os.pipe()  # os.pipe() returns (read end, write end)
    from_child, to_parent = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child echoes until EOF, then exits at once
        os.close(to_child)
        os.close(from_child)
        while data := os.read(from_parent, 65536):
            os.write(to_parent, data)
        os._exit(0)
    os.close(from_parent)
    os.close(to_parent)
    out = []
    try:
        for i in range(WARMUP + CALLS):
            t0 = time.perf_counter_ns()
            os.write(to_child, PAYLOAD)
            got = os.read(from_child, 65536)
            while len(got) < len(PAYLOAD):
                got += os.read(from_child, 65536)
            if i >= WARMUP:
                out.append(time.perf_counter_ns() - t0)
    finally:
        os.close(to_child)
        os.close(from_child)
        os.waitpid(pid, 0)
    return out


def main() -> int:
    if sys.argv[1:2] == ["serve"]:
        serve()
        return 0
    with kernel.connect() as k:
        print(f"mkipc demo: connected to the kernel at {k.socket_path} as pid {k.pid}")
        ep = k.endpoint()
        # cwd: a source checkout in the caller's cwd must not shadow the installed package
        server = k.spawn(
            [sys.executable, "-m", "kernel.demo", "serve"],
            caps={"echo": ep},
            cwd=tempfile.gettempdir(),
        )
        try:
            reply = ep.call(b"hello, kernel", timeout=10.0)
            print(f"echo server pid {reply.sender.pid} answered {reply.data!r}")
            mk = time_calls(ep)
        finally:  # never leave the echo server (and so the kernel) running
            server.kill()
            server.wait(timeout=10.0)
    pipe = time_pipe()  # after disconnecting, so the forked child holds no kernel socket
    (mk50, mk99), (p50, p99) = percentiles(mk), percentiles(pipe)
    print(f"\n{CALLS} round trips of {len(PAYLOAD)} bytes (after {WARMUP} warm-up), unpinned:")
    print(f"  {'mechanism':<22}{'p50 µs':>9}{'p99 µs':>9}{'p50 vs pipe':>13}")
    print(f"  {'mkipc call/reply':<22}{mk50:>9.1f}{mk99:>9.1f}{mk50 / p50:>12.2f}x")
    print(f"  {'os.pipe ping-pong':<22}{p50:>9.1f}{p99:>9.1f}{1.0:>12.2f}x")
    print("\nFor a researcher's full table: mkipc bench --quick")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
