"""Signals rebuilt on capabilities (DESIGN §4: handlers on notifications, "ignore /
catch / default, as signals").

A notification's 64-bit word is read as a Linux signal set: bit s-1 is signal s
(`Sig.TERM` is bit 14), so the 64 bits are exactly the 64 Linux signals. Whoever
holds a SIGNAL capability to the notification can send them (`n.signal(Sig.USR1)`),
as kill(2) does, but by capability instead of by uid. A dispatcher (`Signals`, or
`AsyncSignals`) takes the word and gives each signal its disposition, as
signal(2) does for a process's own signals:

- caught: a handler runs with the one signal as its argument;
- ignored: dropped;
- default (where every signal starts): what the operating system would do with
  that signal here. The dispatcher sends it to its own process (`os.kill`), so the
  program's and Python's own handlers apply: SIGINT raises KeyboardInterrupt in the
  main thread, kernel.Service stops gracefully on SIGTERM, SIGCHLD is ignored,
  SIGUSR1 ends the process. Signals 32 and 33, which glibc keeps for its threads,
  are ignored;
- blocked: kept pending, and delivered when unblocked (sigprocmask).

As with the OS's standard signals, one sent twice before it is handled is handled
once: the word is a set, not a queue.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Self

from capabilities import Rights

from ..errors import IPCError

if TYPE_CHECKING:
    from .aio import AsyncNotificationCap
    from .sync import NotificationCap

log = logging.getLogger("mkipc.signals")


class Sig(enum.IntFlag):
    """Bit s-1 of a notification's word is Linux signal s. `Sig.of(n)` names any of
    the 64 (real-time ones included: `Sig.of(signal.SIGRTMIN)`)."""

    HUP = 1 << 0
    INT = 1 << 1
    QUIT = 1 << 2
    ILL = 1 << 3
    TRAP = 1 << 4
    ABRT = 1 << 5
    BUS = 1 << 6
    FPE = 1 << 7
    KILL = 1 << 8
    USR1 = 1 << 9
    SEGV = 1 << 10
    USR2 = 1 << 11
    PIPE = 1 << 12
    ALRM = 1 << 13
    TERM = 1 << 14
    STKFLT = 1 << 15
    CHLD = 1 << 16
    CONT = 1 << 17
    STOP = 1 << 18
    TSTP = 1 << 19
    TTIN = 1 << 20
    TTOU = 1 << 21
    URG = 1 << 22
    XCPU = 1 << 23
    XFSZ = 1 << 24
    VTALRM = 1 << 25
    PROF = 1 << 26
    WINCH = 1 << 27
    IO = 1 << 28
    PWR = 1 << 29
    SYS = 1 << 30

    @classmethod
    def of(cls, signum: int) -> Sig:
        """The bit of Linux signal `signum` (1 to 64)."""
        if not 1 <= signum <= 64:
            raise ValueError(f"Linux signals are 1 to 64, not {signum}")
        return cls(1 << (signum - 1))

    def __str__(self) -> str:
        """SIGUSR1, SIGHUP|SIGTERM, signal 41: the names a log reader knows."""
        parts = []
        for bit in _bits(int(self)):
            name = Sig(bit).name
            parts.append(f"SIG{name}" if name else f"signal {bit.bit_length()}")
        return "|".join(parts) or "no signal"

    @property
    def signum(self) -> int:
        """The signal number of a one-bit Sig."""
        if self.value.bit_count() != 1:
            raise ValueError(f"{self!r} is not one signal")
        return int(self.value).bit_length()


Handler = Callable[[Sig], Any]
_IGNORE = "ignore"
_VALID = frozenset(int(s) for s in signal.valid_signals())  # 1-64 but glibc's 32, 33
_ALL = (1 << 64) - 1


def _mask(sigs: int) -> int:
    sigs = int(sigs)
    if not 0 < sigs <= _ALL:
        raise ValueError(f"signals are a non-zero 64-bit mask, not {sigs:#x}")
    return sigs


def _bits(word: int) -> Iterator[int]:
    while word:
        low = word & -word
        yield low
        word ^= low


def default_action(sig: Sig) -> None:
    """What the operating system does with `sig` in this process: it is sent to the
    process itself, so its own handlers (Python's included) or the OS default apply."""
    signum = sig.signum
    if signum in _VALID:
        os.kill(os.getpid(), signum)


Disposition = Handler | signal.Handlers
"""A handler, signal.SIG_IGN or signal.SIG_DFL, as for signal.signal()."""


class Dispositions:
    """The part both faces share: what each signal does, and which are blocked or
    pending. Thread-safe; handlers run outside the lock."""

    def __init__(self, dispositions: Mapping[int, Disposition] | None, blocked: int) -> None:
        self._lock = threading.Lock()
        self._actions: dict[int, Handler | str] = {}  # bit -> handler or _IGNORE
        self._blocked = int(blocked)
        self._pending = 0
        for sigs, action in (dispositions or {}).items():
            if action is signal.SIG_IGN:
                self.ignore(sigs)
            elif action is signal.SIG_DFL:
                self.default(sigs)
            else:
                self.catch(sigs, action)

    def catch(self, sigs: int, handler: Handler) -> None:
        """Run `handler(sig)` for each of `sigs` that arrives (once per signal)."""
        if not callable(handler):
            raise TypeError(f"a handler must be callable, not {handler!r}")
        self._set(sigs, handler)

    def ignore(self, sigs: int) -> None:
        """Drop `sigs` when they arrive."""
        self._set(sigs, _IGNORE)

    def default(self, sigs: int) -> None:
        """Give `sigs` back their default action (see the module's documentation)."""
        self._set(sigs, None)

    def block(self, sigs: int) -> None:
        """Keep `sigs` pending when they arrive, until unblocked."""
        with self._lock:
            self._blocked |= _mask(sigs)

    @property
    def blocked(self) -> Sig:
        return Sig(self._blocked)

    @property
    def pending(self) -> Sig:
        """Blocked signals that arrived and wait to be unblocked."""
        return Sig(self._pending)

    def _set(self, sigs: int, action: Handler | str | None) -> None:
        with self._lock:
            for bit in _bits(_mask(sigs)):
                if action is None:
                    self._actions.pop(bit, None)
                else:
                    self._actions[bit] = action

    def _unblocked(self, sigs: int) -> list[tuple[Sig, Handler | str | None]]:
        with self._lock:
            self._blocked &= ~_mask(sigs)
        return self._take(0)

    def _take(self, word: int) -> list[tuple[Sig, Handler | str | None]]:
        """Add `word` to what is pending; return what is due now, lowest signal first."""
        with self._lock:
            self._pending |= word
            due, self._pending = self._pending & ~self._blocked, self._pending & self._blocked
            return [(Sig(bit), self._actions.get(bit)) for bit in _bits(due)]


def act(sig: Sig, action: Handler | str | None) -> Any:
    """Carry out one signal's disposition; a handler's result (maybe awaitable)."""
    if action is None:
        default_action(sig)
    elif action != _IGNORE:
        assert callable(action)
        return action(sig)
    return None


class Signals(Dispositions):
    """A thread that takes a notification's signals and runs their dispositions.

    `Signals(n, {Sig.TERM: stop, Sig.HUP: signal.SIG_IGN}, blocked=...)` starts
    taking signals at once, with these dispositions (every other signal at its
    default): give them here, not by catch() just after, or a signal sent before
    that catch() gets the default. It needs WAIT and COPY on `n`: it waits on a
    copy of its own, so that `close()` can end that wait without touching `n`.

    Handlers run in the dispatcher's thread, one at a time; a signal that arrives
    meanwhile waits in the kernel, so none is lost. A handler that raises is
    logged, and the others go on. Do not also `wait()` on the notification
    elsewhere: whoever takes the word first gets the signals, as with sigwait(2)
    beside handlers.
    """

    def __init__(
        self,
        n: NotificationCap,
        dispositions: Mapping[int, Disposition] | None = None,
        *,
        blocked: int = 0,
    ) -> None:
        super().__init__(dispositions, blocked)
        self._n = n.copy(Rights.WAIT)
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="mkipc-signals", daemon=True)
        self._thread.start()

    def unblock(self, sigs: int) -> None:
        """Stop blocking `sigs`; those pending are delivered now, in this thread,
        before unblock returns (as sigprocmask(2) delivers them)."""
        self._run_all(self._unblocked(sigs))

    def close(self) -> None:
        """Stop taking signals (they stay in the notification's word)."""
        if self._closing:
            return
        self._closing = True
        try:
            self._n.close()  # ends the dispatcher's wait
        except IPCError:
            pass  # gone already (revoked, or the kernel ended): so is the thread
        if threading.current_thread() is not self._thread:
            self._thread.join()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self) -> None:
        while True:
            try:
                word = self._n.wait()
            except IPCError as e:
                if not self._closing and not _closed_by_us(self._n):
                    log.warning("signals: stopped taking signals: %s", e)
                return
            self._run_all(self._take(word))

    def _run_all(self, due: list[tuple[Sig, Handler | str | None]]) -> None:
        for sig, action in due:
            try:
                act(sig, action)
            except Exception:
                log.exception("signals: the handler of %s raised", sig)


def _closed_by_us(n: NotificationCap | AsyncNotificationCap) -> bool:
    """The program closed its kernel connection: the dispatcher ends with it, as a
    matter of course (any other end, a revocation or the kernel's exit, is logged)."""
    conn = getattr(n._k, "_conn", None)
    return conn is None or getattr(conn, "lost", None) == "closed"


class AsyncSignals(Dispositions):
    """The asyncio face of `Signals`: a task takes the notification's signals, and
    handlers (functions or coroutine functions) run in the event loop, one at a time.

    `AsyncSignals(n, dispositions, blocked=...)` needs WAIT on `n` and a running
    loop. `close()` cancels the task; a word its wait had already taken is kept for
    the next wait on `n`.
    """

    def __init__(
        self,
        n: AsyncNotificationCap,
        dispositions: Mapping[int, Disposition] | None = None,
        *,
        blocked: int = 0,
    ) -> None:
        super().__init__(dispositions, blocked)
        self._n = n
        self._task = asyncio.ensure_future(self._run())

    async def unblock(self, sigs: int) -> None:
        """Stop blocking `sigs`; those pending are delivered before this returns."""
        await self._run_all(self._unblocked(sigs))

    def close(self) -> None:
        self._task.cancel()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    async def _run(self) -> None:
        while True:
            try:
                word = await self._n.wait()
            except IPCError as e:
                if not _closed_by_us(self._n):
                    log.warning("signals: stopped taking signals: %s", e)
                return
            await self._run_all(self._take(word))

    async def _run_all(self, due: list[tuple[Sig, Handler | str | None]]) -> None:
        for sig, action in due:
            try:
                result = act(sig, action)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("signals: the handler of %s raised", sig)
