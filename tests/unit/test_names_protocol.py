"""The name server's wire protocol (services/names/protocol.py): every request and
response survives encoding, and the lookup answer's shortcut decodes as the
decoder would."""

from __future__ import annotations

import msgspec
import pytest

from services.names import protocol as p

ENTRY = p.Entry("a.b", "endpoint", 1000, 100, 0o640, 7, 42, 3, 123)


@pytest.mark.parametrize(
    "req",
    [
        p.Register("a.b", 0o600, 7, True),
        p.Lookup("a.b", 5),
        p.Unregister("a.b", True),
        p.List("a."),
        p.Watch("a.b", False, -1),
    ],  # fmt: skip
)
def test_every_request_survives_encoding(req):
    assert p.decode_request(p.encode(req)) == req


@pytest.mark.parametrize(
    "resp", [p.Ok(), p.Ok(ENTRY), p.Listing([ENTRY, ENTRY]), p.Error(3, "no entry")]
)
def test_every_response_survives_encoding(resp):
    assert p.decode_response(p.encode(resp)) == resp


def test_the_lookup_answer_shortcut_is_what_the_decoder_gives():
    assert p.OK_BYTES == p.encode(p.Ok(None))
    assert p.decode_response(p.OK_BYTES) == msgspec.msgpack.decode(p.OK_BYTES, type=p.Response)


def test_a_response_that_is_not_one_fails_to_decode():
    with pytest.raises(msgspec.ValidationError):
        p.decode_response(p.encode(p.Lookup("a.b")))
