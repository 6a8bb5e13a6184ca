"""A Service's direct sessions (kernel/client/session.py): every client that opens
one gets it accepted, and its calls are answered over the session's own rings,
not through the kernel. A session is served by a thread of its own (blocking face)
or by tasks (asyncio face, one per request, so a slow coroutine handler does not
hold up the client's other calls). Stopping the service ends every session."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from . import abi
from .client.aio import AsyncEndpointCap
from .client.aio_session import AsyncSessionServer
from .client.session import SessionServer
from .client.sync import EndpointCap
from .errors import IPCError

log = logging.getLogger("mkipc.service")

MAX_SESSIONS_PER_CALLER = 4
"""Sessions one caller connection may hold with a service; more are declined (the
caller then goes through the kernel). A session costs the service a thread or a
task and a state word of its 256: one client must not take them all."""
MAX_SESSIONS = 128
"""Sessions a service holds at once, all callers together; more are declined."""


def _refusal(live_callers: list[int], offer: Any) -> str | None:
    """Why an offer is declined, or None to accept it."""
    caller = abi.decode_offer(offer.data).sender_id
    if live_callers.count(caller) >= MAX_SESSIONS_PER_CALLER:
        return f"at most {MAX_SESSIONS_PER_CALLER} sessions per caller connection"
    if len(live_callers) >= MAX_SESSIONS:
        return f"the service holds {MAX_SESSIONS} sessions"
    return None


Answer = Callable[[Any, bytearray], "bytes | bytearray"]
AsyncAnswer = Callable[[Any, bytearray], Awaitable["bytes | bytearray"]]


class SessionPool:
    """The blocking face: one serving thread per accepted session."""

    def __init__(self, name: str, answer: Answer) -> None:
        self.name = name
        self._answer = answer
        self._live: dict[SessionServer, threading.Thread] = {}
        self._lock = threading.Lock()
        self._closing = False

    def accept(self, ep: EndpointCap, offer: Any) -> None:
        with self._lock:
            why = _refusal([srv.peer_id for srv in self._live], offer)
        try:
            if why is not None:
                ep.decline_session(offer, why)
                return
            srv = ep.accept_session(offer)
        except IPCError as e:  # e.g. the caller gave up meanwhile: serve the next
            log.debug("%s: session not accepted: %s", self.name, e)
            return
        t = threading.Thread(target=self._serve, args=(srv,), daemon=True,
                             name=f"{self.name}[session {srv._end.sid}]")  # fmt: skip
        with self._lock:
            if self._closing:
                srv.close()
                return
            self._live[srv] = t
        t.start()

    def _serve(self, srv: SessionServer) -> None:
        buf = bytearray(1)
        try:
            while True:
                msg = srv.recv()
                if msg.is_call:  # a service answers calls; one-way sends are dropped
                    msg.reply(self._answer(msg, buf))
        except IPCError as e:  # closed, revoked, or the caller ended
            log.debug("%s: session ended: %s", self.name, e)
        finally:
            with self._lock:
                self._live.pop(srv, None)
            _close_quietly(srv, self.name)

    def close(self, deadline: float) -> None:
        """Stop every session gracefully: the request in a handler is answered, then
        the session closes (its caller's next call raises PeerClosedError). Waits
        until the monotonic `deadline` for the threads, then ends what is left."""
        with self._lock:
            self._closing = True
            live = list(self._live.items())
        for srv, _ in live:
            srv.shutdown()
        for _, t in live:
            t.join(max(0.0, deadline - time.monotonic()))
        for srv, _ in live:
            if not srv.closed:  # a handler still busy past the deadline
                log.warning("%s: a session handler is still busy; ending its session", self.name)
                _close_quietly(srv, self.name)


def _close_quietly(srv: SessionServer, name: str) -> None:
    try:
        srv.close()
    except IPCError as e:  # e.g. the kernel went away: the session ended with it
        log.debug("%s: session close: %s", name, e)


class AsyncSessionPool:
    """The asyncio face: a reading task per session, a task per request."""

    def __init__(self, name: str, answer: AsyncAnswer) -> None:
        self.name = name
        self._answer = answer
        self._tasks: set[asyncio.Task[None]] = set()
        self._live: set[AsyncSessionServer] = set()
        self._closing = False

    async def accept(self, ep: AsyncEndpointCap, offer: Any) -> None:
        why = _refusal([srv.peer_id for srv in self._live], offer)
        try:
            if why is not None:
                await ep.decline_session(offer, why)
                return
            srv = await ep.accept_session(offer)
        except IPCError as e:
            log.debug("%s: session not accepted: %s", self.name, e)
            return
        if self._closing:
            await srv.close()
            return
        self._live.add(srv)
        self._spawn(self._serve(srv))

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, srv: AsyncSessionServer) -> None:
        try:
            while True:
                msg = await srv.recv()
                if msg.is_call:
                    self._spawn(self._reply(msg))
        except IPCError as e:
            log.debug("%s: session ended: %s", self.name, e)
        finally:
            if not self._closing:  # else close() does, once the handlers are done
                self._live.discard(srv)
                await srv.close()

    async def _reply(self, msg: Any) -> None:
        try:
            msg.reply(await self._answer(msg, bytearray(1)))
        except IPCError as e:  # the session ended while the handler ran
            log.debug("%s: session reply: %s", self.name, e)

    async def close(self, deadline: float) -> None:
        """As SessionPool.close: answer what is in the handlers, then close."""
        self._closing = True
        for srv in self._live:
            srv.shutdown()
        if self._tasks:
            left = max(0.0, deadline - time.monotonic())
            _, late = await asyncio.wait(set(self._tasks), timeout=left)
            for t in late:
                t.cancel()
            if late:
                await asyncio.wait(late)
        for srv in list(self._live):
            try:
                await srv.close()
            except IPCError as e:
                log.debug("%s: session close: %s", self.name, e)
        self._live.clear()
