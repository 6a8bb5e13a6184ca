"""Report what a spawned child received, then answer one call on "ep".

usage: inspect_child.py [FOREIGN_SLOT ...]
Signals bit 1 on the inherited "n" if there is one. Then answers one call on the
inherited "ep" with a JSON report: the inherited names and kinds, whether
MKIPC_INHERIT is still in the environment, what a second connection inherits,
and what using each FOREIGN_SLOT (a slot number valid in the parent) does here.
"""

from __future__ import annotations

import json
import os
import sys

import kernel


def try_slot(k: kernel.Kernel, slot: int) -> str:
    try:
        kernel.EndpointCap(k, slot).send_nowait(b"probe")
    except kernel.IPCError as e:
        return f"{type(e).__name__}: {e}"
    except kernel.WouldBlock:
        return "WouldBlock"
    return "sent"


def main() -> int:
    with kernel.connect(autostart=False) as k:
        report = {
            "inherited": {name: type(cap).__name__ for name, cap in k.inherited.items()},
            "token_in_env": "MKIPC_INHERIT" in os.environ,
            "foreign": {arg: try_slot(k, int(arg, 0)) for arg in sys.argv[1:]},
            "pid": k.pid,
        }
        with kernel.connect(autostart=False) as again:
            report["second_connection"] = sorted(again.inherited)
        if "n" in k.inherited:
            k.inherited["n"].signal(1)
        msg = k.inherited["ep"].recv(timeout=20)
        msg.reply(json.dumps(report).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
