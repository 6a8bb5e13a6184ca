"""Stateful fuzz: capability derivation across real processes against a pure model.

Three or more processes take part: this test process and two actor children
(tests/integration/peers/caps_actor.py) that run JSON commands from a pipe.
Hypothesis copies, mints, revokes, closes and uses capabilities in any of them,
respawns actors with inherited capabilities (the only way authority may spread
here), and after every step checks that the kernel agrees with a model of the
derivation tree: which slots resolve in which process, with which rights,
badge, object, parent, object_caps and derived counts. No operation may succeed
without its right; a revoke deletes every descendant everywhere.

Default run: 15 examples of 15 steps. Longer: MKIPC_STATEFUL_EXAMPLES=500
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

import kernel
from capabilities import DEFAULT_ENDPOINT_RIGHTS, DEFAULT_NOTIFICATION_RIGHTS
from kernel import Rights

pytestmark = pytest.mark.integration

ACTOR = Path(__file__).parents[1] / "integration" / "peers" / "caps_actor.py"
_spec = importlib.util.spec_from_file_location("caps_actor", ACTOR)
assert _spec is not None
assert _spec.loader is not None
caps_actor = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(caps_actor)

EXAMPLES = int(os.environ.get("MKIPC_STATEFUL_EXAMPLES", "15"))
STEPS = int(os.environ.get("MKIPC_STATEFUL_STEPS", "15"))
INDEX_BITS = 16
MAX_RESPAWNS = 2  # per example: a spawn costs ~0.1 s, the other steps ~1 ms

KIND_RIGHTS = {"endpoint": DEFAULT_ENDPOINT_RIGHTS, "notification": DEFAULT_NOTIFICATION_RIGHTS}
NEEDS = {
    "copy": Rights.COPY,
    "mint": Rights.COPY,
    "revoke": Rights.MANAGE,
    "close": Rights.NONE,
    "call": Rights.SEND,
    "signal": Rights.SIGNAL,
    "poll": Rights.WAIT,
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

    @property
    def kind(self) -> str:
        return self.obj.kind

    def __repr__(self) -> str:
        state = "" if self.alive else " DEAD"
        return (
            f"cap{self.ident}(proc {self.proc} slot {self.slot or 0:#x} {self.obj} "
            f"{Rights(self.rights)!r} badge {self.badge}{state})"
        )


def descendants(node: Node) -> list[Node]:
    out, stack = [], list(node.children)
    while stack:
        n = stack.pop()
        out.append(n)
        stack.extend(n.children)
    return out


def unlink(node: Node) -> None:
    """Closing: the node leaves the tree; its children move up to its parent."""
    parent = node.parent
    if parent is not None:
        parent.children.remove(node)
        parent.children.extend(node.children)
    for child in node.children:
        child.parent = parent
    node.children, node.parent, node.alive = [], None, False


def revoke(node: Node) -> int:
    gone = descendants(node)
    for d in gone:
        d.children, d.parent, d.alive = [], None, False
    node.children = []
    return len(gone)


def outcome(res: dict[str, Any]) -> str:
    return "ok" if "ok" in res else res["err"]


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
        self._answer: dict[str, Any] | None = None

    def send(self, cmd: dict[str, Any]) -> None:
        self._answer = caps_actor.execute(self.k, cmd)

    def recv(self) -> dict[str, Any]:
        answer, self._answer = self._answer, None
        assert answer is not None
        return answer

    def ask(self, cmd: dict[str, Any]) -> dict[str, Any]:
        return caps_actor.execute(self.k, cmd)

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

    def pick(self, data: st.DataObject, label: str, prefer: Any = None) -> Node:
        """A capability of a running process: live ones more often, dead ones too,
        and those `prefer` likes (say, the middle of a derivation chain) most."""
        usable = [n for n in self.nodes if n.proc in self.procs and n.slot is not None]
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
        if not node.alive:
            return "invalid"
        return "ok" if NEEDS[op] & ~node.rights == 0 else "denied"

    def check(self, op: str, node: Node, res: dict[str, Any], expected: str) -> None:
        got = outcome(res)
        event(f"{op}: {expected}")
        assert got == expected, f"{op} on {node}: expected {expected}, got {res}"
        if got == "denied" and NEEDS[op] & ~node.rights:
            assert Rights(NEEDS[op]).name in res["msg"], res

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
        for i, parent in enumerate(handed):  # in the bundle: no slot yet
            node = self.add_node(ident, None, parent.obj, parent.rights, parent.badge, parent)
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
            self.add_node(0, cap.slot, obj, int(info.rights), 0, None)
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
            self.add_node(node.proc, res["ok"], node.obj, new_rights, new_badge, node)

    @rule(data=st.data())
    def revoke(self, data: st.DataObject) -> None:
        self.do_revoke(self.pick(data, "cap", prefer=lambda n: n.children))

    def do_revoke(self, node: Node) -> None:
        expected = self.expect("revoke", node)
        res = self.procs[node.proc].ask(self.cmd("revoke", node))
        self.check("revoke", node, res, expected)
        if expected == "ok":
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
        expected = {n.slot for n in mine if n.alive}
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
