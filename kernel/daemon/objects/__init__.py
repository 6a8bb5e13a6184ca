"""Kernel objects. Each module splits validation (decode_*) from action (invoke_*)."""

from __future__ import annotations

from ...errors import Status


class OpError(Exception):
    """A request failed validation or could not be carried out; the caller gets `status`."""

    def __init__(self, status: Status, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class KernelObject:
    """Reference-counted by the capabilities that name it (DESIGN §5)."""

    kind = 0
    __slots__ = ("refs",)
    live = 0
    """Objects created and not yet destroyed, for the leak check at kernel exit."""

    def __init__(self) -> None:
        self.refs = 0
        KernelObject.live += 1

    def destroy(self) -> None:
        """The last capability is gone; fail whatever waits on the object."""
