"""Concurrent clients on one service: aggregate calls per second and the merged latency.

For each client count N (1 … 32) the sweep starts N client processes against one server, lets
each warm up and report ready, then releases them together (a "go" file) and times every call.
Each client writes its samples and its first and last clock reading (CLOCK_MONOTONIC, shared by
all processes) to a file; the aggregate rate is all calls over the span from the first start to
the last end. Services: a single-threaded AF_UNIX stream echo server (``os.unix``), mkipc
call/reply with one echo server on one endpoint (``mkipc.call``), mkipc direct sessions
(``mkipc.session``): each client opens its own session to one server process, which serves
every session from one thread (kernel.SessionGroup), and a kernel.Service with one worker
(``mkipc.service``): each client's ServiceClient opens its own session, and the service
serves them all from its worker (kernel/_session_workers.py).
"""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import sys
import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from kernel.bench.mechanisms import (
    PeerProcess,
    bound_peer_life,
    make_payload,
    read_exact,
    write_all,
)
from kernel.bench.mechanisms._served import ServedMechanism, announce, exit_on_eof
from kernel.bench.mechanisms.mkipc_call import MkipcCall
from kernel.bench.mechanisms.mkipc_service import _NAME as SERVICE_NAME
from kernel.bench.mechanisms.mkipc_service import Echo, MkipcService
from kernel.bench.mechanisms.mkipc_session import SessionService
from kernel.bench.stats import LatencySamples

__all__ = ["CLIENT_COUNTS", "SERVICES", "ClientsPoint", "run_clients_sweep"]

CLIENT_COUNTS: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
MAX_CLIENTS = 32  # the sweep's upper bound: more processes would only measure the scheduler
_WARMUP_CALLS = 50
_WAIT_S = 60.0  # start-up and run bound per point; a client that misses it fails the point
_LIFETIME_S = 300.0


class _Client(Protocol):
    def stop(self) -> None: ...


@dataclass
class ClientsPoint:
    mechanism: str
    clients: int
    payload_size: int
    samples: LatencySamples
    span_ns: int  # first client's start to the last client's end
    note: str | None = None

    @property
    def calls_per_s(self) -> float | None:
        return len(self.samples) * 1e9 / self.span_ns if self.span_ns > 0 else None


class _UnixServer(ServedMechanism):
    """Starts the echo server only; the sweep's clients make the calls, so no roundtrip()."""

    name = "os.unix"

    def setup(self, payload_size: int) -> None:
        self.teardown()
        self.path = os.path.join(self._private_dir(), "echo.sock")
        self._start_peer(__name__, ["server", self.path, str(payload_size)])

    def roundtrip(self) -> None:
        raise NotImplementedError("os.unix is a service for the clients sweep only")


def _start_unix(size: int, lifetime_s: float) -> tuple[Callable[[], None], Callable[..., _Client]]:
    server = _UnixServer()
    server.peer_lifetime_s = lifetime_s
    server.setup(size)

    def spawn(argv: list[str]) -> _Client:
        return PeerProcess(__name__, ["client", "unix", server.path, *argv], (), lifetime_s)

    return server.teardown, spawn


def _start_mkipc(size: int, lifetime_s: float) -> tuple[Callable[[], None], Callable[..., _Client]]:
    return _start_kernel_service(MkipcCall(), "mkipc", size, lifetime_s)


def _start_session(
    size: int, lifetime_s: float
) -> tuple[Callable[[], None], Callable[..., _Client]]:
    return _start_kernel_service(SessionService(), "session", size, lifetime_s)


def _start_typed_service(
    size: int, lifetime_s: float
) -> tuple[Callable[[], None], Callable[..., _Client]]:
    return _start_kernel_service(MkipcService(), "service", size, lifetime_s)


def _start_kernel_service(
    service: MkipcCall | SessionService | MkipcService, kind: str, size: int, lifetime_s: float
) -> tuple[Callable[[], None], Callable[..., _Client]]:
    """Start ``service`` (a private kernel and its server); clients inherit its ``ep``
    (a kernel.Service's clients look it up by name instead)."""
    service.peer_lifetime_s = lifetime_s
    try:
        service.setup(size)
    except BaseException:
        service.teardown()  # the kernel and server it started, by their pids
        raise
    k = service._k
    assert k is not None
    ep = getattr(service, "_ep", None)  # a kernel.Service has none: found by name
    caps = {"ep": ep} if ep is not None else {}

    def spawn(argv: list[str]) -> _Client:
        boot = [sys.executable, "-m", __name__, str(os.getpid()), str(lifetime_s)]
        proc = k.spawn([*boot, "client", kind, "-", *argv], caps=caps)
        return _KernelClient(proc)

    return service.teardown, spawn


class _KernelClient:
    def __init__(self, proc: object) -> None:
        self._proc = proc

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._proc.wait(2.0)  # type: ignore[attr-defined]  # kernel.Process
        with contextlib.suppress(Exception):
            self._proc.kill()  # type: ignore[attr-defined]


SERVICES: dict[str, Callable[[int, float], tuple[Callable[[], None], Callable[..., _Client]]]] = {
    "os.unix": _start_unix,
    "mkipc.call": _start_mkipc,
    "mkipc.session": _start_session,
    "mkipc.service": _start_typed_service,
}


def run_clients_sweep(
    services: Sequence[str], counts: Sequence[int], payload_size: int, calls: int, workdir: Path
) -> list[ClientsPoint]:
    """One point per (service, client count); ``calls`` in total per point, split over clients.

    Raises:
        ValueError: an unknown service, or a count outside 1 … MAX_CLIENTS.
    """
    if any(not 1 <= n <= MAX_CLIENTS for n in counts) or set(services) - set(SERVICES):
        raise ValueError(f"clients: counts within 1..{MAX_CLIENTS}, services in {list(SERVICES)}")
    points = []
    for name in services:
        try:
            stop, spawn = SERVICES[name](payload_size, _LIFETIME_S)
        except Exception as exc:  # one service's failure must not end the sweep
            points += [_failed(name, n, payload_size, f"setup failed: {exc!r}") for n in counts]
            continue
        try:
            for n in counts:
                per_client = max(_WARMUP_CALLS, calls // n)
                points.append(_point(name, n, payload_size, per_client, spawn, workdir))
        finally:
            stop()
    return points


def _failed(name: str, n: int, size: int, note: str) -> ClientsPoint:
    return ClientsPoint(name, n, size, LatencySamples(), 0, note)


def _point(
    name: str, n: int, size: int, per_client: int, spawn: Callable[..., _Client], workdir: Path
) -> ClientsPoint:
    folder = workdir / f"{name}-{n}"
    folder.mkdir(parents=True, exist_ok=True)
    clients = [spawn([str(folder), str(i), str(per_client), str(size)]) for i in range(n)]
    try:
        _wait_files(folder, ".ready", n)
        (folder / "go").touch()
        _wait_files(folder, ".result", n)
        (folder / "done").touch()  # now they may exit: see _client()
    except TimeoutError as exc:
        return _failed(name, n, size, str(exc))
    finally:
        for client in clients:
            client.stop()
    return _collect(name, n, size, folder)


def _wait_files(folder: Path, suffix: str, n: int) -> None:
    deadline = time.monotonic() + _WAIT_S
    while len(list(folder.glob(f"*{suffix}"))) < n:  # bounded by the deadline
        if time.monotonic() > deadline:
            raise TimeoutError(f"only some of {n} clients wrote {suffix} within {_WAIT_S:g} s")
        time.sleep(0.01)


def _collect(name: str, n: int, size: int, folder: Path) -> ClientsPoint:
    samples, starts, ends = LatencySamples(), [], []
    for path in sorted(folder.glob("*.result")):
        values = array("q")
        values.frombytes(path.read_bytes())
        starts.append(values[0])
        ends.append(values[1])
        samples = samples.merge(LatencySamples(values[2:]))
    return ClientsPoint(name, n, size, samples, max(ends) - min(starts))


# --- inside the processes -----------------------------------------------------------------


def peer_main(argv: list[str]) -> None:
    """``server <control_fd> <ready_fd> <path> <size>`` or ``client unix <path> <args...>``."""
    if argv[0] == "client":
        _client(argv[1], argv[2], argv[3:])
    else:  # _served puts the control and ready fds before "server"
        _serve_unix(int(argv[0]), int(argv[1]), argv[3], int(argv[4]))


def _serve_unix(control_fd: int, ready_fd: int, path: str, size: int) -> None:
    exit_on_eof(control_fd)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(MAX_CLIENTS)
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ)
    announce(ready_fd)
    while True:  # ends at the control pipe's EOF, or at the lifetime alarm
        for key, _ in sel.select():
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if sock is listener:
                sel.register(listener.accept()[0], selectors.EVENT_READ)
                continue
            data = sock.recv(size)  # echo what came; the client reads exactly `size`
            if data:
                sock.sendall(data)
            else:
                sel.unregister(sock)
                sock.close()


def _client(kind: str, address: str, argv: list[str]) -> None:
    folder, index, count, size = Path(argv[0]), argv[1], int(argv[2]), int(argv[3])
    if kind == "unix":
        call, payload = _connect_unix(address, size)
    else:
        call, payload = _connect_mkipc(kind, size)
    for _ in range(_WARMUP_CALLS):
        call(payload)
    (folder / f"{index}.ready").touch()
    _wait_for(folder / "go", time.monotonic() + _WAIT_S, 0.0005)  # start together
    out, clock = array("q", [0, 0]), time.perf_counter_ns
    out[0] = clock()
    for _ in range(count):
        t0 = clock()
        call(payload)
        out.append(clock() - t0)
    out[1] = clock()
    tmp = folder / f"{index}.tmp"
    tmp.write_bytes(out.tobytes())
    tmp.rename(folder / f"{index}.result")  # appears whole, never half-written
    # Exit only once every client is done: an interpreter's exit costs ~10-30 ms of
    # CPU, and 32 of them ran while the last clients still called, which cut the
    # measured rate (of every service) by a third to a half.
    _wait_for(folder / "done", time.monotonic() + _WAIT_S, 0.01)


def _wait_for(path: Path, deadline: float, poll_s: float) -> None:
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(poll_s)


def _connect_unix(path: str, size: int) -> tuple[Callable[[Any], object], object]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    fd = sock.fileno()

    def call(payload: bytes) -> None:
        write_all(fd, payload)
        read_exact(fd, size)

    call.sock = sock  # type: ignore[attr-defined]  # keeps the socket open
    return call, make_payload(size)


def _connect_mkipc(kind: str, size: int) -> tuple[Callable[[Any], object], object]:
    """What to call, and with what. ``mkipc``: calls through the kernel; ``session``:
    over this client's own session (opened here; it ends with this process);
    ``service``: a ServiceClient, looked up by name, with a typed request (its first
    call opens its session)."""
    import kernel

    k = kernel.connect(autostart=False)
    payload = make_payload(size)
    # The bound methods themselves, as an application would call them: a wrapper
    # would add a Python frame per call that no user pays.
    if kind == "service":
        client = kernel.ServiceClient.lookup(k, SERVICE_NAME, timeout=_WAIT_S)
        return client.call, Echo(payload)
    ep = k.inherited["ep"]
    assert isinstance(ep, kernel.EndpointCap)
    if kind == "session":
        return ep.session(timeout=_WAIT_S).call, payload
    return ep.call, payload


if __name__ == "__main__":  # an mkipc client spawned by the kernel: <parent> <lifetime> client ...
    bound_peer_life(int(sys.argv[1]), float(sys.argv[2]))
    _client(sys.argv[4], sys.argv[5], sys.argv[6:])
