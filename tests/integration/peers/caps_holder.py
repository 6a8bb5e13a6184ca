"""Hold many capabilities; print their slot numbers; later check none was disturbed.

usage: caps_holder.py COUNT

Creates COUNT capabilities (endpoints, notifications and copies of them), prints
{"pid", "slots"} as one JSON line, then answers one call on the inherited "ep"
with {"intact", "broken"}: whether each of its capabilities still resolves to
the same object with the same rights, after another process used the numbers.
"""

from __future__ import annotations

import json
import sys

import kernel


def main() -> int:
    count = int(sys.argv[1])
    with kernel.connect(autostart=False) as k:
        ep = k.inherited["ep"]
        caps: list[kernel.EndpointCap | kernel.NotificationCap] = []
        while len(caps) < count:
            obj = k.endpoint() if len(caps) % 4 == 0 else k.notification()
            caps += [obj, obj.mint(badge=len(caps) + 1)]
        before = {c.slot: c.info() for c in caps}
        print(json.dumps({"pid": k.pid, "slots": sorted(before)}), flush=True)
        msg = ep.recv(timeout=60)
        broken = []
        for cap in caps:
            try:
                now = cap.info()
            except kernel.IPCError as e:
                broken.append(f"{cap.slot:#x}: {e}")
                continue
            was = before[cap.slot]
            if (now.object_id, now.rights, now.badge) != (was.object_id, was.rights, was.badge):
                broken.append(f"{cap.slot:#x}: was {was}, now {now}")
        msg.reply(json.dumps({"intact": len(caps) - len(broken), "broken": broken}).encode())
        for cap in caps:
            cap.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
