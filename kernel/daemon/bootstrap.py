"""The bootstrap socket: credentials, the handshake frame, and fd passing (DESIGN §2)."""

from __future__ import annotations

import array
import asyncio
import contextlib
import os
import socket
import stat
import struct

from .. import abi

HANDSHAKE_TIMEOUT = 5.0


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the peer, as the Linux kernel recorded them at connect()."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid, gid


async def read_frame(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> abi.Handshake:
    async def read_exact(n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = await loop.sock_recv(sock, n - len(buf))
            if not chunk:
                raise ConnectionError("connection closed during the handshake")
            buf += chunk
        return buf

    async def read() -> abi.Handshake:
        size = int.from_bytes(await read_exact(4), "little")
        if not 0 < size <= abi.HANDSHAKE_MAX:
            raise ValueError(f"handshake frame of {size} bytes")
        return abi.decode_frame(await read_exact(size))

    return await asyncio.wait_for(read(), HANDSHAKE_TIMEOUT)


def send_frame(sock: socket.socket, msg: abi.Handshake, fds: list[int] = ()) -> None:  # type: ignore[assignment]
    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    sock.sendmsg([abi.encode_frame(msg)], ancillary)


def make_listener(path: str, mode: int = 0o600) -> socket.socket:
    """Bind the kernel socket; refuse to steal a socket another live kernel serves.

    `mode` is the socket file's permission: 0o600 (the default) keeps the kernel to
    its user; 0o666 lets every uid connect (issue #4: several users on one kernel).
    """
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, mode=0o700, exist_ok=True)
    if os.path.exists(path):
        if _is_live(path):
            raise RuntimeError(f"a kernel already listens on {path}")
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise RuntimeError(f"{path} exists and is not a socket")
        os.unlink(path)
    # Bind under a temporary name and listen before the socket appears at `path`:
    # a client that sees the path must never get ECONNREFUSED.
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    staging = f"{path}.{os.getpid()}.tmp"
    old = os.umask(0o077)  # private from bind() until chmod, so there is no wider window
    try:
        sock.bind(staging)
        os.chmod(staging, mode)
        sock.listen(128)
        os.rename(staging, path)
    except BaseException:
        sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staging)
        raise
    finally:
        os.umask(old)
    sock.setblocking(False)
    return sock


def _is_live(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
        return True
    except OSError:
        return False
    finally:
        probe.close()
