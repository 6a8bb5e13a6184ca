"""A key-value service: `python examples/kv/server.py [workers]`.

Registers "demo.kv" (any user may look it up) and serves until SIGINT/SIGTERM,
then finishes the calls in hand, unregisters and exits 0.
"""

import sys
import threading

from protocol import NAME, Delete, Get, Keys, Put

import kernel

store: dict[str, str] = {}
owners: dict[str, int] = {}  # key -> uid of its writer
lock = threading.Lock()  # handlers run in several worker threads
svc = kernel.Service(NAME, mode=0o666)


@svc.handler
def get(req: Get) -> str:
    return store[req.key]  # a KeyError here is a KeyError in the client


@svc.handler
def put(req: Put, ctx: kernel.RequestContext) -> None:
    with lock:
        if owners.setdefault(req.key, ctx.sender.uid) != ctx.sender.uid:
            raise PermissionError(f"{req.key!r} belongs to uid {owners[req.key]}")
        store[req.key] = req.value


@svc.handler
def delete(req: Delete, ctx: kernel.RequestContext) -> None:
    with lock:
        if owners.get(req.key, ctx.sender.uid) != ctx.sender.uid:
            raise PermissionError(f"{req.key!r} belongs to uid {owners[req.key]}")
        del store[req.key]
        del owners[req.key]


@svc.handler
def keys(req: Keys) -> list[str]:
    return sorted(k for k in store if k.startswith(req.prefix))


if __name__ == "__main__":
    workers = int(sys.argv[1]) if len(sys.argv) > 1 else 4
    print(f"serving {NAME} with {workers} workers", file=sys.stderr)
    svc.run(workers=workers)
