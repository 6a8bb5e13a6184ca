"""A connected pair of UNIX stream sockets (socketpair(2), SOCK_STREAM)."""

from __future__ import annotations

import socket

from kernel.bench.mechanisms import FdEchoMechanism, register


@register
class OsSocketpair(FdEchoMechanism):
    name = "os.socketpair"

    def _connect(self, payload_size: int) -> tuple[int, int]:
        ours, theirs = (s.detach() for s in socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM))
        self._own(ours, theirs)
        self._spawn_echo(rx=theirs, tx=theirs, payload_size=payload_size)
        return ours, ours
