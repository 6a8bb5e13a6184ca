"""Many client processes against a pool of server processes on one endpoint."""

from __future__ import annotations

import json
import sys
import time
from collections import Counter

import pytest
from peerlib import PEERS, spawn_callers

import kernel

pytestmark = pytest.mark.integration

CLIENTS, SERVERS, CALLS = 20, 4, 200


def test_every_reply_reaches_its_own_caller_across_20_clients_and_4_servers(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        ep = k.endpoint()
        servers = [
            k.spawn(
                [sys.executable, str(PEERS / "echo_server.py"), "tag", f"s{i}"], caps={"ep": ep}
            )
            for i in range(SERVERS)
        ]
        clients = spawn_callers(k, ep, CLIENTS, CALLS)
        try:
            served: Counter[str] = Counter()
            deadline = time.monotonic() + 90
            for c in clients:
                out, err = c.popen.communicate(timeout=max(1.0, deadline - time.monotonic()))
                assert c.wait(timeout=10) == 0, f"client {c.pid}: {err}"
                served.update(json.loads(out))
            assert sum(served.values()) == CLIENTS * CALLS
            assert set(served) <= {f"s{i}" for i in range(SERVERS)}
            assert len(served) >= 2, served  # the pool shares the load
            for _ in servers:  # each server answers one b"stop" and exits
                assert ep.call(b"stop", timeout=10).data == b"bye"
            assert [s.wait(timeout=10) for s in servers] == [0] * SERVERS
        finally:
            for p in clients + servers:
                p.kill()
                if p.popen.stdout is not None:
                    p.popen.communicate()
                p.wait(timeout=10)
