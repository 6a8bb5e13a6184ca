"""Every operation × every rights mask, checked in another process (DESIGN §5).

The parent derives a capability with each mask and hands it to a child at spawn;
the child tries every operation without blocking and reports what the kernel
said. An operation must pass the rights check exactly when the right it needs is
in the mask (a timeout counts as passing), and otherwise fail with
AccessDeniedError naming that right. All the cases of one object type and one
client face run in one child process.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import kernel
from kernel import Rights

pytestmark = pytest.mark.integration

PEERS = Path(__file__).parent / "peers"
MATRIX = str(PEERS / "caps_matrix.py")
BADGE = 0xB0D6E  # what caps_matrix.py mints with

# The rights that matter to each object type, and rights the object has that no
# operation checks ("noise": holding them must never stand in for a missing one).
RELEVANT = {
    "endpoint": (Rights.SEND, Rights.RECEIVE, Rights.COPY, Rights.MANAGE),
    "notification": (Rights.SIGNAL, Rights.WAIT, Rights.COPY, Rights.MANAGE),
}
NOISE = {"endpoint": Rights.GRANT | Rights.TRANSFER, "notification": Rights.TRANSFER}

# operation -> the right it needs (NONE: every capability may do it)
NEEDS = {
    "endpoint": {
        "info": Rights.NONE,
        "send": Rights.SEND,
        "send_nowait": Rights.SEND,
        "call": Rights.SEND,
        "recv": Rights.RECEIVE,
        "reply_recv": Rights.RECEIVE,
        "copy": Rights.COPY,
        "mint": Rights.COPY,
        "revoke": Rights.MANAGE,
        "close": Rights.NONE,
    },
    "notification": {
        "info": Rights.NONE,
        "signal": Rights.SIGNAL,
        "wait": Rights.WAIT,
        "poll": Rights.WAIT,
        "copy": Rights.COPY,
        "mint": Rights.COPY,
        "revoke": Rights.MANAGE,
        "close": Rights.NONE,
    },
}
# Operations whose outcome does not depend on the mask.
FIXED = {
    "wrong_type": "invalid",  # a notification op on an endpoint slot, and vice versa
    "copy_wider": "denied",  # asking for Rights.ALL: no COPY, or more than held
    "after_close": "invalid",
}
ALLOWED = {"ok", "blocked"}


def masks(kind: str) -> list[Rights]:
    """All 2^4 subsets of the relevant rights, each without and with the noise rights."""
    out = []
    for n in range(len(RELEVANT[kind]) + 1):
        for combo in itertools.combinations(RELEVANT[kind], n):
            mask = Rights.NONE
            for r in combo:
                mask |= r
            out += [mask, mask | NOISE[kind]]
    return out


def expected_mismatches(kind: str, mask: Rights, case: dict) -> list[str]:
    where = f"{kind} rights={mask!r}"
    if "narrow" in case:
        return [f"{where}: narrowing in the child failed: {case['narrow']}"]
    bad = []
    ops = {**{op: None for op in NEEDS[kind]}, **FIXED}
    missing_ops = set(ops) - set(case)
    if missing_ops:
        bad.append(f"{where}: no outcome for {sorted(missing_ops)}")
    for op in sorted(set(ops) & set(case)):
        outcome, msg = case[op]
        if op in FIXED:
            if outcome != FIXED[op]:
                bad.append(f"{where}: {op} gave {outcome} ({msg}), expected {FIXED[op]}")
            continue
        need = NEEDS[kind][op]
        if need in mask:
            if outcome not in ALLOWED:
                bad.append(f"{where}: {op} needs only {need!r}, held, but gave {outcome}: {msg}")
        elif outcome != "denied":
            bad.append(f"{where}: {op} needs {need!r}, not held, but gave {outcome}: {msg}")
        elif need.name not in msg:
            bad.append(f"{where}: {op} was denied without naming {need.name}: {msg}")
    if case.get("rights") != int(mask) or case.get("badge") != 0:
        bad.append(
            f"{where}: the child holds rights={case.get('rights')} badge={case.get('badge')}"
        )
    if Rights.COPY in mask:
        if case.get("copy_rights") != int(mask):
            bad.append(f"{where}: copy() got rights {case.get('copy_rights')}")
        if case.get("mint_badge") != BADGE:
            bad.append(f"{where}: mint() got badge {case.get('mint_badge')}")
    if Rights.MANAGE in mask:
        derived = 2 if Rights.COPY in mask else 0  # the copy and the mint
        if case.get("revoked") != derived:
            bad.append(f"{where}: revoke() deleted {case.get('revoked')}, expected {derived}")
    return bad


@pytest.mark.parametrize("face", ["sync", "async"])
@pytest.mark.parametrize("kind", ["endpoint", "notification"])
def test_each_operation_passes_the_rights_check_exactly_when_its_right_was_handed_over(
    kernel_daemon, kind, face
):
    with kernel.connect(autostart=False) as k:
        obj = k.endpoint() if kind == "endpoint" else k.notification()
        handed: dict[str, kernel.EndpointCap | kernel.NotificationCap] = {}
        for mask in masks(kind):
            # Inheritance derives a copy, so it needs COPY: without it, hand over
            # mask|COPY and let the child narrow it (the spawn refusal is tested below).
            how = "direct" if Rights.COPY in mask else "via"
            handed[f"{kind}/{int(mask)}/{how}"] = obj.copy(
                rights=mask if how == "direct" else mask | Rights.COPY
            )
        caps = dict(handed)
        srv = k.endpoint() if kind == "endpoint" else None  # for reply_recv's call
        if srv is not None:
            caps["srv"] = srv
        child = k.spawn(
            [sys.executable, MATRIX, face], caps=caps, stdout=subprocess.PIPE, text=True
        )
        try:
            out, _ = child.popen.communicate(timeout=60)
        finally:
            if child.popen.poll() is None:
                child.kill()
            child.wait(timeout=10)
        assert child.returncode == 0, out
        report = json.loads(out)
        assert report["pid"] == child.pid
        # The child is gone, and with it everything it held or derived.
        leftovers = {name: cap.info().derived for name, cap in handed.items()}
        assert set(leftovers.values()) == {0}, leftovers
        assert obj.info().object_caps == 1 + len(handed)
        for cap in handed.values():
            cap.close()
        if srv is not None:
            srv.close()
        obj.close()

    assert sorted(report["cases"]) == sorted(handed)
    mismatches = []
    for name, case in report["cases"].items():
        mismatches += expected_mismatches(kind, Rights(int(name.split("/")[1])), case)
    assert not mismatches, "\n".join(mismatches)


def test_spawn_refuses_to_hand_over_a_capability_without_the_copy_right(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        for kind in RELEVANT:
            obj = k.endpoint() if kind == "endpoint" else k.notification()
            weak = [obj.copy(rights=m) for m in masks(kind) if Rights.COPY not in m]
            for cap in weak:
                try:
                    proc = k.spawn([sys.executable, "-c", "raise SystemExit(3)"], caps={"c": cap})
                except kernel.AccessDeniedError as e:
                    refusal = str(e)
                else:
                    proc.wait(timeout=10)
                    pytest.fail(f"spawn handed over {cap.info().rights!r}, which lacks COPY")
                assert "COPY" in refusal
            # A refused spawn leaves nothing behind: no bundle holds a copy.
            info = obj.info()
            assert (info.object_caps, info.derived) == (1 + len(weak), len(weak))
            assert all(cap.info().derived == 0 for cap in weak)
            obj.close()  # the weak copies keep the object; closing the table frees it


# ------------------------------------------------------------------ refused replies
#
# A reply or reply_recv that the kernel refuses before it consumes the one-shot
# reply capability must leave the call answerable; otherwise the caller waits
# until its deadline (forever with timeout=None) and the reply capability stays
# in the server's table for good.


def test_a_call_stays_answerable_after_reply_recv_is_denied_for_lack_of_receive(
    kernel_daemon,
):
    with kernel.connect(autostart=False) as k:
        ep = k.endpoint()
        send_only = ep.copy(rights=Rights.SEND)
        got: dict[str, object] = {}

        def caller() -> None:
            try:
                got["reply"] = ep.call(b"question", timeout=5).data
            except kernel.IPCError as e:
                got["reply"] = e

        t = threading.Thread(target=caller)
        t.start()
        try:
            msg = ep.recv(timeout=10)
            with pytest.raises(kernel.AccessDeniedError, match="RECEIVE"):
                send_only.reply_recv(msg, b"answer", timeout=0)
            msg.reply(b"answer")  # the call was never answered: this must still work
        finally:
            t.join(10)
        assert got["reply"] == b"answer"


async def test_a_call_stays_answerable_after_an_async_reply_recv_is_denied(kernel_daemon):
    async with kernel.connect_async(autostart=False) as k:
        ep = await k.endpoint()
        send_only = await ep.copy(rights=Rights.SEND)
        call = asyncio.create_task(ep.call(b"question", timeout=5))
        try:
            msg = await ep.recv(timeout=10)
            with pytest.raises(kernel.AccessDeniedError, match="RECEIVE"):
                await send_only.reply_recv(msg, b"answer", timeout=0)
            await msg.reply(b"answer")
        finally:
            (result,) = await asyncio.gather(call, return_exceptions=True)
        assert not isinstance(result, BaseException), result
        assert result.data == b"answer"


FULL_TABLE_CALLER = """
import kernel
with kernel.connect(autostart=False) as k:
    ep, extra = k.inherited["ep"], []
    while True:  # fill the table: no room for a capability carried by the reply
        try:
            extra.append(k.notification())
        except kernel.ResourceLimitError:
            break
    try:
        print(ep.call(b"question", timeout=3).data.decode(), flush=True)
    except kernel.IPCError as e:
        print(type(e).__name__, e, flush=True)
"""


def test_a_call_stays_answerable_after_a_reply_with_caps_finds_the_callers_table_full(
    kernel_daemon,
):
    with kernel.connect(autostart=False) as k:
        ep, gift = k.endpoint(), k.notification()
        caller = k.spawn(
            [sys.executable, "-c", FULL_TABLE_CALLER],
            caps={"ep": ep},
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            msg = ep.recv(timeout=20)
            with pytest.raises(kernel.ResourceLimitError, match="table is full"):
                msg.reply(b"with a capability", caps=[gift])
            msg.reply(b"plain")  # nothing was delivered: the call is still ours to answer
            out, _ = caller.popen.communicate(timeout=20)
            assert out.strip() == "plain"
        finally:
            if caller.popen.poll() is None:
                caller.kill()
            caller.wait(timeout=10)
            caller.popen.stdout.close()
        assert gift.info().object_caps == 1  # it never left
