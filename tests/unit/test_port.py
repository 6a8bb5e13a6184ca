"""The compiled session port (kernel/_core/port.pyx) on rings in this process: its
codes, the kernel's state word, and a hostile peer's record."""

from __future__ import annotations

import struct

import pytest
from session_ports import session_ports

import kernel
from kernel import abi
from kernel._core.port import FULL, OK, SessionPort
from kernel._core.ring import RingCorruptError, ring_pair


@pytest.fixture
def ports():
    yield from session_ports()


def test_send_then_recv_many_carries_data_and_the_kernels_badge(ports):
    caller, server, _, _ = ports
    assert caller.send(abi.Op.ENDPOINT_SEND, 0, b"one") == OK
    assert caller.send(abi.Op.ENDPOINT_CALL, 5, memoryview(b"two")) == OK
    out: list = []
    assert server.recv_many(out, 10) == 2
    assert [(m.data, m.is_call, m.badge, m.sender, m.sender_id) for m in out] == [
        (b"one", False, 77, "caller", 8),
        (b"two", True, 77, "caller", 8),
    ]
    out[1].reply(b"answer")
    assert caller.take_reply(4) is None  # another call's reply is dropped, not kept
    assert server.send(abi.Op.ENDPOINT_REPLY, 5, b"x") == OK
    assert caller.take_reply(5) == b"x"


def test_a_full_ring_and_an_oversized_payload_are_reported(ports):
    caller, _, _, _ = ports
    while (code := caller.send(abi.Op.ENDPOINT_SEND, 0, b"x" * 100)) == OK:
        pass
    assert code == FULL
    with pytest.raises(OverflowError):
        caller.send(abi.Op.ENDPOINT_SEND, 0, b"x" * 1001)
    assert caller.send_many([b"y"], 0) == 0


def test_nothing_moves_once_the_kernel_says_it_ended(ports):
    caller, server, states, _ = ports
    assert caller.send(abi.Op.ENDPOINT_SEND, 0, b"before") == OK
    states.set(3, -11)  # revoked (BAD_SLOT)
    assert caller.send(abi.Op.ENDPOINT_SEND, 0, b"after") == -11
    assert caller.send_many([b"after"], 0) == -11
    assert server.recv_many([], 10) == -11  # not even what was written before
    states.set(3, abi.SESSION_FREE)
    assert server.state() == -22  # freed under it: closed


def test_a_port_marked_broken_touches_neither_ring(ports):
    caller, server, _, _ = ports
    caller.send(abi.Op.ENDPOINT_SEND, 0, b"queued")
    server.mark_broken()  # the client library saw the peer break the ring format
    out: list = []
    assert server.recv_many(out, 4) == -22
    assert out == []
    assert server.send(abi.Op.ENDPOINT_REPLY, 1, b"r") == -22
    assert caller.take_reply(1) is None  # nothing was written
    assert server.recv_wait(out, 4, 0) == -22


def test_a_malformed_record_raises_instead_of_reading_past_it(ports):
    _, server, _, shared = ports
    shared[abi.CONTROL_SIZE : abi.CONTROL_SIZE + 8] = b"\xff" * 8
    shared[abi.OFF_SQ_TAIL : abi.OFF_SQ_TAIL + 8] = (8).to_bytes(8, "little")
    with pytest.raises(RingCorruptError):
        server.recv_many([], 10)


def test_wait_spins_for_a_record_then_sleeps_until_the_deadline(ports):
    import os
    import time

    from kernel._core.port import READY, TIMEOUT

    caller, _, states, shared = ports
    efd = os.eventfd(0, os.EFD_NONBLOCK)
    size = (len(shared) - abi.CONTROL_SIZE) // 2
    requests, replies = ring_pair(shared, size, size)  # the server's view, with a doorbell
    try:
        sleeper = SessionPort(1, replies, requests, states, 3, -1, 1000, 0, "caller", 8, efd, -1)
        sleeper.set_spin(1000, 20_000, 1000, 0)
        t0 = time.monotonic_ns()
        assert sleeper.wait(t0 + 30_000_000) == TIMEOUT  # spun, then slept on the doorbell
        assert time.monotonic_ns() - t0 >= 20_000_000
        assert sleeper.wait(0) == TIMEOUT  # a passed deadline: at once
        sleeper.set_spin(500_000_000, 500_000_000, 1000, 0)  # a spin far past the deadline
        t0 = time.monotonic_ns()
        assert sleeper.wait(t0 + 2_000_000) == TIMEOUT
        assert time.monotonic_ns() - t0 < 200_000_000  # the deadline cut the spin short
        sleeper.set_spin(1000, 20_000, 1000, 0)
        caller.send(abi.Op.ENDPOINT_SEND, 0, b"x")
        assert sleeper.wait(-1) == READY  # the spin sees it: no sleep, no doorbell needed
        out: list = []
        assert sleeper.recv_wait(out, 4, 0) == 1
        assert sleeper.recv_wait(out, 4, 0) == 0  # nothing more: the wait timed out
    finally:
        requests.close()
        replies.close()
        os.close(efd)


@pytest.mark.parametrize("spinner", ["port.wait", "group_spin"])
def test_a_spin_lets_the_processs_other_threads_run(ports, spinner):
    """A single-threaded process spins holding the GIL (ring.pyx spin_gil); with a
    second thread the spin must release it, or that thread stops for the spin."""
    import threading
    import time

    from kernel._core.faces import group_spin

    _, server, _, _ = ports
    server.set_spin(600_000_000, 600_000_000, 1000, 0)  # spins from half the maximum
    ticks: list[float] = []
    stop = threading.Event()

    def tick() -> None:
        while not stop.is_set():
            ticks.append(time.monotonic())
            time.sleep(0.001)

    ticker = threading.Thread(target=tick)
    ticker.start()
    try:
        while not ticks:
            time.sleep(0.001)
        t0 = time.monotonic()
        if spinner == "port.wait":
            server.wait(time.monotonic_ns() + 300_000_000)
        else:
            group_spin([server], 300_000_000, 1000, 1 << 30)
        t1 = time.monotonic()
    finally:
        stop.set()
        ticker.join()
    assert t1 - t0 >= 0.25  # it did spin
    assert [t for t in ticks if t0 + 0.05 < t < t1 - 0.05], "the other thread never ran"


def test_call_returns_the_reply_or_the_code_of_the_slow_path(ports):
    from kernel._core.port import TIMEOUT

    caller, server, states, _ = ports
    caller.set_spin(1000, 2000, 1000, 0)
    assert caller.call(7, b"q", 0) == TIMEOUT  # written; nobody answered
    out: list = []
    assert server.recv_many(out, 4) == 1
    out[0].reply(b"a")
    assert caller.take_reply(7) == b"a"
    while caller.send(abi.Op.ENDPOINT_SEND, 0, b"q") == OK:
        pass
    assert caller.call(8, b"q", 0) == FULL  # nothing written
    states.set(3, -22)
    assert caller.call(9, b"q", -1) == -22


def test_set_spin_rejects_bounds_that_cannot_hold(ports):
    caller, _, _, _ = ports
    with pytest.raises(ValueError):
        caller.set_spin(10, 5, 0, 0)
    with pytest.raises(ValueError):
        caller.set_spin(0, 5, -1, 0)


# ------------------------------------------------------------------ the call words

ANSWERED, WITHDRAWN = 1 << 63, 1 << 62


def _word(shared, req_id: int) -> int:
    off = abi.OFF_CALLS + 8 * (req_id % abi.MAX_TRACKED_CALLS)
    return int(struct.unpack_from("<Q", shared, off)[0])


def _set_word(shared, req_id: int, value: int) -> None:
    struct.pack_into("<Q", shared, abi.OFF_CALLS + 8 * (req_id % abi.MAX_TRACKED_CALLS), value)


def _called(caller, server, req_id: int) -> object:
    """Write call `req_id` (nobody answers it in time) and receive it on the server."""
    from kernel._core.port import TIMEOUT

    caller.set_spin(1000, 2000, 1000, 0)
    assert caller.call(req_id, b"q", 0) == TIMEOUT
    got: list = []
    assert server.recv_many(got, 1) == 1
    return got[0]


def test_a_reply_after_the_caller_gave_up_is_refused_and_never_written(ports):
    caller, server, _, shared = ports
    msg = _called(caller, server, 1)
    assert _word(shared, 1) == 0  # the caller writes no word while it waits
    assert caller.withdraw(1) is True  # the server had not answered: it will be told
    assert _word(shared, 1) == 1 | WITHDRAWN
    with pytest.raises(kernel.PeerClosedError, match="not delivered") as e:
        msg.reply(b"too late")
    assert e.value.status == kernel.Status.CALLER_GONE  # as the kernel path says it
    assert caller.take_record() is None  # nothing was written
    with pytest.raises(kernel.IPCError, match="already answered"):
        msg.reply(b"again")  # one answer per call, delivered or not


def test_a_reply_before_the_caller_gives_up_is_the_calls_answer(ports):
    caller, server, _, shared = ports
    msg = _called(caller, server, 1)
    msg.reply(b"in time")
    assert _word(shared, 1) == 1 | ANSWERED
    assert caller.withdraw(1) is False  # too late to give up: the reply is the answer
    assert _word(shared, 1) == 1 | ANSWERED
    assert caller.take_reply(1) == b"in time"
    later = 1 + abi.MAX_TRACKED_CALLS  # the same word: an earlier call's value is no bar
    msg = _called(caller, server, later)
    assert caller.withdraw(later) is True
    with pytest.raises(kernel.PeerClosedError):
        msg.reply(b"late")


def test_a_call_whose_word_is_still_owned_waits_as_for_a_full_ring():
    ports = session_ports(ring=1 << 16)  # room for them all
    caller, server, _, _ = next(ports)
    n = abi.MAX_TRACKED_CALLS
    for req_id in range(1, n + 1):  # every word owned by a call in flight
        assert caller.send(abi.Op.ENDPOINT_CALL, req_id, b"") == OK
    assert caller.send(abi.Op.ENDPOINT_CALL, n + 1, b"") == FULL  # not written
    got: list = []
    assert server.recv_many(got, n + 1) == n
    got[0].reply(b"first")
    assert caller.take_reply(1) == b"first"  # call 1 is over: its word is free
    assert caller.send(abi.Op.ENDPOINT_CALL, n + 1, b"") == OK
    got.clear()
    next(ports, None)  # closes the rings


def test_a_withdrawn_call_keeps_its_word_until_the_server_has_seen_it(ports):
    """Else a later call's withdrawal on the same word would erase the first's,
    and the server would answer a call its caller gave up on."""
    caller, server, _, shared = ports
    msg = _called(caller, server, 1)
    assert caller.withdraw(1) is True
    later = 1 + abi.MAX_TRACKED_CALLS
    assert caller.send(abi.Op.ENDPOINT_CALL, later, b"") == FULL  # not yet seen
    with pytest.raises(kernel.PeerClosedError):
        msg.reply(b"late")
    assert _word(shared, 1) == 1 | ANSWERED | WITHDRAWN  # seen, refused
    assert caller.send(abi.Op.ENDPOINT_CALL, later, b"") == OK


def test_a_call_dropped_unanswered_is_answered_dropped_at_once(ports):
    """As the kernel does when a reply capability is closed unanswered."""
    from kernel._core.port import DROPPED

    caller, server, _, shared = ports
    _called(caller, server, 1)  # the server's message is dropped at once
    assert _word(shared, 1) == 1 | ANSWERED
    assert caller.take_reply(1) == DROPPED
    assert caller.send(abi.Op.ENDPOINT_CALL, 1 + abi.MAX_TRACKED_CALLS, b"") == OK  # word free


def test_a_call_dropped_after_its_caller_gave_up_writes_nothing(ports):
    caller, server, _, shared = ports
    msg = _called(caller, server, 1)
    assert caller.withdraw(1) is True
    del msg
    assert _word(shared, 1) == 1 | ANSWERED | WITHDRAWN  # seen: the word is free again
    assert caller.take_record() is None
    assert caller.send(abi.Op.ENDPOINT_CALL, 1 + abi.MAX_TRACKED_CALLS, b"") == OK


def _room_flag(shared) -> int:
    return int(struct.unpack_from("<I", shared, abi.OFF_CQ_ROOM)[0])


def test_replies_without_room_are_kept_and_written_in_order_as_the_caller_drains():
    """An asyncio caller's replies may outgrow its ring before its loop runs: a
    reply that does not fit is not lost, nor an error (it was committed)."""
    import os

    caller_bell, server_bell = os.eventfd(0, os.EFD_NONBLOCK), os.eventfd(0, os.EFD_NONBLOCK)
    ports = session_ports(doorbells=(caller_bell, server_bell))
    caller, server, _, shared = next(ports)
    n = 12  # replies of 900 bytes: three rings' worth (4096 bytes, 4 records each)
    for req_id in range(1, n + 1):
        assert caller.send(abi.Op.ENDPOINT_CALL, req_id, b"q") == OK
    got: list = []
    assert server.recv_many(got, n) == n
    for i, m in enumerate(got, 1):
        m.reply(bytes([i]) * 900)  # none raises
    assert _room_flag(shared) == 1  # the server asks to hear of room
    taken = []
    for req_id in range(1, n + 1):
        while (reply := caller.take_reply(req_id)) is None:
            assert os.eventfd_read(server_bell) >= 1  # the caller rang: it made room
            assert server.recv_many([], 1) == 0  # the server's next read writes what fits
        taken.append(reply)
    assert taken == [bytes([i]) * 900 for i in range(1, n + 1)]
    assert _room_flag(shared) == 0
    got.clear()
    next(ports, None)
    os.close(caller_bell)
    os.close(server_bell)


def _fill_replies(server, shared, first: int) -> int:
    """Reply to calls first, first + 1, ... (header only) until one is kept back
    for want of room; returns the next id."""
    req_id = first
    while _room_flag(shared) == 0:
        assert server.send(abi.Op.ENDPOINT_REPLY, req_id, b"") == OK
        req_id += 1
    return req_id


def test_a_call_dropped_while_the_callers_ring_is_full_is_answered_dropped_later(ports):
    from kernel._core.port import DROPPED

    caller, server, _, shared = ports
    msg = _called(caller, server, 1)
    _fill_replies(server, shared, 100)
    del msg  # dropped unanswered: its "dropped" record waits for room
    assert caller.take_reply(1) is None  # takes (and discards) the others: room
    assert server.recv_many([], 1) == 0
    assert caller.take_reply(1) == DROPPED


def test_a_server_keeps_back_no_more_replies_than_a_caller_has_calls(ports):
    """A caller that never drains (or forges calls) cannot grow the server's memory
    without bound: past MAX_TRACKED_CALLS kept replies, a reply fails uncommitted,
    so its caller's deadline ends the call cleanly."""
    caller, server, _, shared = ports
    msg = _called(caller, server, 1)
    after = _fill_replies(server, shared, 1000)  # the last one was kept
    for req_id in range(after, after + abi.MAX_TRACKED_CALLS - 1):
        assert server.send(abi.Op.ENDPOINT_REPLY, req_id, b"") == OK  # kept
    assert server.send(abi.Op.ENDPOINT_REPLY, 5000, b"") == FULL
    with pytest.raises(kernel.PeerClosedError, match="does not drain its ring"):
        msg.reply(b"answer")
    assert _word(shared, 1) != 1 | ANSWERED  # not committed (it holds a filler's id)
    assert caller.withdraw(1) is True  # the caller's timeout is the call's end


def test_a_call_not_written_for_a_full_ring_is_tracked_when_sent_again(ports):
    caller, server, _, _ = ports
    while caller.send(abi.Op.ENDPOINT_SEND, 0, b"q") == OK:
        pass
    assert caller.send(abi.Op.ENDPOINT_CALL, 5, b"q") == FULL
    got: list = []
    while server.recv_many(got, 100):  # the server drains the ring
        pass
    assert caller.send(abi.Op.ENDPOINT_CALL, 5, b"q") == OK
    assert server.recv_many(got, 1) == 1
    assert caller.withdraw(5) is True  # tracked: the server is told
    with pytest.raises(kernel.PeerClosedError):
        got[-1].reply(b"late")


def test_a_forged_word_is_believed_only_as_what_it_says(ports):
    """The peer can write the call words: the port reports what it sees, and the
    client library bounds how long it believes "answered" (tests/integration)."""
    caller, server, _, shared = ports
    _called(caller, server, 3)
    _set_word(shared, 3, 3 | ANSWERED)
    assert caller.withdraw(3) is False
    _called(caller, server, 4)
    _set_word(shared, 4, 12345)  # garbage: not about call 4
    assert caller.withdraw(4) is True
    assert _word(shared, 4) == 4 | WITHDRAWN
    _set_word(shared, 4, 99)  # a peer that never marks it seen: the word stays owned
    assert caller.send(abi.Op.ENDPOINT_CALL, 4 + abi.MAX_TRACKED_CALLS, b"") == FULL


def test_a_call_collected_in_a_cycle_with_its_port_does_not_crash():
    """A request dropped unanswered tells its caller from the message's finalizer,
    which may run after the collector cleared the port's fields (a service that
    exited from a handler crashed there: SIGSEGV)."""
    import gc
    import mmap

    from kernel._core.ring import SessionStates, ring_pair

    shared, mine = mmap.mmap(-1, abi.CONTROL_SIZE + 2 * 4096), mmap.mmap(-1, abi.CONTROL_SIZE)
    states = SessionStates(mine)
    states.set(3, abi.SESSION_OPEN)
    requests, replies = ring_pair(shared, 4096, 4096)
    caller = SessionPort(1, requests, replies, states, 3, -1, 1000, 0, "server", 9)
    for _ in range(20):
        # The server port's `sender` holds its message: a cycle. An empty dict is
        # tracked by the collector only once it holds the message, after the port,
        # so the collector clears the port first.
        holder: dict = {}
        server = SessionPort(1, replies, requests, states, 3, -1, 1000, 77, holder, 8)
        assert caller.send(abi.Op.ENDPOINT_CALL, 1, b"q") == OK
        got: list = []
        assert server.recv_many(got, 1) == 1
        holder["msg"] = got.pop()
        del server, holder
        gc.collect()
        caller.take_record()
    for ring in (requests, replies):
        ring.close()
    states.close()
