"""The status a refused connection carries (kernel/daemon/main.py), which the client
turns into its error: the kernel running out of descriptors is a resource limit."""

from __future__ import annotations

import errno

import pytest

from kernel.daemon.main import _refusal_status
from kernel.daemon.objects import OpError
from kernel.errors import ResourceLimitError, Status, error_for


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (OpError(Status.NO_RESOURCES, "uid 7 would have more than 4"), Status.NO_RESOURCES),
        (PermissionError(errno.EACCES, "the socket mode"), Status.ACCESS_DENIED),
        (OSError(errno.EMFILE, "Too many open files"), Status.NO_RESOURCES),
        (OSError(errno.ENFILE, "Too many open files in system"), Status.NO_RESOURCES),
        (OSError(errno.ENOMEM, "Cannot allocate memory"), Status.NO_RESOURCES),
        (OSError(errno.EPIPE, "Broken pipe"), Status.INVALID_ARGS),
        (ValueError("a malformed hello"), Status.INVALID_ARGS),
    ],
)
def test_a_refusal_says_why_in_the_status_the_client_raises(exc, status):
    assert _refusal_status(exc) == status
    if status == Status.NO_RESOURCES:
        assert isinstance(error_for(status, "connect", "refused"), ResourceLimitError)
