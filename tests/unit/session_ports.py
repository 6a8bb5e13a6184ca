"""A session's two ports on rings in this process, for the port and faces tests
(each wraps it in its own `ports` fixture)."""

from __future__ import annotations

import mmap
from collections.abc import Iterator
from typing import Any

from kernel import abi
from kernel._core.port import SessionPort
from kernel._core.ring import SessionStates, ring_pair

RING = 4096


def session_ports(
    ring: int = RING, doorbells: tuple[int, int] = (-1, -1)
) -> Iterator[tuple[Any, ...]]:
    """Yields a session's two ports (caller, server), its state words (index 3,
    open) and the shared mapping; closes the rings afterwards. `doorbells` are the
    caller's and the server's eventfds (-1: none)."""
    shared = mmap.mmap(-1, abi.CONTROL_SIZE + 2 * ring)  # the session's rings
    mine = mmap.mmap(-1, abi.CONTROL_SIZE)  # this process's region: the state words
    states = SessionStates(mine)
    states.set(3, abi.SESSION_OPEN)
    requests, replies = ring_pair(shared, ring, ring)
    caller_bell, server_bell = doorbells
    caller = SessionPort(
        1, requests, replies, states, 3, server_bell, 1000, 0, "server", 9, caller_bell
    )
    server = SessionPort(
        1, replies, requests, states, 3, caller_bell, 1000, 77, "caller", 8, server_bell
    )
    yield caller, server, states, shared
    for ring in (requests, replies):
        ring.close()
    states.close()
