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
import errno
import logging
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping

from .. import abi
from .._core.kcore import live_objects
from ..errors import Status
from . import bootstrap, dispatch
from .objects import OpError
from .process import Proc
from .quota import Users, charge, credit
from .state import KernelState

log = logging.getLogger("mkipc.kernel")

SLICE_NS = 200_000
"""Longest stretch of ring polling before uvloop gets a turn for sockets and timers."""

PUMP_IDLE, PUMP_BUSY, PUMP_TROUBLE = 0, 1, 2  # Core.pump() results

OVERFLOW_RETRY_S = 0.001
"""While completions wait for ring space the kernel re-checks this often, even asleep."""


NAMES_RESTARTS = 5
"""Restarts of a name server that died, within NAMES_RESTART_WINDOW_S, before giving up."""
NAMES_RESTART_WINDOW_S = 60.0
NAMES_START_TIMEOUT_S = 10.0
NAMES_START_POLL_S = 0.1  # how often a starting name server is checked until it connects
ACCEPT_PAUSE_S = 0.1
"""How long the kernel stops accepting after accept() failed for want of descriptors
or memory: the listener stays readable, so retrying at once spun a core and
logged a traceback per try until a descriptor was free."""


class Daemon:
    def __init__(
        self,
        path: str,
        *,
        idle_exit: float | None = None,
        spin_us: float = 500.0,
        names: bool = True,
        socket_mode: int = 0o600,
        user_limits: Mapping[str, int] | None = None,
    ) -> None:
        """`user_limits` overrides some of quota.USER_LIMITS (`--user-limit`)."""
        self.path = path
        self.idle_exit = idle_exit
        self.spin_ns = int(spin_us * 1000)
        self.socket_mode = socket_mode
        self.k = KernelState(users=Users(user_limits))
        dispatch.install(self.k)
        self.names = NameServerProcess(self) if names else None
        self.sleeping = False
        self._next_ident = 1
        self._wake_handle: asyncio.TimerHandle | None = None
        self._stop = asyncio.Event()
        self._accept_failing = False  # accept() failed last time: logged once, paused
        self._idle_since = time.monotonic()
        self.loop = asyncio.get_running_loop()  # built inside the serving coroutine
        self.k.exits.attach(self._watch_fd, self.loop.remove_reader)

    # ------------------------------------------------------------ lifecycle

    async def serve(self) -> None:
        _raise_descriptor_limit()
        self.k.users.descriptors.set_limit(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        self.listener = bootstrap.make_listener(self.path, self.socket_mode)
        self.loop.add_reader(self.listener.fileno(), self._accept)
        if self.names is not None:
            self.k.enable_names()
            self.names.start()
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.loop.add_signal_handler(sig, self._stop.set)
        if self.idle_exit is not None:
            self.loop.call_later(self.idle_exit, self._check_idle)
        log.info("kernel listening on %s (pid %d)", self.path, os.getpid())
        log.info(
            "socket mode %#o, %s",
            self.socket_mode,
            "name server on" if self.names else "no name server",
        )
        try:
            await self._stop.wait()
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        names = self.names.proc if self.names is not None else None
        log.info(
            "kernel shutting down: failing %d waiting operations (and %d of the name server)",
            sum(len(p.pending) for p in self.k.procs.values() if p is not names),
            len(names.pending) if names is not None else 0,
        )
        if self.names is not None:
            self.names.stopping = True
        self.k.shutdown()
        self._ring_doorbells()
        if names is not None:
            self._disconnect(names, "the kernel stopped its name server")
        for proc in list(self.k.procs.values()):
            self._disconnect(proc, "the kernel shut down")
        self.k.release_names()
        if self.names is not None:
            self.names.reap()
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
        if not self._clients() and idle_for >= self.idle_exit:
            log.info("no process for %.0f s: exiting", idle_for)
            self._stop.set()
        else:
            self.loop.call_later(max(self.idle_exit - idle_for, 1.0), self._check_idle)

    def _clients(self) -> int:
        """Connected processes other than the kernel's own name server."""
        names = self.names.proc if self.names is not None else None
        return len(self.k.procs) - (names is not None and names.alive)

    # ------------------------------------------------------------ processes

    def _accept(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:  # EMFILE, ENFILE, ENOBUFS, ENOMEM: wait for the resource
            if not self._accept_failing:
                log.warning(
                    "cannot accept processes (%s): retrying every %.1f s", e, ACCEPT_PAUSE_S
                )
            self._accept_failing = True
            self.loop.remove_reader(self.listener.fileno())
            self.loop.call_later(ACCEPT_PAUSE_S, self._resume_accepting)
            return
        if self._accept_failing:
            log.warning("accepting processes again")
            self._accept_failing = False
        conn.setblocking(False)
        self.loop.create_task(self._bootstrap(conn))

    def _resume_accepting(self) -> None:
        if not self._stop.is_set() and self.listener.fileno() >= 0:
            self.loop.add_reader(self.listener.fileno(), self._accept)

    async def _bootstrap(self, conn: socket.socket) -> None:
        try:
            creds = bootstrap.peer_credentials(conn)
            if creds[1] not in (os.getuid(), 0) and not self.socket_mode & 0o077:
                raise PermissionError(f"uid {creds[1]} may not use this kernel")
            hello = await bootstrap.read_frame(self.loop, conn)
            if not isinstance(hello, abi.Hello) or hello.version != abi.ABI_VERSION:
                raise ValueError(f"expected Hello version {abi.ABI_VERSION}, got {hello!r}")
            self.k.check_token(hello.inherit_token)
            proc = self._admit(conn, creds)
        except Exception as e:  # whatever a stranger sends, only this connection fails
            reason = e.reason if isinstance(e, OpError) else str(e) or type(e).__name__
            log.warning("bootstrap refused: %s", reason)
            self._refuse(conn, reason, _refusal_status(e))
            return
        self._next_ident += 1
        if self.names is not None:
            self.names.connected(proc, hello.inherit_token)
        self._welcome(proc, self.k.add_proc(proc, hello.inherit_token))

    def _admit(self, conn: socket.socket, creds: tuple[int, int, int]) -> Proc:
        """The connection's process, charged to its uid (quota.py) until it goes."""
        user = self.k.users.ledger(creds[1])
        charge("connections", 1, user)
        try:
            return Proc(self._next_ident, conn, creds, user)
        except BaseException:
            credit("connections", 1, user)
            raise

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
            proc.names_slot,
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

    def _refuse(self, conn: socket.socket, reason: str, status: int) -> None:
        try:
            bootstrap.send_frame(conn, abi.Refused(reason, status))
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
        if self.names is not None:
            self.names.disconnected(proc)
        if not self._clients():
            self._idle_since = time.monotonic()

    def _watch_fd(self, fd: int, ready: Callable[[], None]) -> None:
        """Run `ready` once `fd` is readable (a watched child ended), then ring the
        doorbells of whoever that woke."""

        def on_readable() -> None:
            ready()
            self._ring_doorbells()

        self.loop.add_reader(fd, on_readable)

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


class NameServerProcess:
    """The name server the kernel starts at boot (services/names), restarted if it dies.

    It is an ordinary process: it connects like any other and claims a bundle that
    holds the name server endpoint with every right, and the queue where it keeps its
    entries (services/names/store.py), which the kernel holds across its restarts.
    """

    def __init__(self, daemon: Daemon) -> None:
        self.d = daemon
        self.popen: subprocess.Popen[bytes] | None = None
        self.token: str | None = None
        self.proc: Proc | None = None
        self.stopping = False
        self.restarts: list[float] = []

    def start(self) -> None:
        self.token = self.d.k.names_bundle()
        level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
        env = dict(
            os.environ, MKIPC_SOCKET=self.d.path, MKIPC_INHERIT=self.token, MKIPC_LOG_LEVEL=level
        )
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "services.names"],
            env=env,
            stdin=subprocess.DEVNULL,
            cwd=os.path.dirname(self.d.path),  # not the caller's: see client/_launch.py
        )
        log.info("name server started (pid %d)", self.popen.pid)
        self._check_started(self.popen, time.monotonic() + NAMES_START_TIMEOUT_S)

    def connected(self, proc: Proc, token: str | None) -> None:
        if token is not None and token == self.token:
            self.proc = proc

    def disconnected(self, proc: Proc) -> None:
        if proc is self.proc:
            self.proc = None
            self._restart(f"the name server (pid {proc.pid}) disconnected")

    def _check_started(self, popen: subprocess.Popen[bytes], deadline: float) -> None:
        """Until it connects: notice at once if it exited, and end it if it hangs."""
        if popen is not self.popen or self.proc is not None or self.stopping:
            return
        if popen.poll() is not None:
            self._restart(f"the name server exited with code {popen.returncode} at start")
        elif time.monotonic() > deadline:
            self._restart(f"the name server (pid {popen.pid}) did not connect in time")
        else:
            self.d.loop.call_later(NAMES_START_POLL_S, self._check_started, popen, deadline)

    def _restart(self, why: str) -> None:
        if self.stopping:
            return
        self.reap()
        now = time.monotonic()
        self.restarts = [t for t in self.restarts if now - t < NAMES_RESTART_WINDOW_S]
        if len(self.restarts) >= NAMES_RESTARTS:
            log.error("%s; restarted %d times in a minute: giving up", why, NAMES_RESTARTS)
            return
        self.restarts.append(now)
        log.warning("%s; restarting it (it keeps its entries)", why)
        self.d.loop.call_later(0.1 * len(self.restarts), self.start)

    def reap(self) -> None:
        """Drop the old start's bundle and collect its process (SIGKILL if it lingers)."""
        if self.token is not None and self.token in self.d.k.bundles:
            self.d.k.drop_bundle(self.token)
        self.token = None
        popen, self.popen = self.popen, None
        if popen is None:
            return
        if popen.poll() is None:
            popen.terminate()  # it left the kernel (or the kernel is stopping): end it
        try:
            popen.wait(2.0)
        except subprocess.TimeoutExpired:
            log.warning("name server (pid %d) did not exit: killing it", popen.pid)
            popen.kill()
            popen.wait()


def _raise_descriptor_limit() -> None:
    """Take every descriptor the hard limit allows. The kernel holds four per
    connection, two per session and one per memory object, for every user at once
    (quota.py bounds each user); a soft limit of 1024, common in shells and
    services, would let a few users at their bounds fill it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        log.info("descriptor limit raised from %d to %d", soft, hard)


def _refusal_status(e: Exception) -> int:
    """What the client raises for a refused connection: AccessDeniedError for a uid
    the socket mode keeps out, ResourceLimitError past a user limit or when the
    kernel ran out of descriptors or memory making the connection."""
    if isinstance(e, OpError):
        return e.status
    if isinstance(e, PermissionError):
        return Status.ACCESS_DENIED
    if isinstance(e, OSError) and e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOMEM):
        return Status.NO_RESOURCES
    return Status.INVALID_ARGS


def run(
    path: str,
    *,
    idle_exit: float | None = None,
    spin_us: float = 500.0,
    names: bool = True,
    socket_mode: int = 0o600,
    user_limits: Mapping[str, int] | None = None,
) -> None:
    import uvloop

    async def main() -> None:
        await Daemon(
            path,
            idle_exit=idle_exit,
            spin_us=spin_us,
            names=names,
            socket_mode=socket_mode,
            user_limits=user_limits,
        ).serve()

    uvloop.run(main())
