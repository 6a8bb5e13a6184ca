"""Where the kernel's socket lives, and starting a per-user kernel on demand (DESIGN §2)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator

AUTOSTART_IDLE_EXIT = float(os.environ.get("MKIPC_IDLE_EXIT", "30"))
"""Seconds an on-demand kernel lingers with no process connected before it exits."""

START_TIMEOUT = 10.0


def runtime_dir() -> str:
    """A private per-user directory (mode 0700) for the socket, lock and log."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    path = (
        os.path.join(base, "mkipc")
        if base and os.access(base, os.W_OK)
        else os.path.join(tempfile.gettempdir(), f"mkipc-{os.getuid()}")
    )
    os.makedirs(path, mode=0o700, exist_ok=True)
    st = os.stat(path)
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise PermissionError(f"{path} must be owned by uid {os.getuid()} with mode 0700")
    return path


def default_socket_path() -> str:
    return os.environ.get("MKIPC_SOCKET") or os.path.join(runtime_dir(), "kernel.sock")


@contextlib.contextmanager
def start_lock(path: str) -> Iterator[None]:
    """Serialises on-demand starts so that two clients never start two kernels."""
    with open(path + ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def start_kernel(path: str) -> subprocess.Popen[bytes]:
    """Start a detached kernel on `path` that exits after AUTOSTART_IDLE_EXIT idle seconds."""
    log = open(path + ".log", "ab")
    with log:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kernel",
                "kernel",
                "--socket",
                os.path.abspath(path),
                "--idle-exit",
                str(AUTOSTART_IDLE_EXIT),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            # Its own process group, so that Ctrl-C at the caller's terminal does not
            # reach it, but the caller's session: with sched_autogroup (the default on
            # desktop and cloud kernels) a session is the unit the scheduler shares a
            # CPU by, and a kernel in a session of its own, whose load sat on the
            # other CPU, got a smaller share of the one it shared with its callers
            # (docs/benchmarks.md, session 21).
            process_group=0,
            # Not the caller's cwd: `-m` puts it first on sys.path, and a source
            # checkout there (no compiled extensions) would shadow the installed
            # package. A daemon should not hold the caller's directory anyway.
            cwd=os.path.dirname(os.path.abspath(path)),
        )


def check_alive(proc: subprocess.Popen[bytes], path: str) -> None:
    if proc.poll() is not None:
        raise ConnectionError(
            f"the kernel exited at start (code {proc.returncode}); see {path}.log"
        )
