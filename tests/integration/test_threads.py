"""The blocking face is thread-safe: many threads share one connection."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
from peerlib import spawned

import kernel

pytestmark = pytest.mark.integration


def run_threads(target: Callable[[int], object], count: int, timeout: float = 60) -> list:
    """Run target(0..count-1) in threads; return their results, re-raise their errors."""
    results: list = [None] * count
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            results[i] = target(i)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    if errors:
        raise errors[0]
    return results


def test_eight_threads_calling_through_one_connection_each_get_their_own_replies(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        ep = k.endpoint()
        with spawned(k, "echo_server.py", "tag", "srv", ep=ep):

            def caller(t: int) -> int:
                for i in range(300):
                    payload = b"thread %d call %d" % (t, i)
                    reply = ep.call(payload, timeout=20).data
                    assert reply == payload + b"|srv", (payload, reply)
                return 300

            assert run_threads(caller, 8) == [300] * 8


def test_threads_receiving_on_one_connection_share_the_messages(kernel_daemon):
    total, receivers = 400, 4
    with kernel.connect(autostart=False) as k:
        ep = k.endpoint()
        with spawned(k, "actor.py", "sendmany", "0", str(total), ep=ep) as sender:

            def receiver(_: int) -> list[bytes]:
                got = []
                while (data := ep.recv(timeout=20).data) != b"stop":
                    got.append(data)
                return got

            def stop_after_the_sender() -> None:
                assert sender.wait(timeout=30) == 0
                for _ in range(receivers):
                    ep.send(b"stop", timeout=10)

            stopper = threading.Thread(target=stop_after_the_sender, daemon=True)
            stopper.start()
            per_thread = run_threads(receiver, receivers)
            stopper.join(10)
    everything = [m for got in per_thread for m in got]
    assert sorted(everything, key=int) == [b"%d" % i for i in range(total)]


def test_a_thread_blocked_in_wait_does_not_hold_up_calls_from_other_threads(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        ep, n = k.endpoint(), k.notification()
        with spawned(k, "echo_server.py", "upper", ep=ep):
            ep.call(b"warm up", timeout=10)
            waited: list[int] = []
            waiter = threading.Thread(target=lambda: waited.append(n.wait(timeout=20)))
            waiter.start()
            time.sleep(0.1)  # the waiter is blocked (and may be the connection's poller)
            t0 = time.monotonic()
            for i in range(200):
                assert ep.call(b"x%d" % i, timeout=10).data == b"X%d" % i
            assert time.monotonic() - t0 < 3.0
            assert waiter.is_alive()
            n.signal(7)
            waiter.join(5)
            assert waited == [7]


CLOSE_RACE = """
import sys, threading, time
import kernel

errors = []
for round in range(int(sys.argv[1])):
    k = kernel.connect(autostart=False)
    eps = [k.endpoint() for _ in range(4)]
    started = threading.Barrier(5)

    def receive(ep):
        started.wait()
        try:
            while True:
                ep.recv(timeout=0.0005 * (round % 3))  # spinning, sleeping and forever
        except kernel.PeerClosedError:
            pass
        except kernel.CallTimeoutError:
            pass
        except BaseException as e:
            errors.append(repr(e))

    threads = [threading.Thread(target=receive, args=(ep,)) for ep in eps]
    for t in threads:
        t.start()
    started.wait()
    time.sleep(0.001 * (round % 4))
    k.close()
    for t in threads:
        t.join(10)
        assert not t.is_alive(), "a thread still waits on a closed connection"
print("errors", errors)
sys.exit(1 if errors else 0)
"""


def test_closing_a_connection_while_threads_poll_it_never_crashes(kernel_daemon):
    # Regression: close() unmapped the rings while another thread spun on them, which
    # could crash the process (a read of unmapped memory). Run in a child: a crash
    # must fail this test, not end the test run.
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", CLOSE_RACE, "40"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, (done.returncode, done.stdout, done.stderr[-3000:])
