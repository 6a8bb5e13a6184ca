"""TCP over loopback (127.0.0.1) with TCP_NODELAY, so Nagle's algorithm never holds a ping.

This process makes both ends (listen, connect, accept) and hands the accepted one to the peer:
the connection is the same TCP path either way, and the peer stays the shared echo loop.
"""

from __future__ import annotations

import socket

from kernel.bench.mechanisms import FdEchoMechanism, register

_CONNECT_TIMEOUT_S = 10.0


@register
class OsTcp(FdEchoMechanism):
    name = "os.tcp"

    def _connect(self, payload_size: int) -> tuple[int, int]:
        with (
            socket.create_server(("127.0.0.1", 0), backlog=1) as listener,
            socket.create_connection(listener.getsockname(), _CONNECT_TIMEOUT_S) as client,
        ):
            listener.settimeout(_CONNECT_TIMEOUT_S)
            server, _ = listener.accept()
            with server:
                for sock in (client, server):
                    sock.setblocking(True)
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                ours, theirs = client.detach(), server.detach()  # closing detached is a no-op
        self._own(ours, theirs)
        self._spawn_echo(rx=theirs, tx=theirs, payload_size=payload_size)
        return ours, ours
