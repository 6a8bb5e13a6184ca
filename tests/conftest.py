"""Shared fixtures: a private kernel daemon per test, leak checks, both event loops."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", help="run long soak and fuzz tests")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow: opt in with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


class KernelDaemon:
    """A real `mkipc kernel` process on a private socket, stopped by its pid."""

    def __init__(self, tmp: Path) -> None:
        self.dir = tmp
        self.path = str(tmp / "kernel.sock")
        self.log_path = tmp / "kernel.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *extra: str, wrapper: tuple[str, ...] = ()) -> None:
        """`wrapper` runs before the interpreter (e.g. prlimit, which execs it: the
        pid stays the kernel's)."""
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    *wrapper,
                    sys.executable,
                    "-m",
                    "kernel",
                    "kernel",
                    "--socket",
                    self.path,
                    *extra,
                ],  # fmt: skip
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + 10
        while not os.path.exists(self.path):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"kernel did not start:\n{self.log()}")
            time.sleep(0.005)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


def _open_fds() -> set[str]:
    """Descriptors a leaked connection would hold: its socket and eventfds.

    (The event loop's own pipes are closed by pytest-asyncio after our teardown.)
    """
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:") or "eventfd" in target or "mkipc" in target:
            out.add(f"{fd}:{target}")
    return out


def _ring_mappings() -> int:
    with open("/proc/self/maps") as f:
        return sum(
            "mkipc-rings" in line or "mkipc-session" in line or "mkipc-memory" in line for line in f
        )


@pytest.fixture
def kernel_daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[KernelDaemon]:
    """Start a private kernel; point `kernel.connect()` (and spawned children) at it.

    On teardown the kernel must exit cleanly on SIGTERM with no live object left,
    and this test process must not have leaked file descriptors.
    """
    short = Path(os.environ.get("TMPDIR", "/tmp")) / f"mk-{os.getpid()}-{time.monotonic_ns()}"
    short.mkdir(mode=0o700)  # AF_UNIX paths are limited to 107 bytes: keep it short
    daemon = KernelDaemon(short)
    daemon.start()
    monkeypatch.setenv("MKIPC_SOCKET", daemon.path)
    monkeypatch.delenv("MKIPC_INHERIT", raising=False)
    fds_before = _open_fds()
    maps_before = _ring_mappings()
    yield daemon
    code = daemon.stop()
    log = daemon.log()
    leaked_fds = _open_fds() - fds_before
    leaked_maps = _ring_mappings() - maps_before
    for f in short.iterdir():
        f.unlink()
    short.rmdir()
    assert code == 0, f"kernel exit code {code}:\n{log}"
    assert "kernel exit: 0 live objects, 0 bundles" in log, f"kernel leaked objects:\n{log}"
    assert "Traceback" not in log, f"kernel logged an exception:\n{log}"
    assert not leaked_fds, f"file descriptors leaked: {leaked_fds}"
    assert leaked_maps <= 0, f"{leaked_maps} ring or memory mappings leaked"


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, object]:
    """Run every async test under both loops, as uvloop mixes TestBaseUV and TestBaseAIO."""
    import asyncio

    import uvloop

    return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
