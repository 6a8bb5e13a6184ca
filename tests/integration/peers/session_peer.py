"""A server of direct sessions for tests/integration/test_session.py.

usage: session_peer.py MODE   (inherits `ep` to serve and `report` to tell the test)
  echo    accept every offer; serve each session in a thread: calls are echoed,
          one-way sends counted; a call b"count" answers "<sends>:<crc32 of them>";
          a call b"bulk <n> ..." answers itself padded with b"." to n bytes
  hold    like echo, but the first call is answered only after 1 s, with b"late"
  group   like echo (calls only), but every session is a member of one
          SessionGroup, served by one thread
  keep    accept every offer and keep the session open, serving nothing
  jitter  answer each call after a random 0-60 µs of busy work, counting the
          replies delivered and those refused because the caller gave up; a call
          b"tally" answers "<delivered>:<refused>" (itself not counted)
  parting take the first session's first 16 calls, answer them all (as echo),
          close it with close(linger=10) and report {"event": "parted"}
  aparting  the same with the asyncio face (AsyncSessionServer)
In echo and hold, a reply the session refuses (its caller gave up on the call) is
reported as JSON {"event": "reply refused", "call": ..., "error": ..., "status": ...}.
Every session's end is reported as JSON {"event": "ended", "error": ..., "seen": [...]}
where `seen` lists (badge, pid, uid, sender_id) of what arrived.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import threading
import time
import zlib
from collections.abc import Callable

import kernel


def report(rep: kernel.EndpointCap, **what: object) -> None:
    rep.send(json.dumps(what).encode(), timeout=30)


def answer(m: kernel.SessionMessage, data: bytes, rep: kernel.EndpointCap) -> None:
    try:
        m.reply(data)
    except kernel.PeerClosedError as e:
        if e.status != kernel.Status.CALLER_GONE:
            raise  # the session ended: serve() reports that
        report(rep, event="reply refused", call=m.data.decode(), error=type(e).__name__,
               status=int(e.status), text=str(e))  # fmt: skip


def serve(s: kernel.SessionServer, rep: kernel.EndpointCap, hold: bool) -> None:
    sends, crc, seen = 0, 0, set()
    try:
        while True:
            m = s.recv()
            seen.add((m.badge, m.sender.pid, m.sender.uid, m.sender_id))
            if not m.is_call:
                sends += 1
                crc = zlib.crc32(m.data, crc)
            elif m.data == b"count":
                answer(m, f"{sends}:{crc}".encode(), rep)
            elif hold:
                hold = False
                time.sleep(1.0)
                answer(m, b"late", rep)
            else:
                answer(m, echoed(m.data), rep)
    except kernel.IPCError as e:
        report(rep, event="ended", error=type(e).__name__, text=str(e), seen=sorted(seen))
    finally:
        s.close()


def echoed(data: bytes) -> bytes:
    if data.startswith(b"bulk "):
        return data.ljust(int(data.split()[1]), b".")
    return data


def serve_group(group: kernel.SessionGroup, rep: kernel.EndpointCap) -> None:
    while True:
        for m in group.recv_many():
            if m.is_call:
                answer(m, echoed(m.data), rep)


def ended(rep: kernel.EndpointCap) -> Callable[[kernel.SessionServer, Exception], None]:
    """A SessionGroup's on_end: the end of each member, reported as serve() does."""

    def on_end(s: kernel.SessionServer, e: Exception) -> None:
        report(rep, event="ended", error=type(e).__name__, text=str(e), seen=[])

    return on_end


def serve_jitter(s: kernel.SessionServer) -> None:
    rng = random.Random(11)
    delivered = refused = 0
    try:
        while True:
            m = s.recv()
            if m.data == b"tally":
                m.reply(f"{delivered}:{refused}".encode())
                continue
            until = time.perf_counter_ns() + rng.randrange(60_000)
            while time.perf_counter_ns() < until:
                pass
            try:
                m.reply(m.data)
                delivered += 1
            except kernel.PeerClosedError as e:
                if e.status != kernel.Status.CALLER_GONE:
                    raise
                refused += 1
    except kernel.IPCError:
        pass  # the caller closed the session
    finally:
        s.close()


PARTING_CALLS = 16


def serve_parting(s: kernel.SessionServer, rep: kernel.EndpointCap) -> None:
    calls = [s.recv() for _ in range(PARTING_CALLS)]
    for m in calls:
        m.reply(echoed(m.data))  # most are kept: the caller's loop is held
    s.close(linger=10)
    report(rep, event="parted")


async def aparting() -> None:
    async with kernel.connect_async() as k:
        ep, rep = k.inherited["ep"], k.inherited["report"]
        assert isinstance(ep, kernel.AsyncEndpointCap)
        assert isinstance(rep, kernel.AsyncEndpointCap)
        await rep.send(json.dumps({"event": "ready"}).encode(), timeout=30)
        s = await ep.accept_session(await ep.recv())
        calls = [await s.recv() for _ in range(PARTING_CALLS)]
        for m in calls:
            m.reply(echoed(m.data))
        await s.close(linger=10)
        await rep.send(json.dumps({"event": "parted"}).encode(), timeout=30)


def main() -> None:
    mode = sys.argv[1]
    if mode == "aparting":
        asyncio.run(aparting())
        return
    k = kernel.connect()
    ep, rep = k.inherited["ep"], k.inherited["report"]
    kept, threads = [], []
    group = kernel.SessionGroup(on_end=ended(rep))
    if mode == "group":
        threads.append(threading.Thread(target=serve_group, args=(group, rep), daemon=True))
        threads[-1].start()
    report(rep, event="ready")
    while True:
        try:
            offer = ep.recv()
        except kernel.IPCError:  # e.g. its capability was revoked: let sessions finish
            for t in threads:
                t.join(30)
            return
        if not offer.session_offer:
            if offer.is_call:
                offer.reply(b"kernel path: " + offer.data)
            continue
        try:
            s = ep.accept_session(offer)
        except kernel.IPCError as e:
            report(rep, event="accept failed", error=type(e).__name__, text=str(e))
            continue
        if mode == "keep":
            kept.append(s)
            report(rep, event="accepted", n=len(kept))
            continue
        if mode == "group":
            group.add(s)
            continue
        if mode == "jitter":
            threads.append(threading.Thread(target=serve_jitter, args=(s,), daemon=True))
        elif mode == "parting":
            threads.append(threading.Thread(target=serve_parting, args=(s, rep), daemon=True))
        else:
            threads.append(
                threading.Thread(target=serve, args=(s, rep, mode == "hold"), daemon=True)
            )
        threads[-1].start()


if __name__ == "__main__":
    main()
