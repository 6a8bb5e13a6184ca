"""The issue's contract program, run as a real script against a real kernel."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

PEERS = Path(__file__).parent / "peers"


def run_script(*argv: str) -> subprocess.CompletedProcess[str]:
    # MKIPC_SOCKET (set by the kernel_daemon fixture) is inherited by the script.
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=60)


def test_contract_program_exits_zero(kernel_daemon):
    done = run_script(str(PEERS / "contract.py"))
    assert done.returncode == 0, done.stderr
    assert "inherited ['echo']" in kernel_daemon.log()  # the server got its cap at spawn


def test_contract_program_on_the_async_face_exits_zero_under_both_loops(kernel_daemon):
    # many calls in flight from one asyncio.TaskGroup, each reply matching its request
    for loop in ("asyncio", "uvloop"):
        done = run_script(str(PEERS / "contract_async.py"), loop)
        assert done.returncode == 0, (loop, done.stderr)
