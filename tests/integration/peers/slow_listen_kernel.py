"""`mkipc kernel --socket PATH`, with listen() held back by 0.5 s.

This widens, without changing the kernel's code, the window in which the
socket path already exists but the kernel does not listen yet (bind() then
listen() in kernel/daemon/bootstrap.py make_listener), so that a test can
show deterministically what a client meets inside it.

usage: slow_listen_kernel.py PATH
"""

from __future__ import annotations

import socket
import sys
import time

from kernel.cli import main

_listen = socket.socket.listen


def slow_listen(self: socket.socket, *args: int) -> None:
    time.sleep(0.5)
    _listen(self, *args)


socket.socket.listen = slow_listen  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(main(["kernel", "--socket", sys.argv[1]]))
