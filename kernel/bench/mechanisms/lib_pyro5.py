"""Pyro5 remote objects, found through the Pyro5 name server: Python's classic RPC library.

Two peers: the name server (on 127.0.0.1, a free port, no UDP broadcast responder) and the echo
server, which registers its object there. Set-up looks the object up by name once, as a Pyro
client does; each timed round trip is one call on the proxy. The payload goes through Pyro's
default serializer (serpent, which carries bytes as base64), because that is what users get.
"""

from __future__ import annotations

import importlib
from typing import Any

from kernel.bench.mechanisms import PeerLostError, make_payload, register
from kernel.bench.mechanisms._served import (
    ServedMechanism,
    announce,
    exit_on_eof,
    missing_package,
)

_HOST = "127.0.0.1"
_OBJECT_NAME = "mkipc.bench.echo"


@register
class Pyro5NameServer(ServedMechanism):
    name = "pyro5"

    def __init__(self) -> None:
        super().__init__()
        self._proxy: Any = None
        self._payload = b""
        self._tobytes: Any = None

    def unavailable(self) -> str | None:
        return missing_package("Pyro5", "Pyro5")

    def setup(self, payload_size: int) -> None:
        self.teardown()
        api = importlib.import_module("Pyro5.api")  # optional: imported only when the row runs
        # serpent carries bytes as {"data": <base64>, "encoding": "base64"}; users undo it so.
        self._tobytes = importlib.import_module("serpent").tobytes
        self._payload = make_payload(payload_size)
        ns_port = self._start_peer(__name__, ["nameserver"])
        self._start_peer(__name__, ["echo", ns_port])
        with api.locate_ns(host=_HOST, port=int(ns_port)) as ns:
            uri = ns.lookup(_OBJECT_NAME)
        self._proxy = api.Proxy(uri)
        self._proxy._pyroBind()  # connect now, not inside the first timed call

    def roundtrip(self) -> None:
        echo = self._tobytes(self._proxy.echo(self._payload))
        if len(echo) != len(self._payload):
            raise PeerLostError("Pyro5: the echo has the wrong size")

    def _close_client(self) -> None:
        if self._proxy is not None:
            self._proxy._pyroRelease()
            self._proxy = None


def peer_main(argv: list[str]) -> None:
    """``<control_fd> <ready_fd> nameserver`` or ``... echo <name server port>``."""
    control_fd, ready_fd, role, *rest = argv
    exit_on_eof(int(control_fd))
    if role == "nameserver":
        _serve_nameserver(int(ready_fd))
    else:
        _serve_echo(int(ready_fd), int(rest[0]))


def _serve_nameserver(ready_fd: int) -> None:
    nameserver = importlib.import_module("Pyro5.nameserver")
    # port 0: the OS picks a free port, so parallel benchmarks never collide.
    uri, daemon, _ = nameserver.start_ns(host=_HOST, port=0, enableBroadcast=False)
    announce(ready_fd, str(uri.port))
    daemon.requestLoop()  # ends at the control pipe's EOF, or at the lifetime alarm


def _serve_echo(ready_fd: int, ns_port: int) -> None:
    api = importlib.import_module("Pyro5.api")

    @api.expose
    class Echo:
        def echo(self, data: Any) -> Any:
            return data  # still serpent's base64 dict: sent back as it came

    daemon = api.Daemon(host=_HOST, port=0)
    uri = daemon.register(Echo())
    with api.locate_ns(host=_HOST, port=ns_port) as ns:
        ns.register(_OBJECT_NAME, uri)
    announce(ready_fd)
    daemon.requestLoop()
