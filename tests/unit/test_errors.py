"""Status codes, the exception tree, and error_for(), the one place mapping one to the other."""

from __future__ import annotations

import asyncio
import pickle

import pytest

from kernel.errors import (
    AccessDeniedError,
    AlreadyExistsError,
    CallTimeoutError,
    CancelledCallError,
    InvalidArgumentError,
    InvalidCapabilityError,
    IPCError,
    MessageTooLargeError,
    NotFoundError,
    PeerClosedError,
    PipeClosedError,
    ResourceLimitError,
    Status,
    WouldBlock,
    error_for,
)

FAILURES = [s for s in Status if s is not Status.OK]

EXPECTED_CLASS = {
    Status.INVALID_ARGS: InvalidArgumentError,
    Status.BAD_SLOT: InvalidCapabilityError,
    Status.WRONG_TYPE: InvalidCapabilityError,
    Status.TOO_LARGE: MessageTooLargeError,
    Status.NOT_SUPPORTED: InvalidArgumentError,
    Status.TIMED_OUT: CallTimeoutError,
    Status.PEER_CLOSED: PeerClosedError,
    Status.CALLER_GONE: PeerClosedError,
    Status.CANCELLED: CancelledCallError,
    Status.SHUTDOWN: PeerClosedError,
    Status.ACCESS_DENIED: AccessDeniedError,
    Status.NO_RESOURCES: ResourceLimitError,
    Status.NOT_FOUND: NotFoundError,
    Status.ALREADY_EXISTS: AlreadyExistsError,
    Status.BROKEN_PIPE: PipeClosedError,
}


@pytest.mark.parametrize("status", FAILURES, ids=lambda s: s.name)
def test_every_failure_status_maps_to_a_specific_ipc_error(status):
    err = error_for(status, "endpoint.call", "because")
    assert isinstance(err, IPCError)
    assert type(err) is not IPCError, f"{status.name} falls back to the bare base class"
    assert type(err) is EXPECTED_CLASS[status]
    assert err.status is status
    assert str(err) == "endpoint.call: because"


@pytest.mark.parametrize("status", FAILURES, ids=lambda s: s.name)
def test_plain_int_status_maps_like_the_enum(status):
    err = error_for(int(status), "op", "r")
    assert type(err) is EXPECTED_CLASS[status]
    assert err.status == int(status)


def test_expected_table_covers_every_status():
    assert set(EXPECTED_CLASS) == set(FAILURES)


def test_ok_status_still_yields_an_ipc_error():
    err = error_for(Status.OK, "op", "")
    assert isinstance(err, IPCError)
    assert err.status is Status.OK


@pytest.mark.parametrize(
    ("cls", "builtin"),
    [
        (CallTimeoutError, TimeoutError),
        (AccessDeniedError, PermissionError),
        (PeerClosedError, ConnectionError),
        (InvalidCapabilityError, ValueError),
        (InvalidArgumentError, ValueError),
        (MessageTooLargeError, ValueError),
        (MessageTooLargeError, InvalidArgumentError),
        (ResourceLimitError, OSError),
        (PipeClosedError, BrokenPipeError),
        (PipeClosedError, PeerClosedError),
    ],
)
def test_errors_are_also_the_matching_builtin_exception(cls, builtin):
    assert issubclass(cls, builtin)
    assert issubclass(cls, IPCError)
    with pytest.raises(builtin):
        raise cls("x: y")


def test_builtin_handlers_catch_mapped_errors():
    with pytest.raises(TimeoutError):
        raise error_for(Status.TIMED_OUT, "call", "deadline passed")
    with pytest.raises(PermissionError):
        raise error_for(Status.ACCESS_DENIED, "send", "no SEND right")
    with pytest.raises(ConnectionError):
        raise error_for(Status.CALLER_GONE, "reply", "caller exited")
    with pytest.raises(ValueError):
        raise error_for(Status.WRONG_TYPE, "wait", "not a notification")


def test_cancelled_call_is_not_an_asyncio_cancellation():
    # asyncio.CancelledError is a BaseException that must stay reserved for task
    # cancellation; a call the kernel cancelled is an ordinary error.
    assert issubclass(CancelledCallError, Exception)
    assert not issubclass(CancelledCallError, asyncio.CancelledError)
    assert not issubclass(CancelledCallError, (TimeoutError, ConnectionError, ValueError))


def test_would_block_is_flow_control_not_an_ipc_error():
    assert not issubclass(WouldBlock, IPCError)
    assert issubclass(WouldBlock, Exception)


def test_message_format_is_what_colon_reason():
    err = error_for(Status.PEER_CLOSED, "endpoint.send", "the server exited")
    assert str(err) == "endpoint.send: the server exited"
    assert err.args == ("endpoint.send: the server exited",)


def test_empty_reason_falls_back_to_the_status_name():
    assert (
        str(error_for(Status.TIMED_OUT, "notification.wait", "")) == "notification.wait: timed_out"
    )
    assert str(error_for(Status.ACCESS_DENIED, "x", "")) == "x: access_denied"


@pytest.mark.parametrize("status", [-21, 1, -999, 2**31 - 1, -(2**31)])
def test_unknown_status_yields_a_base_ipc_error_naming_the_number(status):
    err = error_for(status, "endpoint.call", "odd")
    assert type(err) is IPCError
    assert str(err) == f"endpoint.call: unknown kernel status {status}: odd"


def test_reserved_status_number_is_not_assigned():
    assert -21 not in {int(s) for s in Status}


def test_status_numbers_are_unique_and_grouped():
    values = [int(s) for s in Status]
    assert len(values) == len(set(values))
    assert Status.OK == 0
    assert all(
        -20 < s <= -10
        for s in (
            Status.INVALID_ARGS,
            Status.BAD_SLOT,
            Status.WRONG_TYPE,
            Status.TOO_LARGE,
            Status.NOT_SUPPORTED,
        )
    )
    assert all(
        -30 < s <= -20
        for s in (
            Status.TIMED_OUT,
            Status.PEER_CLOSED,
            Status.CALLER_GONE,
            Status.CANCELLED,
            Status.SHUTDOWN,
        )
    )
    assert Status.ACCESS_DENIED == -30
    assert Status.NO_RESOURCES == -40


def test_explicit_status_overrides_the_class_default():
    err = InvalidCapabilityError("lookup: wrong kind", Status.WRONG_TYPE)
    assert err.status is Status.WRONG_TYPE
    assert InvalidCapabilityError("x").status is Status.BAD_SLOT
    assert InvalidCapabilityError.status is Status.BAD_SLOT  # the class is untouched


@pytest.mark.parametrize("status", FAILURES, ids=lambda s: s.name)
def test_errors_survive_pickling_with_their_status(status):
    err = error_for(status, "op", "why")
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is type(err)
    assert back.status == status
    assert str(back) == str(err)
