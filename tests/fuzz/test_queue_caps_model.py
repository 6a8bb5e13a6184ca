"""Stateful fuzz: capabilities held by queue messages, against a model of the tree.

Hypothesis sends capabilities into a queue (moved, copied or minted; sometimes
without the rights to, twice, or a queue capability), copies, mints, closes and
revokes capabilities while messages hold some, receives messages, and destroys
the queue with messages in it. After every step each capability of this process
must agree with the model: alive or not, rights, badge, how many capabilities
name its object (those held by messages included) and how many derive from it.
A received message must carry its capabilities in order, with None exactly
where one was revoked while it waited.

Default run: 30 examples of 40 steps; MKIPC_QUEUE_CAPS_EXAMPLES for more.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test
from tree_model import descendants, unlink

import kernel
from kernel import Rights

pytestmark = pytest.mark.integration

EXAMPLES = int(os.environ.get("MKIPC_QUEUE_CAPS_EXAMPLES", "30"))
HOW = ("move", "copy", "mint")
ACTIONS = ["send"] * 4 + ["recv", "derive"] * 2 + ["revoke"] * 2 + ["close", "destroy_the_queue"]


class Node:
    """A capability in the model: in this process's table (`cap`), held by a queued
    message (`cap` None), or dead."""

    def __init__(self, obj: int, rights: int, badge: int, parent: Node | None) -> None:
        self.obj, self.rights, self.badge, self.parent = obj, rights, badge, parent
        self.children: list[Node] = []
        self.alive = True
        self.cap: Any = None
        if parent is not None:
            parent.children.append(self)


class QueueCapsMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.k = kernel.connect(autostart=False)
        self.nodes: list[Node] = []
        self.dead_caps: list[Any] = []  # slots that must no longer resolve
        for make in (self.k.notification, self.k.notification, self.k.endpoint):
            cap = make()
            self.add(cap, cap.info().object_id, None)
        self.q = self.k.queue(None)
        self.messages: list[list[Node]] = []

    def teardown(self) -> None:
        self.k.close()

    def add(self, cap: Any, obj: int, parent: Node | None) -> Node:
        info = cap.info()
        node = Node(obj, int(info.rights), info.badge, parent)
        node.cap = cap
        self.nodes.append(node)
        return node

    def in_table(self) -> list[Node]:
        return [n for n in self.nodes if n.alive and n.cap is not None]

    def pick(self, data: st.DataObject, label: str, need: int = 0) -> Node | None:
        """A live capability of this process's table with `need`, if there is one."""
        pool = [n for n in self.in_table() if n.rights & need == need]
        return data.draw(st.sampled_from(pool), label=label) if pool else None

    def kill(self, node: Node) -> None:
        node.alive = False
        if node.cap is not None:
            self.dead_caps.append(node.cap)

    # ---------------------------------------------------------- rules

    @rule(data=st.data())
    def step(self, data: st.DataObject) -> None:
        """One action, weighted so that messages pile up and revocations reach them
        (rules of their own were drawn evenly, and the cheap ones won)."""
        act = data.draw(st.sampled_from(ACTIONS), label="act")
        getattr(self, act)(data)

    def derive(self, data: st.DataObject) -> None:
        node = self.pick(data, "from", Rights.COPY)
        if node is None:
            return
        rights = data.draw(st.sets(st.sampled_from(list(Rights(node.rights)))), label="rights")
        mask = sum(int(r) for r in rights)
        if data.draw(st.booleans(), label="mint") and not node.badge:
            child = node.cap.mint(Rights(mask), badge=data.draw(st.integers(1, 5)))
        else:
            child = node.cap.copy(rights=Rights(mask))
        self.add(child, node.obj, node)

    def send(self, data: st.DataObject) -> None:
        """Mostly live capabilities with TRANSFER, each once; now and then a dead
        slot, one without the rights, one twice, or a queue capability."""
        grant = data.draw(st.integers(0, 3), label="through a GRANT capability") > 0
        good = [n for n in self.in_table() if n.rights & Rights.TRANSFER]
        pool = [n for n in self.nodes if n.cap is not None]  # dead slots too
        picks: list[Node] = []
        if pool:
            elem = st.sampled_from(pool)
            if good:
                elem = st.sampled_from(good) | st.sampled_from(good) | elem
            picks = data.draw(st.lists(elem, max_size=4, unique=True), label="carried")
        if picks and data.draw(st.integers(0, 9), label="one twice") == 0:
            picks.append(picks[0])
        hows = [data.draw(st.sampled_from(HOW), label="how") for _ in picks]
        queue_too = data.draw(st.integers(0, 9), label="carry a queue") == 0
        items = [self.item(n.cap, how, n.badge) for n, how in zip(picks, hows, strict=True)]
        if queue_too:
            items.append(self.q.as_copy())
        through = self.q if grant else self.q.copy(rights=Rights.SEND)
        expected = self.expect_send(grant, picks, hows, queue_too)
        if len(picks) + hows.count("mint") + queue_too > kernel.abi.MAX_TRANSFER:
            expected = "too many"  # the client refuses it before it is sent
        try:
            through.send_nowait(b"m", caps=items)
            got = "ok"
        except kernel.AccessDeniedError:
            got = "denied"
        except kernel.InvalidCapabilityError:
            got = "invalid"
        except kernel.InvalidArgumentError:
            got = "args"
        except ValueError:
            got = "too many"
        finally:
            if not grant:
                through.close()
        event(f"send: {expected}")
        assert got == expected, (picks, hows, queue_too, grant)
        if got == "ok":
            self.messages.append([self.carry(n, how) for n, how in zip(picks, hows, strict=True)])

    @staticmethod
    def item(cap: Any, how: str, badge: int) -> Any:
        if how == "move":
            return cap
        return cap.as_copy() if how == "copy" else cap.as_mint(badge=badge or 9)

    def expect_send(self, grant: bool, picks: list[Node], hows: list[str], queue_too: bool) -> str:
        """The kernel's checks in its order: GRANT, then each carried capability (its
        slot, TRANSFER and COPY, a badge set once, not twice), then no queue."""
        if not picks and not queue_too:
            return "ok"
        if not grant:
            return "denied"
        seen: set[int] = set()
        for node, how in zip(picks, hows, strict=True):
            need = Rights.TRANSFER | (Rights.COPY if how != "move" else Rights.NONE)
            if not node.alive:
                return "invalid"
            if need & ~node.rights:
                return "denied"
            if id(node) in seen:
                return "args"
            seen.add(id(node))
        return "args" if queue_too else "ok"

    def carry(self, node: Node, how: str) -> Node:
        if how == "move":
            self.dead_caps.append(node.cap)  # its old slot no longer resolves
            node.cap = None
            return node
        badge = node.badge or (9 if how == "mint" else 0)
        return Node(node.obj, node.rights, badge, node)

    def recv(self, data: st.DataObject) -> None:
        try:
            m = self.q.recv_nowait()
        except kernel.WouldBlock:
            assert not self.messages
            return
        held = self.messages.pop(0)
        event(f"recv: {len(held)} carried")
        assert len(m.caps) == len(held)
        for node, cap in zip(held, m.caps, strict=True):
            if not node.alive:
                assert cap is None, node
                event("recv: a hole")
                continue
            assert cap is not None
            node.cap = cap
            self.nodes.append(node) if node not in self.nodes else None

    def revoke(self, data: st.DataObject) -> None:
        """Mostly a capability from which a queued message holds one."""
        held = [n for n in self.in_table() if any(d.cap is None for d in descendants(n))]
        node = self.pick(data, "revoke")
        if held and data.draw(st.booleans(), label="above a message"):
            node = data.draw(st.sampled_from(held), label="revoke")
        if node is None:
            return
        gone = descendants(node)
        if not node.rights & Rights.MANAGE:
            with pytest.raises(kernel.AccessDeniedError):
                node.cap.revoke()
            return
        assert node.cap.revoke() == len(gone)
        event(f"revoke: {sum(n.cap is None for n in gone)} held by messages")
        for d in gone:
            d.children, d.parent = [], None
            self.kill(d)
        node.children = []

    def close(self, data: st.DataObject) -> None:
        node = self.pick(data, "close")
        if node is None:
            return
        node.cap.close()
        self.dead_caps.append(node.cap)
        unlink(node)

    def destroy_the_queue(self, data: st.DataObject) -> None:
        """Close the queue with its messages: what they hold is dropped."""
        event(f"destroy: {len(self.messages)} messages")
        self.q.close()
        for held in self.messages:
            for node in held:
                if node.alive:
                    unlink(node)
        self.messages = []
        self.q = self.k.queue(None)

    # ---------------------------------------------------------- the check

    @invariant()
    def the_kernel_agrees(self) -> None:
        everyone = [n for n in self.nodes if n.alive] + [
            n for held in self.messages for n in held if n.alive and n not in self.nodes
        ]
        for node in self.in_table():
            info = node.cap.info()
            live_same = sum(1 for n in everyone if n.obj == node.obj)
            model = (int(info.rights), info.badge, info.object_caps, info.derived)
            want = (node.rights, node.badge, live_same, len(descendants(node)))
            assert model == want, f"kernel (rights, badge, object_caps, derived) {model}"
        for cap in self.dead_caps[-8:]:
            with pytest.raises(kernel.InvalidCapabilityError):
                cap.info()


def test_queue_held_capabilities_follow_the_model(kernel_daemon):
    run_state_machine_as_test(
        QueueCapsMachine,
        settings=settings(
            max_examples=EXAMPLES,
            stateful_step_count=40,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
