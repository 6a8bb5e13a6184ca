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

A failed operation answers {"err": "denied" | "invalid" | "timeout" | "other", "msg"}.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import kernel
from kernel import abi
from kernel.abi import Op

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
    except TimeoutError as e:
        return {"err": "timeout", "msg": str(e)}
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


def execute(k: kernel.Kernel, cmd: dict[str, Any]) -> dict[str, Any]:
    op = cmd["op"]
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
        return attempt(lambda: cap.copy(rights=rights).slot)
    if op == "mint":
        return attempt(lambda: cap.mint(rights=rights, badge=cmd["badge"]).slot)
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
        for line in sys.stdin:
            cmd = json.loads(line)
            if cmd["op"] != "connect":
                print(json.dumps(execute(k, cmd)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
