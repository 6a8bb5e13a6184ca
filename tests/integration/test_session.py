"""Direct sessions (`ep.session()` / `ep.accept_session(offer)`).

The server is a real process (peers/session_peer.py) serving over rings only it and
this test process map; the kernel only opens, accepts and ends them. Each outcome a
caller or a server can meet has a test: revocation, close, death of either side,
timeouts, a hostile peer writing the ring, and the quotas.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import pytest
from peerlib import forge_answered, never_written, raising_in_thread, session_in_process, spawned

import kernel
from capabilities import Rights
from kernel import abi

pytestmark = pytest.mark.integration


def _event(rep: kernel.EndpointCap, timeout: float = 20) -> dict:
    return json.loads(rep.recv(timeout=timeout).data)


def _server(k: kernel.Kernel, mode: str = "echo"):
    ep, rep = k.endpoint(), k.endpoint()
    peer = spawned(k, "session_peer.py", mode, ep=ep, report=rep)
    return ep, rep, peer


def test_calls_and_sends_reach_the_server_process_with_the_kernels_badge(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        ep, rep, peer = _server(k)
        with peer as server:
            assert _event(rep)["event"] == "ready"
            client = ep.mint(Rights.SEND, badge=0xB0B)
            with client.session(timeout=10) as s:
                assert s.peer.pid == server.pid
                reply = s.call(b"hello", timeout=10)
                assert reply.data == b"hello"
                assert reply.sender.pid == server.pid
                sent = [os.urandom(n % 300) for n in range(2000)]
                for data in sent:
                    s.send(data)
                crc = 0
                for data in sent:
                    crc = zlib.crc32(data, crc)
                assert s.call(b"count", timeout=10).data == f"2000:{crc}".encode()
                big = os.urandom(abi.MAX_PAYLOAD)
                assert s.call(big, timeout=10).data == big
            end = _event(rep)
            assert end["event"] == "ended"
            assert end["error"] == "PeerClosedError"
            assert end["seen"] == [[0xB0B, os.getpid(), os.getuid(), end["seen"][0][3]]]
            assert ep.call(b"still", timeout=10).data == b"kernel path: still"


def test_a_forged_badge_or_pid_in_the_ring_is_not_believed(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        ep, rep, peer = _server(k)
        with peer:
            _event(rep)
            with ep.mint(Rights.SEND, badge=7).session(timeout=10) as s:
                out = s._end.out  # write a record by hand, every header field forged
                assert out.complete(int(abi.Op.ENDPOINT_SEND), 1, 0, badge=666, pid=1, uid=0)
                os.eventfd_write(s._end.peer_efd, 1)
                s.call(b"sync", timeout=10)
            seen = _event(rep)["seen"]
            assert {tuple(x[:3]) for x in seen} == {(7, os.getpid(), os.getuid())}


def test_a_malformed_record_ends_only_that_session(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        ep, rep, peer = _server(k)
        with peer:
            _event(rep)
            good = ep.session(timeout=10)
            bad = ep.session(timeout=10)
            mm = bad._end.mm
            mm[abi.CONTROL_SIZE : abi.CONTROL_SIZE + 16] = b"\xff" * 16  # size 0xffffffff
            mm[abi.OFF_SQ_TAIL : abi.OFF_SQ_TAIL + 8] = (16).to_bytes(8, "little")
            os.eventfd_write(bad._end.peer_efd, 1)
            end = _event(rep)
            assert end["error"] == "PeerClosedError"
            assert "ring format" in end["text"]
            with pytest.raises(kernel.PeerClosedError):
                bad.call(b"x", timeout=10)  # the server closed it: the kernel's word
            assert good.call(b"fine", timeout=10).data == b"fine"
            good.close()
            bad.close()
            _event(rep)


def test_revoking_the_callers_authority_ends_the_session_on_both_sides(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        ep, rep, peer = _server(k)
        with peer:
            _event(rep)
            parent = ep.copy(Rights.SEND | Rights.COPY | Rights.MANAGE)
            s = parent.copy(Rights.SEND).session(timeout=10)
            assert s.call(b"before", timeout=10).data == b"before"
            parent.revoke()
            # Written after the revoke, bypassing the library's check: never delivered.
            s._end.out.push(int(abi.Op.ENDPOINT_SEND), 99, 0, 0, 0, b"after")
            os.eventfd_write(s._end.peer_efd, 1)
            with pytest.raises(kernel.InvalidCapabilityError, match="revoked"):
                s.call(b"after", timeout=10)
            end = _event(rep)
            assert end["error"] == "InvalidCapabilityError"
            assert end["seen"]
            assert all(x[0] == 0 for x in end["seen"])
            s.close()


def test_revoking_the_servers_authority_ends_the_session(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        root = k.endpoint()
        served = root.copy()  # the server receives through a child: revoke reaches it
        rep = k.endpoint()
        with spawned(k, "session_peer.py", "echo", ep=served, report=rep):
            _event(rep)
            with root.session(timeout=10) as s:
                assert s.call(b"x", timeout=10).data == b"x"
                root.revoke()
                with pytest.raises(kernel.InvalidCapabilityError):
                    s.call(b"y", timeout=10)
            assert _event(rep)["error"] == "InvalidCapabilityError"


def test_the_caller_learns_at_once_that_the_server_died_mid_call(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        ep, rep, peer = _server(k, "hold")
        with peer as server:
            _event(rep)
            s = ep.session(timeout=10)
            import threading

            threading.Timer(0.3, server.kill).start()
            t0 = time.monotonic()
            with pytest.raises(kernel.PeerClosedError):
                s.call(b"never answered", timeout=20)
            assert time.monotonic() - t0 < 5
            s.close()


def test_the_server_learns_that_the_caller_died(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        ep, rep, peer = _server(k)
        with peer, spawned(k, "actor.py", "session", "0", ep=ep) as caller:
            _event(rep)
            caller.wait(timeout=20)
            end = _event(rep)
            assert end["error"] == "PeerClosedError"
            assert end["seen"][0][1] == caller.pid


def test_a_late_reply_fails_on_the_server_and_never_reaches_the_next_call(kernel_daemon):
    """As on the kernel path (DESIGN §5): the server's reply after the caller timed
    out raises PeerClosedError (CALLER_GONE) there, and is never written."""
    with kernel.connect(autostart=False) as k:
        ep, rep, peer = _server(k, "hold")
        with peer:
            _event(rep)
            with ep.session(timeout=10) as s:
                with pytest.raises(kernel.CallTimeoutError):
                    s.call(b"first", timeout=0.2)
                refused = _event(rep)  # its reply, a second later
                assert s.call(b"second", timeout=10).data == b"second"
                assert refused["event"] == "reply refused"
                assert refused["call"] == "first"
                assert refused["error"] == "PeerClosedError"
                assert refused["status"] == kernel.Status.CALLER_GONE
                assert "not delivered" in refused["text"]


def _still_serves(s: kernel.Session, server: kernel.SessionServer) -> None:
    """One more call answered over the session (from a thread): it goes on."""
    t = threading.Thread(target=lambda: (m := server.recv(timeout=10)).reply(m.data))
    t.start()
    assert s.call(b"y", timeout=10).data == b"y"
    t.join(10)


def test_a_call_answered_just_before_its_deadline_waits_for_that_reply(kernel_daemon):
    """The server took the right to answer (the word says answered) before the
    caller's deadline, but writes the reply only after it: the caller does not
    withdraw, and the reply is its answer. (The server's two steps are split here
    by hand; a real one runs them back to back, and can be preempted between.)"""
    with kernel.connect(autostart=False) as k:
        ep = k.endpoint()
        s, server = session_in_process(ep, ep)
        with s, server:
            got: list[bytes] = []
            t = threading.Thread(target=lambda: got.append(s.call(b"x", timeout=0.2).data))
            t.start()
            msg = server.recv(timeout=10)
            forge_answered(server._end.mm, 1)  # the commit, before the deadline
            time.sleep(0.25)  # the deadline passes: the caller finds it answered
            forge_answered(server._end.mm, 1, answered=False)
            msg.reply(b"in time")  # commit again, and the write
            t.join(10)
            assert got == [b"in time"]


def test_every_call_ends_the_same_way_on_both_sides_when_timeouts_race_replies(
    kernel_daemon,
):
    """Timeouts of 0-60 µs against replies after 0-60 µs of work, in two real
    processes: each call the caller got an answer for is one whose reply the server
    saw delivered, and each it timed out on is one whose reply was refused."""
    import random

    with kernel.connect(autostart=False) as k:
        ep, rep, peer = _server(k, "jitter")
        with peer:
            _event(rep)
            rng = random.Random(5)
            answered = timed_out = 0
            with ep.session(timeout=10) as s:
                # 3000 calls at least; more (bounded) while one side of the race has
                # had fewer than 100: on a loaded machine replies lose more races.
                for i in range(20000):
                    if i >= 3000 and answered > 100 and timed_out > 100:
                        break
                    try:
                        s.call(b"%d" % i, timeout=rng.uniform(0, 60e-6))
                        answered += 1
                    except kernel.CallTimeoutError as e:
                        timed_out += not never_written(e)
                delivered, refused = map(int, s.call(b"tally", timeout=10).data.split(b":"))
            assert (answered, timed_out) == (delivered, refused)
            assert answered > 100  # both sides of the race were run
            assert timed_out > 100


def test_a_call_the_server_drops_unanswered_fails_at_once(kernel_daemon):
    """As on the kernel path, where a reply capability closed unanswered fails
    its call: a caller without a timeout must not wait forever."""
    with kernel.connect(autostart=False) as k:
        ep = k.endpoint()
        s, server = session_in_process(ep, ep)
        with s, server:
            t, raised = raising_in_thread(lambda: s.call(b"x"))  # no timeout
            msg = server.recv(timeout=10)
            del msg  # dropped without a reply
            t.join(10)
            assert not t.is_alive()
            assert isinstance(raised[0], kernel.PeerClosedError)
            assert "without replying" in str(raised[0])
            _still_serves(s, server)


def test_a_forged_answer_mark_holds_a_timed_out_call_only_briefly(kernel_daemon):
    """A caller past its deadline waits for a reply its server marked answered, but
    only ANSWERED_GRACE_S: the peer cannot hold it past its timeout by forging it."""
    from kernel.client._session import ANSWERED_GRACE_S

    with kernel.connect(autostart=False) as k:
        ep = k.endpoint()
        s, server = session_in_process(ep, ep)
        with s, server:
            forge_answered(server._end.mm, 1)  # the session's first call
            t0 = time.monotonic()
            with pytest.raises(kernel.CallTimeoutError, match="did not arrive"):
                s.call(b"x", timeout=0.2)
            assert 0.2 + ANSWERED_GRACE_S <= time.monotonic() - t0 < 5
            msg = server.recv(timeout=5)
            assert msg.data == b"x"  # it did go out
            msg.reply(b"too late")  # the word says answered: written, and dropped
            _still_serves(s, server)


def test_an_offer_nobody_takes_times_out_and_is_withdrawn(kernel_daemon):
    """A caller that gives up takes its offer back: a server that comes later finds
    none. (Each timed-out open once left its offer queued in the kernel, so a loop
    of short opens grew the kernel without bound, and a server found them all.)"""
    with kernel.connect(autostart=False) as k:
        ep = k.endpoint()
        for _ in range(50):
            with pytest.raises(kernel.CallTimeoutError, match="no server accepted"):
                ep.session(timeout=0.002)
        with pytest.raises(kernel.CallTimeoutError):
            ep.recv(timeout=0.2)


def test_an_open_failed_by_revocation_withdraws_its_offer(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        ep = k.endpoint()
        parent = ep.mint(Rights.SEND | Rights.COPY | Rights.MANAGE, badge=3)
        child = parent.copy(Rights.SEND)
        opener, raised = raising_in_thread(lambda: child.session(timeout=30))
        time.sleep(0.2)  # the offer waits on `ep`
        parent.revoke()
        opener.join(10)
        assert [type(e) for e in raised] == [kernel.InvalidCapabilityError]
        with pytest.raises(kernel.CallTimeoutError):
            ep.recv(timeout=0.2)


def test_an_offer_accepted_after_its_caller_gave_up_is_refused(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        ep = k.endpoint()
        opener, raised = raising_in_thread(lambda: ep.session(timeout=0.5))
        offer = ep.recv(timeout=5)  # taken while the caller still waits
        assert offer.session_offer
        assert offer.from_kernel
        opener.join(10)
        assert [type(e) for e in raised] == [kernel.CallTimeoutError]
        with pytest.raises(kernel.PeerClosedError, match="gave up"):
            ep.accept_session(offer)
        with pytest.raises(TypeError):
            ep.accept_session(b"not an offer")  # type: ignore[arg-type]


def test_rights_are_checked_when_opening_and_accepting(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        ep = k.endpoint()
        with pytest.raises(kernel.AccessDeniedError):
            ep.copy(Rights.RECEIVE).session(timeout=1)
        import threading

        opened: list[object] = []
        t = threading.Thread(target=lambda: opened.append(_try_open(ep)))
        t.start()
        offer = ep.recv(timeout=5)
        with pytest.raises(kernel.AccessDeniedError):
            ep.copy(Rights.SEND).accept_session(offer)
        server = ep.accept_session(offer)
        t.join(10)
        assert isinstance(opened[0], kernel.Session)
        opened[0].close()
        with pytest.raises(kernel.PeerClosedError):
            server.recv(timeout=5)
        server.close()


def _try_open(ep: kernel.EndpointCap) -> object:
    try:
        return ep.session(timeout=10)
    except kernel.IPCError as e:
        return e


def test_sessions_per_process_are_bounded(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        ep, rep, peer = _server(k, "keep")
        with peer:
            _event(rep)
            sessions = []
            for n in range(abi.MAX_SESSIONS):
                sessions.append(ep.session(timeout=10))
                assert _event(rep)["n"] == n + 1
            with pytest.raises(kernel.ResourceLimitError, match="the process has"):
                ep.session(timeout=10)  # this process's table is full
            sessions.pop().close()
            with pytest.raises(kernel.ResourceLimitError, match="the server has"):
                ep.session(timeout=10)  # the server still holds its end of the closed one
            assert _event(rep)["event"] == "accept failed"
            for s in sessions:
                s.close()


def test_a_burst_arrives_whole_and_in_order_and_replies_are_checked(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        ep = k.endpoint()
        with spawned(k, "actor.py", "burst", "0", "20000", ep=ep) as caller:
            srv = ep.accept_session(ep.recv(timeout=20))
            got: list[kernel.SessionMessage] = []
            while not got or not got[-1].is_call:
                batch = srv.recv_many(timeout=20)
                assert 1 <= len(batch) <= 256
                got += batch
            done = got.pop()
            assert [m.data for m in got] == [b"%d" % i for i in range(20000)]
            assert {(m.badge, m.sender.pid, m.is_call) for m in got} == {(0, caller.pid, False)}
            with pytest.raises(kernel.IPCError, match="sent, not called"):
                got[0].reply(b"no")
            with pytest.raises(kernel.MessageTooLargeError):
                done.reply(b"x" * (abi.MAX_PAYLOAD + 1))
            done.reply(b"ok")  # still answerable after the refused one
            with pytest.raises(kernel.IPCError, match="already answered"):
                done.reply(b"twice")
            assert caller.wait(timeout=20) == 0
            with pytest.raises(kernel.PeerClosedError):
                srv.recv(timeout=20)
            srv.close()
            with pytest.raises(kernel.PeerClosedError, match="closed"):
                srv.recv(timeout=1)


def test_a_send_waiting_for_room_fails_when_the_kernel_dies(tmp_path):
    # Not the fixture's kernel: this one is SIGKILLed, which the fixture would report.
    import threading

    sock_dir = Path(f"/tmp/mks-{os.getpid()}-{time.monotonic_ns()}")
    sock_dir.mkdir(mode=0o700)
    path = str(sock_dir / "k.sock")
    daemon = subprocess.Popen(
        [sys.executable, "-m", "kernel", "kernel", "--socket", path, "--no-names"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(path):
            assert daemon.poll() is None
            assert time.monotonic() < deadline
            time.sleep(0.005)
        with kernel.connect(path, autostart=False) as k:
            ep = k.endpoint()
            opened: list[object] = []
            t = threading.Thread(target=lambda: opened.append(_try_open(ep)))
            t.start()
            server = ep.accept_session(ep.recv(timeout=10))  # never receives: the ring fills
            t.join(10)
            s = opened[0]
            assert isinstance(s, kernel.Session)
            outcome: list[BaseException] = []

            def fill() -> None:
                try:
                    for _ in range(100):  # 6.4 MiB: more than the ring holds
                        s.send(b"x" * 65536)
                except BaseException as e:
                    outcome.append(e)

            sender = threading.Thread(target=fill, daemon=True)
            sender.start()
            time.sleep(0.3)
            assert sender.is_alive()  # waiting for room
            crashed = time.monotonic()
            daemon.kill()
            daemon.wait(10)
            sender.join(5)
            assert not sender.is_alive()
            assert isinstance(outcome[0], kernel.PeerClosedError)
            assert time.monotonic() - crashed < 2.0
            s.close()
            server.close()
    finally:
        daemon.kill()
        daemon.wait(10)
        for f in sock_dir.iterdir():
            f.unlink()
        sock_dir.rmdir()


def test_sessions_opened_while_others_sleep_all_keep_working(kernel_daemon):
    """Each accept reads descriptors from the server's bootstrap socket while its idle
    sessions' threads sleep polling that socket (a dead kernel shows there). Reading
    once switched the socket to timeout mode, and a concurrent peek then failed as a
    lost kernel (found by the bench's --clients test, about one run in eight)."""
    with kernel.connect(autostart=False) as k:
        ep, rep, peer = _server(k)
        with peer:
            _event(rep)
            sessions = []
            for round_ in range(3):
                for _ in range(8):
                    sessions.append(ep.session(timeout=10))
                    time.sleep(0.002)  # let the earlier ones go to sleep on the socket
                for n, s in enumerate(sessions):
                    data = b"%d.%d" % (round_, n)
                    assert s.call(data, timeout=10).data == data
            for s in sessions:
                s.close()
            for _ in sessions:
                assert _event(rep)["error"] == "PeerClosedError"


def test_a_session_dropped_without_close_is_ended_for_the_server(kernel_daemon):
    import gc

    with kernel.connect(autostart=False) as k:
        ep, rep, peer = _server(k)
        with peer:
            _event(rep)
            s = ep.session(timeout=10)
            assert s.call(b"x", timeout=10).data == b"x"
            del s
            gc.collect()
            assert _event(rep)["error"] == "PeerClosedError"  # without waiting for exit
            with ep.session(timeout=10) as again:  # its state word was freed for reuse
                assert again.call(b"y", timeout=10).data == b"y"


def test_a_declined_offer_fails_the_open_with_the_servers_reason(kernel_daemon):
    import threading

    with kernel.connect(autostart=False) as k:
        ep = k.endpoint()
        opened: list[object] = []
        t = threading.Thread(target=lambda: opened.append(_try_open(ep)))
        t.start()
        offer = ep.recv(timeout=5)
        with pytest.raises(kernel.AccessDeniedError):
            ep.copy(Rights.SEND).decline_session(offer, "no")  # RECEIVE needed
        ep.decline_session(offer, "too busy")
        t.join(10)
        assert isinstance(opened[0], kernel.ResourceLimitError)
        assert "the server declined the session: too busy" in str(opened[0])
        with pytest.raises(kernel.PeerClosedError, match="no longer waits"):
            ep.accept_session(offer)  # answered already


def test_a_stray_session_frame_is_filed_not_left_to_wake_every_poll(kernel_daemon):
    """Descriptors the kernel sent for an open that then failed (or whose waiter gave
    up) must not stay on the socket: it would stay readable, and every sleep on it
    would return at once."""
    import array
    import select
    import socket

    with kernel.connect(autostart=False) as k:
        conn = k._conn
        real, (ours, theirs) = conn.sock, socket.socketpair()
        fds = [os.eventfd(0) for _ in range(3)]
        try:
            conn.sock = ours
            theirs.sendmsg(
                [abi.encode_frame(abi.SessionFds(77))],
                [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))],
            )
            conn.check_socket()  # what a sleeper does when the socket stirs
            assert not select.select([ours], [], [], 0)[0]  # nothing left to wake anyone
            (filed,) = conn._session_fds.pop(77)
            assert len(filed) == 3
            for fd in filed:
                os.close(fd)
        finally:
            conn.sock = real
            for fd in fds:
                os.close(fd)
            ours.close()
            theirs.close()


def test_after_the_connection_closes_a_session_raises_peer_closed(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        ep, rep, peer = _server(k)
        with peer:
            _event(rep)
            k.names.register("t.close", ep.copy())
            with kernel.connect(autostart=False) as caller:
                s = caller.names.lookup("t.close", timeout=5).session(timeout=10)
                assert s.call(b"x", timeout=10).data == b"x"
            with pytest.raises(kernel.PeerClosedError, match="closed"):
                s.call(b"y", timeout=10)
            with pytest.raises(kernel.PeerClosedError):
                s.send(b"z")
            s.close()  # no error: the kernel ended it with the connection
            assert _event(rep)["error"] == "PeerClosedError"


class _Interrupted(Exception):
    pass


def test_a_signal_handler_interrupts_a_call_waiting_without_timeout(kernel_daemon):
    """The wait is compiled (SessionPort.wait): a signal that interrupts its poll()
    must still run its Python handler there, as select.poll() would (PEP 475)."""
    import signal
    import threading

    def handler(signum, frame):
        raise _Interrupted

    with kernel.connect(autostart=False) as k:
        ep = k.endpoint()
        s, server = session_in_process(ep, ep)
        previous = signal.signal(signal.SIGUSR1, handler)
        main = threading.get_ident()
        timer = threading.Timer(0.5, signal.pthread_kill, (main, signal.SIGUSR1))
        try:
            timer.start()
            t0 = time.monotonic()
            with pytest.raises(_Interrupted):
                s.call(b"never answered", timeout=30)  # the timeout is only a safety net
            assert time.monotonic() - t0 < 15  # the handler ran at the signal, not after
            msg = server.recv(timeout=5)
            with pytest.raises(kernel.PeerClosedError, match="not delivered"):
                msg.reply(b"too late")  # the call was withdrawn as it ended
        finally:
            timer.cancel()
            signal.signal(signal.SIGUSR1, previous)
            s.close()
            server.close()


def test_calls_from_many_threads_take_turns_and_each_gets_its_own_answer(kernel_daemon):
    """Session.call is compiled (faces.pyx SessionCaller) with its own turn lock."""
    import threading

    with kernel.connect(autostart=False) as k:
        ep = k.endpoint()
        s, server = session_in_process(ep, ep)

        def echo() -> None:
            with contextlib.suppress(kernel.PeerClosedError):
                while True:
                    m = server.recv()
                    m.reply(m.data)

        def calls(tag: int) -> None:
            for i in range(300):
                data = f"{tag}:{i}".encode()
                got.append(s.call(data, timeout=20).data == data)

        got: list[bool] = []
        threading.Thread(target=echo, daemon=True).start()
        callers = [threading.Thread(target=calls, args=(t,)) for t in range(4)]
        for t in callers:
            t.start()
        for t in callers:
            t.join(60)
        assert got == [True] * 1200
        s.close()
        server.close()


def test_a_thread_waiting_for_its_turn_still_runs_signal_handlers(kernel_daemon):
    import signal
    import threading

    def handler(signum, frame):
        raise _Interrupted

    with kernel.connect(autostart=False) as k:
        ep = k.endpoint()
        s, server = session_in_process(ep, ep)
        # takes the turn: its call is never answered
        holder = threading.Thread(target=_call_quietly, args=(s,), daemon=True)
        holder.start()
        server.recv(timeout=20)  # the holder's call is out: it holds the turn
        previous = signal.signal(signal.SIGUSR1, handler)
        timer = threading.Timer(0.5, signal.pthread_kill, (threading.get_ident(), signal.SIGUSR1))
        try:
            timer.start()
            t0 = time.monotonic()
            with pytest.raises(_Interrupted):
                s.call(b"waits for its turn", timeout=30)
            assert time.monotonic() - t0 < 15
        finally:
            timer.cancel()
            signal.signal(signal.SIGUSR1, previous)
            s.close()  # ends the holder's call too
            holder.join(20)
            server.close()
        assert not holder.is_alive()


def _call_quietly(s: kernel.Session) -> None:
    with contextlib.suppress(kernel.IPCError):
        s.call(b"never answered", timeout=30)


def test_close_from_another_thread_ends_a_waiting_call(kernel_daemon):
    import threading

    with kernel.connect(autostart=False) as k:
        ep = k.endpoint()
        s, server = session_in_process(ep, ep)
        errors: list[BaseException] = []

        def wait_forever() -> None:
            try:
                s.call(b"never answered")
            except BaseException as e:
                errors.append(e)

        caller = threading.Thread(target=wait_forever, daemon=True)
        caller.start()
        server.recv(timeout=20)  # the call is out and waiting
        s.close()  # waits for the caller's turn to end, then unmaps
        caller.join(20)
        assert len(errors) == 1
        assert isinstance(errors[0], kernel.PeerClosedError)
        assert s.closed
        server.close()


def test_threads_receiving_on_one_server_share_the_requests_without_loss(kernel_daemon):
    """SessionServer.recv is compiled (faces.pyx SessionReceiver): its batch queue
    and turn lock hand every request to exactly one thread, in ring order per batch."""
    import threading

    with kernel.connect(autostart=False) as k:
        ep = k.endpoint()
        s, server = session_in_process(ep, ep)
        seen: list[bytes] = []

        def serve() -> None:
            with contextlib.suppress(kernel.PeerClosedError):
                while True:
                    m = server.recv()
                    seen.append(m.data)
                    if m.is_call:
                        m.reply(b"ok")

        servers = [threading.Thread(target=serve, daemon=True) for _ in range(3)]
        for t in servers:
            t.start()
        sent = [f"m{i}".encode() for i in range(3000)]
        s.send_many(sent, timeout=20)
        assert s.call(b"last", timeout=20).data == b"ok"
        deadline = time.monotonic() + 20
        while len(seen) < len(sent) + 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        server.shutdown()  # every thread leaves, also those waiting for their turn
        for t in servers:
            t.join(20)
        assert not any(t.is_alive() for t in servers)
        assert sorted(seen) == sorted([*sent, b"last"])
        s.close()
        server.close()


def test_a_malformed_reply_fails_the_call_and_ends_the_session_for_the_caller(kernel_daemon):
    """The compiled call (faces.pyx SessionCaller) hands a broken reply ring to the
    slow path, which names it and never resends the call."""
    with kernel.connect(autostart=False) as k:
        ep = k.endpoint()
        s, server = session_in_process(ep, ep)
        replies = abi.CONTROL_SIZE + s._end.out.capacity  # the caller's inbox
        mm = server._end.mm  # the server's mapping of the same rings
        mm[replies : replies + 16] = b"\xff" * 16  # a record of size 0xffffffff
        mm[abi.OFF_CQ_TAIL : abi.OFF_CQ_TAIL + 8] = (16).to_bytes(8, "little")
        with pytest.raises(kernel.PeerClosedError, match="ring format"):
            s.call(b"x", timeout=10)
        assert len(server.recv_many(timeout=10)) == 1  # the call went out once
        for use in (lambda: s.call(b"again", timeout=10), lambda: s.send(b"again")):
            with pytest.raises(kernel.PeerClosedError, match="ring format"):
                use()  # unusable from now on: nothing more goes out
        with pytest.raises(kernel.CallTimeoutError):
            server.recv(timeout=0.3)
        s.close()
        server.close()


def test_a_send_too_large_or_after_close_is_refused_and_sends_nothing(kernel_daemon):
    """Session.send's compiled common path hands these to the slow path, which names
    them; what was sent before and after arrives whole and in order."""
    with kernel.connect(autostart=False) as k:
        ep = k.endpoint()
        s, server = session_in_process(ep, ep)
        s.send(b"before")
        with pytest.raises(kernel.MessageTooLargeError):
            s.send(b"x" * (abi.MAX_PAYLOAD + 1))
        with pytest.raises(TypeError):
            s.send("text is not bytes")  # type: ignore[arg-type]
        s.send(memoryview(b"after"))
        assert [m.data for m in server.recv_many(timeout=10)] == [b"before", b"after"]
        s.close()
        with pytest.raises(kernel.PeerClosedError, match="closed"):
            s.send(b"late")
        server.close()


def _minor_faults(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[7])


def test_calls_take_no_page_faults_once_the_rings_are_mapped(kernel_daemon):
    """Both sides back their rings' pages when they map them (ring.prefault). A
    page first touched mid-call cost that call 2-3 µs (about one call in 35 of a
    ring's first pass), which set the p99 of a session call at 12-14 µs."""
    calls, data = 3000, b"x" * 64  # 3000 records of ~100 B each way: ~75 pages per ring
    with kernel.connect(autostart=False) as k:
        ep, rep, peer = _server(k)
        with peer as server:
            _event(rep)
            with ep.session(timeout=10) as s:
                s.call(data, timeout=10)
                ep.call(data, timeout=10)
                me, them = _minor_faults(os.getpid()), _minor_faults(server.pid)
                for _ in range(calls):
                    s.call(data)
                session_faults = _minor_faults(os.getpid()) - me, _minor_faults(server.pid) - them
                me = _minor_faults(os.getpid())
                for _ in range(calls):
                    ep.call(data)
                kernel_faults = _minor_faults(os.getpid()) - me
    assert session_faults[0] < 10, session_faults  # the caller's, then the server's
    assert session_faults[1] < 10, session_faults
    assert kernel_faults < 10, kernel_faults


_FAULTS_OF_KERNEL_CALLS = """
import resource, kernel
with kernel.connect(autostart=False) as k:
    n = k.notification()
    n.signal(1)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3000):  # two records each way per round: ~60 pages of each ring
        n.signal(1)
        n.poll()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def test_mkipc_prefault_0_lets_ring_pages_fault_in_as_used(kernel_daemon):
    """The memory-for-latency trade is the user's: MKIPC_PREFAULT=0 maps rings
    lazily (2 MiB per connection and session otherwise held from the start)."""

    def faults(prefault: str) -> int:
        env = {**os.environ, "MKIPC_PREFAULT": prefault}
        out = subprocess.run(
            [sys.executable, "-c", _FAULTS_OF_KERNEL_CALLS], env=env, capture_output=True,
            text=True, timeout=60, check=True,
        )  # fmt: skip
        return int(out.stdout)

    assert faults("1") < 10
    assert faults("0") > 50
