"""kernel.Service in process, no kernel: handler shapes, routing, the reply codec."""

from __future__ import annotations

import msgspec
import pytest

import kernel
from kernel import _service_client as w


class Get(msgspec.Struct, tag="get"):
    key: str


class Put(msgspec.Struct, tag="put"):
    key: str
    value: int


class Untagged(msgspec.Struct):
    key: str


def get(req: Get) -> str:
    return req.key.upper()


def put(req: Put, ctx: kernel.RequestContext) -> None:
    raise KeyError(req.key)


def unannotated(req):  # type: ignore[no-untyped-def]
    return req


def untagged(req: Untagged) -> None:
    pass


def three(req: Get, ctx: kernel.RequestContext, extra: int) -> None:
    pass


async def coro(req: Put) -> None:
    pass


@pytest.mark.parametrize(
    ("func", "match"),
    [
        (unannotated, "annotate its first parameter with a msgspec Struct"),
        (untagged, r"needs a tag to be routed: class Untagged\(msgspec.Struct, tag=True\)"),
        (three, r"must take \(request\) or \(request, ctx\)"),
    ],
)
def test_a_handler_of_the_wrong_shape_is_refused_at_registration(func, match):
    with pytest.raises(TypeError, match=match):
        kernel.Service("t", [func])


def test_one_handler_per_request_type():
    svc = kernel.Service("t", [get])
    with pytest.raises(ValueError, match="Get already has a handler"):
        svc.handler(get)


def test_run_refuses_coroutine_handlers_no_handlers_and_no_workers_before_connecting():
    with pytest.raises(TypeError, match=r"coroutine function: serve it with `await svc.serve"):
        kernel.Service("t", [get, coro]).run()
    with pytest.raises(ValueError, match="has no handlers"):
        kernel.Service("t").run()
    with pytest.raises(ValueError, match="workers must be a positive integer"):
        kernel.Service("t", [get]).run(workers=0)


def test_requests_are_routed_by_tag_and_results_round_trip():
    svc = kernel.Service("t", [get, put])
    decoded = svc._decode(msgspec.msgpack.encode(Get("a")))
    assert not isinstance(decoded, bytes)
    req, route = decoded
    assert (req, route.func, route.with_ctx) == (Get("a"), get, False)
    reply = svc._ok(route.func(req), bytearray(1))
    assert w.result(bytes(reply), str, "svc") == "A"
    _, route = svc._decode(msgspec.msgpack.encode(Put("b", 1)))  # type: ignore[misc]
    assert route.with_ctx


def test_a_bad_request_decodes_to_an_invalid_argument_error_naming_what_is_taken():
    svc = kernel.Service("t.svc", [get, put])
    for data in (b"", b"\xc1", msgspec.msgpack.encode({"type": "nope"})):
        reply = svc._decode(data)
        assert isinstance(reply, bytes)
        with pytest.raises(kernel.InvalidArgumentError, match="'t.svc' takes 'get', 'put'"):
            w.result(reply, object, "svc")


def test_exceptions_round_trip_as_safe_builtins_or_remote_errors():
    svc = kernel.Service("t", [get])
    try:
        raise KeyError("k")
    except KeyError as e:
        reply = svc._raised(e, Get("k"))
    with pytest.raises(KeyError) as info:
        w.result(reply, object, "svc")
    assert info.value.args == ("k",)
    assert isinstance(info.value.__cause__, kernel.RemoteError)
    assert "raise KeyError" in info.value.__cause__.traceback

    class Odd(Exception):
        pass

    with pytest.raises(kernel.RemoteError, match=r"svc: .*Odd: odd") as remote:
        w.result(svc._raised(Odd("odd"), Get("k")), object, "svc")
    assert remote.value.type_name.endswith("Odd")


def test_tracebacks_can_be_kept_private():
    svc = kernel.Service("t", [get], tracebacks=False)
    try:
        raise ValueError("v")
    except ValueError as e:
        reply = svc._raised(e, Get("k"))
    with pytest.raises(ValueError, match="^v$") as info:
        w.result(reply, object, "svc")
    cause = info.value.__cause__
    assert isinstance(cause, kernel.RemoteError)
    assert cause.traceback == ""


def test_safe_builtins_are_rebuilt_from_their_args():
    f = w.Failure(w.RAISED, "PermissionError", "[Errno 13] no", [13, "no"], "")
    with pytest.raises(PermissionError) as info:
        w.result(b"\x01" + msgspec.msgpack.encode(f), object, "svc")
    assert (info.value.errno, info.value.strerror) == (13, "no")


def test_a_reply_that_is_not_a_service_reply_is_refused():
    with pytest.raises(kernel.InvalidArgumentError, match="not a service reply"):
        w.result(b"hello", object, "svc")
