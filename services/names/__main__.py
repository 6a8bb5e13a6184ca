"""`python -m services.names`: the name server process the kernel starts at boot.

It finds its endpoint (with the right to receive) in the capabilities it inherits
from the kernel, and serves until the kernel goes away.
"""

from __future__ import annotations

import logging
import os
import signal
import sys

import kernel

from .server import NameServer


def main() -> int:
    # The kernel owns this process's life: Ctrl-C in the kernel's terminal stops the
    # kernel, which then disconnects us. SIGINT here would only race that.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(
        level=os.environ.get("MKIPC_LOG_LEVEL", "INFO"),
        stream=sys.stderr,
        format="%(asctime)s mkipc-names[%(process)d] %(levelname)s %(message)s",
    )
    with kernel.connect(autostart=False) as k:
        ep = k.inherited.get("names")
        if not isinstance(ep, kernel.EndpointCap):
            print("mkipc names: start me from the kernel (no names endpoint)", file=sys.stderr)
            return 2
        store = k.inherited.get("names.store")
        NameServer(k, ep, store if isinstance(store, kernel.QueueCap) else None).serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
