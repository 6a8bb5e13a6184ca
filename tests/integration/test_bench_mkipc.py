"""The mkipc rows of `mkipc bench` run end to end (counts only; no timing asserted)."""

import pytest

from kernel.bench.idle import idle_cpu_percent
from kernel.bench.mechanisms.mkipc_async import MkipcAsyncCall
from kernel.bench.mechanisms.mkipc_call import (
    MkipcCall,
    MkipcCallBadged,
    MkipcCallWithCap,
    MkipcNotify,
)
from kernel.bench.mechanisms.mkipc_names import MkipcLookup, MkipcRegister
from kernel.bench.mechanisms.mkipc_service import MkipcService, MkipcService4
from kernel.bench.mechanisms.mkipc_session import MkipcSessionAsyncCall, MkipcSessionCall
from kernel.bench.runner import BenchConfig, run_bench

pytestmark = pytest.mark.integration


def test_mkipc_rows_run_every_round_trip():
    config = BenchConfig(runs=2, roundtrips=200, warmup=20, max_seconds=60.0)
    mechanisms = [
        MkipcCall(),
        MkipcCallBadged(),
        MkipcCallWithCap(),
        MkipcNotify(),
        MkipcLookup(),
        MkipcRegister(),
        MkipcAsyncCall(),
        MkipcService(),
        MkipcService4(),
        MkipcSessionCall(),
        MkipcSessionAsyncCall(),
    ]
    result = run_bench(mechanisms, config)
    names = ("mkipc.call", "mkipc.call.badged", "mkipc.call+cap", "mkipc.notify")
    more = ("mkipc.names.lookup", "mkipc.names.register", "mkipc.call.async")
    services = ("mkipc.service", "mkipc.service.4workers", "mkipc.session.call")
    services += ("mkipc.session.async",)
    for name in (*names, *more, *services):
        cell = result.cell(name, 64)
        assert cell.note is None or cell.note == "", cell.note
        assert cell.count == 400
        assert all(r.cpu_peers_ns > 0 for r in cell.runs)  # the daemon's CPU is counted
        for run in cell.runs:  # where the peers (the daemon among them) ran is recorded
            assert run.peer_cpus, name
            assert all(cpu >= 0 and moves >= 0 for cpu, moves in run.peer_cpus.values())


def test_payload_above_the_maximum_is_a_skipped_row_not_a_failure():
    config = BenchConfig(payload_sizes=(512 * 1024,), runs=1, roundtrips=10, warmup=0)
    result = run_bench([MkipcCall(), MkipcSessionCall()], config)
    for name in ("mkipc.call", "mkipc.session.call"):
        cell = result.cell(name, 512 * 1024)
        assert cell.count == 0
        assert "at most" in (cell.note or "")


def test_a_session_call_echoes_every_payload_size_up_to_the_maximum():
    from kernel import MAX_PAYLOAD
    from kernel.bench.report import format_table

    config = BenchConfig(payload_sizes=(1, MAX_PAYLOAD), runs=1, roundtrips=30, warmup=2)
    mechanism = MkipcSessionCall()
    result = run_bench([mechanism], config)
    for size in config.payload_sizes:
        cell = result.cell("mkipc.session.call", size)
        assert cell.note is None, cell.note
        assert cell.count == 30
    assert mechanism.peer_pids() == []  # torn down: kernel and server ended
    assert "mkipc.session.call" in format_table(result)


def test_an_idle_kernel_sleeps_instead_of_polling():
    # Regression: the pump restarted its idle clock every 200 µs slice, so a daemon
    # that had been busy once polled at 100% of a core forever. A sleeping daemon
    # uses ~0%; 10% leaves room for clock-tick rounding over one second.
    assert idle_cpu_percent(1.0) < 10.0


def test_paced_runs_idle_between_round_trips_and_say_so():
    from kernel.bench.mechanisms.os_pipe import OsPipe
    from kernel.bench.report import format_table

    config = BenchConfig(runs=1, roundtrips=20, warmup=2, max_seconds=60.0, pace_s=0.01)
    result = run_bench([OsPipe(), MkipcCall()], config)
    for name in ("os.pipe", "mkipc.call"):
        cell = result.cell(name, 64)
        assert cell.count == 20, cell.note
        assert cell.runs[0].wall_ns >= 20 * 10_000_000  # the idle time really passed
    assert "paced: 10 ms idle between round trips" in format_table(result)
    with pytest.raises(ValueError, match="pace_s"):
        BenchConfig(pace_s=2.0)


def test_the_memory_object_row_carries_every_payload_size_and_ends_cleanly():
    from kernel.bench.mechanisms.mkipc_memory import MkipcMemory

    config = BenchConfig(payload_sizes=(64, 1024 * 1024), runs=1, roundtrips=30, warmup=2)
    mechanism = MkipcMemory()
    result = run_bench([mechanism], config)
    for size in config.payload_sizes:  # 1 MiB too: past MAX_PAYLOAD, as bulk data goes
        cell = result.cell("mkipc.memory", size)
        assert cell.note is None, cell.note
        assert cell.count == 30
    assert mechanism.peer_pids() == []


def test_the_queue_pipe_and_semaphore_rows_run_every_round_trip():
    from kernel.bench.mechanisms.mkipc_objects import MkipcPipe, MkipcQueue, MkipcSemaphore

    config = BenchConfig(payload_sizes=(64, 300_000), runs=1, roundtrips=50, warmup=5)
    mechanisms = [MkipcQueue(), MkipcPipe(), MkipcSemaphore()]
    result = run_bench(mechanisms, config)
    for name in ("mkipc.queue", "mkipc.pipe", "mkipc.semaphore"):
        cell = result.cell(name, 64)
        assert cell.note is None, cell.note
        assert cell.count == 50
    assert result.cell("mkipc.pipe", 300_000).count == 50  # a stream: any size
    assert "at most" in (result.cell("mkipc.queue", 300_000).note or "")
    assert all(m.peer_pids() == [] for m in mechanisms)


def test_a_private_kernel_ends_by_itself_when_its_benchmark_is_killed(tmp_path):
    """SIGKILL runs no teardown: the daemon must not outlive its benchmark for good."""
    import os
    import signal
    import subprocess
    import sys
    import time

    script = (
        "import sys, time\n"
        "from kernel.bench.mechanisms.mkipc_call import PrivateKernel\n"
        "PrivateKernel.IDLE_EXIT_S = 1.0\n"
        "pk = PrivateKernel()\n"
        "print(pk.proc.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    with subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True
    ) as bench:
        try:
            assert bench.stdout is not None
            daemon = int(bench.stdout.readline())
        finally:
            bench.kill()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{daemon}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    break  # it exited; init has yet to reap it
        except FileNotFoundError:
            break  # exited and reaped
        time.sleep(0.1)
    else:
        os.kill(daemon, signal.SIGKILL)
        raise AssertionError("the orphaned kernel daemon was still running after 15 s")
