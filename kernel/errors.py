"""Status codes and the exception tree, with the single place that maps one to the other.

Status numbers are grouped in ranges as Zircon does: parameter errors in the
-10s, state errors in the -20s, permission errors at -30, resources at -40.
"""

from __future__ import annotations

import enum


class Status(enum.IntEnum):
    OK = 0
    # parameter errors
    INVALID_ARGS = -10
    BAD_SLOT = -11
    WRONG_TYPE = -12
    TOO_LARGE = -13
    NOT_SUPPORTED = -14
    # state errors
    TIMED_OUT = -20
    PEER_CLOSED = -22  # -21 is reserved (was never used; keep the gap)
    CALLER_GONE = -23
    NOT_FOUND = -24
    CANCELLED = -25
    SHUTDOWN = -26
    ALREADY_EXISTS = -27
    BROKEN_PIPE = -28
    # permission
    ACCESS_DENIED = -30
    # resources
    NO_RESOURCES = -40


class WouldBlock(Exception):  # noqa: N818 - flow control, not an error (Trio)
    """A `_nowait` operation could not complete at once."""


class IPCError(Exception):
    """Base of every error mkipc raises. `status` is the kernel's status code."""

    status: Status = Status.INVALID_ARGS
    reply_kept = False
    """For a failed reply: the kernel still holds the reply capability (it may be retried)."""

    def __init__(self, message: str, status: Status | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status


class InvalidArgumentError(IPCError, ValueError):
    status = Status.INVALID_ARGS


class MessageTooLargeError(InvalidArgumentError):
    status = Status.TOO_LARGE


class InvalidCapabilityError(IPCError, ValueError):
    """The slot names no live capability of the right kind in this process."""

    status = Status.BAD_SLOT


class CallTimeoutError(IPCError, TimeoutError):
    status = Status.TIMED_OUT


class PeerClosedError(IPCError, ConnectionError):
    """The other side (a server, a caller, or the kernel itself) is gone."""

    status = Status.PEER_CLOSED


class PipeClosedError(PeerClosedError, BrokenPipeError):
    """A pipe write found no read end left (EPIPE)."""

    status = Status.BROKEN_PIPE


class CancelledCallError(IPCError):
    status = Status.CANCELLED


class NotFoundError(IPCError, LookupError):
    """No such name (the name server's lookup with timeout=0, unregister)."""

    status = Status.NOT_FOUND


class AlreadyExistsError(IPCError, FileExistsError):
    """The name is taken (register without replace=True)."""

    status = Status.ALREADY_EXISTS


class AccessDeniedError(IPCError, PermissionError):
    status = Status.ACCESS_DENIED


class ResourceLimitError(IPCError, OSError):
    status = Status.NO_RESOURCES


_BY_STATUS: dict[Status, type[IPCError]] = {
    Status.INVALID_ARGS: InvalidArgumentError,
    Status.BAD_SLOT: InvalidCapabilityError,
    Status.WRONG_TYPE: InvalidCapabilityError,
    Status.TOO_LARGE: MessageTooLargeError,
    Status.NOT_SUPPORTED: InvalidArgumentError,
    Status.TIMED_OUT: CallTimeoutError,
    Status.PEER_CLOSED: PeerClosedError,
    Status.CALLER_GONE: PeerClosedError,
    Status.SHUTDOWN: PeerClosedError,
    Status.BROKEN_PIPE: PipeClosedError,
    Status.CANCELLED: CancelledCallError,
    Status.NOT_FOUND: NotFoundError,
    Status.ALREADY_EXISTS: AlreadyExistsError,
    Status.ACCESS_DENIED: AccessDeniedError,
    Status.NO_RESOURCES: ResourceLimitError,
}


def error_for(status: int, what: str, reason: str) -> IPCError:
    """The exception for a failed operation: '<what>: <reason>'. The only mapping."""
    try:
        st = Status(status)
    except ValueError:
        suffix = f": {reason}" if reason else ""
        err = IPCError(f"{what}: unknown kernel status {status}{suffix}")
        err.status = status  # type: ignore[assignment]
        return err
    cls = _BY_STATUS.get(st, IPCError)
    return cls(f"{what}: {reason}" if reason else f"{what}: {st.name.lower()}", st)
