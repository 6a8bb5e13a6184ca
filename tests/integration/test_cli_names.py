"""`mkipc names`: the name server's entries as a user sees them."""

import json
import os
import subprocess
import sys

import pytest

import kernel

pytestmark = pytest.mark.integration


def mkipc(*args: str, socket: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kernel", "names", "--socket", socket, *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_mkipc_names_lists_name_owner_mode_pid_and_clients_served(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        ep = k.endpoint()
        k.names.register("svc.alpha", ep, mode=0o640)
        k.names.register("other.beta", k.notification(), mode=0o604)
        for _ in range(3):
            k.names.lookup("svc.alpha").close()
        table = mkipc(socket=kernel_daemon.path)
        assert table.returncode == 0, table.stderr
        header, *rows = table.stdout.splitlines()
        assert header.split() == ["NAME", "KIND", "OWNER", "MODE", "PID", "SERVED"]
        assert rows[0].split() == [
            "other.beta",
            "notification",
            "0:0",
            "0604",
            str(os.getpid()),
            "0",
        ]
        assert rows[1].split() == ["svc.alpha", "endpoint", "0:0", "0640", str(os.getpid()), "3"]
        only = mkipc("svc.", "--json", socket=kernel_daemon.path)
        [entry] = [json.loads(line) for line in only.stdout.splitlines()]
        assert entry["name"] == "svc.alpha"
        assert entry["mode"] == "0o640"
        assert entry["served"] == 3
        assert entry["rights"] == "SEND|GRANT|COPY|TRANSFER"


def test_mkipc_names_without_a_kernel_says_so(tmp_path):
    done = mkipc(socket=str(tmp_path / "none.sock"))
    assert done.returncode == 1
    assert "no kernel listens" in done.stderr
