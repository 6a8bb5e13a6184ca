"""pyzmq REQ/REP over ipc:// (a UNIX socket in a private directory): what many Python users
reach for first when they want request/reply between processes.

A blocked ``recv`` does not return when the peer dies (ZeroMQ reconnects quietly), so
``abort`` terminates the context from a helper thread, which makes the blocked call raise.
"""

from __future__ import annotations

import importlib
import os
import threading
from typing import Any

from kernel.bench.mechanisms import PeerLostError, make_payload, register
from kernel.bench.mechanisms._served import (
    ServedMechanism,
    announce,
    exit_on_eof,
    missing_package,
)


@register
class PyzmqReqRep(ServedMechanism):
    name = "pyzmq.req-rep"

    def __init__(self) -> None:
        super().__init__()
        self._ctx: Any = None
        self._sock: Any = None
        self._payload = b""
        self._terminator: threading.Thread | None = None  # abort()'s ctx.term() call

    def unavailable(self) -> str | None:
        return missing_package("zmq", "pyzmq")

    def setup(self, payload_size: int) -> None:
        self.teardown()
        zmq = importlib.import_module("zmq")  # optional: imported only when the row runs
        self._payload = make_payload(payload_size)
        address = f"ipc://{os.path.join(self._private_dir(), 'rep.sock')}"
        self._start_peer(__name__, [address])
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.REQ)
        self._sock.connect(address)

    def roundtrip(self) -> None:
        self._sock.send(self._payload, copy=False)  # pyzmq still copies below 64 KiB
        if len(self._sock.recv()) != len(self._payload):
            raise PeerLostError("pyzmq: the echo has the wrong size")

    def abort(self) -> None:
        ctx = self._ctx
        if ctx is not None and self._terminator is None:  # term() waits for our socket's close
            self._terminator = threading.Thread(target=ctx.term, name="mkipc-bench-zmq-abort")
            self._terminator.daemon = True
            self._terminator.start()
        super().abort()

    def _close_client(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None
        if self._terminator is not None:  # two concurrent term() calls crash libzmq
            self._terminator.join()
            self._terminator = None
        elif self._ctx is not None:
            self._ctx.term()
        self._ctx = None


def peer_main(argv: list[str]) -> None:
    """The REP server: ``<control_fd> <ready_fd> <address>``; echoes until told to stop."""
    control_fd, ready_fd, address = int(argv[0]), int(argv[1]), argv[2]
    exit_on_eof(control_fd)
    zmq = importlib.import_module("zmq")
    sock = zmq.Context.instance().socket(zmq.REP)
    sock.bind(address)
    announce(ready_fd)
    while True:  # ends at the control pipe's EOF, or at the lifetime alarm
        sock.send(sock.recv(copy=False), copy=False)
