"""A Service's direct sessions (kernel/client/session.py): every client that opens
one gets it accepted, and its calls are answered over the session's own rings,
not through the kernel. Under the blocking face the sessions are members of one
SessionGroup served by the service's `workers` threads (_session_workers.py);
under asyncio, by tasks (one per request, so a slow coroutine handler does not
hold up the client's other calls). Either way a handler first takes one of the
service's `workers` slots, so `workers` bounds the handlers that run at once over
every path. Stopping the service ends every session."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from . import abi
from ._core.serve import Answerer, SessionAnswers, Slots
from ._session_workers import GroupWorkers
from .client._session import awrite_kept
from .client.aio import AsyncEndpointCap
from .client.aio_session import AsyncSessionServer
from .client.session import SessionServer
from .client.session_group import SessionGroup
from .client.sync import EndpointCap
from .errors import IPCError

log = logging.getLogger("mkipc.service")

MAX_SESSIONS_PER_CALLER = 4
"""Sessions one caller connection may hold with a service; more are declined (the
caller then goes through the kernel). A session costs the service a state word of
its 256 (and under asyncio a task): one client must not take them all."""
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


AsyncAnswer = Callable[[Any, bytearray], Awaitable["bytes | bytearray"]]


class SessionPool:
    """The blocking face: the accepted sessions are members of one SessionGroup,
    served by `workers` threads (kernel/_session_workers.py), started with the
    first session. A thread per session cost 2.7-4.6x fewer calls per second from
    two clients on (docs/benchmarks.md), and ran handlers side by side however few
    workers the service asked for."""

    def __init__(
        self,
        name: str,
        answerer: Answerer,
        workers: int,
        slots: Slots,
        fatal: Callable[[BaseException], None],
    ) -> None:
        self.name = name
        self._answers = SessionAnswers(answerer, slots, log, name)
        self._n = workers
        self._fatal = fatal  # a handler let out SystemExit or the like: the service stops
        self._group = SessionGroup(on_end=self._ended)
        self._live: set[SessionServer] = set()
        self._workers: GroupWorkers | None = None
        self._lock = threading.Lock()  # accept() from several kernel-path workers
        self._closing = False

    def accept(self, ep: EndpointCap, offer: Any) -> None:
        with self._lock:
            # list(): one step under the GIL, as the group's thread drops members
            why = _refusal([srv.peer_id for srv in list(self._live)], offer)
        try:
            if why is not None:
                ep.decline_session(offer, why)
                return
            srv = ep.accept_session(offer)
        except IPCError as e:  # e.g. the caller gave up meanwhile: serve the next
            log.debug("%s: session not accepted: %s", self.name, e)
            return
        with self._lock:
            if self._closing:
                _close_quietly(srv, self.name)
                return
            self._live.add(srv)
            self._group.add(srv)
            if self._workers is None:
                self._workers = GroupWorkers(
                    self._group, self._n, self._answers, self._fatal, self.name
                )

    def _ended(self, srv: SessionServer, error: IPCError) -> None:
        """The group dropped a member (its caller closed it, ended, or was revoked).
        Runs under the group's lock: no lock of ours here (accept() holds ours while
        it adds to the group)."""
        self._live.discard(srv)
        log.debug("%s: session ended: %s", self.name, error)

    def close(self, deadline: float) -> None:
        """Stop every session gracefully: the requests received are answered, then
        the sessions close (their callers' next call raises PeerClosedError). Waits
        until the monotonic `deadline` for the threads, then ends what is left."""
        with self._lock:
            self._closing = True
            workers = self._workers
        self._group.shutdown()
        if workers is not None:
            workers.stop()
            for t in workers.threads:
                t.join(max(0.0, deadline - time.monotonic()))
            if any(t.is_alive() for t in workers.threads):
                log.warning("%s: a session handler is still busy; ending the sessions", self.name)
        self._group.close(linger=max(0.0, deadline - time.monotonic()))


def _close_quietly(srv: SessionServer, name: str) -> None:
    try:
        srv.close()
    except IPCError as e:  # e.g. the kernel went away: the session ended with it
        log.debug("%s: session close: %s", name, e)


class AsyncSessionPool:
    """The asyncio face: a reading task per session, a task per request."""

    def __init__(self, name: str, answer: AsyncAnswer, slots: asyncio.Semaphore) -> None:
        self.name = name
        self._answer = answer
        self._slots = slots  # shared with the kernel-path worker tasks
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
            async with self._slots:
                out = await self._answer(msg, bytearray(1))
            msg.reply(out)
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
        await awrite_kept([srv._end for srv in self._live], deadline)
        for srv in list(self._live):
            try:
                await srv.close()
            except IPCError as e:
                log.debug("%s: session close: %s", self.name, e)
        self._live.clear()
