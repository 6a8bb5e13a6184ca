"""kernel.Service, as an application uses it: typed requests, looked up by name.

The peer runs a Service with one or four worker threads; the client calls it with a
ServiceClient found through the name server. The payload rides in the request as
bytes. Four workers on one connection measure the hand-off between threads that
share a connection's rings. ``mkipc.service.async64`` calls the one-worker service
from 64 asyncio tasks through an AsyncServiceClient (a throughput row, as
``mkipc.call.async64``): every call rides the client's session once it is open.
"""

from __future__ import annotations

import sys

import msgspec

import kernel
from kernel.bench.mechanisms import make_payload, register
from kernel.bench.mechanisms.mkipc_async import BURST, burst_in_flight, close_in_loop, open_in_loop
from kernel.bench.mechanisms.mkipc_call import _START_TIMEOUT_S, MkipcCall, serve_role

_NAME = "bench.service"


class Echo(msgspec.Struct, tag=True):
    data: bytes


def echo(req: Echo) -> bytes:
    return req.data


class _Service(MkipcCall):
    workers = 1

    def setup(self, payload_size: int) -> None:
        if payload_size > kernel.MAX_PAYLOAD - 64:
            raise ValueError(f"a service request carries at most about {kernel.MAX_PAYLOAD} bytes")
        self._start_kernel()
        self._spawn({})  # the peer registers the name itself
        assert self._k is not None
        self._client = kernel.ServiceClient.lookup(self._k, _NAME, timeout=_START_TIMEOUT_S)
        self._request = Echo(make_payload(payload_size))
        self._client.call(self._request, timeout=_START_TIMEOUT_S)  # the service is up

    def roundtrip(self) -> None:
        self._client.call(self._request)

    def teardown(self) -> None:
        client = self.__dict__.pop("_client", None)
        if client is not None:
            client.close()
        super().teardown()


@register
class MkipcService(_Service):
    name = "mkipc.service"
    peer_role = "service1"


@register
class MkipcService4(_Service):
    name = "mkipc.service.4workers"
    peer_role = "service4"
    workers = 4


@register
class MkipcServiceAsync64(_Service):
    name = "mkipc.service.async64"
    peer_role = "service1"
    batch = BURST  # a throughput row: calls per second

    def setup(self, payload_size: int) -> None:
        super().setup(payload_size)
        assert self._kernel is not None
        self._loop, self._ak, self._aclient = open_in_loop(self._kernel.path, self._lookup)

    async def _lookup(self, ak: kernel.AsyncKernel) -> kernel.AsyncServiceClient:
        client = await kernel.AsyncServiceClient.lookup(ak, _NAME, timeout=_START_TIMEOUT_S)
        await client.call(self._request, timeout=_START_TIMEOUT_S)  # its session is open
        return client

    def roundtrip(self) -> None:
        call = self._aclient.call
        self._loop.run_until_complete(burst_in_flight(lambda _: call(self._request), b""))

    def teardown(self) -> None:
        loop = self.__dict__.pop("_loop", None)
        if loop is not None:
            close_in_loop(loop, self._ak, self._aclient)
        super().teardown()


def _serve(workers: int) -> None:
    svc = kernel.Service(_NAME, [echo], mode=0o600, replace=True)
    svc.run(workers=workers)


if __name__ == "__main__":
    serve_role(sys.argv[1:], {
        "service1": lambda k: _serve(1),
        "service4": lambda k: _serve(4),
    })  # fmt: skip
