"""gRPC (grpcio) unary calls over a UNIX socket: the RPC stack many services standardise on.

No .proto and no generated code: the server registers a generic handler whose method passes
the request bytes straight back, and both sides use identity (de)serializers, so the row
measures gRPC's HTTP/2 transport and call machinery rather than protobuf.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from kernel.bench.mechanisms import PeerLostError, make_payload, register
from kernel.bench.mechanisms._served import (
    ServedMechanism,
    announce,
    exit_on_eof,
    missing_package,
)

_SERVICE = "mkipc.bench.Echo"
_METHOD = f"/{_SERVICE}/Echo"
_MAX_MESSAGE = 8 * 1024 * 1024  # above the largest payload of a sweep (1 MiB); default is 4 MiB
_OPTIONS = [
    ("grpc.max_send_message_length", _MAX_MESSAGE),
    ("grpc.max_receive_message_length", _MAX_MESSAGE),
]


def _identity(data: bytes) -> bytes:
    return data


@register
class GrpcUnix(ServedMechanism):
    name = "grpc.unix"

    def __init__(self) -> None:
        super().__init__()
        self._channel: Any = None
        self._call: Any = None
        self._payload = b""

    def unavailable(self) -> str | None:
        return missing_package("grpc", "grpcio")

    def setup(self, payload_size: int) -> None:
        self.teardown()
        grpc = importlib.import_module("grpc")  # optional: imported only when the row runs
        self._payload = make_payload(payload_size)
        target = f"unix:{os.path.join(self._private_dir(), 'grpc.sock')}"
        self._start_peer(__name__, [target])
        self._channel = grpc.insecure_channel(target, options=_OPTIONS)
        self._call = self._channel.unary_unary(
            _METHOD, request_serializer=_identity, response_deserializer=_identity
        )

    def roundtrip(self) -> None:
        if len(self._call(self._payload)) != len(self._payload):
            raise PeerLostError("gRPC: the echo has the wrong size")

    def _close_client(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = self._call = None


def peer_main(argv: list[str]) -> None:
    """The gRPC server: ``<control_fd> <ready_fd> <unix:path>``."""
    control_fd, ready_fd, target = int(argv[0]), int(argv[1]), argv[2]
    exit_on_eof(control_fd)
    grpc = importlib.import_module("grpc")
    futures = importlib.import_module("concurrent.futures")
    handler = grpc.unary_unary_rpc_method_handler(
        lambda request, context: request,
        request_deserializer=_identity,
        response_serializer=_identity,
    )
    # One worker: one client calls at a time, and more threads would only contend for the GIL.
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1), options=_OPTIONS)
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler(_SERVICE, {"Echo": handler})]
    )
    server.add_insecure_port(target)
    server.start()
    announce(ready_fd)
    server.wait_for_termination()  # ends at the control pipe's EOF, or at the lifetime alarm
