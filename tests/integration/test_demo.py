"""`mkipc demo` (the README's first command) against a real kernel."""

import os
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def test_demo_prints_latency_beside_os_pipe_and_leaves_no_server_behind(kernel_daemon):
    out = subprocess.run(
        [sys.executable, "-m", "kernel", "demo"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "answered b'hello, kernel'" in out.stdout
    assert re.search(r"mkipc session call\s+\d+\.\d+\s+\d+\.\d+\s+\d+\.\d+x", out.stdout)
    assert re.search(r"mkipc call/reply\s+\d+\.\d+\s+\d+\.\d+\s+\d+\.\d+x", out.stdout)
    assert re.search(r"os\.pipe ping-pong\s+\d+\.\d+\s+\d+\.\d+\s+1\.00x", out.stdout)
    server_pid = int(re.search(r"echo server pid (\d+)", out.stdout).group(1))
    with pytest.raises(ProcessLookupError):
        os.kill(server_pid, 0)
