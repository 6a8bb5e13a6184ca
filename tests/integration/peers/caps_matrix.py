"""Try every operation on every inherited capability; print the outcomes as JSON.

usage: caps_matrix.py {sync|async}

Inherited names (besides "srv", a full-rights endpoint used to set up reply_recv):
  "<kind>/<rights>/direct"  the parent derived exactly <rights> and handed it over;
  "<kind>/<rights>/via"     <rights> lacks COPY, which inheritance needs, so the parent
                            handed <rights>|COPY and this process narrows it itself.
Nothing here blocks: blocking forms use timeout=0. An outcome is "ok" (done),
"blocked" (TimeoutError or WouldBlock: the rights check passed), "denied"
(AccessDeniedError), "invalid" (InvalidCapabilityError) or "error" (anything else).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import sys
import threading
from typing import Any

import kernel
from kernel import Rights

FACE = sys.argv[1] if len(sys.argv) > 1 else "sync"
BADGE = 0xB0D6E


async def run(x: Any) -> Any:
    return await x if inspect.isawaitable(x) else x


async def attempt(fn: Any) -> tuple[str, str, Any]:
    try:
        value = await run(fn())
    except (TimeoutError, kernel.WouldBlock) as e:
        return "blocked", str(e), None
    except kernel.AccessDeniedError as e:
        return "denied", str(e), None
    except kernel.InvalidCapabilityError as e:
        return "invalid", str(e), None
    except Exception as e:  # reported, and the parent fails the case
        return "error", f"{type(e).__name__}: {e}", None
    return "ok", "", value


async def reply_recv_case(k: Any, srv: Any, cap: Any) -> tuple[str, str, Any]:
    """Put a call in flight, receive it on `srv`, answer it through `cap.reply_recv`."""
    got: dict[str, Any] = {}
    if FACE == "sync":

        def caller() -> None:
            got["reply"] = srv.call(b"rr", timeout=10).data

        t = threading.Thread(target=caller)
        t.start()
        msg = srv.recv(timeout=10)
        outcome = await attempt(lambda: cap.reply_recv(msg, b"answer", timeout=0))
        if outcome[0] != "blocked":  # refused before replying: the call is still ours
            await attempt(lambda: msg.reply(b"answer"))
        t.join(15)
    else:

        async def caller() -> None:
            got["reply"] = (await srv.call(b"rr", timeout=10)).data

        task = asyncio.create_task(caller())
        msg = await srv.recv(timeout=10)
        outcome = await attempt(lambda: cap.reply_recv(msg, b"answer", timeout=0))
        if outcome[0] != "blocked":
            await attempt(lambda: msg.reply(b"answer"))
        await asyncio.wait_for(task, 15)
    if got.get("reply") != b"answer":
        return "error", f"the caller got {got!r}", None
    return outcome


async def exercise(k: Any, name: str, cap: Any, srv: Any) -> dict[str, Any]:
    kind = name.split("/")[0]
    wrong = kernel.NotificationCap if kind == "endpoint" else kernel.EndpointCap
    if FACE == "async":
        wrong = kernel.AsyncNotificationCap if kind == "endpoint" else kernel.AsyncEndpointCap
    out: dict[str, Any] = {}

    def note(op: str, res: tuple[str, str, Any]) -> Any:
        out[op] = [res[0], res[1]]
        return res[2]

    info = note("info", await attempt(cap.info))
    out["rights"] = int(info.rights) if info else None
    out["badge"] = info.badge if info else None
    if kind == "endpoint":
        note("send", await attempt(lambda: cap.send(b"x", timeout=0)))
        note("send_nowait", await attempt(lambda: cap.send_nowait(b"x")))
        note("call", await attempt(lambda: cap.call(b"x", timeout=0)))
        note("recv", await attempt(lambda: cap.recv(timeout=0)))
        note("reply_recv", await reply_recv_case(k, srv, cap))
        note("wrong_type", await attempt(lambda: wrong(k, cap.slot).poll()))
    else:
        note("signal", await attempt(lambda: cap.signal(1)))
        note("wait", await attempt(lambda: cap.wait(timeout=0)))
        note("poll", await attempt(cap.poll))
        note("wrong_type", await attempt(lambda: wrong(k, cap.slot).send_nowait(b"x")))
    copied = note("copy", await attempt(cap.copy))
    if copied is not None:
        out["copy_rights"] = int((await run(copied.info())).rights)
    note("copy_wider", await attempt(lambda: cap.copy(rights=Rights.ALL)))
    minted = note("mint", await attempt(lambda: cap.mint(badge=BADGE)))
    if minted is not None:
        out["mint_badge"] = (await run(minted.info())).badge
    out["revoked"] = note("revoke", await attempt(cap.revoke))
    for extra in (copied, minted):  # still there if the revoke was denied
        if extra is not None:
            await attempt(extra.close)
    note("close", await attempt(cap.close))
    note("after_close", await attempt(cap.info))
    return out


async def main() -> int:
    if FACE == "async":
        k: Any = await kernel.connect_async(autostart=False)
    else:
        k = kernel.connect(autostart=False)
    try:
        inherited = dict(k.inherited)
        srv = inherited.pop("srv", None)
        report: dict[str, Any] = {"pid": k.pid, "cases": {}}
        for name, cap in sorted(inherited.items()):
            kind, rights, how = name.split("/")
            if how == "via":
                narrowed = await attempt(lambda c=cap, r=rights: c.copy(rights=Rights(int(r))))
                if narrowed[0] != "ok":
                    report["cases"][name] = {"narrow": list(narrowed[:2])}
                    continue
                await run(cap.close())
                cap = narrowed[2]
            report["cases"][name] = await exercise(k, name, cap, srv)
        if srv is not None:
            await run(srv.close())
        print(json.dumps(report), flush=True)
    finally:
        k.close()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
