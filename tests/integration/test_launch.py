"""Starting a kernel on demand must not depend on the caller's working directory."""

import os
import subprocess
import sys
import textwrap
import time

import pytest

pytestmark = pytest.mark.integration


def test_autostart_from_a_directory_with_a_decoy_kernel_package(tmp_path):
    # Regression: the daemon was started with `python -m kernel` in the caller's cwd,
    # so a source checkout there (no compiled extensions) shadowed the installed
    # package and the daemon died at import.
    decoy = tmp_path / "cwd" / "kernel"
    decoy.mkdir(parents=True)
    (decoy / "__init__.py").write_text("raise ImportError('the decoy was imported')\n")
    (decoy / "__main__.py").write_text("raise SystemExit('the decoy was run')\n")
    script = tmp_path / "client.py"
    script.write_text(
        textwrap.dedent("""
        import kernel
        with kernel.connect() as k:
            n = k.notification()
            n.signal(1)
            assert n.wait(timeout=5.0) == 1
        print("OK")
    """)
    )
    sock = tmp_path / "rt" / "k.sock"
    sock.parent.mkdir(mode=0o700)
    env = dict(os.environ, MKIPC_SOCKET=str(sock), MKIPC_IDLE_EXIT="1")
    env.pop("MKIPC_INHERIT", None)
    try:
        out = subprocess.run(
            [sys.executable, str(script)],
            cwd=decoy.parent,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr + _log(sock)
        assert out.stdout.strip() == "OK"
    finally:
        _stop_autostarted(sock)


def _log(sock):
    log = sock.with_name(sock.name + ".log")
    return log.read_text() if log.exists() else ""


def _stop_autostarted(sock):
    """The kernel idles out after 1 s; make sure, by its pid from its own log."""
    deadline = time.monotonic() + 10
    while sock.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    for line in _log(sock).splitlines():
        if "kernel listening on" in line and sock.exists():
            pid = int(line.rsplit("(pid ", 1)[1].rstrip(")"))
            os.kill(pid, 15)
