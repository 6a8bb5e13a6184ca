"""Signals in a server's receive loop: a notification bound to its endpoint.

    python examples/signals/signals.py

A blocking server cannot wait on two objects at once, so the classic answer is a
signal handler that interrupts it. Here the server binds a notification to its
endpoint (seL4's bound notification): one `recv()` returns either a call or the
signal word, and the loop dispatches both. The parent calls, signals RELOAD
(the server changes its greeting), calls again, then signals STOP.
"""

import sys

import kernel

RELOAD, STOP = 1 << 0, 1 << 1  # the bits the parent may signal


def server() -> None:
    with kernel.connect() as k:
        ep, signals = k.inherited["ep"], k.inherited["signals"]
        ep.bind(signals)  # needs RECEIVE here and WAIT on the notification
        greeting, served = "hello", 0
        while True:
            msg = ep.recv(timeout=10.0)
            if msg.is_signal:  # the word, taken and cleared, is in the badge
                if msg.badge & RELOAD:
                    greeting = "bonjour"
                if msg.badge & STOP:
                    print(f"stopped after {served} calls", flush=True)
                    return
                continue
            served += 1
            msg.reply(f"{greeting}, {served}".encode())


def parent() -> None:
    with kernel.connect() as k:  # starts a private kernel if none runs
        ep, n = k.endpoint(), k.notification()
        proc = k.spawn([sys.executable, __file__, "server"], caps={"ep": ep, "signals": n})
        print(ep.call(b"hi", timeout=10.0).data.decode(), flush=True)
        print(ep.call(b"hi", timeout=10.0).data.decode(), flush=True)
        n.signal(RELOAD)
        print(ep.call(b"hi", timeout=10.0).data.decode(), flush=True)
        n.signal(STOP)
        sys.exit(proc.wait(timeout=10.0))


if __name__ == "__main__":
    server() if sys.argv[1:] == ["server"] else parent()
