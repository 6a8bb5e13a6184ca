"""IPC mechanisms that `mkipc bench` can time, and the pieces their echo peers share.

A mechanism owns one ping-pong pair: this process sends ``payload_size`` bytes and waits for the
echo of the same size from a peer in another OS process. Modules register their classes with
``@register``; ``MECHANISM_MODULES`` lists the modules to import, in report order.

Peers live in fresh interpreters (``subprocess`` with ``pass_fds``) rather than ``fork`` children:
a forked peer would inherit this process's ends of every other mechanism's pipes and so hide their
EOF, and forking a multi-threaded process is unsafe (CPython 3.12 warns about it). Every peer
ends by itself: on EOF from this process, on a stop message, on this process's death
(PR_SET_PDEATHSIG) or, at the latest, when its lifetime alarm fires.
"""

from __future__ import annotations

import abc
import contextlib
import ctypes
import importlib
import math
import os
import signal
import subprocess
import sys
from array import array
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

__all__ = [
    "MECHANISM_MODULES",
    "FdEchoMechanism",
    "Mechanism",
    "PeerLostError",
    "PeerProcess",
    "all_mechanisms",
    "bound_peer_life",
    "check_limit",
    "make_payload",
    "peer_main_on_fds",
    "read_exact",
    "register",
    "write_all",
]

# Modules whose import registers mechanisms with @register; the report keeps this order.
MECHANISM_MODULES: list[str] = [
    "kernel.bench.mechanisms.os_pipe",
    "kernel.bench.mechanisms.os_fifo",
    "kernel.bench.mechanisms.os_socketpair",
    "kernel.bench.mechanisms.os_seqpacket",
    "kernel.bench.mechanisms.os_tcp",
    "kernel.bench.mechanisms.os_eventfd",
    "kernel.bench.mechanisms.os_mp_pipe",
    "kernel.bench.mechanisms.os_mp_queue",
    "kernel.bench.mechanisms.os_posix_mq",
    "kernel.bench.mechanisms.os_sysv_mq",
    # what users would pick instead: optional packages (the [bench] extra), skipped if missing
    "kernel.bench.mechanisms.lib_zmq",
    "kernel.bench.mechanisms.lib_pyro5",
    "kernel.bench.mechanisms.lib_grpc",
    "kernel.bench.mechanisms.lib_iceoryx2",
    "kernel.bench.mechanisms.mkipc_call",
    "kernel.bench.mechanisms.mkipc_names",
    "kernel.bench.mechanisms.mkipc_service",
    "kernel.bench.mechanisms.mkipc_objects",
    # one-way throughput rows (Mechanism.batch > 1)
    "kernel.bench.mechanisms.oneway_os",
    "kernel.bench.mechanisms.mkipc_send",
    # mkipc.session.call and mkipc.session.send: calls and sends over a direct session
    "kernel.bench.mechanisms.mkipc_session",
    "kernel.bench.mechanisms.mkipc_async",
    # mkipc.memory: bulk data through memory objects, every payload size (1 MiB included)
    "kernel.bench.mechanisms.mkipc_memory",
]

_PEER_STOP_GRACE_S = 2.0  # how long teardown waits for a peer to exit before SIGKILL
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
# The directory holding the `kernel` package, so a peer interpreter imports this same code. The
# peer puts it first on sys.path only if it is missing, so an installed package keeps its order.
_SOURCE_ROOT = str(Path(__file__).resolve().parents[3])
_PEER_BOOT = (
    "import sys; root = sys.argv[1]; root in sys.path or sys.path.insert(0, root); "
    "from kernel.bench.mechanisms import peer_entry; peer_entry(sys.argv[2:])"
)


class PeerLostError(ConnectionError):
    """The echo peer went away (or the runner aborted a stalled round trip)."""


class Mechanism(abc.ABC):
    """One IPC mechanism under test: this process pings, a peer process echoes."""

    name: str  # e.g. "os.pipe"; unique, used by --mechanisms and --baseline
    # Peers exit by themselves after this long even if nobody stops them; the runner raises it to
    # cover its own time bound before calling setup().
    peer_lifetime_s: float = 900.0
    # Messages per timed operation. 1: roundtrip() is one ping and its echo (a latency row).
    # More: roundtrip() sends a pipelined burst of this many one-way messages and returns once
    # the receiver has confirmed their count (a throughput row). setup() may change it.
    batch: int = 1

    def unavailable(self) -> str | None:
        """Why this mechanism cannot run on this machine (missing package, OS), or None."""
        return None

    @abc.abstractmethod
    def setup(self, payload_size: int) -> None:
        """Start the echo peer(s) for ``payload_size``-byte messages."""

    @abc.abstractmethod
    def roundtrip(self) -> None:
        """Send ``payload_size`` bytes and wait for the echo of the same size."""

    def time_roundtrips(self, count: int, deadline_ns: int, pace_s: float) -> array[int] | None:
        """Time ``count`` operations where they run, or None to let the runner time
        ``roundtrip()`` calls (the default). A mechanism whose operations run inside an
        event loop times each await there: timing a whole run_until_complete() per
        operation would measure the loop's start and stop, not the call."""
        return None

    @abc.abstractmethod
    def peer_pids(self) -> list[int]:
        """Processes whose CPU time counts for this mechanism (echo peer, daemon...)."""

    @abc.abstractmethod
    def teardown(self) -> None:
        """Stop the peers (by their pid only) and close fds; safe to call twice or before setup."""

    def abort(self) -> None:
        """Make a round trip that waits forever return or raise; called from another thread.

        The default kills the peers, which fd-based mechanisms see as EOF. Mechanisms whose wait
        does not end when the peer dies (queues, eventfd) override this to wake themselves.
        """
        for pid in self.peer_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


M = TypeVar("M", bound=type[Mechanism])
_REGISTERED: list[type[Mechanism]] = []


def register(cls: M) -> M:
    """Class decorator: make ``cls`` part of ``all_mechanisms()``."""
    _REGISTERED.append(cls)
    return cls


class _Unimportable(Mechanism):
    """Stands in for a module that failed to import, so the report says why it is missing."""

    def __init__(self, module: str, error: ImportError) -> None:
        self.name = module.rsplit(".", 1)[-1]
        self._reason = f"cannot import {module}: {error}"

    def unavailable(self) -> str | None:
        return self._reason

    def setup(self, payload_size: int) -> None:
        raise RuntimeError(self._reason)

    def roundtrip(self) -> None:
        raise RuntimeError(self._reason)

    def peer_pids(self) -> list[int]:
        return []

    def teardown(self) -> None:
        pass


def all_mechanisms() -> list[Mechanism]:
    """A fresh instance of every registered mechanism, in MECHANISM_MODULES order."""
    broken: dict[str, ImportError] = {}
    for module in MECHANISM_MODULES:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            broken[module] = exc
    found: list[tuple[int, Mechanism]] = [
        (_module_rank(cls.__module__), cls()) for cls in _REGISTERED
    ]
    found += [(_module_rank(mod), _Unimportable(mod, exc)) for mod, exc in broken.items()]
    found.sort(key=lambda pair: pair[0])  # stable: registration order within a module
    return [mechanism for _, mechanism in found]


def _module_rank(module: str) -> int:
    known = MECHANISM_MODULES
    return known.index(module) if module in known else len(known)


def check_limit(name: str, payload_size: int, path: str) -> None:
    """Raise a readable ValueError if ``payload_size`` exceeds the kernel limit in ``path``.

    The system calls only say EINVAL, which tells a reader nothing about the cause.
    """
    try:
        with open(path, encoding="ascii") as file:
            limit = int(file.read())
    except (OSError, ValueError):
        return  # unknown limit: let the system call decide
    if payload_size > limit:
        raise ValueError(f"{name}: payload {payload_size} B exceeds {path} ({limit} B)")


def make_payload(size: int) -> bytes:
    """Non-zero bytes, so nothing along the path can special-case a page of zeros."""
    pattern = b"mkipc-bench:0123456789abcdef\n"
    return (pattern * (size // len(pattern) + 1))[:size]


def read_exact(fd: int, size: int) -> bytes:
    """Read exactly ``size`` bytes: stream pipes and sockets may return short reads.

    Raises:
        PeerLostError: EOF before ``size`` bytes.
    """
    data = os.read(fd, size)
    if len(data) == size:  # the common case: one read
        return data
    buf = bytearray(data)
    while len(buf) < size:  # bounded: each pass adds at least one byte or raises
        if not data:
            raise PeerLostError(f"EOF after {len(buf)} of {size} bytes")
        data = os.read(fd, size - len(buf))
        buf += data
    return bytes(buf)


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data``; a blocking write returns short only on signals or sockets."""
    view = memoryview(data)
    while view:  # bounded: each pass writes at least one byte or raises
        view = view[os.write(fd, view) :]


class PeerProcess:
    """An echo peer: a fresh interpreter running ``<module>.peer_main(argv)``.

    Only ``fds`` are inherited (``close_fds`` is subprocess's default), at the same numbers.
    """

    def __init__(
        self, module: str, argv: Sequence[str], fds: Sequence[int], lifetime_s: float
    ) -> None:
        cmd = [sys.executable, "-c", _PEER_BOOT, _SOURCE_ROOT, module, str(os.getpid())]
        cmd += [str(lifetime_s), *argv]
        self._proc = subprocess.Popen(cmd, pass_fds=tuple(fds), stdin=subprocess.DEVNULL)

    @property
    def pid(self) -> int:
        return self._proc.pid

    def alive(self) -> bool:
        return self._proc.poll() is None

    def stop(self, grace_s: float = _PEER_STOP_GRACE_S) -> None:
        """Wait for the peer to exit by itself, then SIGKILL it (this pid, not yet reaped)."""
        try:
            self._proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(grace_s)


def peer_entry(argv: list[str]) -> None:
    """Entry point inside a peer interpreter: ``<module> <parent_pid> <lifetime_s> <args...>``."""
    module, parent_pid, lifetime_s, *args = argv
    bound_peer_life(int(parent_pid), float(lifetime_s))
    importlib.import_module(module).peer_main(args)


def bound_peer_life(parent_pid: int, lifetime_s: float) -> None:
    """Make sure this peer process ends even if the benchmark forgets it.

    Ctrl-C reaches the whole process group; the peer ignores it and waits for EOF or a stop
    message, so the benchmark tears down in order instead of racing its own peers.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.alarm(max(1, math.ceil(lifetime_s)))  # SIGALRM's default action ends the process
    if sys.platform == "linux":  # die with the benchmark (prctl(2)); best effort
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(0)


def peer_main(argv: list[str]) -> None:
    """The echo peer of fd-based mechanisms: ``<rx_fd> <tx_fd> <payload_size>``."""
    rx, tx, size = (int(arg) for arg in argv)
    peer_main_on_fds(rx, tx, size)


def peer_main_on_fds(rx: int, tx: int, size: int) -> None:
    """Echo ``size``-byte messages from ``rx`` to ``tx`` until the benchmark closes its end."""
    with contextlib.suppress(PeerLostError, BrokenPipeError, ConnectionResetError):
        while True:  # ends at EOF from the benchmark, or at the lifetime alarm
            write_all(tx, read_exact(rx, size))


class FdEchoMechanism(Mechanism):
    """A mechanism whose two directions are file descriptors (pipes, FIFOs, sockets).

    Subclasses implement ``_connect`` and use ``_own`` and ``_spawn_echo``.
    """

    def __init__(self) -> None:
        self._tx = -1  # this process writes the ping here
        self._rx = -1  # ...and reads the echo here
        self._owned: list[int] = []  # fds this process closes at teardown
        self._peers: list[PeerProcess] = []
        self._payload = b""

    @abc.abstractmethod
    def _connect(self, payload_size: int) -> tuple[int, int]:
        """Create the channel, start the peer; return this process's (tx, rx) fds."""

    def setup(self, payload_size: int) -> None:
        self.teardown()
        self._payload = make_payload(payload_size)
        try:
            self._tx, self._rx = self._connect(payload_size)
        except BaseException:
            self.teardown()
            raise

    def roundtrip(self) -> None:
        write_all(self._tx, self._payload)
        read_exact(self._rx, len(self._payload))

    def peer_pids(self) -> list[int]:
        return [peer.pid for peer in self._peers]

    def teardown(self) -> None:
        for fd in self._owned:  # closing our ends is the peer's EOF
            with contextlib.suppress(OSError):
                os.close(fd)
        self._owned.clear()
        self._tx = self._rx = -1
        for peer in self._peers:
            peer.stop()
        self._peers.clear()

    def _own(self, *fds: int) -> None:
        self._owned.extend(fds)

    def _spawn(self, module: str, argv: Sequence[str], peer_fds: Sequence[int]) -> PeerProcess:
        """Start a peer holding ``peer_fds``, then close this process's copies of them."""
        peer = PeerProcess(module, argv, peer_fds, self.peer_lifetime_s)
        self._peers.append(peer)
        for fd in peer_fds:
            if fd in self._owned:
                self._owned.remove(fd)
                os.close(fd)
        return peer

    def _spawn_echo(self, rx: int, tx: int, payload_size: int) -> PeerProcess:
        """Start the shared echo loop reading ``rx`` and writing ``tx`` (the peer's ends)."""
        argv = [str(rx), str(tx), str(payload_size)]
        return self._spawn(__name__, argv, sorted({rx, tx}))
