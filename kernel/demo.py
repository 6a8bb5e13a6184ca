"""`mkipc demo`: start (or reuse) a kernel, spawn an echo server, call it, show latency.

It calls the server two ways: through the kernel (`ep.call`) and over a direct
session (`ep.session()`: rings shared with the server alone, the kernel checks the
rights once). The os.pipe ping-pong beside them runs in the same process, same
payload, same moment, so the ratios mean something on a noisy machine.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable

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
            if msg.session_offer:  # the client wants a direct session: serve it aside
                srv = ep.accept_session(msg)
                threading.Thread(target=echo_session, args=(srv,), daemon=True).start()
                msg = ep.recv()
            else:
                msg = ep.reply_recv(msg, msg.data)


def echo_session(srv: kernel.SessionServer) -> None:
    with srv:
        try:
            while True:
                m = srv.recv()
                m.reply(m.data)
        except kernel.IPCError:  # the client closed it
            pass


def percentiles(samples: list[int]) -> tuple[float, float]:
    s = sorted(samples)
    return s[len(s) // 2] / 1000, s[min(len(s) - 1, int(len(s) * 0.99))] / 1000


def time_calls(call: Callable[..., object]) -> list[int]:
    for _ in range(WARMUP):
        call(PAYLOAD, timeout=5.0)
    out = []
    for _ in range(CALLS):
        t0 = time.perf_counter_ns()
        call(PAYLOAD, timeout=5.0)
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
            mk = time_calls(ep.call)
            with ep.session(timeout=10.0) as session:
                sess = time_calls(session.call)
        finally:  # never leave the echo server (and so the kernel) running
            server.kill()
            server.wait(timeout=10.0)
    pipe = time_pipe()  # after disconnecting, so the forked child holds no kernel socket
    p50 = percentiles(pipe)[0]
    print(f"\n{CALLS} round trips of {len(PAYLOAD)} bytes (after {WARMUP} warm-up), unpinned:")
    print(f"  {'mechanism':<26}{'p50 µs':>9}{'p99 µs':>9}{'p50 vs pipe':>13}")
    for name, samples in (
        ("mkipc session call", sess),
        ("mkipc call/reply", mk),
        ("os.pipe ping-pong", pipe),
    ):
        m50, m99 = percentiles(samples)
        print(f"  {name:<26}{m50:>9.1f}{m99:>9.1f}{m50 / p50:>12.2f}x")
    print("\nFor a researcher's full table: mkipc bench --quick")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
