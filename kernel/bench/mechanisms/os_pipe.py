"""Two anonymous pipes, one per direction: the classic UNIX ping-pong (pipe(7))."""

from __future__ import annotations

import os

from kernel.bench.mechanisms import FdEchoMechanism, register


@register
class OsPipe(FdEchoMechanism):
    name = "os.pipe"

    def _connect(self, payload_size: int) -> tuple[int, int]:
        ping_r, ping_w = os.pipe()
        self._own(ping_r, ping_w)
        echo_r, echo_w = os.pipe()
        self._own(echo_r, echo_w)
        self._spawn_echo(rx=ping_r, tx=echo_w, payload_size=payload_size)
        return ping_w, echo_r
