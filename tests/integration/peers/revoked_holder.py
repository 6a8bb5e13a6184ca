"""Holds an inherited endpoint; reports whether it still works after the parent revokes."""

import sys

import kernel

with kernel.connect(autostart=False) as k:
    ep, ready, go = k.inherited["ep"], k.inherited["ready"], k.inherited["go"]
    assert ep.info().kind == "endpoint"  # usable before the revoke
    ready.signal(1)
    go.wait(timeout=10.0)
    try:
        ep.info()
    except kernel.InvalidCapabilityError as e:
        print(f"REVOKED: {e}")
        sys.exit(0)
    print("STILL USABLE")
    sys.exit(1)
