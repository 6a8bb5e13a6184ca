"""Run mechanisms × payload sizes and collect every round trip, with CPU time and environment.

Method (why each step):
- Every mechanism of a payload size is set up at once and warmed up, then the R timed runs are
  interleaved (run 1 of every mechanism, then run 2, ...), so slow drift of the machine (thermal,
  frequency, neighbours) spreads over all mechanisms instead of biasing whichever ran last.
- Each round trip is timed alone with time.perf_counter_ns(); the samples keep full precision.
- CPU time is read around each run, for this process (CLOCK_PROCESS_CPUTIME_ID, so it includes
  the timing loop itself) and for every peer pid (/proc), giving CPU µs per round trip.
- A global time bound ends the benchmark cleanly between two round trips; a per-run watchdog
  aborts a mechanism whose peer stopped answering, so no wait is unbounded.
"""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import threading
import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Literal, get_args

from kernel.bench.mechanisms import Mechanism
from kernel.bench.stats import LatencySamples

__all__ = [
    "PLACEMENTS",
    "BenchConfig",
    "BenchResult",
    "Cell",
    "Placement",
    "RunRecord",
    "capture_environment",
    "run_bench",
]

Placement = Literal["unpinned", "same-core", "cross-core"]
PLACEMENTS: tuple[str, ...] = get_args(Placement)
ProgressFn = Callable[[str], None]

_MIN_BURSTS = 10  # a throughput run times at least this many bursts
_PEER_LIFETIME_MARGIN_S = 120.0  # peers outlive the time bound by this much, then end themselves
_ENV_PACKAGES = (
    "mkipc", "msgspec", "uvloop", "posix_ipc", "sysv_ipc", "matplotlib",
    "pyzmq", "Pyro5", "serpent", "grpcio", "iceoryx2",
)  # fmt: skip
_SOURCE_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class BenchConfig:
    """What to run; the defaults are a full run, ``cli --quick`` shrinks them."""

    payload_sizes: tuple[int, ...] = (64,)
    runs: int = 5
    roundtrips: int = 10_000  # per run
    warmup: int = 1_000  # untimed round trips per mechanism and payload, before run 1
    max_seconds: float = 600.0  # global time bound
    placement: Placement = "unpinned"
    # Seconds of idleness between round trips (untimed): 0.01 is issue #5's "one call per
    # 10 ms", where every round trip starts with all processes asleep and cache-cold.
    pace_s: float = 0.0
    # A run may take this much longer than its warm-up predicts before the watchdog aborts it.
    stall_seconds: float = 10.0

    def __post_init__(self) -> None:
        if not self.payload_sizes or min(self.payload_sizes) < 1:
            raise ValueError("`payload_sizes` must be one or more sizes of at least 1 byte")
        if self.runs < 1 or self.roundtrips < 1 or self.warmup < 0:
            raise ValueError("`runs` and `roundtrips` must be >= 1 and `warmup` >= 0")
        if self.max_seconds <= 0 or self.stall_seconds <= 0:
            raise ValueError("`max_seconds` and `stall_seconds` must be positive")
        if not 0.0 <= self.pace_s <= 1.0:
            raise ValueError("`pace_s` must be between 0 and 1 second")
        if self.placement not in PLACEMENTS:
            raise ValueError(f"`placement` must be one of {', '.join(PLACEMENTS)}")


@dataclass
class RunRecord:
    """One timed run of one mechanism at one payload size."""

    index: int  # 0-based; the same index across mechanisms means "interleaved together"
    samples: LatencySamples
    wall_ns: int
    cpu_self_ns: int
    cpu_peers_ns: int | None  # None when the peers' CPU time could not be read
    # Where each peer (echo server, kernel daemon, name server) ran: pid -> (the CPU it
    # was last on when the run ended, how often the scheduler moved it during the run).
    peer_cpus: dict[int, tuple[int, int]] = field(default_factory=dict)


@dataclass
class Cell:
    """Everything measured for one (mechanism, payload size)."""

    mechanism: str
    payload_size: int
    runs: list[RunRecord] = field(default_factory=list)
    note: str | None = None  # why the cell has no data or less than asked for
    batch: int = 1  # messages per sample: >1 is a one-way throughput row (Mechanism.batch)

    @property
    def count(self) -> int:
        return sum(len(run.samples) for run in self.runs)

    def merged(self) -> LatencySamples:
        merged = LatencySamples()
        for run in self.runs:
            merged = merged.merge(run.samples)
        return merged

    def cpu_us_per_op(self) -> tuple[float | None, float | None]:
        """(this process, all peers) CPU microseconds per round trip over all runs."""
        count = self.count
        if not count:
            return None, None
        own = sum(run.cpu_self_ns for run in self.runs) / count / 1e3
        peer_ns = [run.cpu_peers_ns for run in self.runs]
        peers = None if None in peer_ns else sum(n or 0 for n in peer_ns) / count / 1e3
        return own, peers


@dataclass
class BenchResult:
    config: BenchConfig
    environment: dict[str, object]
    placement: dict[str, object]
    cells: list[Cell]
    stop_reason: str | None  # set when the time bound or Ctrl-C ended the benchmark early
    elapsed_s: float

    def cell(self, mechanism: str, payload_size: int) -> Cell | None:
        for cell in self.cells:
            if (cell.mechanism, cell.payload_size) == (mechanism, payload_size):
                return cell
        return None


def run_bench(
    mechanisms: Sequence[Mechanism], config: BenchConfig, *, progress: ProgressFn | None = None
) -> BenchResult:
    """Measure ``mechanisms`` as ``config`` says; always tears every peer down before returning.

    Raises:
        ValueError: duplicate mechanism names, or a placement this machine cannot do.
    """
    names = [mechanism.name for mechanism in mechanisms]
    if len(set(names)) != len(names):
        raise ValueError(f"mechanism names must be unique, got {names}")
    pinning = _Pinning.plan(config.placement)
    environment = capture_environment()
    session = _Session(config, pinning, progress or (lambda line: None))
    try:
        for size in config.payload_sizes:
            session.run_payload(mechanisms, size)
    except KeyboardInterrupt:
        session.stop_reason = "interrupted (Ctrl-C)"
    finally:
        pinning.restore()
    return BenchResult(
        config=config,
        environment=environment,
        placement=pinning.describe(),
        cells=session.cells,
        stop_reason=session.stop_reason,
        elapsed_s=(time.perf_counter_ns() - session.started_ns) / 1e9,
    )


class _Session:
    """The state of one run_bench call."""

    def __init__(self, config: BenchConfig, pinning: _Pinning, progress: ProgressFn) -> None:
        self.config = config
        self.pinning = pinning
        self.progress = progress
        self.cells: list[Cell] = []
        self.stop_reason: str | None = None
        self.started_ns = time.perf_counter_ns()
        self.deadline_ns = self.started_ns + int(config.max_seconds * 1e9)
        self._op_estimate_s: dict[str, float] = {}  # warm-up time per round trip

    def run_payload(self, mechanisms: Sequence[Mechanism], size: int) -> None:
        cells = {m.name: Cell(m.name, size, batch=m.batch) for m in mechanisms}
        self.cells.extend(cells.values())
        if self._out_of_time():
            for cell in cells.values():
                cell.note = f"not run: {self.stop_reason}"
            return
        active: list[Mechanism] = []
        try:
            active = [m for m in mechanisms if self._start(m, cells[m.name])]
            for index in range(self.config.runs):
                self._run_round(active, cells, index)
        finally:
            for mechanism in mechanisms:
                _teardown(mechanism, cells[mechanism.name])

    def _run_round(self, active: list[Mechanism], cells: dict[str, Cell], index: int) -> None:
        """Run ``index`` of every still-working mechanism, one after the other."""
        for mechanism in list(active):
            if self._out_of_time():
                return
            cell = cells[mechanism.name]
            self._report(f"payload {cell.payload_size} B  run {index + 1}  {mechanism.name}")
            if not self._run_once(mechanism, cell, index):
                active.remove(mechanism)
                _teardown(mechanism, cell)

    def _start(self, mechanism: Mechanism, cell: Cell) -> bool:
        """Set up and warm up; on failure note why in ``cell`` and return False."""
        reason = mechanism.unavailable()
        if reason is not None:
            cell.note = f"skipped: {reason}"
            return False
        if self._out_of_time():
            cell.note = f"not run: {self.stop_reason}"
            return False
        self._report(f"payload {cell.payload_size} B  setup  {mechanism.name}")
        mechanism.peer_lifetime_s = self.config.max_seconds + _PEER_LIFETIME_MARGIN_S
        try:
            mechanism.setup(cell.payload_size)
            cell.batch = mechanism.batch
            self._warm_up(mechanism)
        except Exception as exc:  # any failure of one mechanism must not end the benchmark
            cell.note = f"skipped: setup failed: {exc!r}"
            _teardown(mechanism, cell)
            return False
        return True

    def _warm_up(self, mechanism: Mechanism) -> None:
        """Untimed round trips under the final placement (caches, page faults, peer start)."""
        self.pinning.apply(mechanism.peer_pids())
        budget = 3 * self.config.stall_seconds  # includes the peer's interpreter start
        with _Watchdog(budget, mechanism.abort, f"{mechanism.name}: warm-up"):
            start = time.perf_counter_ns()
            count = _operations(mechanism, self.config.warmup)
            samples = _timed(mechanism, count, self.deadline_ns, self.config.pace_s)
            elapsed_s = (time.perf_counter_ns() - start) / 1e9
        self._op_estimate_s[mechanism.name] = elapsed_s / max(1, len(samples))
        self.pinning.apply(mechanism.peer_pids())  # threads the peers started while warming up

    def _run_once(self, mechanism: Mechanism, cell: Cell, index: int) -> bool:
        """One timed run appended to ``cell``; False (with a note) if the mechanism failed."""
        try:
            cell.runs.append(self._measure(mechanism, index))
        except Exception as exc:
            cell.note = f"failed in run {index + 1}: {exc!r}"
            return False
        return True

    def _measure(self, mechanism: Mechanism, index: int) -> RunRecord:
        pids = mechanism.peer_pids()
        count = _operations(mechanism, self.config.roundtrips)
        label = f"{mechanism.name}: run {index + 1}"
        with _Watchdog(self._run_budget_s(mechanism.name, count), mechanism.abort, label):
            moves0 = {pid: _migrations(pid) for pid in pids}
            peers0, cpu0, wall0 = peers_cpu_ns(pids), time.process_time_ns(), time.perf_counter_ns()
            samples = _timed(mechanism, count, self.deadline_ns, self.config.pace_s)
            wall1, cpu1, peers1 = time.perf_counter_ns(), time.process_time_ns(), peers_cpu_ns(pids)
        peers = None if peers0 is None or peers1 is None else peers1 - peers0
        where = {pid: (_last_cpu(pid), _migrations(pid) - moves0[pid]) for pid in pids}
        return RunRecord(index, LatencySamples(samples), wall1 - wall0, cpu1 - cpu0, peers, where)

    def _run_budget_s(self, name: str, count: int) -> float:
        """How long a run of ``count`` operations may take before the watchdog calls it stalled."""
        expected_s = self._op_estimate_s.get(name, 0.0) * count
        left_s = max(0.0, (self.deadline_ns - time.perf_counter_ns()) / 1e9)
        return self.config.stall_seconds + min(10 * expected_s, left_s)

    def _out_of_time(self) -> bool:
        if self.stop_reason is None and time.perf_counter_ns() > self.deadline_ns:
            self.stop_reason = f"time bound of {self.config.max_seconds:g} s reached"
        return self.stop_reason is not None

    def _report(self, what: str) -> None:
        elapsed_s = (time.perf_counter_ns() - self.started_ns) / 1e9
        self.progress(f"[{elapsed_s:6.1f}/{self.config.max_seconds:g} s] {what}")


def _operations(mechanism: Mechanism, roundtrips: int) -> int:
    """Timed operations for ``roundtrips``: a throughput row sends about as many messages as a
    latency row makes round trips, so both take similar time; at least 10 bursts per run."""
    if mechanism.batch <= 1 or roundtrips == 0:
        return roundtrips
    return max(_MIN_BURSTS, roundtrips // mechanism.batch)


def _timed(mechanism: Mechanism, count: int, deadline_ns: int, pace_s: float) -> array[int]:
    own = mechanism.time_roundtrips(count, deadline_ns, pace_s)
    return (
        own
        if own is not None
        else _time_roundtrips(mechanism.roundtrip, count, deadline_ns, pace_s)
    )


def _time_roundtrips(
    roundtrip: Callable[[], None], count: int, deadline_ns: int, pace_s: float = 0.0
) -> array[int]:
    """Time up to ``count`` round trips, each alone; stop early once past ``deadline_ns``.
    With ``pace_s``, sleep that long (untimed) after each one."""
    clock = time.perf_counter_ns
    out = array("q")
    append = out.append
    for _ in range(count):
        t0 = clock()
        roundtrip()
        t1 = clock()
        append(t1 - t0)
        if t1 > deadline_ns:
            break
        if pace_s:
            time.sleep(pace_s)
    return out


def _teardown(mechanism: Mechanism, cell: Cell) -> None:
    try:
        mechanism.teardown()
    except Exception as exc:
        cell.note = f"{cell.note + '; ' if cell.note else ''}teardown failed: {exc!r}"


class _Watchdog:
    """Calls ``on_stall`` from a timer thread if the ``with`` body outlives ``seconds``, and
    then raises TimeoutError at the end of the body, whatever the body raised.

    The thread only sleeps until then, so it takes no CPU or GIL time from the measurement.
    """

    def __init__(self, seconds: float, on_stall: Callable[[], None], label: str) -> None:
        self._seconds = seconds
        self._on_stall = on_stall
        self._label = label
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True
        self._fired = False

    def __enter__(self) -> None:
        self._timer.start()

    def __exit__(self, *exc_info: object) -> None:
        self._timer.cancel()
        self._timer.join(self._seconds)
        if self._fired:
            raise TimeoutError(f"{self._label} stalled for more than {self._seconds:.1f} s")

    def _fire(self) -> None:
        self._fired = True
        with contextlib.suppress(Exception):  # best effort: __exit__ reports the stall anyway
            self._on_stall()


# --- CPU time of other processes -----------------------------------------------------------

# /proc/<pid>/task/<tid>/schedstat field 1 is the task's time on CPU in nanoseconds
# (Documentation/scheduler/sched-stats.rst); /proc/<pid>/stat utime+stime (fields 14, 15, see
# proc(5)) is the fallback, in clock ticks (usually 10 ms), too coarse for short runs.
CPU_TIME_SOURCE = "schedstat" if os.path.exists("/proc/self/schedstat") else "stat"
_CLOCK_TICK_NS = 1e9 / os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 1e7


def process_cpu_ns(pid: int) -> int | None:
    """CPU time used so far by all live threads of ``pid``, or None if it cannot be read."""
    try:
        if CPU_TIME_SOURCE == "schedstat":
            return sum(_task_cpu_ns(pid, tid) for tid in os.listdir(f"/proc/{pid}/task"))
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()  # comm may contain spaces
        return round((int(fields[11]) + int(fields[12])) * _CLOCK_TICK_NS)
    except (OSError, ValueError, IndexError):
        return None


def _task_cpu_ns(pid: int, tid: str) -> int:
    with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as schedstat:
        return int(schedstat.read().split()[0])


def _last_cpu(pid: int) -> int:
    """The CPU `pid` last ran on (/proc/<pid>/stat field 39); -1 if it is gone."""
    text = _read_text(f"/proc/{pid}/stat")
    return int(text.rsplit(")", 1)[1].split()[36]) if text else -1


def _migrations(pid: int) -> int:
    """How often the scheduler has moved `pid` between CPUs (/proc/<pid>/sched)."""
    for line in (_read_text(f"/proc/{pid}/sched") or "").splitlines():
        if line.startswith("se.nr_migrations"):
            return int(line.split(":")[1])
    return 0


def peers_cpu_ns(pids: Sequence[int]) -> int | None:
    """Total CPU time of ``pids``; None if there are none or one cannot be read."""
    times = [process_cpu_ns(pid) for pid in pids]
    if not times or None in times:
        return None
    return sum(t or 0 for t in times)


# --- placement -----------------------------------------------------------------------------


@dataclass
class _Pinning:
    """Which CPUs this process and the peers may use (sched_setaffinity(2))."""

    mode: Placement
    original: set[int]
    ours: set[int] | None = None  # None: leave as is
    peers: set[int] | None = None

    @classmethod
    def plan(cls, mode: Placement) -> _Pinning:
        """Raises ValueError when this machine cannot do ``mode``."""
        cpus = sorted(os.sched_getaffinity(0))
        if mode == "unpinned":
            return cls(mode, set(cpus))
        if mode == "same-core":
            return cls(mode, set(cpus), {cpus[0]}, {cpus[0]})
        if len(cpus) < 2:
            raise ValueError(f"placement: cross-core needs 2 CPUs, this process may use {cpus}")
        return cls(mode, set(cpus), {cpus[0]}, {cpus[1]})

    def apply(self, peer_pids: Sequence[int]) -> None:
        if self.ours is not None:
            _pin_all_threads(os.getpid(), self.ours)
        if self.peers is not None:
            for pid in peer_pids:
                _pin_all_threads(pid, self.peers)

    def restore(self) -> None:
        if self.ours is not None:
            _pin_all_threads(os.getpid(), self.original)

    def describe(self) -> dict[str, object]:
        return {
            "mode": self.mode,
            "self_cpus": sorted(self.ours or self.original),
            "peer_cpus": sorted(self.peers or self.original),
        }


def _pin_all_threads(pid: int, cpus: set[int]) -> None:
    """sched_setaffinity(pid) moves one thread only; pin every thread of the process."""
    try:
        tids = [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        tids = [pid]
    for tid in tids:
        with contextlib.suppress(ProcessLookupError, FileNotFoundError):
            os.sched_setaffinity(tid, cpus)


# --- environment -----------------------------------------------------------------------------


def capture_environment() -> dict[str, object]:
    """What a reader needs to compare two result files: machine, OS, Python, versions."""
    return {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu_model": _cpu_model(),
        "nproc": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "cpu_governor": _read_text("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        "sched_autogroup": _sched_autogroup(),
        "kernel": platform.release(),
        "machine": platform.machine(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "packages": {name: _package_version(name) for name in _ENV_PACKAGES},
        "git_commit": _git_commit(),
        "cpu_time_source": CPU_TIME_SOURCE,
        "clock_overhead_ns": _clock_overhead_ns(),
    }


def _sched_autogroup() -> bool | None:
    """Whether the scheduler shares a CPU between sessions before processes (None:
    unknown). Every process of a row runs in this session, so it does not tilt the
    rows; it does tilt a kernel and its callers in different sessions."""
    value = _read_text("/proc/sys/kernel/sched_autogroup_enabled")
    return None if value is None else value != "0"


def _cpu_model() -> str | None:
    text = _read_text("/proc/cpuinfo") or ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            return value.strip()
    return platform.processor() or None


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as file:
            return file.read().strip()
    except OSError:
        return None


def _package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(_SOURCE_ROOT), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def _clock_overhead_ns(samples: int = 10_001) -> int:
    """Median cost of one perf_counter_ns() pair: the floor under every reported latency."""
    clock = time.perf_counter_ns
    deltas = array("q")
    for _ in range(samples):
        t0 = clock()
        deltas.append(clock() - t0)
    return sorted(deltas)[samples // 2]
