"""How much CPU an idle kernel daemon uses: it should sleep, not poll (DESIGN §3)."""

from __future__ import annotations

import os
import time

import kernel
from kernel.bench.mechanisms.mkipc_call import PrivateKernel


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of `pid` so far (/proc/<pid>/stat, clock ticks)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def idle_cpu_percent(seconds: float = 10.0) -> float:
    """Percent of one core a private daemon uses over `seconds` with one idle client.

    The client first makes the daemon busy (so it has spun up), then goes quiet;
    the measurement starts after the daemon's spin window has surely passed.
    """
    daemon = PrivateKernel()
    try:
        with kernel.connect(daemon.path, autostart=False) as k:
            n = k.notification()
            for _ in range(1000):
                n.signal(1)
                n.poll()
            time.sleep(0.5)
            cpu0, t0 = cpu_seconds(daemon.proc.pid), time.monotonic()
            time.sleep(seconds)
            cpu1, t1 = cpu_seconds(daemon.proc.pid), time.monotonic()
    finally:
        daemon.stop()
    return 100.0 * (cpu1 - cpu0) / (t1 - t0)
