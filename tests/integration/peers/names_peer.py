"""A name server client driven by JSON lines on stdin, one JSON answer per line on stdout.

usage: names_peer.py [--uid U --gid G] [--async]
  --uid/--gid  after importing kernel (as root), drop every group and switch to this
               uid/gid with setresgid/setresuid, then connect (the permission tests)
  --async      use the asyncio face (one event loop; commands run one at a time)

It first prints {"ready": true, "pid": .., "uid": .., "gid": ..}, or {"ok": false, ..}
if connecting failed. Commands ({"op": ..., ...}) and what they do:
  register name mode=0o660 replace=false   register a new endpoint (kept under `name`)
                                           and serve it: each call is answered with
                                           b"<data>|<badge>|<pid>" (the badge seen)
  lookup name timeout=0 key=name           look up; keep the capability under `key`;
                                           answer its rights and badge
  call key data                            call a kept capability (5 s timeout)
  recv key                                 recv(timeout=0) on a kept capability
  unregister name revoke=false
  list prefix=""                           answer the entry names
  watch name present=true timeout=5
  notify name bits present=true key=name   arm a one-shot signal into a new
                                           notification kept under `key`
  poll key                                 answer the word of that notification
  exit                                     disconnect and exit 0
Failures answer {"ok": false, "type": <exception class>, "msg": str(e), "perm": bool}.
Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
from typing import Any

import kernel
import kernel.client.names  # noqa: F401 - imported before dropping privileges
import services.names.protocol  # noqa: F401

LIMIT = 5.0


def drop_privileges(uid: int, gid: int) -> None:
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)


def failed(e: BaseException) -> dict[str, Any]:
    return {
        "ok": False,
        "type": type(e).__name__,
        "msg": str(e),
        "perm": isinstance(e, PermissionError),
    }


def entry(e: Any) -> dict[str, Any] | None:
    if e is None:
        return None
    return {"name": e.name, "uid": e.uid, "gid": e.gid, "mode": e.mode, "rights": int(e.rights),
            "pid": e.pid}  # fmt: skip


def serve(ep: kernel.EndpointCap) -> None:
    pid = os.getpid()
    while True:
        try:
            msg = ep.recv()
            msg.reply(b"%s|%d|%d" % (msg.data, msg.badge, pid))
        except kernel.IPCError:
            return  # unregistered with revoke, or the connection is closing


class Sync:
    def __init__(self, k: kernel.Kernel) -> None:
        self.k = k
        self.caps: dict[str, Any] = {}

    def run(self, cmd: dict[str, Any]) -> dict[str, Any]:
        op, names = cmd["op"], self.k.names
        if op == "register":
            ep = self.k.endpoint()
            e = names.register(cmd["name"], ep, mode=cmd.get("mode", 0o660),
                               replace=cmd.get("replace", False))  # fmt: skip
            self.caps["served:" + cmd["name"]] = ep
            threading.Thread(target=serve, args=(ep,), daemon=True).start()
            return {"ok": True, "entry": entry(e)}
        if op == "lookup":
            cap = names.lookup(cmd["name"], timeout=cmd.get("timeout", 0))
            self.caps[cmd.get("key", cmd["name"])] = cap
            info = cap.info()
            return {"ok": True, "rights": int(info.rights), "badge": info.badge}
        if op == "call":
            return {
                "ok": True,
                "data": self.caps[cmd["key"]]
                .call(cmd["data"].encode(), timeout=LIMIT)
                .data.decode(),
            }
        if op == "recv":
            self.caps[cmd["key"]].recv(timeout=0)
            return {"ok": True}
        if op == "unregister":
            names.unregister(cmd["name"], revoke=cmd.get("revoke", False))
            return {"ok": True}
        if op == "list":
            return {"ok": True, "names": [e.name for e in names.list(cmd.get("prefix", ""))]}
        if op == "watch":
            e = names.watch(
                cmd["name"], present=cmd.get("present", True), timeout=cmd.get("timeout", LIMIT)
            )
            return {"ok": True, "entry": entry(e)}
        if op == "notify":
            n = self.caps.setdefault(cmd.get("key", cmd["name"]), self.k.notification())
            names.notify(cmd["name"], n, cmd["bits"], present=cmd.get("present", True))
            return {"ok": True}
        if op == "poll":
            return {"ok": True, "word": self.caps[cmd["key"]].poll()}
        raise ValueError(f"unknown op {op!r}")


class Async:
    def __init__(self, k: kernel.AsyncKernel) -> None:
        self.k = k
        self.caps: dict[str, Any] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    async def serve(self, ep: Any) -> None:
        pid = os.getpid()
        while True:
            try:
                msg = await ep.recv()
                await msg.reply(b"%s|%d|%d" % (msg.data, msg.badge, pid))
            except kernel.IPCError:
                return

    async def run(self, cmd: dict[str, Any]) -> dict[str, Any]:
        op, names = cmd["op"], self.k.names
        if op == "register":
            ep = await self.k.endpoint()
            e = await names.register(cmd["name"], ep, mode=cmd.get("mode", 0o660),
                                     replace=cmd.get("replace", False))  # fmt: skip
            self.caps["served:" + cmd["name"]] = ep
            task = asyncio.get_running_loop().create_task(self.serve(ep))
            self.tasks.add(task)
            return {"ok": True, "entry": entry(e)}
        if op == "lookup":
            cap = await names.lookup(cmd["name"], timeout=cmd.get("timeout", 0))
            self.caps[cmd.get("key", cmd["name"])] = cap
            info = await cap.info()
            return {"ok": True, "rights": int(info.rights), "badge": info.badge}
        if op == "call":
            reply = await self.caps[cmd["key"]].call(cmd["data"].encode(), timeout=LIMIT)
            return {"ok": True, "data": reply.data.decode()}
        if op == "recv":
            await self.caps[cmd["key"]].recv(timeout=0)
            return {"ok": True}
        if op == "unregister":
            await names.unregister(cmd["name"], revoke=cmd.get("revoke", False))
            return {"ok": True}
        if op == "list":
            return {"ok": True, "names": [e.name for e in await names.list(cmd.get("prefix", ""))]}
        if op == "watch":
            e = await names.watch(cmd["name"], present=cmd.get("present", True),
                                  timeout=cmd.get("timeout", LIMIT))  # fmt: skip
            return {"ok": True, "entry": entry(e)}
        if op == "notify":
            key = cmd.get("key", cmd["name"])
            if key not in self.caps:
                self.caps[key] = await self.k.notification()
            await names.notify(cmd["name"], self.caps[key], cmd["bits"],
                               present=cmd.get("present", True))  # fmt: skip
            return {"ok": True}
        if op == "poll":
            return {"ok": True, "word": await self.caps[cmd["key"]].poll()}
        raise ValueError(f"unknown op {op!r}")


def say(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def hello(k: Any) -> None:
    say({"ready": True, "pid": os.getpid(), "uid": os.getuid(), "gid": os.getgid()})


def main_sync() -> int:
    try:
        k = kernel.connect(autostart=False)
    except Exception as e:
        say(failed(e))
        return 1
    with k:
        peer = Sync(k)
        hello(k)
        for line in sys.stdin:
            cmd = json.loads(line)
            if cmd["op"] == "exit":
                say({"ok": True})
                return 0
            try:
                say(peer.run(cmd))
            except Exception as e:
                say(failed(e))
    return 0


async def main_async() -> int:
    loop = asyncio.get_running_loop()
    try:
        k = kernel.connect_async(autostart=False)
        await k.__aenter__()
    except Exception as e:
        say(failed(e))
        return 1
    try:
        peer = Async(k)
        hello(k)
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                return 0
            cmd = json.loads(line)
            if cmd["op"] == "exit":
                say({"ok": True})
                return 0
            try:
                say(await peer.run(cmd))
            except Exception as e:
                say(failed(e))
    finally:
        for task in peer.tasks:
            task.cancel()
        await k.__aexit__(None, None, None)


def main() -> int:
    args = sys.argv[1:]
    if "--uid" in args:
        uid = int(args[args.index("--uid") + 1])
        gid = int(args[args.index("--gid") + 1])
        drop_privileges(uid, gid)
    if "--async" in args:
        return asyncio.run(main_async())
    return main_sync()


if __name__ == "__main__":
    sys.exit(main())
