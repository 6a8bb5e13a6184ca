"""KERNEL_STATUS lists fewer processes and objects when all of them would not fit
in one completion (kernel/daemon/status.py), and counts the rest.

In-process: a KernelState with real Proc records (their rings and eventfds) but no
daemon, so that MAX_PAYLOAD can be made small enough to reach the bound.
"""

from __future__ import annotations

import socket

import pytest

from capabilities import DEFAULT_NOTIFICATION_RIGHTS, Capability
from kernel import abi
from kernel._core.kcore import Notification
from kernel.daemon.process import Proc
from kernel.daemon.state import KernelState
from kernel.daemon.status import encoded_status


@pytest.fixture
def kernel_with_procs():
    k = KernelState()
    procs = []
    for ident in range(1, 21):
        ours, _theirs = socket.socketpair()
        _theirs.close()
        p = Proc(ident, ours, (1000 + ident, 0, 0), k.users.ledger(0))
        k.add_proc(p, None)
        for _ in range(5):
            k.insert_cap(p, Capability(Notification(), DEFAULT_NOTIFICATION_RIGHTS))
        procs.append(p)
    yield k, procs[0]
    for p in procs:
        k.remove_proc(p, "the test ended")
        p.close()


def test_everything_is_listed_when_it_fits(kernel_with_procs):
    k, asker = kernel_with_procs
    st = abi.decode_status(encoded_status(k, asker))
    assert (len(st.processes), st.hidden, len(st.objects), st.objects_hidden) == (20, 0, 100, 0)


def test_an_answer_too_big_for_one_completion_lists_fewer(kernel_with_procs, monkeypatch):
    k, asker = kernel_with_procs
    monkeypatch.setattr(abi, "MAX_PAYLOAD", 2000)
    payload = encoded_status(k, asker)
    assert len(payload) <= 2000
    st = abi.decode_status(payload)
    assert 0 < len(st.processes) < 20
    assert len(st.processes) + st.hidden == 20
    assert st.objects_hidden > 0
