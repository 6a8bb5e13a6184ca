"""The daemon's event loop: accept processes, pump their rings, sleep when idle.

Wait strategy (DESIGN §3, and the machine: a cross-core wakeup costs ~26 µs one
way): while records keep arriving the kernel polls every ring in a tight loop and
nobody writes an eventfd. After `spin` without work it sets the waiting flag in
every submission ring, re-checks them, and sleeps in uvloop's epoll until a
process writes its doorbell eventfd, a deadline falls due or a socket stirs.
An idle kernel uses no CPU.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time

from .. import abi
from .._core.kcore import live_objects
from . import bootstrap, dispatch
from .objects import OpError
from .process import Proc
from .state import KernelState

log = logging.getLogger("mkipc.kernel")

SLICE_NS = 200_000
"""Longest stretch of ring polling before uvloop gets a turn for sockets and timers."""

PUMP_IDLE, PUMP_BUSY, PUMP_TROUBLE = 0, 1, 2  # Core.pump() results

OVERFLOW_RETRY_S = 0.001
"""While completions wait for ring space the kernel re-checks this often, even asleep."""


class Daemon:
    def __init__(
        self, path: str, *, idle_exit: float | None = None, spin_us: float = 500.0
    ) -> None:
        self.path = path
        self.idle_exit = idle_exit
        self.spin_ns = int(spin_us * 1000)
        self.k = KernelState()
        dispatch.install(self.k)
        self.sleeping = False
        self._next_ident = 1
        self._wake_handle: asyncio.TimerHandle | None = None
        self._stop = asyncio.Event()
        self._idle_since = time.monotonic()
        self.loop = asyncio.get_running_loop()  # built inside the serving coroutine

    # ------------------------------------------------------------ lifecycle

    async def serve(self) -> None:
        self.listener = bootstrap.make_listener(self.path)
        self.loop.add_reader(self.listener.fileno(), self._accept)
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.loop.add_signal_handler(sig, self._stop.set)
        if self.idle_exit is not None:
            self.loop.call_later(self.idle_exit, self._check_idle)
        log.info("kernel listening on %s (pid %d)", self.path, os.getpid())
        try:
            await self._stop.wait()
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        log.info(
            "kernel shutting down: failing %d waiting operations",
            sum(len(p.pending) for p in self.k.procs.values()),
        )
        self.k.shutdown()
        self._ring_doorbells()
        for proc in list(self.k.procs.values()):
            self._disconnect(proc, "the kernel shut down")
        self.loop.remove_reader(self.listener.fileno())
        self.listener.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        log.info("kernel exit: %d live objects, %d bundles", live_objects(), len(self.k.bundles))

    def _check_idle(self) -> None:
        assert self.idle_exit is not None
        idle_for = time.monotonic() - self._idle_since
        if not self.k.procs and idle_for >= self.idle_exit:
            log.info("no process for %.0f s: exiting", idle_for)
            self._stop.set()
        else:
            self.loop.call_later(max(self.idle_exit - idle_for, 1.0), self._check_idle)

    # ------------------------------------------------------------ processes

    def _accept(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        conn.setblocking(False)
        self.loop.create_task(self._bootstrap(conn))

    async def _bootstrap(self, conn: socket.socket) -> None:
        try:
            creds = bootstrap.peer_credentials(conn)
            if creds[1] not in (os.getuid(), 0):
                raise PermissionError(f"uid {creds[1]} may not use this kernel")
            hello = await bootstrap.read_frame(self.loop, conn)
            if not isinstance(hello, abi.Hello) or hello.version != abi.ABI_VERSION:
                raise ValueError(f"expected Hello version {abi.ABI_VERSION}, got {hello!r}")
            self.k.check_token(hello.inherit_token)
            proc = Proc(self._next_ident, conn, creds)
        except Exception as e:  # whatever a stranger sends, only this connection fails
            reason = e.reason if isinstance(e, OpError) else str(e) or type(e).__name__
            log.warning("bootstrap refused: %s", reason)
            self._refuse(conn, reason)
            return
        self._next_ident += 1
        self._welcome(proc, self.k.add_proc(proc, hello.inherit_token))

    def _welcome(self, proc: Proc, inherited: dict[str, abi.InheritedCap]) -> None:
        welcome = abi.Welcome(
            abi.ABI_VERSION,
            proc.pid,
            proc.uid,
            proc.gid,
            abi.CONTROL_SIZE + 2 * abi.RING_SIZE,
            abi.RING_SIZE,
            abi.RING_SIZE,
            abi.MAX_PAYLOAD,
            inherited,
        )
        try:
            bootstrap.send_frame(proc.sock, welcome, proc.fds_for_client())
        except OSError as e:
            self._disconnect(proc, f"handshake failed: {e}")
            return
        self.loop.add_reader(proc.sock.fileno(), self._on_socket, proc)
        self.loop.add_reader(proc.sq_efd, self._on_doorbell, proc)
        log.info(
            "process %d connected: pid %d uid %d gid %d%s",
            proc.ident,
            *proc.creds,
            f", inherited {sorted(inherited)}" if inherited else "",
        )
        self._wake()

    def _refuse(self, conn: socket.socket, reason: str) -> None:
        try:
            bootstrap.send_frame(conn, abi.Refused(reason))
        except OSError:
            pass
        conn.close()

    def _on_socket(self, proc: Proc) -> None:
        try:
            data = proc.sock.recv(1)
        except BlockingIOError:
            return
        except OSError as e:
            data, why = b"", f"connection error: {e}"
        else:
            why = "closed its connection" if not data else "sent data after the handshake"
        self._disconnect(proc, why)

    def _disconnect(self, proc: Proc, why: str) -> None:
        if not proc.alive:
            return
        self.loop.remove_reader(proc.sock.fileno())
        self.loop.remove_reader(proc.sq_efd)
        self.k.remove_proc(proc, why)
        proc.close()
        self._ring_doorbells()
        if not self.k.procs:
            self._idle_since = time.monotonic()

    # ------------------------------------------------------------ the pump

    def _on_doorbell(self, proc: Proc) -> None:
        try:
            os.eventfd_read(proc.sq_efd)
        except BlockingIOError:
            pass
        self._wake()

    def _wake(self) -> None:
        if self._wake_handle is not None:
            self._wake_handle.cancel()
            self._wake_handle = None
        if self.sleeping:
            self.sleeping = False
            for proc in self.k.procs.values():
                proc.sq.end_sleep()
        self.k.last_work = time.monotonic_ns()  # spin for a while before sleeping again
        self._pump()

    def _pump(self) -> None:
        """Poll the rings (compiled loop); give uvloop a turn every slice; sleep when idle."""
        while True:
            state = self.k.pump(list(self.k.procs.values()), self.spin_ns, SLICE_NS)
            if state != PUMP_TROUBLE:
                break
            for proc, why in self.k.trouble:
                log.warning("process %d (pid %d): %s; disconnecting", proc.ident, proc.pid, why)
                self._disconnect(proc, why)
            self.k.trouble.clear()
        if state == PUMP_BUSY:
            self.loop.call_soon(self._pump)
        else:
            self._sleep()

    def _ring_doorbells(self) -> None:
        self.k.ring_doorbells(list(self.k.procs.values()))

    def _sleep(self) -> None:
        procs = list(self.k.procs.values())
        for proc in procs:
            if not proc.sq.prepare_sleep():
                for p in procs:
                    p.sq.end_sleep()
                self.loop.call_soon(self._pump)
                return
        self.sleeping = True
        delay = self._sleep_limit()
        if delay is not None:
            self._wake_handle = self.loop.call_later(delay, self._wake)

    def _sleep_limit(self) -> float | None:
        if any(p.overflow for p in self.k.procs.values()):
            return OVERFLOW_RETRY_S
        due: int | None = self.k.timers.next_deadline()
        if due is None:
            return None
        return max(0.0, (due - time.monotonic_ns()) / 1e9)


def run(path: str, *, idle_exit: float | None = None, spin_us: float = 500.0) -> None:
    import uvloop

    async def main() -> None:
        await Daemon(path, idle_exit=idle_exit, spin_us=spin_us).serve()

    uvloop.run(main())
