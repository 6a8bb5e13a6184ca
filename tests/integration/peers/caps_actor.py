"""A capability actor driven by JSON lines: one command on stdin, one answer on stdout.

usage: caps_actor.py [lazy]        (exits at EOF on stdin)

Used by tests/fuzz/test_caps_stateful.py, which also imports `execute` to run the
same commands in the test process itself. Commands name capabilities by kind and
raw slot number, so stale and foreign numbers can be tried as easily as live ones.
Every command answers; none blocks longer than its own timeout. A lazy actor
connects to the kernel (claiming what it inherits) only after a first line,
{"op": "connect"}, which gets no answer; a plain actor ignores that line too.

  {"op": "hello"}                                -> {"pid", "inherited": {name: [kind, slot]}}
  {"op": "copy",  "kind", "slot", "rights"}      -> {"ok": new slot}     rights: int or null
  {"op": "mint",  "kind", "slot", "rights", "badge"}
  {"op": "revoke" | "close" | "poll", "kind", "slot"}
  {"op": "signal", "kind", "slot", "bits"}
  {"op": "call",  "kind", "slot", "data", "timeout"}  -> {"ok": reply data}
  {"op": "infos", "items": [[kind, slot], ...]}  -> {"ok": [answer per item]}
  {"op": "probe", "slots": [...]}                -> {"ok": [slots that name a capability]}

Messages, posted without waiting so that one test process can drive both ends:
  {"op": "post", "tag", "what": "send" | "call" | "recv", "slot", "timeout",
   "data", "caps": [[kind, slot, as_copy], ...]}  -> {"ok": null} once the kernel
      has handled the request (a later no-op on the same ring completed: the kernel
      handles one process's records in order); its outcome waits for "take"
  {"op": "take", "tag", "cancel"}                -> {"ok": null} for a send, else
      {"ok": {"data", "badge", "pid", "is_call", "caps": [[kind, slot], ...]}};
      with cancel the operation is withdrawn first (if it is still waiting)
  {"op": "reply", "tag", "data", "caps", "recv_slot"}  answers the call taken under
      `tag` (msg.reply, or reply_recv with timeout 0 through recv_slot); a refused
      reply keeps the call answerable, under the same tag

A failed operation answers {"err": "denied" | "invalid" | "args" | "timeout" |
"cancelled" | "closed" | "other", "msg"}.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import kernel
from kernel import abi
from kernel.abi import Op
from kernel.client._common import transfer_slots
from kernel.client._conn import deadline_from, failure
from kernel.client.sync import Message

CAP_TYPES = {"endpoint": kernel.EndpointCap, "notification": kernel.NotificationCap}


def info_list(info: kernel.CapInfo) -> list[Any]:
    return [
        info.kind,
        int(info.rights),
        info.badge,
        info.slot,
        info.object_id,
        info.object_caps,
        info.derived,
        info.parent_slot,
    ]


def attempt(fn: Any) -> dict[str, Any]:
    try:
        return {"ok": fn()}
    except kernel.AccessDeniedError as e:
        return {"err": "denied", "msg": str(e)}
    except kernel.InvalidCapabilityError as e:
        return {"err": "invalid", "msg": str(e)}
    except kernel.InvalidArgumentError as e:
        return {"err": "args", "msg": str(e)}
    except TimeoutError as e:
        return {"err": "timeout", "msg": str(e)}
    except kernel.CancelledCallError as e:
        return {"err": "cancelled", "msg": str(e)}
    except kernel.PeerClosedError as e:
        return {"err": "closed", "msg": str(e)}
    except Exception as e:
        return {"err": "other", "msg": f"{type(e).__name__}: {e}"}


def probe(k: kernel.Kernel, slots: list[int]) -> list[int]:
    """The slots that resolve here, asked through the raw ring 128 at a time."""
    conn, found = k._conn, []
    for start in range(0, len(slots), 128):
        batch = [
            (conn.submit(Op.CAP_INFO, s, abi.DEADLINE_NOW), s) for s in slots[start : start + 128]
        ]
        for req, s in batch:
            if conn.wait(req).status == 0:
                found.append(s)
    return found


class Session:
    """What one process keeps between commands: operations posted and not yet taken,
    and calls received and not yet answered, each under the tag the test chose."""

    def __init__(self) -> None:
        self.posted: dict[str, tuple[int, str, int]] = {}  # tag -> (req id, what, slot)
        self.calls: dict[str, Message] = {}


POSTED_OPS = {"send": Op.ENDPOINT_SEND, "call": Op.ENDPOINT_CALL, "recv": Op.ENDPOINT_RECV}


def carried(k: kernel.Kernel, items: list[list[Any]]) -> list[Any]:
    caps = [(CAP_TYPES[kind](k, slot), copy) for kind, slot, copy in items]
    return [cap.as_copy() if copy else cap for cap, copy in caps]


def kept(cap: Any) -> int:
    """The slot of a capability the kernel just made here. Commands name slots by
    number, so the actor, not the object, owns it: dropping the object must not
    close it (kernel/client/_common.py CapBase)."""
    cap._owned = False
    return int(cap.slot)


def message_dict(msg: Message) -> dict[str, Any]:
    return {
        "data": msg.data.decode(),
        "badge": msg.badge,
        "pid": msg.sender.pid,
        "is_call": msg.is_call,
        "caps": [[c.kind, kept(c)] for c in msg.caps],
    }


def post(k: kernel.Kernel, session: Session, cmd: dict[str, Any]) -> None:
    """Submit a send, call or receive and return once the kernel has handled it."""
    conn, what = k._conn, cmd["what"]
    slots = transfer_slots(carried(k, cmd.get("caps", [])))
    deadline = deadline_from(cmd["timeout"])
    payload = cmd.get("data", "").encode()
    req = conn.submit(POSTED_OPS[what], cmd["slot"], deadline, 0, payload, slots)
    session.posted[cmd["tag"]] = (req, what, cmd["slot"])
    conn.wait(conn.submit(Op.CAP_INFO, 0, abi.DEADLINE_NOW))  # the fence (slot 0: refused)


def take(k: kernel.Kernel, session: Session, cmd: dict[str, Any]) -> dict[str, Any] | None:
    req, what, slot = session.posted.pop(cmd["tag"])
    conn = k._conn
    if cmd.get("cancel"):  # not conn.cancel: that hands the result to the orphan stash
        conn.submit(Op.CANCEL, arg=req)
    c = conn.wait(req)  # bounded: every posted operation has a deadline
    if c.status:
        raise failure(c, kernel.EndpointCap(k, slot), what)
    if what == "send":
        return None
    msg = Message(c, k)
    if msg.is_call:
        session.calls[cmd["tag"]] = msg
    return message_dict(msg)


def reply(k: kernel.Kernel, session: Session, cmd: dict[str, Any]) -> dict[str, Any]:
    msg = session.calls[cmd["tag"]]
    caps, data = carried(k, cmd.get("caps", [])), cmd["data"].encode()
    try:
        if cmd.get("recv_slot"):
            recv_ep = kernel.EndpointCap(k, cmd["recv_slot"])
            return message_dict(recv_ep.reply_recv(msg, data, caps=caps, timeout=0))
        msg.reply(data, caps=caps)
        return {}
    finally:
        if not msg.is_call:  # answered, or its reply capability is gone
            del session.calls[cmd["tag"]]


def execute(
    k: kernel.Kernel, cmd: dict[str, Any], session: Session | None = None
) -> dict[str, Any]:
    op = cmd["op"]
    if op in ("post", "take", "reply"):
        assert session is not None, f"{op} needs a session"
        fn = {"post": post, "take": take, "reply": reply}[op]
        return attempt(lambda: fn(k, session, cmd))
    if op == "hello":
        return {
            "pid": k.pid,
            "inherited": {n: [c.kind, c.slot] for n, c in k.inherited.items()},
        }
    if op == "infos":
        items = [CAP_TYPES[kind](k, slot) for kind, slot in cmd["items"]]
        return {"ok": [attempt(lambda c=c: info_list(c.info())) for c in items]}
    if op == "probe":
        return {"ok": probe(k, cmd["slots"])}
    cap = CAP_TYPES[cmd["kind"]](k, cmd["slot"])
    rights = None if cmd.get("rights") is None else kernel.Rights(cmd["rights"])
    if op == "copy":
        return attempt(lambda: kept(cap.copy(rights=rights)))
    if op == "mint":
        return attempt(lambda: kept(cap.mint(rights=rights, badge=cmd["badge"])))
    if op == "revoke":
        return attempt(cap.revoke)
    if op == "close":
        return attempt(cap.close)
    if op == "signal":
        return attempt(lambda: cap.signal(cmd["bits"]))
    if op == "poll":
        return attempt(cap.poll)
    if op == "call":
        return attempt(lambda: cap.call(cmd["data"].encode(), timeout=cmd["timeout"]).data.decode())
    return {"err": "other", "msg": f"unknown command {op!r}"}


def main() -> int:
    if "lazy" in sys.argv[1:] and not sys.stdin.readline():
        return 0  # told to stop before it ever connected
    with kernel.connect(autostart=False) as k:
        session = Session()
        for line in sys.stdin:
            cmd = json.loads(line)
            if cmd["op"] != "connect":
                print(json.dumps(execute(k, cmd, session)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
