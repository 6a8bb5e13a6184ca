"""mkipc call/reply through a private kernel daemon, blocking face.

The mechanism starts its own `mkipc kernel` (so the daemon's CPU time is counted
as a peer's) and an echo server that receives the endpoint by inheritance and
answers with reply_recv. Payloads above kernel.MAX_PAYLOAD are refused by
mkipc by design; that row says so instead of failing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from typing import Any

import kernel
from kernel.bench.mechanisms import Mechanism, bound_peer_life, make_payload, register
from kernel.client._common import CapBase

_START_TIMEOUT_S = 10.0


class PrivateKernel:
    """A kernel daemon on a socket in a fresh private directory, stopped by its pid.

    If the benchmark dies without stopping it (SIGKILL, the OOM killer), its peers go
    with it (PR_SET_PDEATHSIG) and the daemon exits once no process has been connected
    for IDLE_EXIT_S: before, it stayed forever, with its name server."""

    IDLE_EXIT_S = 30.0

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="mkb-")
        self.path = os.path.join(self.dir, "k.sock")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kernel",
                "kernel",
                "--socket",
                self.path,
                "--log-level",
                "WARNING",
                "--idle-exit",
                str(self.IDLE_EXIT_S),
            ],
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not os.path.exists(self.path):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the mkipc kernel did not start")
            time.sleep(0.005)

    def children(self) -> list[int]:
        """The daemon's child processes: its name server (/proc; [] once it is gone)."""
        pid = self.proc.pid
        try:
            with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as f:
                return [int(p) for p in f.read().split()]
        except OSError:
            return []

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for name in os.listdir(self.dir):
            os.unlink(os.path.join(self.dir, name))
        os.rmdir(self.dir)


class _MkipcMechanism(Mechanism):
    """Shared set-up: a private kernel, a connection, and one spawned peer."""

    peer_role = ""

    def __init__(self) -> None:
        self._kernel: PrivateKernel | None = None
        self._k: kernel.Kernel | None = None
        self._peer: kernel.Process | None = None

    def _start_kernel(self) -> None:
        self._kernel = PrivateKernel()
        self._k = kernel.connect(self._kernel.path, autostart=False)

    def _spawn(self, caps: Mapping[str, CapBase]) -> None:
        assert self._k is not None
        argv = [
            sys.executable,
            "-m",
            type(self).__module__,  # the module whose __main__ knows peer_role
            self.peer_role,
            str(os.getpid()),
            str(self.peer_lifetime_s),
        ]
        self._peer = self._k.spawn(argv, caps=caps)

    def peer_pids(self) -> list[int]:
        pids = [self._kernel.proc.pid] if self._kernel else []
        return pids + ([self._peer.pid] if self._peer else [])

    def teardown(self) -> None:
        if self._peer is not None:
            self._peer.kill()
            self._peer.popen.wait()
            self._peer = None
        if self._k is not None:
            self._k.close()
            self._k = None
        if self._kernel is not None:
            self._kernel.stop()
            self._kernel = None


@register
class MkipcCall(_MkipcMechanism):
    name = "mkipc.call"
    peer_role = "echo"

    def setup(self, payload_size: int) -> None:
        if payload_size > kernel.MAX_PAYLOAD:
            raise ValueError(
                f"mkipc messages carry at most {kernel.MAX_PAYLOAD} bytes; "
                "bulk data goes through memory objects"
            )
        self._payload = make_payload(payload_size)
        self._start_kernel()
        assert self._k is not None
        self._ep = self._k.endpoint()
        self._spawn({"ep": self._ep})
        self._ep.call(self._payload, timeout=_START_TIMEOUT_S)  # the echo server is up

    def roundtrip(self) -> None:
        self._ep.call(self._payload)


@register
class MkipcCallBadged(MkipcCall):
    """The same call through a minted, badged, send-only capability (the name-server case)."""

    name = "mkipc.call.badged"

    def setup(self, payload_size: int) -> None:
        super().setup(payload_size)
        self._ep = self._ep.mint(rights=kernel.Rights.SEND, badge=42)


@register
class MkipcCallWithCap(MkipcCall):
    """Each call moves one capability to the server, whose reply moves it back."""

    name = "mkipc.call+cap"
    peer_role = "echo_caps"

    def setup(self, payload_size: int) -> None:
        super().setup(payload_size)
        assert self._k is not None
        self._cap: Any = self._k.notification()

    def roundtrip(self) -> None:
        reply = self._ep.call(self._payload, caps=[self._cap])
        (self._cap,) = reply.caps


@register
class MkipcNotify(_MkipcMechanism):
    """signal → the peer wakes and signals back: the asynchronous path's round trip."""

    name = "mkipc.notify"
    peer_role = "notify"

    def setup(self, payload_size: int) -> None:
        self._start_kernel()
        assert self._k is not None
        self._ping, self._pong = self._k.notification(), self._k.notification()
        self._spawn({"ping": self._ping, "pong": self._pong})
        self.roundtrip()

    def roundtrip(self) -> None:
        self._ping.signal(1)
        self._pong.wait()


def _echo(k: kernel.Kernel) -> None:
    ep = k.inherited["ep"]
    assert isinstance(ep, kernel.EndpointCap)
    msg = ep.recv()
    while True:
        msg = ep.reply_recv(msg, msg.data)


def _echo_caps(k: kernel.Kernel) -> None:
    ep = k.inherited["ep"]
    assert isinstance(ep, kernel.EndpointCap)
    msg = ep.recv()
    while True:
        msg = ep.reply_recv(msg, msg.data, caps=msg.caps)


def _notify(k: kernel.Kernel) -> None:
    ping, pong = k.inherited["ping"], k.inherited["pong"]
    assert isinstance(ping, kernel.NotificationCap)
    assert isinstance(pong, kernel.NotificationCap)
    while True:
        ping.wait()
        pong.signal(1)


def serve_role(argv: list[str], roles: dict[str, Callable[[kernel.Kernel], None]]) -> None:
    """A spawned peer's main: ``<role> <parent pid> <lifetime s>``; runs ``roles[role]``."""
    role, parent, lifetime = argv[0], int(argv[1]), float(argv[2])
    bound_peer_life(parent, lifetime)
    try:
        with kernel.connect(autostart=False) as k:
            roles[role](k)
    except kernel.PeerClosedError:
        pass  # the benchmark tore the kernel down: done


if __name__ == "__main__":
    serve_role(sys.argv[1:], {"echo": _echo, "echo_caps": _echo_caps, "notify": _notify})
