"""`names.notify`: "name appeared" (or gone) as a notification's bits (DESIGN §4).

The registrants are real processes (peers/names_peer.py); the name server holds a
SIGNAL copy of the notification until the condition holds, then signals it once.
Permissions per uid are in test_names_perms.py.
"""

from __future__ import annotations

import time

import pytest
from peerlib import NamesPeer

import kernel
from capabilities import Rights
from kernel import Sig
from services.names import protocol as p
from services.names.server import MAX_WAITERS_PER_UID

pytestmark = pytest.mark.integration


def test_a_later_registration_sets_the_bits_once(kernel_daemon):
    with kernel.connect(autostart=False) as k, NamesPeer() as peer:
        n = k.notification()
        k.names.notify("svc.later", n, Sig.USR1)
        assert n.poll() == 0
        peer.ok("register", name="svc.later")
        assert n.wait(timeout=5) == Sig.USR1
        peer.ok("unregister", name="svc.later")
        peer.ok("register", name="svc.later")
        assert n.poll() == 0  # one-shot: arm again to hear of the next one


def test_a_name_registered_already_sets_the_bits_at_once(kernel_daemon):
    with kernel.connect(autostart=False) as k, NamesPeer() as peer:
        peer.ok("register", name="svc.now")
        n = k.notification()
        k.names.notify("svc.now", n, 1 << 40)
        assert n.poll() == 1 << 40
        k.names.notify("svc.absent", n, 2, present=False)  # gone already: at once too
        assert n.poll() == 2


def test_present_false_tells_of_the_registrants_end(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        n = k.notification()
        with NamesPeer() as peer:
            peer.ok("register", name="svc.mortal")
            k.names.notify("svc.mortal", n, Sig.CHLD, present=False)
            assert n.poll() == 0
        assert n.wait(timeout=5) == Sig.CHLD  # the peer was killed on the way out


def test_a_bound_endpoints_receive_hears_of_the_name(kernel_daemon):
    with kernel.connect(autostart=False) as k, NamesPeer() as peer:
        ep, n = k.endpoint(), k.notification()
        ep.bind(n)
        k.names.notify("svc.bound", n, Sig.USR2)
        peer.ok("register", name="svc.bound")
        msg = ep.recv(timeout=5)
        assert msg.is_signal
        assert msg.badge == Sig.USR2


def test_the_notifies_of_a_process_that_ended_give_their_places_back(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        with NamesPeer() as peer:
            for i in range(MAX_WAITERS_PER_UID):  # as many as this uid may have waiting
                peer.ok("notify", name=f"svc.never.{i}", bits=1, key="n")
            with pytest.raises(kernel.ResourceLimitError, match="notifies waiting"):
                k.names.notify("svc.mine", k.notification(), 1)
        n = k.notification()
        deadline = time.monotonic() + 5
        while True:  # the peer was killed: the name server hears of it from the kernel
            try:
                k.names.notify("svc.mine", n, 1)
                break
            except kernel.ResourceLimitError:
                assert time.monotonic() < deadline, "the dead process's notifies never went"
                time.sleep(0.01)


def test_bad_notifies_get_clear_errors_and_the_name_server_stays_up(kernel_daemon):
    with kernel.connect(autostart=False) as k, NamesPeer() as peer:
        n = k.notification()
        for bits in (0, -1, 1 << 64):
            with pytest.raises(ValueError, match="non-zero 64-bit"):
                k.names.notify("svc.x", n, bits)
        with pytest.raises(kernel.AccessDeniedError):
            k.names.notify("svc.x", n.copy(Rights.SIGNAL | Rights.WAIT), 1)  # no COPY
        names = k.names.endpoint
        two = [n.as_copy(), k.notification().as_copy()]
        for caps in ([], [k.endpoint().as_copy()], two):
            reply = names.call(p.encode(p.Notify("svc.x", 1)), timeout=5, caps=caps)
            err = p.decode_response(reply.data)
            assert isinstance(err, p.Error)
            assert "one notification" in err.message
        reply = names.call(p.encode(p.Notify("svc.x", 0)), timeout=5, caps=[n.as_copy()])
        assert "non-zero" in p.decode_response(reply.data).message  # type: ignore[union-attr]
        gone = k.notification()
        k.names.notify("svc.x", gone, 1)
        gone.revoke()  # the name server's copy goes with it: its signal will fail
        gone.close()
        peer.ok("register", name="svc.x")  # fires into nothing; the name server goes on
        assert peer.ok("lookup", name="svc.x")["rights"]
        assert n.poll() == 0


async def test_the_asyncio_face_notifies(kernel_daemon):
    async with kernel.connect_async(autostart=False) as k:
        n = await k.notification()
        await k.names.notify("svc.async", n, Sig.HUP)
        with NamesPeer() as peer:
            peer.ok("register", name="svc.async")
            assert await n.wait(timeout=5) == Sig.HUP
