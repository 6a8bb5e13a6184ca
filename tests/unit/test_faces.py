"""The compiled session faces (kernel/_core/faces.pyx) over ports on rings in this
process: the turn lock, the common paths of call and recv, and a group's sleep."""

from __future__ import annotations

import mmap

import pytest
from session_ports import session_ports

from kernel import abi
from kernel._core.port import SessionPort
from kernel._core.ring import SessionStates, ring_pair


@pytest.fixture
def ports():
    yield from session_ports()


def test_a_turn_lock_behaves_as_threading_lock():
    import threading

    from kernel._core.faces import TurnLock

    turn = TurnLock()
    with pytest.raises(RuntimeError):
        turn.release()  # not held
    with turn:
        assert turn.locked()
        got: list[float] = []
        waiter = threading.Thread(target=lambda: (turn.acquire(), got.append(1), turn.release()))
        waiter.start()
        waiter.join(0.2)
        assert not got  # it waits for its turn
    waiter.join(10)
    assert got == [1]
    assert not turn.locked()


def test_the_compiled_call_answers_or_hands_the_rest_to_the_slow_path(ports):
    """SessionCaller.call (Session.call's compiled common path): a reply comes back
    as a SessionReply; anything else goes to `_call_slow` with the turn held."""
    from kernel._core.faces import SessionCaller, SessionReply

    caller_port, server, states, _ = ports
    slow: list[tuple] = []

    class Caller(SessionCaller):
        def _call_slow(self, req_id, data, deadline, first):
            slow.append((req_id, data, deadline, first, self.turn.locked()))
            return "slow"

    c = Caller()
    with pytest.raises(TypeError):
        c.call(b"q")  # not bound to a port yet
    c.turn = c._bind(caller_port, "server")
    caller_port.set_spin(1000, 2000, 1000, 0)
    assert c.call(b"q", timeout=0) == "slow"  # written; nobody answered in time
    assert slow[-1][0] == 1
    assert slow[-1][2] == 0
    assert slow[-1][4]  # the turn is held
    server.send(abi.Op.ENDPOINT_REPLY, 2, b"a")  # the answer to the next call, early
    reply = c.call(b"r", timeout=10)
    assert isinstance(reply, SessionReply)
    assert reply.data == b"a"
    assert reply.sender == "server"
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError):
            c.call(b"q", timeout=bad)  # refused before anything is written
    states.set(3, -22)
    assert c.call(b"q") == "slow"
    assert slow[-1][3] == -22
    assert slow[-1][0] == 3
    assert not c.turn.locked()


def test_group_sleep_arms_every_member_then_says_what_woke_it():
    """kernel.SessionGroup's compiled sleep over two members' rings, with real
    eventfds as doorbells and a socketpair standing for the kernel's socket."""
    import os
    import socket
    import threading
    import time

    from kernel._core.faces import WOKEN, group_sleep
    from kernel._core.port import READY, SOCKET, TIMEOUT

    states = SessionStates(mmap.mmap(-1, abi.CONTROL_SIZE))
    kernel_sock, ours = socket.socketpair()
    wake, bells, rings, members = os.eventfd(0, os.EFD_NONBLOCK), [], [], []
    for index in (1, 2):
        states.set(index, abi.SESSION_OPEN)
        requests, replies = ring_pair(mmap.mmap(-1, abi.CONTROL_SIZE + 8192), 4096, 4096)
        bells.append(os.eventfd(0, os.EFD_NONBLOCK))
        rings.append(requests)
        members.append(
            SessionPort(
                1, replies, requests, states, index, -1, 1000, 0, "c", 8, bells[-1], ours.fileno()
            )  # fmt: skip
        )
    try:
        lock, got = threading.Lock(), []
        taker = threading.Timer(
            0.005, lambda: got.append(lock.acquire(timeout=5)) or lock.release()
        )
        lock.acquire()  # the group's: held on entry, let go only while it polls
        t0 = time.monotonic_ns()
        taker.start()
        assert group_sleep(members, wake, t0 + 50_000_000, lock) == TIMEOUT
        assert time.monotonic_ns() - t0 >= 50_000_000
        assert got == [True]
        assert lock.locked()
        lock.release()
        os.eventfd_write(wake, 1)
        assert group_sleep(members, wake, -1) == WOKEN  # the group drains its own fd
        os.eventfd_read(wake)
        os.eventfd_write(bells[1], 1)
        assert group_sleep(members, wake, -1) == READY
        with pytest.raises(BlockingIOError):
            os.eventfd_read(bells[1])  # the doorbell was drained
        kernel_sock.send(b"!")
        assert group_sleep(members, wake, -1) == SOCKET
        ours.recv(1)
        caller = SessionPort(1, rings[0], rings[0], states, 1, -1, 1000, 0, "s", 9)
        caller.send(abi.Op.ENDPOINT_SEND, 0, b"x")  # a record already there: no sleep
        assert group_sleep(members, wake, -1) == READY
        assert not any(ring.peer_waiting() for ring in rings)  # every member disarmed
        rings[0].close()  # a member closed meanwhile is skipped, not touched
        assert group_sleep(members, wake, time.monotonic_ns() + 5_000_000) == TIMEOUT
        assert not rings[1].peer_waiting()
    finally:
        for fd in (wake, *bells):
            os.close(fd)
        kernel_sock.close()
        ours.close()


def test_the_compiled_recv_returns_a_batch_in_order_or_hands_over_to_the_slow_path(ports):
    """SessionReceiver.recv (SessionServer.recv's common path): one ring batch is
    queued and returned in order; the slow path gets what the wait did not give,
    with the turn free, and `_queue`/`_take_ready` keep the order between them."""
    from kernel._core.faces import SessionReceiver

    caller, server_port, states, _ = ports
    slow: list[tuple] = []

    class Receiver(SessionReceiver):
        def _recv_slow(self, deadline):
            slow.append((deadline, self.turn.locked()))
            return "slow"

    r = Receiver()
    with pytest.raises(TypeError):
        r.recv()  # not bound to a port yet
    r.turn = r._bind(server_port)
    server_port.set_spin(1000, 2000, 1000, 0)
    assert r.recv(timeout=0) == "slow"  # nothing came
    assert slow[-1] == (0, False)  # the turn is free for the slow path
    for data in (b"a", b"b", b"c"):
        caller.send(abi.Op.ENDPOINT_CALL, 1, data)
    assert r.recv(timeout=0).data == b"a"  # the whole batch is taken at once
    caller.send(abi.Op.ENDPOINT_CALL, 1, b"d")
    taken = r._take_ready(1)
    assert [m.data for m in taken] == [b"b"]
    r._queue(taken)  # behind what is still queued (c), before the ring's (d)
    assert [r.recv().data for _ in range(3)] == [b"c", b"b", b"d"]
    r._slow_only = True  # shut down, or served by a group
    caller.send(abi.Op.ENDPOINT_CALL, 1, b"e")
    assert r.recv() == "slow"
    r._slow_only = False
    assert r.recv().data == b"e"
    states.set(3, -22)
    assert r.recv() == "slow"  # ended: the slow path names it
    assert not r.turn.locked()


def test_group_spin_sees_a_record_on_any_member_or_gives_up():
    """kernel.SessionGroup's compiled busy-poll over two members' inboxes."""
    import threading
    import time

    from kernel._core.faces import group_spin

    states = SessionStates(mmap.mmap(-1, abi.CONTROL_SIZE))
    rings, members = [], []
    for index in (1, 2):
        states.set(index, abi.SESSION_OPEN)
        requests, replies = ring_pair(mmap.mmap(-1, abi.CONTROL_SIZE + 8192), 4096, 4096)
        rings.append(requests)
        members.append(SessionPort(1, replies, requests, states, index, -1, 1000, 0, "c", 8))
    try:
        t0 = time.monotonic_ns()
        assert not group_spin(members, 2_000_000, 1_000, 1_000_000)  # the budget ends it
        assert time.monotonic_ns() - t0 >= 2_000_000
        t0 = time.monotonic_ns()
        assert not group_spin(members, 60_000_000_000, 1_000, 0)  # so does the yield bound
        assert time.monotonic_ns() - t0 < 30_000_000_000
        caller = SessionPort(1, rings[1], rings[1], states, 2, -1, 1000, 0, "s", 9)
        send = threading.Timer(0.005, caller.send, (abi.Op.ENDPOINT_SEND, 0, b"x"))
        send.start()  # from another thread while the spin runs without the GIL
        assert group_spin(members, 60_000_000_000, 1_000, 2**30)
        send.join()
        assert group_spin(members, 0, 0, 0)  # a record already there
        rings[0].close()  # a member closed meanwhile: the group looks (and drops it)
        assert group_spin(members, 60_000_000_000, 1_000, 0)
    finally:
        for ring in rings:
            ring.close()


def test_group_take_goes_round_the_members_and_names_the_members_that_ended():
    from kernel._core.faces import group_take
    from kernel._core.port import SessionMessage

    states = SessionStates(mmap.mmap(-1, abi.CONTROL_SIZE))
    rings, members, callers = [], [], []
    for index in (1, 2, 3):
        states.set(index, abi.SESSION_OPEN)
        requests, replies = ring_pair(mmap.mmap(-1, abi.CONTROL_SIZE + 8192), 4096, 4096)
        rings.append(requests)
        members.append(SessionPort(1, replies, requests, states, index, -1, 1000, 0, "c", 8))
        callers.append(SessionPort(1, requests, replies, states, index, -1, 1000, 0, "s", 9))
    try:
        for i, caller in enumerate(callers):
            for n in range(2):
                caller.send(abi.Op.ENDPOINT_SEND, 0, f"{i}.{n}".encode())
        out: list[SessionMessage] = []
        ended: list[int] = []
        assert group_take(members, out, 3, ended) == (3, 2)  # the batch bound stops the pass
        assert [m.data for m in out] == [b"0.0", b"0.1", b"1.0"]
        out.clear()  # the next pass starts after the member that filled the batch
        assert group_take(members, out, 3, ended, 2) == (3, 2)
        assert [m.data for m in out] == [b"2.0", b"2.1", b"1.1"]
        callers[0].send(abi.Op.ENDPOINT_SEND, 0, b"0.2")
        out.clear()
        assert group_take(members, out, 3, ended, 7) == (1, 7)  # round from 7 % 3: all taken
        states.set(2, -22)  # the kernel ended member 1's session (PEER_CLOSED)
        rings[2].close()  # and member 2's ring is gone
        out.clear()
        assert group_take(members, out, 10, ended) == (0, 0)
        assert ended == [1, 2]  # the group's slow path names their errors
        assert group_take([], out, 10, ended, 5) == (0, 5)
    finally:
        for ring in rings:
            ring.close()
