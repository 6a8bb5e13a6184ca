"""The threads that serve a blocking Service's sessions (kernel/_service_sessions.py).

One thread at a time polls the SessionGroup and runs the handlers inline, as a
lone group thread does: no hand-off per request. (Handing every batch to the next
thread, so that one was always polling, cost one client 18.7-29 µs a call with 4
workers, against 4.5-5.0 µs: each request woke a thread and moved the GIL.) The
other workers stand by. One of them, the watcher, looks every STALL_NS while
requests come in: once a thread has spent that long in one handler and nobody
polls, the watcher starts polling (and another stand-by becomes the watcher). So a
blocking handler holds up the other sessions for at most about STALL_NS, and a
busy service with quick handlers pays nothing for its idle workers. Go's runtime
takes a processor away from a thread stuck in a system call the same way.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from ._core.serve import SessionAnswers
from .client._session import SessionMessage
from .client.session_group import SessionGroup
from .errors import IPCError

log = logging.getLogger("mkipc.service")

STALL_NS = 1_000_000
"""How long one handler may keep the polling thread before another worker polls."""
IDLE_NS = 50_000_000
"""With no handler started for this long the watcher stops looking (no wake-ups
while idle); the next handler's start wakes it."""


class GroupWorkers:
    """`n` threads that serve `group`: `answers` answers each request (compiled:
    kernel/_core/serve.pyx); what a handler lets out beyond Exception (SystemExit)
    goes to `fatal` and ends that thread. stop() after `group.shutdown()`: the
    requests already taken are still handled."""

    def __init__(
        self,
        group: SessionGroup,
        n: int,
        answers: SessionAnswers,
        fatal: Callable[[BaseException], None],
        name: str,
    ) -> None:
        self._group = group
        self._answers = answers
        self._fatal = fatal
        self._ready: deque[SessionMessage] = deque()  # taken from the rings, not yet handled
        self._turn = threading.Lock()  # held by the thread that polls the rings
        self._since = [0] * n  # per thread: when its handler started (0: none)
        self._last_start = 0
        lock = threading.Lock()
        self._watch_cv = threading.Condition(lock)  # the watcher waits here
        self._standby_cv = threading.Condition(lock)  # the other stand-bys here
        self._watching = self._dozing = self._stopping = False
        run = self._run_alone if n == 1 else self._run
        self.threads = [
            threading.Thread(target=run, args=(i,), daemon=True, name=f"{name}[sessions {i}]")
            for i in range(n)
        ]
        for t in self.threads:
            t.start()

    def stop(self) -> None:
        """Let the stand-bys go (call after group.shutdown(): the poller leaves by itself)."""
        with self._watch_cv:
            self._stopping = True
            self._watch_cv.notify_all()
            self._standby_cv.notify_all()

    def _run(self, i: int) -> None:
        since, buf, handle_one = self._since, bytearray(1), self._answers.handle_one
        while True:
            try:
                msg = self._take()
            except IPCError as e:  # shut down, or the kernel went away
                log.debug("session worker %d stops: %s", i, e)
                self.stop()
                return
            if msg is None:
                if not self._stand_by():
                    return
                continue
            since[i] = self._last_start = time.monotonic_ns()
            if self._dozing:  # the first request after a quiet spell
                self._wake_watcher()
            fatal = handle_one(msg, buf, i)  # it lets nothing out
            since[i] = 0
            if fatal is not None:
                self._fatal(fatal)
                return

    def _run_alone(self, i: int) -> None:
        """One worker: no stand-by to watch for it, so no bookkeeping per request."""
        group, buf, handle_batch = self._group, bytearray(1), self._answers.handle_batch
        while True:
            try:
                batch = group.recv_many()
            except IPCError as e:  # shut down, or the kernel went away
                log.debug("session worker %d stops: %s", i, e)
                return
            fatal = handle_batch(batch, buf, i)
            if fatal is not None:  # SystemExit or the like: the service stops
                self._fatal(fatal)
                return

    def _take(self) -> SessionMessage | None:
        """The next request, polling the rings if no thread does; None if one does."""
        ready = self._ready
        if ready:  # raising IndexError on every empty look cost ~0.2 µs
            try:
                return ready.popleft()
            except IndexError:
                pass  # another thread took it
        if not self._turn.acquire(blocking=False):
            return None
        try:
            if ready:  # filled while we took the turn
                try:
                    return ready.popleft()
                except IndexError:
                    pass
            batch = self._group.recv_many()
            if len(batch) > 1:
                ready.extend(batch[1:])
            return batch[0]
        finally:
            self._turn.release()

    def _stand_by(self) -> bool:
        """Wait until this thread is needed; False once the workers stop."""
        with self._watch_cv:
            while self._watching and not self._stopping:
                self._standby_cv.wait()
            if self._stopping:
                return bool(self._ready)  # handle what was taken, then leave
            self._watching = True
            try:
                self._watch()
            finally:
                self._watching = False
                self._standby_cv.notify()  # the next stand-by watches
            return True

    def _watch(self) -> None:
        """Return when a thread has spent STALL_NS in one handler and none polls."""
        while not self._stopping:
            now = time.monotonic_ns()
            if not self._turn.locked() and any(0 < s <= now - STALL_NS for s in self._since):
                return
            if now - self._last_start < IDLE_NS:
                self._watch_cv.wait(STALL_NS / 1e9)
                continue
            self._dozing = True  # then look once more: a start that missed it ...
            try:
                if time.monotonic_ns() - self._last_start >= IDLE_NS:
                    self._watch_cv.wait()  # ... sees _dozing and wakes us
            finally:
                self._dozing = False

    def _wake_watcher(self) -> None:
        with self._watch_cv:
            self._watch_cv.notify()
