"""iceoryx2's Python bindings: zero-copy publish/subscribe over shared memory, no broker.

A round trip is a sample on a "ping" service and its echo on a "pong" service, both slices of
bytes. iceoryx2 has no blocking receive, so a reader either polls or waits on an event service
that the writer notifies after each sample; each way is its own row:

- ``iceoryx2.spin``: both sides poll ``receive()``. The echo peer backs off to 1 ms sleeps once
  it has been idle for 10 ms, so it does not eat a core while the other rows run (the first
  round trip of each run may pay that 1 ms; warm-up and the percentiles show it).
- ``iceoryx2.event``: both sides sleep in ``Listener.timed_wait`` until notified.

Service names carry this process's pid and the row's id, so parallel benchmarks never meet.
"""

from __future__ import annotations

import ctypes
import importlib
import os
import threading
import time
from typing import Any

from kernel.bench.mechanisms import PeerLostError, make_payload, register
from kernel.bench.mechanisms._served import (
    ServedMechanism,
    announce,
    exit_on_eof,
    missing_package,
)

_WAIT_SLICE_MS = 100  # a blocked wait re-checks the abort flag this often
_SPIN_IDLE_S = 0.010  # the spinning peer's idle time before it starts to sleep between polls
_IDLE_SLEEP_S = 0.001


class _Ports:
    """One side's publisher, subscriber and (for the event row) notifier and listener."""

    def __init__(self, iox2: Any, prefix: str, send: str, recv: str, size: int) -> None:
        self.iox2 = iox2
        self.node = iox2.NodeBuilder.new().create(iox2.ServiceType.Ipc)
        slice_type = iox2.Slice[ctypes.c_uint8]
        pub_svc, sub_svc = (self._pubsub(f"{prefix}/{name}", slice_type) for name in (send, recv))
        self.publisher = (
            pub_svc.publisher_builder()
            .initial_max_slice_len(size)
            .allocation_strategy(iox2.AllocationStrategy.PowerOfTwo)
            .create()
        )
        self.subscriber = sub_svc.subscriber_builder().create()
        self.notifier = self._event(f"{prefix}/{send}.ev").notifier_builder().create()
        self.listener = self._event(f"{prefix}/{recv}.ev").listener_builder().create()

    def _pubsub(self, name: str, slice_type: Any) -> Any:
        builder = self.node.service_builder(self.iox2.ServiceName.new(name))
        return builder.publish_subscribe(slice_type).open_or_create()

    def _event(self, name: str) -> Any:
        return self.node.service_builder(self.iox2.ServiceName.new(name)).event().open_or_create()

    def send(self, data: bytes) -> None:
        sample = self.publisher.loan_slice_uninit(len(data))
        ctypes.memmove(sample.payload().data_ptr, data, len(data))
        sample.assume_init().send()

    def try_recv(self) -> bytes | None:
        sample = self.subscriber.receive()
        if sample is None:
            return None
        payload = sample.payload()
        data = ctypes.string_at(payload.data_ptr, payload.number_of_elements)
        sample.delete()  # hand the chunk back to the publisher now, not at garbage collection
        return data

    def close(self) -> None:
        """Delete the ports now; the node goes with the last reference to this object."""
        for port in (self.publisher, self.subscriber, self.notifier, self.listener):
            port.delete()


class _Iceoryx2(ServedMechanism):
    mode = ""  # "spin" or "event"

    def __init__(self) -> None:
        super().__init__()
        self._ports: _Ports | None = None
        self._payload = b""
        self._aborted = False

    def unavailable(self) -> str | None:
        return missing_package("iceoryx2", "iceoryx2")

    def setup(self, payload_size: int) -> None:
        self.teardown()
        iox2 = importlib.import_module("iceoryx2")  # optional: imported only when the row runs
        iox2.set_log_level(iox2.LogLevel.Error)
        self._payload = make_payload(payload_size)
        self._aborted = False
        prefix = f"mkipc-bench/{os.getpid()}/{id(self):x}"
        # Our subscriber exists before the peer's publisher, and the peer is ready only after
        # its subscriber exists, so no sample is ever sent to nobody.
        self._ports = _Ports(iox2, prefix, "ping", "pong", payload_size)
        self._start_peer(__name__, [self.mode, prefix, str(payload_size)])
        self._ports.publisher.update_connections()

    def roundtrip(self) -> None:
        ports = self._ports
        assert ports is not None, "iceoryx2: roundtrip before setup"
        ports.send(self._payload)
        if self.mode == "event":
            ports.notifier.notify()
        echo = self._wait_echo(ports)
        if len(echo) != len(self._payload):
            raise PeerLostError("iceoryx2: the echo has the wrong size")

    def _wait_echo(self, ports: _Ports) -> bytes:
        wait_slice = ports.iox2.Duration.from_millis(_WAIT_SLICE_MS)
        while (echo := ports.try_recv()) is None:  # bounded by abort() from the watchdog
            if self._aborted:
                raise PeerLostError("iceoryx2: aborted")
            if self.mode == "event":
                ports.listener.timed_wait(wait_slice)
        return echo

    def abort(self) -> None:
        self._aborted = True  # the polling loop sees it; a dead peer wakes nothing
        super().abort()

    def _close_client(self) -> None:
        if self._ports is not None:
            self._ports.close()
            self._ports = None


@register
class Iceoryx2Spin(_Iceoryx2):
    name = "iceoryx2.spin"
    mode = "spin"


@register
class Iceoryx2Event(_Iceoryx2):
    name = "iceoryx2.event"
    mode = "event"


def peer_main(argv: list[str]) -> None:
    """The echo peer: ``<control_fd> <ready_fd> <spin|event> <service prefix> <size>``."""
    control_fd, ready_fd, mode, prefix, size = argv
    stop = threading.Event()  # set at the control pipe's EOF: leave the loop, clean up the node
    exit_on_eof(int(control_fd), stop)
    iox2 = importlib.import_module("iceoryx2")
    iox2.set_log_level(iox2.LogLevel.Error)
    ports = _Ports(iox2, prefix, "pong", "ping", int(size))
    ports.publisher.update_connections()
    announce(int(ready_fd))
    if mode == "event":
        _echo_on_events(ports, stop)
    else:
        _echo_spinning(ports, stop)
    ports.close()  # iceoryx2 removes the node's shared memory when its last handle goes


def _echo_on_events(ports: _Ports, stop: threading.Event) -> None:
    wait_slice = ports.iox2.Duration.from_millis(_WAIT_SLICE_MS)
    while not stop.is_set():  # ends at the control pipe's EOF, or at the lifetime alarm
        while (data := ports.try_recv()) is not None:
            ports.send(data)
            ports.notifier.notify()
        ports.listener.timed_wait(wait_slice)


def _echo_spinning(ports: _Ports, stop: threading.Event) -> None:
    idle_since = time.monotonic()
    while not stop.is_set():  # ends at the control pipe's EOF, or at the lifetime alarm
        data = ports.try_recv()
        if data is not None:
            ports.send(data)
            idle_since = time.monotonic()
        elif time.monotonic() - idle_since > _SPIN_IDLE_S:
            time.sleep(_IDLE_SLEEP_S)
