"""The name server's paths: lookup and register, through a private kernel's name server.

No peer process: the name server the kernel starts at boot is the other side (its
CPU time is counted with the daemon's, as a peer of this row).

A lookup hands this process a new capability each time; keeping them all would
fill its table. Each timed lookup drops the previous one, whose object submits
its close without waiting for it (as a user's loop would). The kernel handles
that close in the same pass as the lookup call: the figure is one lookup plus
one in-kernel close, one round trip.
"""

from __future__ import annotations

from kernel.bench.mechanisms import register
from kernel.bench.mechanisms.mkipc_call import _START_TIMEOUT_S, _MkipcMechanism

NAME = "bench.lookup"


class _NamesMechanism(_MkipcMechanism):
    def _start(self) -> None:
        self._start_kernel()
        assert self._k is not None
        self._names = self._k.names
        self._ep = self._k.endpoint()
        self._names.register(NAME, self._ep, mode=0o600, replace=True)
        self._names.lookup(NAME, timeout=_START_TIMEOUT_S).close()  # warm both sides

    def peer_pids(self) -> list[int]:
        """The daemon and its name server (the daemon's child)."""
        if self._kernel is None:
            return super().peer_pids()
        return super().peer_pids() + self._kernel.children()


@register
class MkipcLookup(_NamesMechanism):
    name = "mkipc.names.lookup"

    def setup(self, payload_size: int) -> None:
        self._start()
        self._prev = self._names.lookup(NAME)

    def roundtrip(self) -> None:
        # The capability this drops closes itself, without waiting for the kernel's
        # answer (kernel/client/_common.py CapBase): what a user's loop does.
        self._prev = self._names.lookup(NAME)


@register
class MkipcRegister(_NamesMechanism):
    """Register the same endpoint under the same name again (replace=True)."""

    name = "mkipc.names.register"

    def setup(self, payload_size: int) -> None:
        self._start()

    def roundtrip(self) -> None:
        self._names.register(NAME, self._ep, mode=0o600, replace=True)
