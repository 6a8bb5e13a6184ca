"""A connected pair of AF_UNIX SOCK_SEQPACKET sockets: message boundaries, no short reads.

A payload larger than the socket buffer cannot be sent as one packet (EMSGSIZE), so large sizes
fail in setup's first round trip and the runner reports the row as skipped.
"""

from __future__ import annotations

import socket

from kernel.bench.mechanisms import FdEchoMechanism, register


@register
class OsSeqpacket(FdEchoMechanism):
    name = "os.seqpacket"

    def unavailable(self) -> str | None:
        if not hasattr(socket, "SOCK_SEQPACKET"):
            return "AF_UNIX SOCK_SEQPACKET is not available on this OS"
        return None

    def _connect(self, payload_size: int) -> tuple[int, int]:
        pair = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours, theirs = (s.detach() for s in pair)
        self._own(ours, theirs)
        self._spawn_echo(rx=theirs, tx=theirs, payload_size=payload_size)
        return ours, ours
