"""Stateful fuzz: capability derivation and transfer across real processes against a model.

Three or more processes take part: this test process and two actor children
(tests/integration/peers/caps_actor.py) that run JSON commands from a pipe.
Hypothesis copies, mints, revokes, closes and uses capabilities in any of them,
respawns actors with inherited capabilities, and sends capabilities between
them in messages (moved or copied, in sends, calls and replies; to a receiver
that already waits, or queued until one comes, meanwhile revoked, cancelled or
expired; sometimes through an endpoint capability without GRANT, or carrying
ones without TRANSFER or COPY, duplicates, the capability the message goes
through). After every step it checks that the kernel agrees with a model of
the derivation tree: which slots resolve in which process, with which rights,
badge, object, parent, object_caps and derived counts. No operation may succeed
without its right; a refused message changes no table; a moved capability keeps
its place in the tree and a copy derives from the sender's; a revoke deletes
every descendant everywhere, wherever messages took it; and no process holds a
capability to an object it did not create, inherit or receive through a
grant-bearing transfer.

Default run: 15 examples of 20 steps. Longer: MKIPC_STATEFUL_EXAMPLES=500
MKIPC_STATEFUL_STEPS=40, or the `slow` variant with --run-slow.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from tree_model import descendants, unlink

import kernel
from capabilities import DEFAULT_ENDPOINT_RIGHTS, DEFAULT_NOTIFICATION_RIGHTS
from kernel import Rights, abi

pytestmark = pytest.mark.integration

ACTOR = Path(__file__).parents[1] / "integration" / "peers" / "caps_actor.py"
_spec = importlib.util.spec_from_file_location("caps_actor", ACTOR)
assert _spec is not None
assert _spec.loader is not None
caps_actor = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(caps_actor)

EXAMPLES = int(os.environ.get("MKIPC_STATEFUL_EXAMPLES", "15"))
STEPS = int(os.environ.get("MKIPC_STATEFUL_STEPS", "20"))
INDEX_BITS = 16
MAX_RESPAWNS = 2  # per example: a spawn costs ~0.1 s, the other steps ~1 ms
WAIT = 5.0  # deadline of a posted send, call or receive that should complete at once
EXPIRE = 0.05  # deadline of a send that is meant to expire

KIND_RIGHTS = {"endpoint": DEFAULT_ENDPOINT_RIGHTS, "notification": DEFAULT_NOTIFICATION_RIGHTS}
NEEDS = {
    "copy": Rights.COPY,
    "mint": Rights.COPY,
    "revoke": Rights.MANAGE,
    "close": Rights.NONE,
    "call": Rights.SEND,
    "signal": Rights.SIGNAL,
    "poll": Rights.WAIT,
    "send": Rights.SEND,
    "recv": Rights.RECEIVE,
}


# ------------------------------------------------------------------ the model


class Obj:
    def __init__(self, name: str, kind: str, oid: int) -> None:
        self.name, self.kind, self.oid = name, kind, oid

    def __repr__(self) -> str:
        return self.name


class Node:
    """One capability in the model: where it lives, what it names, where it came from."""

    def __init__(
        self, ident: int, proc: int, slot: int | None, obj: Obj, rights: int, badge: int
    ) -> None:
        self.ident, self.proc, self.slot, self.obj = ident, proc, slot, obj
        self.rights, self.badge = rights, badge
        self.parent: Node | None = None
        self.children: list[Node] = []
        self.alive = True
        self.origin = "created"  # or copied, minted, inherited, sent as a copy, moved

    @property
    def kind(self) -> str:
        return self.obj.kind

    def __repr__(self) -> str:
        state = "" if self.alive else " DEAD"
        if self.origin.startswith("moved away"):
            state += f" {self.origin}"
        return (
            f"cap{self.ident}(proc {self.proc} slot {self.slot or 0:#x} {self.obj} "
            f"{Rights(self.rights)!r} badge {self.badge}{state})"
        )


def revoke(node: Node) -> int:
    gone = descendants(node)
    for d in gone:
        d.children, d.parent, d.alive = [], None, False
    node.children = []
    return len(gone)


def outcome(res: dict[str, Any]) -> str:
    return "ok" if "ok" in res else res["err"]


Items = list[tuple[Node, bool]]  # capabilities a message carries: (node, as a copy?)


def wire(items: Items) -> list[list[Any]]:
    return [[n.kind, n.slot, copy] for n, copy in items]


def bits_of(mask: int) -> list[int]:
    return [1 << b for b in range(int(Rights.ALL).bit_length()) if mask >> b & 1]


def subsets(mask: int) -> st.SearchStrategy[int]:
    bits = bits_of(mask)
    if not bits:
        return st.just(0)
    return st.sets(st.sampled_from(bits)).map(sum)


# ------------------------------------------------------------------ the processes


class LocalActor:
    """The test process itself, running the same commands as the children."""

    def __init__(self, k: kernel.Kernel) -> None:
        self.k, self.pid = k, k.pid
        self.session = caps_actor.Session()
        self._answer: dict[str, Any] | None = None

    def send(self, cmd: dict[str, Any]) -> None:
        self._answer = caps_actor.execute(self.k, cmd, self.session)

    def recv(self) -> dict[str, Any]:
        answer, self._answer = self._answer, None
        assert answer is not None
        return answer

    def ask(self, cmd: dict[str, Any]) -> dict[str, Any]:
        return caps_actor.execute(self.k, cmd, self.session)

    def stop(self, *, kill: bool = False) -> None:
        pass


class RemoteActor:
    """A child process that runs caps_actor.py; its capabilities came by inheritance."""

    def __init__(self, proc: kernel.Process) -> None:
        self.proc, self.pid = proc, proc.pid
        self.stopped = False
        self.bundle: dict[str, Node] = {}  # inherited, not yet claimed (lazy start)

    def send(self, cmd: dict[str, Any]) -> None:
        self.proc.popen.stdin.write(json.dumps(cmd) + "\n")
        self.proc.popen.stdin.flush()

    def recv(self) -> dict[str, Any]:
        line = self.proc.popen.stdout.readline()
        assert line, f"actor pid {self.pid} exited (code {self.proc.popen.poll()})"
        return json.loads(line)

    def ask(self, cmd: dict[str, Any]) -> dict[str, Any]:
        self.send(cmd)
        return self.recv()

    def stop(self, *, kill: bool = False) -> None:
        """End the child (EOF on its stdin, or SIGKILL) and wait for the kernel's clean-up."""
        if self.stopped:
            return
        self.stopped = True
        popen = self.proc.popen
        try:
            if kill:
                popen.kill()
            else:
                popen.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except TimeoutError:
                popen.kill()
                self.proc.wait(timeout=10)
        finally:
            if popen.poll() is None:
                popen.kill()
                popen.wait()
            for f in (popen.stdin, popen.stdout):
                if not f.closed:
                    f.close()


# ------------------------------------------------------------------ the machine


class CapabilityMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.k = kernel.connect(autostart=False)
        self.procs: dict[int, LocalActor | RemoteActor] = {0: LocalActor(self.k)}
        self.seats: dict[int, int | None] = {1: None, 2: None}  # actor seat -> proc id
        self.next_proc = 1
        self.respawns = 0
        self.nodes: list[Node] = []
        self.objs: list[Obj] = []
        # The objects each process got a capability to by creating them, inheriting
        # or receiving them in a message through a GRANT-bearing capability.
        self.acquired: dict[int, set[Obj]] = {0: set()}
        self.locked: set[Node] = set()  # carried by a message that waits for a receiver

    def teardown(self) -> None:
        """Reap every actor (each in turn, even if one fails), then disconnect."""
        errors = []
        for proc in self.procs.values():
            try:
                proc.stop()
            except Exception as e:
                errors.append(e)
        self.k.close()
        if errors:
            raise errors[0]

    # -------------------------------------------------------------- helpers

    def add_node(
        self, proc: int, slot: int | None, obj: Obj, rights: int, badge: int, parent: Node | None
    ) -> Node:
        node = Node(len(self.nodes), proc, slot, obj, rights, badge)
        if parent is not None:
            assert rights & ~parent.rights == 0  # the model never widens either
            node.parent = parent
            parent.children.append(node)
        self.nodes.append(node)
        return node

    def pick(self, data: st.DataObject, label: str, prefer: Any = None, where: Any = None) -> Node:
        """A capability of a running process: live ones more often, dead ones too,
        and those `prefer` likes (say, the middle of a derivation chain) most.
        `where` restricts the choice (there is always one: this process keeps at
        least the dead slot of each object it created)."""
        usable = [
            n
            for n in self.nodes
            if n.proc in self.procs and n.slot is not None and (where is None or where(n))
        ]
        alive = [n for n in usable if n.alive]
        liked = [n for n in alive if prefer(n)] if prefer else []
        choice = st.sampled_from(usable)
        if alive:
            choice = st.sampled_from(alive) | choice
        if liked:
            choice = st.sampled_from(liked) | st.sampled_from(liked) | choice
        return data.draw(choice, label=label)

    def cmd(self, op: str, node: Node, **extra: Any) -> dict[str, Any]:
        return {"op": op, "kind": node.kind, "slot": node.slot, **extra}

    def expect(self, op: str, node: Node) -> str:
        """The kernel's lookup, in its order: slot, rights, then not locked in a message."""
        if not node.alive:
            return "invalid"
        if NEEDS[op] & ~node.rights:
            return "denied"
        return "args" if node in self.locked else "ok"

    def check(self, op: str, node: Node, res: dict[str, Any], expected: str) -> None:
        got = outcome(res)
        event(f"{op}: {expected}")
        assert got == expected, f"{op} on {node}: expected {expected}, got {res}"
        if got == "denied" and NEEDS[op] & ~node.rights:
            assert Rights(NEEDS[op]).name in res["msg"], res
        if got == "args":
            assert "in transit" in res["msg"], res

    def spawn(self, seat: int, handed: list[Node], *, lazy: bool = False) -> int | None:
        """Start an actor in `seat` that inherits `handed`; returns its proc id, or None
        if the kernel refused. A lazy actor connects only on `connect(ident)`, so the
        inherited capabilities wait in the kernel's spawn bundle until then."""
        caps = {f"c{i}": caps_actor.CAP_TYPES[n.kind](self.k, n.slot) for i, n in enumerate(handed)}
        expected = "ok"
        for n in handed:  # the kernel checks them in order: the first failure answers
            if not n.alive:
                expected = "invalid"
                break
            if not n.rights & Rights.COPY:  # inheritance derives a copy
                expected = "denied"
                break
        event(f"spawn: {expected}")
        try:
            proc = self.k.spawn(
                [sys.executable, str(ACTOR), *(["lazy"] if lazy else [])],
                caps=caps,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
        except (kernel.AccessDeniedError, kernel.InvalidCapabilityError) as e:
            refused: Exception | None = e
        else:
            refused = None
        if refused is not None:
            got = "denied" if isinstance(refused, kernel.AccessDeniedError) else "invalid"
            assert got == expected, f"spawn with {handed}: {refused!r}, expected {expected}"
            return None
        actor = RemoteActor(proc)
        ident = self.next_proc
        self.next_proc += 1
        self.procs[ident] = actor
        self.seats[seat] = ident
        assert expected == "ok", f"spawn with {handed} succeeded; expected {expected}"
        self.acquired[ident] = {n.obj for n in handed}
        for i, parent in enumerate(handed):  # in the bundle: no slot yet
            node = self.add_node(ident, None, parent.obj, parent.rights, parent.badge, parent)
            node.origin = "inherited"
            actor.bundle[f"c{i}"] = node
        if not lazy:
            self.connect(ident)
        return ident

    def connect(self, ident: int) -> None:
        """Let a lazy actor connect; it claims whatever of its bundle is left."""
        actor = self.procs[ident]
        assert isinstance(actor, RemoteActor)
        actor.send({"op": "connect"})  # a lazy actor reads this line before connecting
        hello = actor.ask({"op": "hello"})
        assert hello["pid"] == actor.pid
        left = {name for name, node in actor.bundle.items() if node.alive}
        assert sorted(hello["inherited"]) == sorted(left), (hello, actor.bundle)
        for name in left:
            kind, slot = hello["inherited"][name]
            assert kind == actor.bundle[name].kind
            actor.bundle[name].slot = slot
        actor.bundle = {}

    def stop_seat(self, seat: int, kill: bool) -> None:
        ident = self.seats[seat]
        if ident is None:
            return
        self.procs.pop(ident).stop(kill=kill)
        self.seats[seat] = None
        for n in self.nodes:  # death closes every capability the process held
            if n.proc == ident and n.alive:
                unlink(n)

    # -------------------------------------------------------------- rules

    @initialize(data=st.data())
    def start(self, data: st.DataObject) -> None:
        for name, make in (
            ("E0", self.k.endpoint),
            ("E1", self.k.endpoint),
            ("N0", self.k.notification),
        ):
            cap = make()
            info = cap.info()
            obj = Obj(name, info.kind, info.object_id)
            self.objs.append(obj)
            self.acquired[0].add(obj)
            self.add_node(0, caps_actor.kept(cap), obj, int(info.rights), 0, None)
        for root in list(self.nodes):  # narrowed (sometimes badged) copies to hand over
            mask = data.draw(subsets(root.rights), label=f"narrow {root.obj}")
            if data.draw(st.booleans(), label="badge it"):
                self.derive("mint", root, mask, root.ident + 1)
            else:
                self.derive("copy", root, mask, None)
        mine = list(self.nodes)
        for seat in self.seats:
            handed = data.draw(
                st.lists(st.sampled_from(mine), unique=True, max_size=3), label=f"seat {seat}"
            )
            self.spawn(seat, handed)

    @rule(data=st.data())
    def copy(self, data: st.DataObject) -> None:
        node = self.pick(data, "source", prefer=lambda n: n.parent is not None)
        rights = data.draw(self.requested(node), label="rights")
        self.derive("copy", node, rights, None)

    @rule(data=st.data())
    def mint(self, data: st.DataObject) -> None:
        node = self.pick(data, "source", prefer=lambda n: n.parent is not None)
        rights = data.draw(self.requested(node), label="rights")
        badge = data.draw(
            st.sampled_from([0, node.badge, 1, 2, 3, 2**64 - 1]) | st.integers(0, 2**64 - 1),
            label="badge",
        )
        self.derive("mint", node, rights, badge)

    def requested(self, node: Node) -> st.SearchStrategy[int | None]:
        """Rights to ask for: the same, fewer, or possibly more than held."""
        return st.one_of(
            st.none(),
            subsets(node.rights),
            subsets(KIND_RIGHTS[node.kind]),
            subsets(int(Rights.ALL)),
        )

    def derive(self, op: str, node: Node, rights: int | None, badge: int | None) -> None:
        expected = self.expect(op, node)
        if expected == "ok" and rights is not None and rights & ~node.rights:
            expected = "denied"  # a derived capability never gains a right
        if expected == "ok" and op == "mint" and node.badge and badge != node.badge:
            expected = "denied"  # a badge is set once
        res = self.procs[node.proc].ask(self.cmd(op, node, rights=rights, badge=badge))
        self.check(op, node, res, expected)
        if expected == "ok":
            new_rights = node.rights if rights is None else rights
            new_badge = badge if op == "mint" else node.badge
            new = self.add_node(node.proc, res["ok"], node.obj, new_rights, new_badge, node)
            new.origin = "minted" if op == "mint" else "copied"

    @rule(data=st.data(), far=st.booleans())
    def revoke(self, data: st.DataObject, far: bool) -> None:
        """Revoke; with `far`, preferably above capabilities that messages carried away."""

        def reaches_far(n: Node) -> bool:
            return any(d.proc != n.proc or d.origin.startswith("sent") for d in descendants(n))

        self.do_revoke(self.pick(data, "cap", prefer=reaches_far if far else lambda n: n.children))

    def do_revoke(self, node: Node) -> None:
        expected = self.expect("revoke", node)
        res = self.procs[node.proc].ask(self.cmd("revoke", node))
        self.check("revoke", node, res, expected)
        if expected == "ok":
            gone = descendants(node)
            if any(d.origin in ("moved", "sent as a copy") for d in gone):
                event("revoke reaches a capability that travelled in a message")
            if any(d.proc != node.proc for d in gone):
                event("revoke reaches into another process")
            assert res["ok"] == revoke(node), f"revoke on {node} deleted {res['ok']}"

    @rule(data=st.data())
    def close(self, data: st.DataObject) -> None:
        self.do_close(self.pick(data, "cap", prefer=lambda n: n.children and n.parent is not None))

    def do_close(self, node: Node) -> None:
        expected = self.expect("close", node)
        res = self.procs[node.proc].ask(self.cmd("close", node))
        self.check("close", node, res, expected)
        if expected == "ok":
            unlink(node)

    @rule(data=st.data())
    def use(self, data: st.DataObject) -> None:
        """Call through an endpoint capability; signal or poll a notification one."""
        node = self.pick(data, "cap")
        actor = self.procs[node.proc]
        if node.kind == "notification":
            op = data.draw(st.sampled_from(["signal", "poll"]), label="op")
            res = actor.ask(self.cmd(op, node, bits=1))
            self.check(op, node, res, self.expect(op, node))
            return
        expected = self.expect("call", node)
        receiver = next(
            (
                n
                for n in self.nodes
                if n.proc == 0 and n.alive and n.obj is node.obj and n.rights & Rights.RECEIVE
            ),
            None,
        )
        # A real call needs this process to receive, so only from another process.
        real = expected == "ok" and receiver is not None and node.proc != 0
        actor.send(self.cmd("call", node, data="ping", timeout=10 if real else 0))
        if real:
            try:
                msg = kernel.EndpointCap(self.k, receiver.slot).recv(timeout=5)
            except kernel.CallTimeoutError:
                raise AssertionError(f"call on {node} never arrived: {actor.recv()}") from None
            assert (msg.data, msg.badge, msg.sender.pid) == (b"ping", node.badge, actor.pid)
            msg.reply(b"pong")
        res = actor.recv()
        if expected == "ok":
            expected = "ok" if real else "timeout"  # a timeout: the rights check passed
        self.check("call", node, res, expected)
        if real:
            assert res["ok"] == "pong"

    # -------------------------------------------------------------- messages

    def receivers(self, obj: Obj) -> list[Node]:
        return [
            n
            for n in self.nodes
            if n.alive
            and n.obj is obj
            and n.rights & Rights.RECEIVE
            and n.proc in self.procs
            and n.slot is not None
        ]

    def pick_channel(self, data: st.DataObject) -> tuple[Node, Node | None]:
        """An endpoint capability to send through (often one with SEND, GRANT and a
        receiver somewhere), and a receiving capability to the same object, if any."""

        def promising(n: Node) -> bool:
            needs = Rights.SEND | Rights.GRANT
            return n.alive and n.rights & needs == needs and bool(self.receivers(n.obj))

        ep = self.pick(data, "through", prefer=promising, where=lambda n: n.kind == "endpoint")
        rxs = self.receivers(ep.obj)
        rx = data.draw(st.sampled_from(rxs), label="receiver") if rxs else None
        return ep, rx

    def draw_items(
        self, data: st.DataObject, proc: int, label: str, min_size: int, through: Node | None
    ) -> Items:
        """Capabilities of `proc` to carry: mostly live ones with TRANSFER (other than
        `through`), but any of its slots (dead ones too), each moved or copied; now
        and then one twice."""
        pool = [n for n in self.nodes if n.proc == proc and n.slot is not None]
        if not pool:
            return []
        movable = [n for n in pool if n.alive and n.rights & Rights.TRANSFER and n is not through]
        elem = st.sampled_from(pool)
        if movable:
            elem = st.one_of(*[st.sampled_from(movable)] * 3, elem)
        nodes = data.draw(st.lists(elem, min_size=min_size, max_size=4, unique=True), label=label)
        copies = data.draw(
            st.lists(st.booleans(), min_size=len(nodes), max_size=len(nodes)), label="as copies"
        )
        items = list(zip(nodes, copies, strict=True))
        if nodes and data.draw(st.integers(0, 7), label="carry one twice") == 0:
            again = (data.draw(st.sampled_from(nodes)), data.draw(st.booleans()))
            items.insert(data.draw(st.integers(0, len(items)), label="where"), again)
        return items

    def expect_carry(self, grant: bool, through: Node | None, items: Items) -> tuple[str, str]:
        """The kernel's transfer checks, in its order, before anything changes: GRANT
        on the capability the message goes through (or the caller's, for a reply),
        then per carried one: its slot, TRANSFER (and COPY for a copy), not locked,
        not twice, not the capability the message goes through, moved."""
        if not items:
            return "ok", ""
        if not grant:
            return "denied", "GRANT"
        seen: set[Node] = set()
        for node, copy in items:
            need = Rights.TRANSFER | (Rights.COPY if copy else Rights.NONE)
            if not node.alive:
                return "invalid", ""
            if need & ~node.rights:
                return "denied", str(Rights(need & ~node.rights).name)
            if node in self.locked:
                return "args", "in transit"
            if node in seen:
                return "args", "appears twice"
            if node is through and not copy:
                return "args", "cannot move the capability it is sent through"
            seen.add(node)
        return "ok", ""

    def expect_send(self, ep: Node, items: Items) -> tuple[str, str]:
        expected = self.expect("send", ep)
        if expected != "ok":
            return expected, {"denied": "SEND", "args": "in transit"}.get(expected, "")
        return self.expect_carry(bool(ep.rights & Rights.GRANT), ep, items)

    def verdict(self, what: str, res: dict[str, Any], expected: str, hint: str = "") -> None:
        got = outcome(res)
        event(f"{what}: {expected} {hint}".rstrip() if expected != "ok" else f"{what}: ok")
        assert got == expected, f"{what}: expected {expected} ({hint}), got {res}"
        if hint and got != "ok":
            assert hint in res["msg"], f"{what}: expected {hint!r} in {res}"

    def posted(self, actor: LocalActor | RemoteActor, cmd: dict[str, Any]) -> None:
        res = actor.ask(cmd)
        assert res == {"ok": None}, f"post {cmd}: {res}"

    def take(self, actor: LocalActor | RemoteActor, tag: str, cancel: bool = False) -> Any:
        return actor.ask({"op": "take", "tag": tag, "cancel": cancel})

    def deliver(
        self,
        via: str,
        items: Items,
        sender: int,
        to: int,
        msg: dict[str, Any],
        grant: bool,
        made: dict[int, Node] | None = None,
    ) -> None:
        """The message arrived in process `to`: its capabilities are there, in order;
        a moved one is the same node in a new table (its old slot is dead), a copy
        is a new child of the sender's (`made`: those made when a waiting message
        was sent, whose source may have been closed since)."""
        got = msg["caps"]
        assert len(got) == len(items), f"{via}: carried {items}, arrived {got}"
        assert grant or not items, f"{via}: capabilities arrived without GRANT"
        husks = []
        for i, ((node, copy), (kind, slot)) in enumerate(zip(items, got, strict=True)):
            assert kind == node.kind, f"{via}: {node} arrived as a {kind}"
            assert node.proc == sender, node
            if made and i in made:
                flown = made[i]
                assert flown.alive, flown
                flown.proc, flown.slot, flown.origin = to, slot, "sent as a copy"
                self.acquired[to].add(node.obj)
                continue
            assert node.alive, node
            if copy:
                new = self.add_node(to, slot, node.obj, node.rights, node.badge, node)
                new.origin = "sent as a copy"
            else:
                husk = Node(len(self.nodes), node.proc, node.slot, node.obj, 0, node.badge)
                husk.alive, husk.origin = False, f"moved away to proc {to}"
                self.nodes.append(husk)
                husks.append(husk)
                node.proc, node.slot, node.origin = to, slot, "moved"
            self.acquired[to].add(node.obj)
        if items:
            event(f"{via}: {len(items)} delivered, {sum(c for _, c in items)} as copies")
        if husks and sender != to:  # (to itself, the freed index may be reused at once)
            self.husks_say_where(sender, to, husks)

    def husks_say_where(self, sender: int, to: int, husks: list[Node]) -> None:
        """The slots that moved capabilities left answer where they went."""
        res = self.procs[sender].ask({"op": "infos", "items": [[n.kind, n.slot] for n in husks]})
        for answer in res["ok"]:
            self.verdict("use of a slot whose capability moved", answer, "invalid", "was sent to")
            assert f"was sent to pid {self.procs[to].pid}" in answer["msg"], answer

    def check_message(self, via: str, msg: dict[str, Any], **want: Any) -> None:
        have = {key: msg[key] for key in want}
        assert have == want, f"{via}: got {msg}, expected {want}"

    @rule(
        data=st.data(),
        plan=st.sampled_from(["rx_first", "tx_first", "rx_first", "tx_first", "nowait"]),
    )
    def send_caps(self, data: st.DataObject, plan: str) -> None:
        """One process sends capabilities to another (or itself), moved or copied.

        rx_first: the receiver waits first, the send is delivered at once; tx_first:
        the message waits for a receiver with its capabilities locked; nowait: a
        send with timeout 0 and nobody waiting. A refused send must change nothing
        and reach nobody, even a receiver that waits.
        """
        ep, rx = self.pick_channel(data)
        if rx is None and plan == "rx_first":
            plan = "nowait"
        sender = self.procs[ep.proc]
        items = self.draw_items(data, ep.proc, "carried", 1, ep)
        expected, hint = self.expect_send(ep, items)
        send = {"op": "post", "tag": "tx", "what": "send", "slot": ep.slot}
        send |= {"data": "gift", "caps": wire(items)}
        if plan == "nowait":
            self.posted(sender, {**send, "timeout": 0})
            res = self.take(sender, "tx")
            self.verdict("send_nowait", res, "timeout" if expected == "ok" else expected, hint)
            return
        if plan == "tx_first":
            self.send_first(data, ep, rx, items, send, expected, hint)
            return
        assert rx is not None
        receiver = self.procs[rx.proc]
        self.posted(
            receiver,
            {"op": "post", "tag": "rx", "what": "recv", "slot": rx.slot} | {"timeout": WAIT},
        )
        self.posted(sender, {**send, "timeout": WAIT})
        self.verdict("send to a waiting receiver", self.take(sender, "tx"), expected, hint)
        if expected != "ok":
            got = self.take(receiver, "rx", cancel=True)
            assert outcome(got) == "cancelled", f"a refused send reached the receiver: {got}"
            return
        got = self.take(receiver, "rx")
        self.verdict("receive", got, "ok")
        msg = got["ok"]
        self.check_message("send", msg, data="gift", badge=ep.badge, pid=sender.pid, is_call=False)
        self.deliver("send", items, ep.proc, rx.proc, msg, bool(ep.rights & Rights.GRANT))

    def send_first(
        self,
        data: st.DataObject,
        ep: Node,
        rx: Node | None,
        items: Items,
        send: dict[str, Any],
        expected: str,
        hint: str,
    ) -> None:
        """The message waits for a receiver; meanwhile the capabilities it moves are
        locked, its copies are made (children in flight, in no table), and something
        may be revoked or closed. Then a receiver comes, or the sender cancels, or
        the deadline passes: only delivery changes a table."""
        then = data.draw(st.sampled_from(["deliver", "cancel", "expire"]), label="then")
        if then == "deliver" and rx is None:
            then = "cancel"
        sender = self.procs[ep.proc]
        self.posted(sender, {**send, "timeout": EXPIRE if then == "expire" else WAIT})
        if expected != "ok" or then == "expire":
            res = self.take(sender, "tx")
            self.verdict("queued send", res, "timeout" if expected == "ok" else expected, hint)
            return
        self.locked = {n for n, copy in items if not copy}
        made = {i: self.in_flight(n) for i, (n, copy) in enumerate(items) if copy}
        carried = self.locked | set(made.values())
        res = sender.ask({"op": "infos", "items": [[n.kind, n.slot] for n, _ in items]})
        for (_, copy), answer in zip(items, res["ok"], strict=True):
            what = "info on a capability a waiting message "
            if copy:  # the copy is made: the sender's own stays usable
                self.verdict(what + "copies", answer, "ok")
            else:
                self.verdict(what + "moves", answer, "args", "in transit")
        meanwhile = data.draw(
            st.sampled_from([None, "revoke", "revoke", "close"]), label="meanwhile"
        )
        if meanwhile is not None:

            def above(n: Node) -> bool:  # revoking it breaks the message
                return any(d in carried for d in descendants(n))

            def near(n: Node) -> bool:  # closing it: refused, or what it carries moves up
                return n in carried or bool(set(n.children) & carried)

            node = self.pick(data, "meanwhile", prefer=above if meanwhile == "revoke" else near)
            self.do_revoke(node) if meanwhile == "revoke" else self.do_close(node)
        gone = not any(n.alive and n.obj is ep.obj for n in self.nodes)  # copies in flight too
        broken = any(not n.alive for n in carried) or not ep.alive
        try:
            self.queued_send_ends(then, ep, rx, items, made, gone, broken)
        finally:
            for copy in made.values():  # not delivered: the kernel dropped it
                if copy.slot is None and copy.alive:
                    unlink(copy)
            self.locked = set()

    def in_flight(self, source: Node) -> Node:
        """The copy a waiting message carries: a child of `source`, in no process's
        table yet (proc -1: no rule picks it, and no invariant asks about it)."""
        node = self.add_node(-1, None, source.obj, source.rights, source.badge, source)
        node.origin = "in flight"
        return node

    def queued_send_ends(
        self,
        then: str,
        ep: Node,
        rx: Node | None,
        items: Items,
        made: dict[int, Node],
        gone: bool,
        broken: bool,
    ) -> None:
        """How a queued send ends: failed (its endpoint destroyed, or something it
        carries or goes through revoked or closed), delivered, or cancelled."""
        sender = self.procs[ep.proc]
        event(f"queued send: then {then}, gone {gone}, broken {broken}")
        if gone:  # the endpoint's last capability went: its waiting senders fail
            res = self.take(sender, "tx", cancel=True)
            self.verdict("queued send to a destroyed endpoint", res, "closed", "destroyed")
        elif broken:  # revoked (or closed) in transit: the send fails at once, delivers nothing
            res = self.take(sender, "tx")
            self.verdict("queued send, revoked in transit", res, "invalid", "was ")
            if then == "deliver" and rx is not None and self.expect("recv", rx) == "ok":
                receiver = self.procs[rx.proc]
                recv = {"op": "post", "tag": "rx", "what": "recv", "slot": rx.slot, "timeout": 0}
                self.posted(receiver, recv)
                got = self.take(receiver, "rx")
                self.verdict("receive after a revoke in transit", got, "timeout")
        elif then == "deliver":
            assert rx is not None
            receiver = self.procs[rx.proc]
            can_recv = self.expect("recv", rx)
            recv = {"op": "post", "tag": "rx", "what": "recv", "slot": rx.slot, "timeout": 0}
            self.posted(receiver, recv)
            got = self.take(receiver, "rx")
            if can_recv == "ok":
                self.verdict("receive a queued message", got, "ok")
                self.locked = set()
                msg = got["ok"]
                self.check_message(
                    "queued send", msg, data="gift", badge=ep.badge, pid=sender.pid, is_call=False
                )
                grant = bool(ep.rights & Rights.GRANT)
                self.deliver("queued send", items, ep.proc, rx.proc, msg, grant, made)
                self.verdict("queued send", self.take(sender, "tx"), "ok")
            else:
                self.verdict("receive", got, can_recv)
                self.verdict("cancelled send", self.take(sender, "tx", cancel=True), "cancelled")
        else:
            self.verdict("cancelled send", self.take(sender, "tx", cancel=True), "cancelled")

    @rule(data=st.data(), reply_recv=st.booleans())
    def call_with_caps(self, data: st.DataObject, reply_recv: bool) -> None:
        """A call carries capabilities one way, its reply another way (only if the
        caller's endpoint capability had GRANT); a refused reply keeps the call
        answerable, and the caller gets the plain answer that follows."""
        ep, rx = self.pick_channel(data)
        if rx is None:
            event("call_with_caps: nobody can receive")
            return
        caller, server = self.procs[ep.proc], self.procs[rx.proc]
        items = self.draw_items(data, ep.proc, "carried", 0, ep)
        expected, hint = self.expect_send(ep, items)
        grant = bool(ep.rights & Rights.GRANT)
        self.posted(
            server, {"op": "post", "tag": "rx", "what": "recv", "slot": rx.slot} | {"timeout": WAIT}
        )
        call = {"op": "post", "tag": "call", "what": "call", "slot": ep.slot, "timeout": WAIT}
        self.posted(caller, call | {"data": "job", "caps": wire(items)})
        if expected != "ok":
            self.verdict("call", self.take(caller, "call"), expected, hint)
            got = self.take(server, "rx", cancel=True)
            assert outcome(got) == "cancelled", f"a refused call reached the server: {got}"
            return
        got = self.take(server, "rx")
        self.verdict("receive a call", got, "ok")
        msg = got["ok"]
        self.check_message("call", msg, data="job", badge=ep.badge, pid=caller.pid, is_call=True)
        self.deliver("call", items, ep.proc, rx.proc, msg, grant)
        back = self.draw_items(data, rx.proc, "sent back", 0, None)
        if any(n is rx and not copy for n, copy in back):
            # Its receive half would go through the capability the reply moves away: the
            # kernel refuses that whole reply_recv (pinned by test_reply_recv_does_not_...).
            reply_recv = False
        rexp, rhint = self.expect_carry(grant, None, back)
        answer = {"op": "reply", "tag": "rx", "data": "done", "caps": wire(back)}
        res = server.ask(answer | {"recv_slot": rx.slot if reply_recv else None})
        if rexp == "ok" and reply_recv:
            rexp, rhint = "timeout", "no message"  # the reply went; nothing came to receive
        self.verdict("reply_recv" if reply_recv else "reply", res, rexp, rhint)
        if outcome(res) not in ("ok", "timeout"):
            back = []
            self.verdict("plain reply after a refused one", server.ask(answer | {"caps": []}), "ok")
        got = self.take(caller, "call")
        self.verdict("call", got, "ok")
        msg = got["ok"]
        self.check_message("reply", msg, data="done", badge=0, pid=server.pid, is_call=False)
        self.deliver("reply", back, rx.proc, ep.proc, msg, grant)

    @precondition(lambda self: self.respawns < MAX_RESPAWNS)
    @rule(
        data=st.data(),
        seat=st.sampled_from([1, 2]),
        kill=st.booleans(),
        meanwhile=st.sampled_from([None, "revoke", "close"]),
    )
    def respawn(self, data: st.DataObject, seat: int, kill: bool, meanwhile: str | None) -> None:
        """End an actor (its capabilities die with it) and start one with new inheritance.

        With `meanwhile`, revoke or close a capability (in any running process) while
        the new actor's inherited copies still wait in the kernel's spawn bundle.
        """
        self.respawns += 1
        self.stop_seat(seat, kill)
        mine = [n for n in self.nodes if n.proc == 0]
        handed = data.draw(st.lists(st.sampled_from(mine), unique=True, max_size=3), label="hand")
        ident = self.spawn(seat, handed, lazy=meanwhile is not None)
        if ident is None or meanwhile is None:
            return

        def above_the_bundle(n: Node) -> bool:
            return any(d.proc == ident for d in descendants(n))

        node = self.pick(data, "meanwhile", prefer=above_the_bundle)
        event(f"{meanwhile} while a bundle waits: above it {above_the_bundle(node)}")
        self.do_revoke(node) if meanwhile == "revoke" else self.do_close(node)
        self.connect(ident)

    # -------------------------------------------------------------- the check

    @invariant()
    def the_kernel_agrees_with_the_model(self) -> None:
        infos: dict[int, list[Any]] = {}
        for ident, actor in self.procs.items():
            # (a copy revoked while it waited in a spawn bundle never got a slot)
            mine = [n for n in self.nodes if n.proc == ident and n.slot is not None]
            answers = actor.ask({"op": "infos", "items": [[n.kind, n.slot] for n in mine]})["ok"]
            for node, res in zip(mine, answers, strict=True):
                if not node.alive:
                    assert outcome(res) == "invalid", f"{node} still resolves: {res}"
                    continue
                assert outcome(res) == "ok", f"{node} no longer resolves: {res}"
                infos[node.ident] = res["ok"]
            self.only_the_model_resolves(ident, actor, mine)
            # Every slot that resolves is a live node (just checked); what it names:
            allowed = {obj.oid for obj in self.acquired[ident]}
            for node in mine:
                if node.alive:
                    oid = infos[node.ident][4]
                    assert oid in allowed, (
                        f"proc {ident} holds {node} to object {oid}, which it never created, "
                        f"inherited or received through GRANT (it got {self.acquired[ident]})"
                    )
        for node in self.nodes:
            if not node.alive:
                continue
            same_obj = [n for n in self.nodes if n.alive and n.obj is node.obj]
            parent = node.parent
            want_parent = parent.slot if parent is not None and parent.proc == node.proc else None
            model = [
                node.kind,
                node.rights,
                node.badge,
                node.slot,
                node.obj.oid,
                len(same_obj),
                len(descendants(node)),
                want_parent,
            ]
            assert infos[node.ident] == model, (
                f"{node}: kernel says {infos[node.ident]}, model says {model}"
            )
            if parent is not None:  # never wider than what it was derived from (kernel's view)
                assert infos[node.ident][1] & ~infos[parent.ident][1] == 0, (node, parent)

    def only_the_model_resolves(self, ident: int, actor: Any, mine: list[Node]) -> None:
        """Try every nearby slot number: exactly the model's live slots may resolve."""
        indices = [n.slot & ((1 << INDEX_BITS) - 1) for n in mine] or [1]
        gens = [n.slot >> INDEX_BITS for n in mine] or [1]
        candidates = [
            (g << INDEX_BITS) | i
            for g in range(0, max(gens) + 3)
            for i in range(0, max(indices) + 4)
        ]
        resolved = set(actor.ask({"op": "probe", "slots": candidates})["ok"])
        # Besides the model's capabilities, every process holds exactly one more from
        # birth: the name server's, in its well-known slot (DESIGN §2).
        expected = {n.slot for n in mine if n.alive} | {abi.NAMES_SLOT}
        assert resolved == expected, (
            f"proc {ident}: slots {sorted(map(hex, resolved - expected))} resolve unexpectedly, "
            f"{sorted(map(hex, expected - resolved))} do not"
        )


def _settings(examples: int, steps: int) -> settings:
    return settings(
        max_examples=examples,
        stateful_step_count=steps,
        deadline=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )


def test_capability_derivation_across_processes_matches_the_model(kernel_daemon):
    run_state_machine_as_test(CapabilityMachine, settings=_settings(EXAMPLES, STEPS))


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_capability_derivation_across_processes_matches_the_model_long(kernel_daemon):
    run_state_machine_as_test(CapabilityMachine, settings=_settings(max(EXAMPLES, 300), 40))


def test_reply_recv_does_not_receive_through_a_capability_its_reply_moved_away(kernel_daemon):
    """Regression: the reply moved the receive capability away and the receive half still
    took a message through it. The kernel now refuses such a reply_recv outright."""
    with kernel.connect(autostart=False) as k:
        ep = k.endpoint()
        granting = ep.copy(rights=Rights.SEND | Rights.GRANT)
        server = RemoteActor(
            k.spawn(
                [sys.executable, str(ACTOR)],
                caps={"ep": ep},
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
        )
        me = LocalActor(k)
        try:
            _, slot = server.ask({"op": "hello"})["inherited"]["ep"]
            recv = {"op": "post", "tag": "rx", "what": "recv", "slot": slot, "timeout": WAIT}
            assert server.ask(recv) == {"ok": None}
            call = {"op": "post", "tag": "call", "what": "call", "slot": granting.slot}
            assert me.ask(call | {"data": "job", "timeout": WAIT}) == {"ok": None}
            assert server.ask({"op": "take", "tag": "rx"})["ok"]["is_call"]
            later = {"op": "post", "tag": "later", "what": "send", "slot": granting.slot}
            assert me.ask(later | {"data": "later", "timeout": WAIT}) == {"ok": None}  # it waits
            # reply_recv: the reply moves the server's only endpoint capability to the
            # caller; the receive half must not then take "later" through it.
            give_away = [["endpoint", slot, False]]
            res = server.ask(
                {"op": "reply", "tag": "rx", "data": "done", "caps": give_away, "recv_slot": slot}
            )
            assert outcome(res) != "ok", f"received through a capability it gave away: {res}"
        finally:
            server.stop()
