"""Hostile clients: garbage in a ring, bad requests, bogus bootstraps (DESIGN §3).

The kernel must disconnect a client that breaks the ring format (and log why),
answer a well-framed but bad request with an error, shrug off a bad handshake,
and keep serving everyone else throughout.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import KernelDaemon
from peerlib import PEERS, spawned

import kernel
from kernel import abi
from kernel.abi import Op
from kernel.errors import error_for

pytestmark = pytest.mark.integration


@contextlib.contextmanager
def echo_service() -> Iterator[tuple[kernel.Kernel, kernel.EndpointCap]]:
    """An honest client with a server process, checked before and after the damage."""
    with kernel.connect(autostart=False) as k:
        ep = k.endpoint()
        with spawned(k, "echo_server.py", "upper", ep=ep):
            assert ep.call(b"before", timeout=10).data == b"BEFORE"
            yield k, ep
            for i in range(20):
                assert ep.call(b"after %d" % i, timeout=10).data == b"AFTER %d" % i


def run_hostile(*kinds: str, timeout: float = 20) -> list[tuple[int, str, str, int]]:
    """Run hostile.py once per kind, all at once; (exit code, stdout, stderr, pid) each."""
    procs = [
        subprocess.Popen(
            [sys.executable, str(PEERS / "hostile.py"), kind],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for kind in kinds
    ]
    out = []
    try:
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=timeout)
            out.append((proc.returncode, stdout, stderr, proc.pid))
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    return out


RING_DAMAGE = {
    "bad_tail": "producer index out of range",
    "huge_tail": "producer index out of range",
    "bad_size": "does not match its contents",
    "many_caps": "record carries 4000 capabilities",
    "bad_pad": "malformed pad record",
    "random": "",  # whichever check the random bytes fail first
}


def test_clients_writing_garbage_into_their_rings_are_disconnected_and_others_carry_on(
    kernel_daemon,
):
    with echo_service() as (k, ep):
        outcomes = run_hostile(*RING_DAMAGE)
        assert ep.call(b"meanwhile", timeout=10).data == b"MEANWHILE"
    log = kernel_daemon.log()
    for (kind, reason), (code, out, err, pid) in zip(RING_DAMAGE.items(), outcomes, strict=True):
        assert code == 0, (kind, out, err)  # its next operation raised PeerClosedError
        outcome, seconds = out.split()[-2:]
        assert outcome == "PeerClosedError", kind
        assert float(seconds) < 2.0, kind
        [gone] = [
            line for line in log.splitlines() if f"(pid {pid}) is gone: malformed ring: " in line
        ]
        assert reason in gone, (kind, gone)
        assert f"(pid {pid}): malformed ring: " in log, kind  # logged as a warning too


def test_a_client_writing_to_its_bootstrap_socket_is_disconnected(kernel_daemon):
    with echo_service():
        [(code, out, err, pid)] = run_hostile("sock_data")
    assert code == 0, (out, err)
    assert f"(pid {pid}) is gone: sent data after the handshake" in kernel_daemon.log()


def test_a_client_that_never_drains_its_completions_is_disconnected(kernel_daemon):
    with echo_service():
        [(code, out, err, pid)] = run_hostile("no_drain")
    assert code == 0, (out, err)
    assert (
        f"(pid {pid}): it does not drain its completion ring; disconnecting" in kernel_daemon.log()
    )


def test_big_messages_a_client_never_reads_cost_the_kernel_bounded_memory(kernel_daemon):
    """The kernel holds completions for a process whose ring is full, up to a bound
    in count and in bytes; a process that never reads its 256 KiB messages is
    disconnected after 64 MiB of them, not after 4 GiB."""
    with echo_service():
        before = _peak_rss_mib(kernel_daemon.pid)
        [(code, out, err, pid)] = run_hostile("no_drain_big")
        grown = _peak_rss_mib(kernel_daemon.pid) - before
    assert grown < 256, f"the kernel grew by {grown} MiB"
    assert code == 0, (out, err)
    assert f"(pid {pid}): it does not drain its completion ring" in kernel_daemon.log()


async def test_sends_waiting_for_receivers_hold_bounded_kernel_memory(kernel_daemon):
    """The kernel keeps a waiting send's payload until a receiver comes. Past 64 MiB
    of them for one process a send fails with ResourceLimitError (1000 sends of
    256 KiB held 250 MiB, and 4096 would hold 1 GiB); a send that ends (here,
    cancelled) gives its bytes back."""
    big, n = b"x" * kernel.MAX_PAYLOAD, 1000
    fit = (64 << 20) // kernel.MAX_PAYLOAD
    before = _peak_rss_mib(kernel_daemon.pid)
    async with kernel.connect_async(autostart=False) as k:
        ep = await k.endpoint()
        for _ in range(2):  # the second round: the first one's bytes were given back
            sends = [asyncio.ensure_future(ep.send(big, timeout=None)) for _ in range(n)]
            for refused in itertools.islice(asyncio.as_completed(sends, timeout=30), n - fit):
                with pytest.raises(kernel.ResourceLimitError, match="64 MiB"):
                    await refused
            assert sum(s.done() for s in sends) == n - fit  # the others wait
            for s in sends:
                s.cancel()
            await asyncio.gather(*sends, return_exceptions=True)
    assert _peak_rss_mib(kernel_daemon.pid) - before < 160


async def test_a_delivered_call_no_longer_counts_against_the_held_bytes(kernel_daemon):
    """A call's payload stops counting once a receiver took it, though the call
    waits on for its reply: two rounds of 200 calls of 256 KiB (50 MiB each),
    each stored, then received and left unanswered, all fit under 64 MiB."""
    big = b"x" * kernel.MAX_PAYLOAD
    async with kernel.connect_async(autostart=False) as k:
        ep = await k.endpoint()
        calls, received = [], []
        for _ in range(2):
            calls += [asyncio.ensure_future(ep.call(big, timeout=None)) for _ in range(200)]
            await asyncio.sleep(0.3)  # all stored in the kernel: nobody receives yet
            received += [await ep.recv(timeout=5) for _ in range(200)]
            assert not any(c.done() for c in calls)  # none refused; all wait for replies
        for c in calls:
            c.cancel()
        await asyncio.gather(*calls, return_exceptions=True)


def test_a_kernel_out_of_descriptors_pauses_accepting_instead_of_spinning(kernel_daemon):
    """accept() failing for want of descriptors left the listener readable: the
    kernel retried at once, a core at 100% and a traceback logged per try, until a
    descriptor was free. Now it pauses, says so once, and accepts again later."""
    pid = kernel_daemon.pid
    limits = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    held: list[kernel.Kernel] = []
    waiting: list[socket.socket] = []
    try:
        resource.prlimit(
            pid, resource.RLIMIT_NOFILE, (len(os.listdir(f"/proc/{pid}/fd")) + 8, limits[1])
        )
        assert "Too many open files" in str(_connect_until_refused(held))
        for _ in range(3):  # connections the kernel cannot even accept
            waiting.append(socket.socket(socket.AF_UNIX))
            waiting[-1].connect(kernel_daemon.path)
        before = _cpu_seconds(pid)
        time.sleep(1.0)
        assert _cpu_seconds(pid) - before < 0.2
    finally:
        for c in held:
            c.close()
        for s in waiting:
            s.close()
        resource.prlimit(pid, resource.RLIMIT_NOFILE, limits)
    with kernel.connect(autostart=False) as k:  # accepted again
        k.notification()
    log = kernel_daemon.log()
    assert log.count("cannot accept processes ([Errno 24] Too many open files)") == 1
    assert "Exception in callback" not in log


def _connect_until_refused(held: list[kernel.Kernel]) -> kernel.IPCError:
    for _ in range(8):  # each connection takes the kernel 4 descriptors
        try:
            held.append(kernel.connect(autostart=False))
        except kernel.IPCError as e:
            return e
    raise AssertionError("the kernel had descriptors for 8 more connections")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _peak_rss_mib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) // 1024
    raise AssertionError("no VmHWM")


def test_submitting_to_a_full_ring_after_the_kernel_gave_up_raises_peer_closed(kernel_daemon):
    with echo_service():
        [(code, out, err, pid)] = run_hostile("no_drain_forever")
    assert "does not drain its completion ring" in kernel_daemon.log()
    # today hostile.py reports "still blocked after the kernel closed the connection"
    assert code == 0, (out, err)


# ------------------------------------------------------------------ bad but well-framed


def roundtrip(k: kernel.Kernel, op: int, **fields) -> None:
    """Submit one raw request, wait for it, raise what its status maps to."""
    conn = k._conn
    c = conn.wait(conn.submit(op, **fields))
    if c.status:
        raise error_for(c.status, f"op {op}", c.reason())


def test_an_unknown_opcode_gets_not_supported_without_a_disconnect(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        with pytest.raises(kernel.InvalidArgumentError, match="unknown opcode 999") as info:
            roundtrip(k, 999)
        assert info.value.status == kernel.Status.NOT_SUPPORTED
        n = k.notification()
        n.signal(1)
        assert n.poll() == 1


def test_bad_requests_get_errors_and_the_connection_keeps_working(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        ep, n = k.endpoint(), k.notification()
        bad = [
            # (request fields, expected exception, text in its message)
            (
                dict(op=Op.ENDPOINT_SEND, slot=ep.slot, deadline=-5),
                kernel.InvalidArgumentError,
                "deadline",
            ),
            (
                dict(op=Op.ENDPOINT_SEND, slot=ep.slot, deadline=0, caps=(n.slot,) * 9),
                kernel.InvalidArgumentError,
                "at most 8 capability words",
            ),
            (
                dict(op=Op.ENDPOINT_REPLY, slot=ep.slot),
                kernel.InvalidCapabilityError,
                "not a reply",
            ),
            (
                dict(op=Op.ENDPOINT_REPLY_RECV, slot=ep.slot, arg=n.slot),
                kernel.InvalidCapabilityError,
                "not a reply",
            ),
            (
                dict(op=Op.NOTIFICATION_WAIT, slot=ep.slot, deadline=0),
                kernel.InvalidCapabilityError,
                "not a notification",
            ),
            (
                dict(op=Op.CAP_CLOSE, slot=0x12345),
                kernel.InvalidCapabilityError,
                "names no capability",
            ),
            (
                dict(op=Op.PROCESS_WAIT, payload=b"no such token"),
                kernel.InvalidArgumentError,
                "unknown spawn token",
            ),
            (
                dict(op=Op.INHERIT_CREATE, payload=b"\xc1garbage", caps=(ep.slot,)),
                kernel.InvalidArgumentError,
                "msgpack",
            ),
            (
                dict(
                    op=Op.INHERIT_CREATE,
                    payload=abi.encode_names(["a", "a"]),
                    caps=(ep.slot, n.slot),
                ),
                kernel.InvalidArgumentError,
                "distinct",
            ),
            (
                dict(op=Op.INHERIT_CREATE, payload=abi.encode_names([""]), caps=(ep.slot,)),
                kernel.InvalidArgumentError,
                "1 to 256",
            ),
        ]
        for fields, exc, text in bad:
            fields = dict(fields)
            with pytest.raises(exc, match=text):
                roundtrip(k, fields.pop("op"), **fields)
        # a CANCEL of a request that is not pending is ignored (it gets no completion)
        k._conn.submit(Op.CANCEL, arg=123456)
        n.signal(4)
        assert n.poll() == 4
        with spawned(k, "echo_server.py", "upper", ep=ep):
            assert ep.call(b"still here", timeout=10).data == b"STILL HERE"
    assert "internal error" not in kernel_daemon.log()


def test_a_request_id_already_in_flight_is_rejected(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        ep = k.endpoint()
        conn = k._conn
        req_id = conn.submit(Op.ENDPOINT_RECV, ep.slot)  # pending in the kernel
        with conn._submit_lock:  # a second record with the same id, past the client
            assert conn.sq.submit(Op.ENDPOINT_RECV, req_id, ep.slot, -1, 0, b"")
            if conn.sq.peer_waiting():
                os.eventfd_write(conn.sq_efd, 1)
        c = conn.wait(req_id)
        with pytest.raises(kernel.InvalidArgumentError, match="already in flight"):
            raise error_for(c.status, "recv", c.reason())
        conn.cancel(req_id, ep.slot)  # withdraw the first one
        with pytest.raises(kernel.WouldBlock):
            ep.send_nowait(b"nobody receives")


# ------------------------------------------------------------------ quotas

CAP_TABLE_LIMIT = 4096  # capabilities/_table.pyx DEFAULT_LIMIT
PENDING_LIMIT = 4096  # kernel/_core/kcore.pyx MAX_PENDING: operations waiting per process


def test_a_full_capability_table_raises_resource_limit_and_recovers(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        # One slot already holds the name server capability every process gets.
        caps = [k.endpoint() for _ in range(CAP_TABLE_LIMIT - 1)]
        with pytest.raises(kernel.ResourceLimitError, match="capability table full") as info:
            k.notification()
        assert isinstance(info.value, OSError)
        assert "until close()" in str(info.value)  # the usual cause: never closing them
        caps.pop().close()
        n = k.notification()  # room again
        n.signal(1)
        assert n.poll() == 1


def test_too_many_waiting_operations_raise_resource_limit(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        ep = k.endpoint()
        conn = k._conn
        waiting = [conn.submit(Op.ENDPOINT_RECV, ep.slot) for _ in range(PENDING_LIMIT)]
        with pytest.raises(kernel.ResourceLimitError, match="operations waiting"):
            roundtrip(k, Op.ENDPOINT_RECV, slot=ep.slot)
        assert len(waiting) == PENDING_LIMIT
    # disconnecting withdraws them all (teardown: nothing left in the kernel)


def test_a_process_at_its_waiting_quota_can_still_withdraw_its_operations(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        ep = k.endpoint()
        conn = k._conn
        waiting = [conn.submit(Op.ENDPOINT_RECV, ep.slot) for _ in range(PENDING_LIMIT)]
        for req_id in waiting:
            conn.cancel(req_id, ep.slot)
        n = k.notification()  # nothing waits any more: the quota is free again
        n.signal(1)
        assert n.poll() == 1


# ------------------------------------------------------------------ bogus bootstraps


def raw_client(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(path)
    return s


def read_reply(s: socket.socket) -> bytes:
    data = b""
    with contextlib.suppress(OSError):
        while chunk := s.recv(65536):
            data += chunk
    return data


BOGUS_BOOTSTRAPS = {
    "nothing": b"",  # connect, close
    "huge_length": b"\xff" * 64,  # absurd frame length
    "not_msgpack": (5).to_bytes(4, "little") + b"\xc1\xc1\xc1\xc1\xc1",
    "bad_version": abi.encode_frame(abi.Hello(version=999)),
    "not_hello": abi.encode_frame(abi.Refused("i am the kernel")),
    "truncated": (100).to_bytes(4, "little") + b"short",  # then EOF
}


def test_bogus_bootstraps_do_not_disturb_the_kernel(kernel_daemon):
    with echo_service() as (k, ep):
        for name, junk in BOGUS_BOOTSTRAPS.items():
            s = raw_client(kernel_daemon.path)
            try:
                s.sendall(junk)
                s.shutdown(socket.SHUT_WR)
                answer = read_reply(s)
            finally:
                s.close()
            if answer:  # a Refused frame, and no descriptors
                assert isinstance(abi.decode_frame(answer[4:]), abi.Refused), name
            assert ep.call(name.encode(), timeout=10).data == name.upper().encode()
            with kernel.connect(autostart=False) as other:  # newcomers are still welcome
                other.notification()
    assert kernel_daemon.log().count("bootstrap refused") == len(BOGUS_BOOTSTRAPS)


def test_a_stalled_bootstrap_does_not_block_other_clients(kernel_daemon):
    s = raw_client(kernel_daemon.path)
    try:
        s.sendall(b"\x10\x00")  # half a frame length, then silence
        t0 = time.monotonic()
        with echo_service(), kernel.connect(autostart=False) as other:
            other.notification()
        assert time.monotonic() - t0 < 3.0
    finally:
        s.close()


def test_a_refused_handshake_explains_why(kernel_daemon):
    s = raw_client(kernel_daemon.path)
    try:
        s.sendall(abi.encode_frame(abi.Hello(version=abi.ABI_VERSION + 1)))
        frame = abi.decode_frame(read_reply(s)[4:])
    finally:
        s.close()
    assert isinstance(frame, abi.Refused)
    assert f"expected Hello version {abi.ABI_VERSION}" in frame.reason


def test_the_kernel_takes_every_descriptor_its_hard_limit_allows(tmp_path):
    """Many users' connections, sessions and memory objects hold the kernel's
    descriptors at once; started under a soft limit of 256, it raises it to the hard
    limit (as a server must) rather than refuse everyone at the 64th connection."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard <= 256:
        pytest.skip("needs a finite hard descriptor limit above 256")
    daemon = KernelDaemon(tmp_path)
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))  # inherited by the daemon
    try:
        daemon.start("--no-names")
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        with open(f"/proc/{daemon.pid}/limits") as f:
            row = next(line for line in f if line.startswith("Max open files"))
        assert row.split()[3:5] == [str(hard), str(hard)], row
    finally:
        assert daemon.stop() == 0, daemon.log()
