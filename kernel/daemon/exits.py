"""Exit signals: SIGCHLD rebuilt on capabilities (DESIGN §4: kernel events arrive as
a notification's bits).

A process asks the kernel to OR bits into a notification (SIGNAL) when one of its
own child processes ends (PROCESS_MONITOR). The kernel watches the child itself, by
a pidfd, not by its connection: a child that fails before it ever connects (a
missing module, a bad argument) is signalled too, which is what a handler that
reaps its children needs. Only a parent may watch a process, as only a parent gets
SIGCHLD: it learns nothing it could not learn by waiting.

Each watch holds a descriptor, so each is charged to the process and its uid
("watched processes", quota.py). A watch ends when it fires or its owner ends.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from .._core.kcore import Notification, OpError
from ..errors import Status
from .process import Proc

Watch = Callable[[int, Callable[[], None]], None]
"""watch(fd, callback): call `callback` once `fd` is readable (the daemon's loop)."""


class ExitWatch:
    __slots__ = ("pidfd", "owner", "target", "bits")

    def __init__(self, pidfd: int, owner: Proc, target: Notification, bits: int):
        self.pidfd, self.owner, self.target, self.bits = pidfd, owner, target, bits


class ExitWatches:
    def __init__(self, signal: Callable[[Notification, int], None],
                 release: Callable[[Notification], None]) -> None:  # fmt: skip
        self._signal = signal  # Core.kernel_signal
        self._release = release  # Core.release
        self._by_fd: dict[int, ExitWatch] = {}
        self._watch: Watch | None = None
        self._unwatch: Callable[[int], object] | None = None

    def attach(self, watch: Watch, unwatch: Callable[[int], object]) -> None:
        """The daemon's event loop, which tells when a child ended."""
        self._watch, self._unwatch = watch, unwatch

    def add(self, owner: Proc, pid: int, target: Notification, bits: int) -> None:
        """When `pid`, a child of `owner`, ends, OR `bits` into `target`."""
        if self._watch is None:
            raise OpError(Status.INVALID_ARGS, "this kernel cannot watch processes")
        owner.charge("watched processes", 1)  # first: the descriptor budget may say no
        try:
            pidfd = _open_child(owner, pid)
        except OpError:
            owner.credit("watched processes", 1)
            raise
        target.refs += 1
        w = self._by_fd[pidfd] = ExitWatch(pidfd, owner, target, bits)
        self._watch(pidfd, lambda: self._ended(w))

    def owner_gone(self, owner: Proc) -> None:
        """`owner` ended: its watches end unfired (nobody is left to tell)."""
        for w in [w for w in self._by_fd.values() if w.owner is owner]:
            self._drop(w)

    def _ended(self, w: ExitWatch) -> None:
        if self._by_fd.get(w.pidfd) is w:
            self._signal(w.target, w.bits)
            self._drop(w)

    def _drop(self, w: ExitWatch) -> None:
        del self._by_fd[w.pidfd]
        assert self._unwatch is not None
        self._unwatch(w.pidfd)
        os.close(w.pidfd)
        w.owner.credit("watched processes", 1)
        self._release(w.target)


def _open_child(owner: Proc, pid: int) -> int:
    """A pidfd for `pid`, if it is a child of `owner`. The pidfd is opened first, so
    the process checked is the one it names (a pid can be reused; a pidfd cannot)."""
    if not 0 < pid < 1 << 31:  # a pid_t
        raise OpError(Status.INVALID_ARGS, f"monitor: {pid} is not a process id")
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        raise OpError(Status.NOT_FOUND, f"monitor: no process {pid}") from None
    except OSError as e:  # EMFILE and the like: this one operation fails
        raise OpError(Status.NO_RESOURCES, f"monitor: {e.strerror}") from None
    parent = _parent_of(pid)
    if parent != owner.pid:
        os.close(pidfd)
        if parent < 0:  # reaped since: the parent waited for it already
            raise OpError(Status.NOT_FOUND, f"monitor: no process {pid}")
        raise OpError(Status.ACCESS_DENIED, f"monitor: process {pid} is not a child of "
                      f"process {owner.pid}: only a parent is told of its end")  # fmt: skip
    return pidfd


def _parent_of(pid: int) -> int:
    """The parent pid (field 4 of /proc/<pid>/stat, after the name in parentheses);
    -1 if the process is gone (reaped) already."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return -1
    return int(stat[stat.rindex(b")") + 2 :].split()[1])
