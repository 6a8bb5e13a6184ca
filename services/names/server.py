"""The name server (DESIGN §6): an ordinary process serving one endpoint.

It keeps `name -> capability` entries with System V style permissions. It never
hands out a registrant's capability: `lookup` mints a child with the entry's
rights and a badge no other lookup got. It learns that a registrant ended from
the kernel (`Message.monitor`: an exit notice on its own endpoint), and then
drops that process's entries and revokes what lookup handed out for them.

Its entries and armed notifies outlive it: each is kept in a queue the kernel
holds across the name server's restarts (store.py), and the instance the kernel
starts next serves them again. The calls it held fail with PeerClosedError when
it dies; the client stub sends reads (lookup, watch, list) again.

One thread, no polling: it blocks in recv, with a timeout only while a waiting
lookup or watch has a deadline.
"""

from __future__ import annotations

import collections
import itertools
import logging
import time
import typing
from dataclasses import dataclass, field

import msgspec

from capabilities import Rights
from capabilities.policy import READ, WRITE, Perm, allowed, denial
from kernel import (
    CallTimeoutError,
    EndpointCap,
    IPCError,
    Kernel,
    Message,
    MintOf,
    NotificationCap,
    PeerClosedError,
    QueueCap,
    Status,
)
from kernel.client.sync import InheritedCap as Cap

from . import protocol as p
from .store import Armed, Kept, Store

log = logging.getLogger("mkipc.names")

HANDOUT_RIGHTS = {
    "endpoint": Rights.SEND | Rights.GRANT | Rights.COPY | Rights.TRANSFER,
    "notification": Rights.SIGNAL | Rights.COPY | Rights.TRANSFER,
    "memory object": Rights.MAP | Rights.READ | Rights.COPY | Rights.TRANSFER,
    "semaphore": Rights.SIGNAL | Rights.WAIT | Rights.COPY | Rights.TRANSFER,
    "queue": Rights.SEND | Rights.GRANT | Rights.COPY | Rights.TRANSFER,
    "pipe read end": Rights.READ | Rights.COPY | Rights.TRANSFER,
    "pipe write end": Rights.WRITE | Rights.COPY | Rights.TRANSFER,  # a named pipe (FIFO)
}
"""What lookup hands out by default: use the object, pass it on; never receive, and
never write shared memory (a read-only mapping) unless the registrant says so."""

MAX_ENTRIES = 1024
MAX_WAITERS = 1024
"""Bounds that keep the name server's own capability table (4096) from filling up."""
MAX_WAITERS_PER_UID = 256
"""So that one user's waiting lookups cannot take every place from the others."""

REGISTRABLE = typing.get_args(Cap)  # what a process can inherit: never a one-shot reply cap
Carried = Cap | MintOf

LOOKED_UP = p.OK_BYTES
"""A lookup's answer is the capability it carries; the entry is for watch and list."""


class Refused(Exception):
    """A request the name server answers with an Error."""

    def __init__(self, status: Status, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Record:
    name: str
    cap: Cap  # the name server's copy (a child of the stored one, if kept: store.py)
    kind: str
    perm: Perm
    rights: int
    pid: int
    conn: int  # the registrant's kernel connection id
    served: int = 0
    registered_ns: int = field(default_factory=time.monotonic_ns)
    serial: int = 0  # its message in the store (0: not kept)

    def wire(self) -> p.Entry:
        u, g, m = self.perm
        return p.Entry(self.name, self.kind, u, g, m, self.rights, self.pid, self.served,
                       self.registered_ns)  # fmt: skip


@dataclass
class Waiter:
    msg: Message
    req: p.Lookup | p.Watch
    deadline: int  # -1 forever
    badge: int  # of the kernel's message if the call ends unanswered (CALL_MONITOR)
    uid: int


@dataclass
class Signaller:
    """A Notify request armed: `cap` (a notification) gets `bits` when `name` is
    registered (present) or gone; the name server holds `cap` until then."""

    name: str
    present: bool
    bits: int
    cap: NotificationCap | None  # None while it is in the store (`serial`)
    uid: int
    gid: int
    conn: int  # the requester's connection: its end drops this
    serial: int = 0


@dataclass(slots=True)
class Reply:
    """What to answer a call with (a response, or one already encoded); `caps` move to
    the caller."""

    msg: Message
    resp: p.Ok | p.Listing | p.Error | bytes
    caps: list[Carried] = field(default_factory=list)


class NameServer:
    def __init__(self, k: Kernel, ep: EndpointCap, store: QueueCap | None = None) -> None:
        self.k = k
        self.ep = ep
        self.store = Store(store)
        self.entries: dict[str, Record] = {}
        self.waiters: dict[str, list[Waiter]] = {}
        self.monitored: dict[int, int] = {}  # registrant connection id -> exit badge
        self.exit_badges: dict[int, int] = {}  # exit badge -> connection id
        self.waiting_calls: dict[int, Waiter] = {}  # call-monitor badge -> waiter
        self.waits_by_uid: collections.Counter[int] = collections.Counter()  # + signallers
        self.signallers: dict[str, list[Signaller]] = {}
        self.signalling = 0  # armed signallers, counted with waiting calls (MAX_WAITERS)
        # Badges never repeat, not even across a restart of the name server: a client
        # badge must stay unique to one lookup, and a monitor set by the previous
        # instance may still fire into this one. Counting up from the start time (ns)
        # does both, since no instance issues a badge per nanosecond.
        start = time.monotonic_ns()
        self._badges = itertools.count(start)  # client badges
        self._exit_badges = itertools.count(start)  # monitor badges (exit, given-up call)

    # ------------------------------------------------------------ the loop

    def serve(self) -> None:
        """Answer requests until the kernel goes away."""
        self.restore()
        pending: Reply | None = None
        while True:
            try:
                msg = self._next(pending)
            except CallTimeoutError:
                msg = None
            except PeerClosedError as e:
                if e.status == Status.CALLER_GONE and pending is not None:
                    self._close(pending.caps)  # the caller went away: keep serving
                    pending = None
                    continue
                log.info("name server: %s; exiting", e)
                return
            pending = None
            if self.waiters:
                self._expire_waiters()
            if msg is not None:
                pending = self.handle(msg)

    def _next(self, pending: Reply | None) -> Message:
        timeout = self._recv_timeout() if self.waiters else None
        if pending is None:
            return self.ep.recv(timeout=timeout)
        resp = pending.resp
        data = resp if isinstance(resp, bytes) else p.encode(resp)
        try:
            return self.ep.reply_recv(pending.msg, data, timeout=timeout, caps=pending.caps)
        except IPCError as e:
            if not e.reply_kept:
                raise
        # Refused before delivery (e.g. the caller's table is full): say why, plainly.
        self._close(pending.caps)
        full = "the reply could not carry the capability: your capability table is full"
        self._answer(pending.msg, p.Error(Status.NO_RESOURCES, full))
        return self.ep.recv(timeout=timeout)

    def _recv_timeout(self) -> float | None:
        deadlines = [w.deadline for w in self.waiting_calls.values() if w.deadline > 0]
        if not deadlines:
            return None
        return max(0.0, (min(deadlines) - time.monotonic_ns()) / 1e9)

    def _answer(
        self,
        msg: Message,
        resp: p.Ok | p.Listing | p.Error | bytes,
        caps: list[Carried] | None = None,
    ) -> None:
        """Answer a call other than the one in hand (waiters); a gone caller is fine."""
        caps = caps or []
        try:
            msg.reply(resp if isinstance(resp, bytes) else p.encode(resp), caps=caps)
        except IPCError:
            self._close(caps)

    def _close(self, caps: list[Carried]) -> None:
        for cap in caps:
            if isinstance(cap, MintOf):
                continue  # never made: the kernel mints it only on delivery
            try:
                cap.close()
            except IPCError:
                pass

    # ------------------------------------------------------------ requests

    def handle(self, msg: Message) -> Reply | None:
        if msg.from_kernel:
            self._notice(msg.badge)
            return None
        if not msg.is_call:  # a plain send cannot be answered: drop what it carried
            self._close(msg.caps)
            return None
        try:
            req = p.decode_request(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            self._close(msg.caps)
            return Reply(msg, p.Error(Status.INVALID_ARGS, f"malformed request: {e}"))
        if type(req) is p.Lookup and not msg._c.caps:  # the hot path, flat (issue #4)
            rec = self.entries.get(req.name)
            c = msg._c
            if rec is not None and allowed(rec.perm, c.uid, c.gid, READ):
                return self._minted(msg, rec)
        try:  # everything else, refusals and waits included
            return self._dispatch(msg, req)
        except Refused as r:
            status, why = r.status, r.message
        except IPCError as e:  # the kernel refused something on the caller's behalf
            status, why = e.status, str(e)
        except Exception:  # a bug here must not end the name server for everyone
            log.exception("internal error handling %r", req)
            status, why = Status.INVALID_ARGS, "internal name server error (logged)"
        self._close(msg.caps)
        return Reply(msg, p.Error(status, why))

    def _dispatch(self, msg: Message, req: p.Request) -> Reply | None:
        if not isinstance(req, p.Register | p.Notify) and msg.caps:
            verb = type(req).__name__.lower()
            raise Refused(Status.INVALID_ARGS, f"a {verb} request carries no capabilities")
        if isinstance(req, p.Lookup):  # first: the hot path; it checks the name itself
            return self._lookup(msg, req)
        if isinstance(req, p.List):
            return self._list(msg, req)
        _check_name(req.name)
        if isinstance(req, p.Register):
            return self._register(msg, req)
        if isinstance(req, p.Watch):
            return self._watch(msg, req)
        if isinstance(req, p.Notify):
            return self._notify(msg, req)
        return self._unregister(msg, req)

    def _register(self, msg: Message, req: p.Register) -> Reply:
        cap = self._registered_cap(msg)
        info = cap.info()
        if info.badge:
            raise Refused(Status.INVALID_ARGS, "register an unbadged capability: "
                          "lookup gives each client its own badge")  # fmt: skip
        rights = HANDOUT_RIGHTS[info.kind] if req.rights is None else req.rights
        if not Rights.COPY & info.rights or rights & ~info.rights:
            raise Refused(Status.ACCESS_DENIED, f"the capability's rights ({info.rights!r}) "
                          f"cannot give what lookup hands out ({Rights(rights)!r}) "
                          "and COPY")  # fmt: skip
        pid, uid, gid = msg.sender
        old = self.entries.get(req.name)
        if old is not None:
            self._may_take(old, req, msg)
        if not 0 <= req.mode <= 0o777:
            raise Refused(Status.INVALID_ARGS, f"mode {req.mode:#o} is not in 0o000..0o777")
        if old is None and len(self.entries) >= MAX_ENTRIES:
            raise Refused(Status.NO_RESOURCES, f"the name server holds {MAX_ENTRIES} entries")
        self._monitor(msg)  # raises if the registrant is already gone
        if old is not None:
            self._drop(old, revoke=False, wake=False)  # replaced, never absent
        perm = Perm(uid, gid, req.mode)
        rec = Record(req.name, cap, info.kind, perm, rights, pid, msg.sender_id)
        self._keep(rec, cap)
        self.entries[req.name] = rec
        again = old is not None and old.conn == rec.conn  # a re-register is routine: debug
        level = logging.DEBUG if again else logging.INFO
        log.log(level, "registered %r for pid %d uid %d (mode %#o)", req.name, pid, uid, req.mode)
        self._wake(req.name)
        return Reply(msg, p.Ok(rec.wire()))

    def _registered_cap(self, msg: Message) -> Cap:
        caps = msg.caps
        if len(caps) != 1:
            n = len(caps)
            raise Refused(Status.INVALID_ARGS, f"register carries one capability, not {n}")
        if not isinstance(caps[0], REGISTRABLE):
            raise Refused(Status.WRONG_TYPE, f"a {caps[0].kind} cannot be registered: only "
                          f"{', '.join(HANDOUT_RIGHTS)}")  # fmt: skip
        cap: Cap = caps[0]
        return cap

    def _may_take(self, old: Record, req: p.Register, msg: Message) -> None:
        if not req.replace:
            raise Refused(Status.ALREADY_EXISTS, f"{req.name!r} is registered by pid {old.pid} "
                          f"(owner uid {old.perm.uid}); replace=True takes it over")  # fmt: skip
        _require(old.perm, msg, WRITE, "replacing", req.name)

    def _monitor(self, msg: Message) -> None:
        """One exit notice per registrant connection, however many names it holds."""
        conn = msg.sender_id
        if conn in self.monitored:
            return
        badge = next(self._exit_badges)
        msg.monitor(self.ep, badge)
        self._watched_by(conn, badge)

    def _watched_by(self, conn: int, badge: int) -> None:
        """The exit notice with `badge` says that connection `conn` ended."""
        self.monitored[conn] = badge
        self.exit_badges[badge] = conn

    def _lookup(self, msg: Message, req: p.Lookup) -> Reply | None:
        rec = self.entries.get(req.name)
        if rec is None:
            _check_name(req.name)  # a registered name passed it already
            if req.deadline == 0:
                raise Refused(Status.NOT_FOUND, f"no entry named {req.name!r}")
            self._wait(msg, req)
            return None
        return self._hand_out(msg, rec)

    def _hand_out(self, msg: Message, rec: Record) -> Reply:
        _require(rec.perm, msg, READ, "looking up", rec.name)
        return self._minted(msg, rec)

    def _minted(self, msg: Message, rec: Record) -> Reply:
        """A lookup's answer: a child of the entry's capability with its own badge."""
        rec.served += 1
        # Minted by the kernel as the reply travels: no CAP_MINT round trip first.
        return Reply(msg, LOOKED_UP, [MintOf(rec.cap, rec.rights, next(self._badges))])

    def _watch(self, msg: Message, req: p.Watch) -> Reply | None:
        rec = self.entries.get(req.name)
        if (rec is not None) != req.present:
            if req.deadline == 0:
                state = "registered" if rec is not None else "not registered"
                raise Refused(Status.TIMED_OUT, f"{req.name!r} is {state}")
            self._wait(msg, req)
            return None
        if rec is None:
            return Reply(msg, p.Ok(None))
        _require(rec.perm, msg, READ, "watching", rec.name)
        return Reply(msg, p.Ok(rec.wire()))

    def _notify(self, msg: Message, req: p.Notify) -> Reply:
        """Arm a one-shot signal for `req.name` (DESIGN §4: "name appeared" arrives
        as a notification's bits, as the kernel's own events do)."""
        caps = msg.caps
        if len(caps) != 1 or not isinstance(caps[0], NotificationCap):
            raise Refused(Status.INVALID_ARGS, "notify carries one notification capability")
        if not 0 < req.bits < 1 << 64:
            raise Refused(Status.INVALID_ARGS, f"bits are a non-zero 64-bit mask, not {req.bits}")
        rec = self.entries.get(req.name)
        if rec is not None:
            _require(rec.perm, msg, READ, "watching", rec.name)
        _, uid, gid = msg.sender
        self._check_room(uid)
        s = Signaller(req.name, req.present, req.bits, caps[0], uid, gid, msg.sender_id)
        if (rec is not None) == req.present:
            self._fire(s)  # so it is already
        else:
            self._monitor(msg)  # its end drops what it armed
            self._arm(s)
        return Reply(msg, p.Ok(None))

    def _arm(self, s: Signaller) -> None:
        self.signallers.setdefault(s.name, []).append(s)
        self.signalling += 1
        self.waits_by_uid[s.uid] += 1
        if s.cap is not None and self.store.can_hold(s.cap):
            badge = self.monitored.get(s.conn, 0)
            armed = Armed(s.name, s.present, s.bits, s.uid, s.gid, s.conn, badge)
            s.serial = self.store.keep(armed, s.cap)
            if s.serial:
                s.cap = None  # moved into the store

    def _signaller_cap(self, s: Signaller) -> NotificationCap | None:
        """The notification `s` signals, out of the store if it is there."""
        if s.serial:
            cap = self.store.take(s.serial)
            s.serial = 0
            return cap if isinstance(cap, NotificationCap) else None
        return s.cap

    def _fire(self, s: Signaller) -> None:
        cap = self._signaller_cap(s)
        if cap is None:
            return  # revoked while stored: nobody to tell
        try:
            cap.signal(s.bits)
        except IPCError:
            pass  # its notification is gone (revoked, destroyed): nobody to tell
        self._close([cap])

    def _signal_changes(self, name: str) -> None:
        """`name` was registered or dropped: fire the signallers it satisfies (a
        registered entry only for those who may read it)."""
        rec = self.entries.get(name)
        keep = []
        for s in self.signallers.pop(name, []):
            due = (rec is not None) == s.present
            if due and rec is not None and not allowed(rec.perm, s.uid, s.gid, READ):
                due = False  # not theirs to know: wait for one they may read
            if due:
                self._unarm(s)
                self._fire(s)
            else:
                keep.append(s)
        if keep:
            self.signallers[name] = keep

    def _unarm(self, s: Signaller) -> None:
        self.signalling -= 1
        self.waits_by_uid[s.uid] -= 1
        if not self.waits_by_uid[s.uid]:
            del self.waits_by_uid[s.uid]

    def _unregister(self, msg: Message, req: p.Unregister) -> Reply:
        rec = self.entries.get(req.name)
        if rec is None:
            raise Refused(Status.NOT_FOUND, f"no entry named {req.name!r}")
        _require(rec.perm, msg, WRITE, "unregistering", req.name)
        self._drop(rec, revoke=req.revoke)
        return Reply(msg, p.Ok(None))

    def _list(self, msg: Message, req: p.List) -> Reply:
        if len(req.prefix) > p.MAX_NAME:
            raise Refused(Status.INVALID_ARGS, f"a prefix has at most {p.MAX_NAME} characters")
        _, uid, gid = msg.sender
        out = [
            r.wire()
            for name, r in sorted(self.entries.items())
            if name.startswith(req.prefix) and allowed(r.perm, uid, gid, READ)
        ]
        return Reply(msg, p.Listing(out))

    # ------------------------------------------------------------ waiting

    def _wait(self, msg: Message, req: p.Lookup | p.Watch) -> None:
        """Keep the call until the name appears, its deadline passes, or the kernel
        says the caller gave up (timed out, cancelled, died): no place is held for a
        call that no longer needs an answer."""
        uid = msg.sender.uid
        self._check_room(uid)
        w = Waiter(msg, req, req.deadline, next(self._exit_badges), uid)
        msg.monitor_call(self.ep, w.badge)
        self.waiting_calls[w.badge] = w
        self.waits_by_uid[uid] += 1
        self.waiters.setdefault(req.name, []).append(w)

    def _check_room(self, uid: int) -> None:
        if len(self.waiting_calls) + self.signalling >= MAX_WAITERS:
            raise Refused(Status.NO_RESOURCES, f"{MAX_WAITERS} lookups, watches and "
                          "notifies already waiting")  # fmt: skip
        if self.waits_by_uid[uid] >= MAX_WAITERS_PER_UID:
            many = f"{MAX_WAITERS_PER_UID} lookups, watches and notifies waiting"
            raise Refused(Status.NO_RESOURCES, f"uid {uid} already has {many}")

    def _forget(self, w: Waiter) -> None:
        """`w` is answered, expired or given up: its place is free again."""
        if self.waiting_calls.pop(w.badge, None) is not None:
            self.waits_by_uid[w.uid] -= 1
            if not self.waits_by_uid[w.uid]:
                del self.waits_by_uid[w.uid]

    def _wake(self, name: str) -> None:
        """`name` was registered or dropped: answer whoever waited for that."""
        if name in self.signallers:
            self._signal_changes(name)
        ws = self.waiters.pop(name, [])
        keep = []
        for w in ws:
            present = name in self.entries
            if isinstance(w.req, p.Watch) and w.req.present != present:
                keep.append(w)
            elif isinstance(w.req, p.Lookup) and not present:
                keep.append(w)
            else:
                self._answer_waiter(w)
        if keep:
            self.waiters[name] = keep

    def _answer_waiter(self, w: Waiter) -> None:
        self._forget(w)
        try:
            if isinstance(w.req, p.Lookup):
                r = self._hand_out(w.msg, self.entries[w.req.name])
            else:
                r = self._watched(w)
        except Refused as e:
            r = Reply(w.msg, p.Error(e.status, e.message))
        except IPCError as e:
            r = Reply(w.msg, p.Error(e.status, str(e)))
        self._answer(r.msg, r.resp, r.caps)

    def _watched(self, w: Waiter) -> Reply:
        rec = self.entries.get(w.req.name)
        if rec is None:
            return Reply(w.msg, p.Ok(None))
        _require(rec.perm, w.msg, READ, "watching", rec.name)
        return Reply(w.msg, p.Ok(rec.wire()))

    def _expire_waiters(self) -> None:
        now = time.monotonic_ns()
        for name, ws in list(self.waiters.items()):
            due = [w for w in ws if 0 < w.deadline <= now]
            if not due:
                continue
            rest = [w for w in ws if w not in due]
            if rest:
                self.waiters[name] = rest
            else:
                del self.waiters[name]
            for w in due:
                self._forget(w)
                present = isinstance(w.req, p.Lookup) or w.req.present
                what = f"{name!r} was not {'' if present else 'un'}registered before the deadline"
                self._answer(w.msg, p.Error(Status.TIMED_OUT, what))

    # ------------------------------------------------------------ endings

    def _notice(self, badge: int) -> None:
        """A kernel message: a waiting call was given up, or a registrant (or a
        requester with signallers armed) ended."""
        w = self.waiting_calls.get(badge)
        if w is None:
            self._registrant_gone(badge)
            return
        self._forget(w)
        ws = [x for x in self.waiters.get(w.req.name, []) if x is not w]
        if ws:
            self.waiters[w.req.name] = ws
        else:
            self.waiters.pop(w.req.name, None)
        self._answer(w.msg, p.Error(Status.CALLER_GONE, "given up"))  # frees the reply cap

    def _registrant_gone(self, badge: int) -> None:
        """A monitored connection ended: drop its entries, revoking what lookup
        handed out for them, and the signallers it armed."""
        conn = self.exit_badges.pop(badge, None)
        if conn is None:
            return
        del self.monitored[conn]
        self._drop_signallers(conn)
        for rec in [r for r in self.entries.values() if r.conn == conn]:
            log.info("registrant of %r (pid %d) ended: dropping it", rec.name, rec.pid)
            self._drop(rec, revoke=True)

    def _drop_signallers(self, conn: int) -> None:
        """The connection that armed them ended: nobody is left to tell."""
        for name, ss in list(self.signallers.items()):
            gone = [s for s in ss if s.conn == conn]
            for s in gone:
                self._unarm(s)
            self._close([c for s in gone if (c := self._signaller_cap(s)) is not None])
            if len(gone) == len(ss):
                del self.signallers[name]
            elif gone:
                self.signallers[name] = [s for s in ss if s.conn != conn]

    def _drop(self, rec: Record, *, revoke: bool, wake: bool = True) -> None:
        """Forget `rec`; with revoke, delete every capability lookup minted from it
        (through the stored one, by this name server or one before it)."""
        if self.entries.get(rec.name) is rec:
            del self.entries[rec.name]
        stored = self.store.take(rec.serial)
        left: list[Cap | None] = [rec.cap, stored]
        if revoke:
            try:
                (stored or rec.cap).revoke()
                if stored is not None:
                    left = [stored]  # our copy was among its descendants: gone
            except IPCError as e:  # e.g. registered without MANAGE: nothing to revoke with
                log.warning("dropping %r: %s", rec.name, e)
        for cap in left:
            try:
                if cap is not None:
                    cap.close()
            except IPCError as e:
                log.warning("dropping %r: %s", rec.name, e)
        if wake:
            self._wake(rec.name)

    # ------------------------------------------------------------ the store

    def _keep(self, rec: Record, cap: Cap) -> None:
        """Move the registered `cap` into the store; `rec` works with a copy, a child
        of it, so that revoking the stored one reaches every lookup's."""
        rec.cap, rec.serial = cap, 0
        if not self.store.can_hold(cap):
            return
        u, g, m = rec.perm
        badge = self.monitored.get(rec.conn, 0)
        kept = Kept(rec.name, rec.kind, u, g, m, rec.rights, rec.pid, rec.conn, badge,
                    rec.registered_ns)  # fmt: skip
        try:
            work = cap.copy()
        except IPCError as e:  # our table is full: keep it in memory, as without a store
            log.warning("%r kept in memory only: %s", rec.name, e)
            return
        rec.serial = self.store.keep(kept, cap)
        if rec.serial:
            rec.cap = work
        else:
            work.close()

    def restore(self) -> None:
        """Serve again the entries and notifies an earlier instance kept, but those
        whose process has ended (its exit notice may have gone with that instance)."""
        armed: list[Signaller] = []
        # All out first: keeping an entry again puts its message back in the queue.
        for item, cap in list(self.store.take_all()):
            if cap is None:  # revoked while stored: nothing left to hand out or signal
                log.info("%r was revoked while no name server ran", item.name)
                continue
            if item.exit_badge:
                self._watched_by(item.conn, item.exit_badge)
            if isinstance(item, Armed):
                if not isinstance(cap, NotificationCap):  # not what _arm() stored
                    self._close([cap])
                    continue
                armed.append(Signaller(item.name, item.present, item.bits, cap, item.uid,
                                       item.gid, item.conn))  # fmt: skip
                continue
            perm = Perm(item.uid, item.gid, item.mode)
            rec = Record(item.name, cap, item.kind, perm, item.rights, item.pid, item.conn,
                         registered_ns=item.registered_ns)  # fmt: skip
            self._keep(rec, cap)
            self.entries[rec.name] = rec
        for s in armed:
            self._arm(s)
        if self.entries or armed:
            log.info("restored %d entries and %d notifies", len(self.entries), len(armed))
            self._forget_ended_connections()
        for name in list(self.signallers):  # any that came due as the earlier one died
            self._signal_changes(name)

    def _forget_ended_connections(self) -> None:
        """Drop the entries and notifies of connections that ended unheard."""
        try:
            status = self.k.status()
        except IPCError as e:
            log.warning("cannot check the restored registrants: %s", e)
            return
        if status.hidden:  # not the kernel's uid: it cannot see every process
            return
        live = {proc.conn for proc in status.processes}
        for conn, badge in list(self.monitored.items()):
            if conn not in live:
                self._registrant_gone(badge)


def _require(perm: Perm, msg: Message, want: int, verb: str, name: str) -> None:
    """Refuse with ACCESS_DENIED, naming the missing permission, unless the caller's
    kernel-verified uid/gid may do `want` (READ or WRITE) on entry `name` with `perm`.
    (The refusal's text is formatted only when refused.)"""
    c = msg._c  # the kernel's credentials, without building msg.sender's tuple
    uid, gid = c.uid, c.gid
    if not allowed(perm, uid, gid, want):
        what = f"{verb} {name!r}"
        raise Refused(Status.ACCESS_DENIED, denial(perm, uid, gid, want, what) or what)


def _check_name(name: str) -> None:
    size = len(name.encode("utf-8", "surrogatepass"))
    if not 0 < size <= p.MAX_NAME:
        raise Refused(Status.INVALID_ARGS, f"a name has 1 to {p.MAX_NAME} bytes, not {size}")
    if not name.isprintable():
        raise Refused(Status.INVALID_ARGS, f"a name has only printable characters: {name!r}")
