"""A direct session next to a call through the kernel (blocking face).

    python examples/session/session.py serve &   # registers "demo.session"
    python examples/session/session.py           # times both paths, then is revoked

The client looks the server up, opens a session (`ep.session()`), and times
round trips over it and through the kernel (`ep.call`). Then it asks the server to
unregister the name with revoke=True: the capability the client got from the name
server is revoked, and so the session ends at once, with no help from the client.
"""

import statistics
import sys
import threading
import time

import kernel

N = 5000


def serve_session(srv: kernel.SessionServer) -> None:
    try:
        while True:
            m = srv.recv()  # m.badge and m.sender are the kernel's, fixed at open
            m.reply(m.data)
    except kernel.IPCError:  # the client closed it, died, or its capability was revoked
        srv.close()


def serve(k: kernel.Kernel) -> None:
    ep = k.endpoint()
    k.names.register("demo.session", ep, mode=0o666)
    while True:
        msg = ep.recv()
        if msg.session_offer:  # a client asks for rings of its own
            srv = ep.accept_session(msg)
            threading.Thread(target=serve_session, args=(srv,), daemon=True).start()
        elif msg.data == b"revoke":
            k.names.unregister("demo.session", revoke=True)
            msg.reply(b"revoked")
            return
        else:
            msg.reply(msg.data)


def p50_us(call: object, payload: bytes) -> float:
    times = []
    for _ in range(N):
        t0 = time.perf_counter_ns()
        call(payload)  # type: ignore[operator]
        times.append(time.perf_counter_ns() - t0)
    return statistics.median(times) / 1000


def client(k: kernel.Kernel) -> None:
    ep = k.names.lookup("demo.session", timeout=10.0)
    ping = b"x" * 64
    with ep.session(timeout=10.0) as s:
        kernel_us, session_us = p50_us(ep.call, ping), p50_us(s.call, ping)
        print(f"{N} calls of 64 B, p50: through the kernel {kernel_us:.1f} us, "
              f"over the session {session_us:.1f} us")  # fmt: skip
        ep.call(b"revoke", timeout=5.0)
        try:
            s.call(ping, timeout=5.0)
        except kernel.InvalidCapabilityError as e:
            print(f"after the revoke: {e}")


with kernel.connect() as k:
    serve(k) if sys.argv[1:] == ["serve"] else client(k)
