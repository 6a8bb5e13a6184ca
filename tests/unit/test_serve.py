"""kernel/_core/serve.pyx: a Service's per-request path, compiled. Slots bound the
handlers at once; Answerer answers one request; SessionAnswers runs a session
worker's requests. (Across processes: tests/integration/test_service.py.)"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import msgspec
import pytest

import kernel
from kernel import _service_client as w
from kernel._core.serve import SessionAnswers, Slots


class Get(msgspec.Struct, tag="get"):
    key: str


class Big(msgspec.Struct, tag="big"):
    n: int


class Stop(msgspec.Struct, tag="stop"):
    pass


def get(req: Get, ctx: kernel.RequestContext) -> str:
    if req.key == "boom":
        raise KeyError(req.key)
    return f"{req.key} from {ctx.badge}"


def big(req: Big) -> bytes:
    return b"x" * req.n


def stop(req: Stop) -> None:
    raise SystemExit(3)


class Request:
    """What a worker hands the path: the request's bytes, whether it is a call,
    and its reply (kept here)."""

    def __init__(self, req: msgspec.Struct | bytes, is_call: bool = True) -> None:
        self.data = req if isinstance(req, bytes) else msgspec.msgpack.encode(req)
        self.is_call, self.badge, self.replies = is_call, 7, list[bytes]()

    def reply(self, out: bytes | bytearray) -> None:
        self.replies.append(bytes(out))


class EndedRequest(Request):
    def reply(self, out: bytes | bytearray) -> None:
        raise kernel.PeerClosedError("the caller went away")


class BrokenRequest(Request):
    def reply(self, out: bytes | bytearray) -> None:
        raise TypeError("a bug past the handler")


def _answers(slots: Slots) -> SessionAnswers:
    svc = kernel.Service("t.serve", [get, big, stop])
    return SessionAnswers(svc._answerer(), slots, logging.getLogger("mkipc.service"), svc.name)


def _assert_free(slots: Slots, n: int = 1) -> None:
    """`n` slots are free: as many take() return at once (one would wait forever
    otherwise)."""
    t = threading.Thread(target=lambda: [slots.take() for _ in range(n)], daemon=True)
    t.start()
    t.join(5)
    assert not t.is_alive(), "no slot was free: one was never given back"


def _result(msg: Request) -> Any:
    (reply,) = msg.replies
    return w.result(reply, object, "t.serve")


def test_a_request_is_routed_to_its_handler_with_its_context_and_answered() -> None:
    msg = Request(Get("a"))
    _answers(Slots(1)).handle(msg, bytearray(1))
    assert _result(msg) == "a from 7"


def test_each_failure_becomes_the_failure_reply_the_client_raises() -> None:
    answers, buf = _answers(Slots(1)), bytearray(1)
    raised, bad, large = Request(Get("boom")), Request(b"\xc1"), Request(Big(300_000))
    for msg in (raised, bad, large):
        answers.handle(msg, buf)
    with pytest.raises(KeyError, match="boom"):
        _result(raised)
    with pytest.raises(kernel.InvalidArgumentError, match="'t.serve' takes 'get', 'big'"):
        _result(bad)
    with pytest.raises(ValueError, match="the reply of 300005 bytes exceeds 262144 bytes"):
        _result(large)
    ok = Request(Big(10))  # the buffer that held the oversized reply serves the next
    answers.handle(ok, buf)
    assert _result(ok) == b"x" * 10


def test_a_one_way_send_is_not_answered_and_takes_no_slot() -> None:
    slots = Slots(1)
    sent = Request(Get("a"), is_call=False)
    _answers(slots).handle(sent, bytearray(1))
    assert sent.replies == []
    _assert_free(slots)


def test_a_reply_to_an_ended_session_is_dropped_and_a_bug_logged_and_both_go_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    slots = Slots(1)
    answers, buf = _answers(slots), bytearray(1)
    caplog.set_level(logging.DEBUG, "mkipc.service")
    assert answers.handle_one(EndedRequest(Get("a")), buf, 0) is None
    assert answers.handle_one(BrokenRequest(Get("a")), buf, 5) is None
    assert "t.serve: session reply: the caller went away" in caplog.text
    bug = [r for r in caplog.records if "session worker 5: handling a request failed" in r.message]
    assert bug
    assert bug[0].exc_info
    assert bug[0].exc_info[0] is TypeError
    _assert_free(slots)  # the slot came back both times


def test_what_ends_a_worker_stops_the_batch_and_is_returned() -> None:
    slots = Slots(3)  # not 1: a slot it kept would block `last` here, not fail below
    answers = _answers(slots)
    first, last = Request(Get("a")), Request(Get("b"))
    fatal = answers.handle_batch([first, Request(Stop()), last], bytearray(1), 0)
    assert isinstance(fatal, SystemExit)
    assert fatal.code == 3
    assert _result(first) == "a from 7"
    assert last.replies == []  # the service stops: its caller hears the session end
    _assert_free(slots, 3)


def test_slots_let_at_most_n_threads_in_and_every_waiter_through() -> None:
    slots, lock = Slots(2), threading.Lock()
    inside, most = [0], [0]

    def work() -> None:
        for _ in range(30):
            slots.take()
            with lock:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
            time.sleep(0.001)  # others queue for a slot meanwhile
            with lock:
                inside[0] -= 1
            slots.give()

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)  # no waiter missed its wake-up
    assert most[0] == 2
    for _ in range(2):  # and both slots are free again
        slots.take()
    with pytest.raises(ValueError, match="at least 1"):
        Slots(0)
