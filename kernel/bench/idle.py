"""How much CPU an idle kernel daemon and its name server use: they should sleep, not
poll (DESIGN §3; issue #5's goal: both together at most 1% of a core over 10 s)."""

from __future__ import annotations

import time

import kernel
from kernel.bench.mechanisms.mkipc_call import PrivateKernel


def cpu_seconds(pid: int) -> float:
    """CPU time of `pid` so far, every thread, in ns precision (/proc/<pid>/schedstat)."""
    with open(f"/proc/{pid}/schedstat", encoding="ascii") as f:
        return int(f.read().split()[0]) / 1e9


def idle_cpu_percent(seconds: float = 10.0) -> float:
    """Percent of one core a private daemon and its name server use over `seconds`
    with one idle client connected.

    The client first makes both busy (so they have spun up), then goes quiet; the
    measurement starts after their spin windows have surely passed.
    """
    daemon = PrivateKernel()
    try:
        with kernel.connect(daemon.path, autostart=False) as k:
            n, ep = k.notification(), k.endpoint()
            k.names.register("idle.probe", ep)
            for _ in range(1000):
                n.signal(1)
                n.poll()
                k.names.lookup("idle.probe").close()
            time.sleep(0.5)
            pids = [daemon.proc.pid, *daemon.children()]  # the kernel and its name server
            cpu0, t0 = sum(map(cpu_seconds, pids)), time.monotonic()
            time.sleep(seconds)
            cpu1, t1 = sum(map(cpu_seconds, pids)), time.monotonic()
    finally:
        daemon.stop()
    return 100.0 * (cpu1 - cpu0) / (t1 - t0)
