"""The per-process capability table: slot numbers with generation bits."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    precondition,
    rule,
)

from capabilities import (
    DEFAULT_ENDPOINT_RIGHTS,
    DEFAULT_NOTIFICATION_RIGHTS,
    DEFAULT_REPLY_RIGHTS,
    Capability,
    CapTable,
    Rights,
    SlotError,
)
from capabilities.table import DEFAULT_LIMIT, INDEX_BITS, INDEX_MASK

SLOTS = st.integers(min_value=0, max_value=2**32 - 1)


def cap(name: str = "obj", rights: Rights = Rights.SEND, badge: int = 0) -> Capability:
    return Capability(name, rights, badge)


def test_insert_then_lookup_returns_the_capability():
    t = CapTable()
    a, b = cap("a", Rights.SEND, 7), cap("b", Rights.WAIT)
    sa, sb = t.insert(a), t.insert(b)
    assert sa != sb
    assert t.lookup(sa) is a
    assert t.lookup(sb) is b
    assert (a.slot, b.slot) == (sa, sb)
    assert (a.obj, a.rights, a.badge) == ("a", Rights.SEND, 7)
    assert len(t) == 2
    assert set(map(id, t)) == {id(a), id(b)}


def test_slots_are_never_zero_and_carry_a_generation():
    t = CapTable()
    for _ in range(100):
        s = t.insert(cap())
        assert s != 0
        assert s & INDEX_MASK != 0
        assert s >> INDEX_BITS != 0
        assert 0 < s < 2**32


def test_slot_zero_never_resolves():
    t = CapTable()
    t.insert(cap())
    with pytest.raises(SlotError, match="names no capability"):
        t.lookup(0)


def test_remove_returns_the_capability_and_the_slot_stops_resolving():
    t = CapTable()
    a = cap("a")
    s = t.insert(a)
    assert t.remove(s) is a
    assert len(t) == 0
    with pytest.raises(SlotError, match="was closed") as exc:
        t.lookup(s)
    assert exc.value.limit is False
    assert f"{s:#x}" in str(exc.value)
    assert exc.value.reason == str(exc.value)


def test_removing_twice_raises():
    t = CapTable()
    s = t.insert(cap())
    t.remove(s)
    with pytest.raises(SlotError, match="was closed"):
        t.remove(s)
    assert len(t) == 0


def test_remove_records_a_custom_reason():
    t = CapTable()
    s = t.insert(cap())
    t.remove(s, why="was transferred to process 7")
    with pytest.raises(SlotError, match="was transferred to process 7"):
        t.lookup(s)


def test_removed_slot_never_resolves_after_its_index_is_reused():
    t = CapTable()
    old = t.insert(cap("old"))
    t.remove(old)
    new_cap = cap("new")
    new = t.insert(new_cap)
    assert new & INDEX_MASK == old & INDEX_MASK  # same index, reused ...
    assert new != old  # ... with a new generation
    assert t.lookup(new) is new_cap
    with pytest.raises(SlotError, match="was closed"):
        t.lookup(old)
    with pytest.raises(SlotError):
        t.remove(old)
    assert t.lookup(new) is new_cap  # the failed remove did not touch the new occupant
    assert len(t) == 1


def test_stale_slots_of_many_generations_never_resolve():
    t = CapTable()
    stale = []
    for i in range(1000):
        s = t.insert(cap(str(i)))
        t.remove(s)
        stale.append(s)
    live = t.insert(cap("live"))
    assert len({s & INDEX_MASK for s in stale}) == 1  # LIFO free list: one index, reused
    for s in stale:
        with pytest.raises(SlotError):
            t.lookup(s)
    assert t.lookup(live).obj == "live"


def test_stale_slot_never_resolves_even_after_the_generation_counter_wraps():
    # The real generation is 32 bits; a narrow one reaches the wrap in a test's time.
    gen_mask = 0xFFFF
    t = CapTable(gen_mask=gen_mask)
    first = t.insert(cap("first"))
    t.remove(first)
    for _ in range(gen_mask - 1):
        t.remove(t.insert(cap()))
    t.insert(cap("unrelated"))
    try:
        got = t.lookup(first)
    except SlotError:
        return
    raise AssertionError(f"slot {first:#x}, closed long ago, resolves to {got!r}")


@given(slots=st.lists(SLOTS, max_size=50), inserted=st.integers(0, 40), removed=st.integers(0, 40))
@settings(max_examples=200, deadline=None, database=None)
def test_random_slot_numbers_never_resolve_unless_inserted(slots, inserted, removed):
    t = CapTable()
    live = {t.insert(cap(i)): i for i in range(inserted)}
    for s in list(live)[:removed]:
        t.remove(s)
        del live[s]
    for s in slots:
        if s in live:
            assert t.lookup(s).obj == live[s]
        else:
            with pytest.raises(SlotError):
                t.lookup(s)


@given(slot=st.integers(min_value=-(2**70), max_value=2**70))
@settings(max_examples=200, deadline=None, database=None)
def test_out_of_range_slot_numbers_never_resolve(slot):
    t = CapTable()
    live = {t.insert(cap()) for _ in range(5)}
    if slot in live:
        return
    with pytest.raises(SlotError):
        t.lookup(slot)
    with pytest.raises(SlotError):
        t.remove(slot)
    assert len(t) == 5


def test_full_table_raises_a_limit_error_and_leaks_nothing():
    t = CapTable(limit=3)
    slots = [t.insert(cap(i)) for i in range(3)]
    extra = cap("extra")
    for _ in range(5):
        with pytest.raises(SlotError, match="full") as exc:
            t.insert(extra)
        assert exc.value.limit is True
    assert len(t) == 3
    assert extra.slot == 0  # never got a slot
    assert [t.lookup(s).obj for s in slots] == [0, 1, 2]
    t.remove(slots[1])
    s = t.insert(extra)  # room again
    assert t.lookup(s) is extra
    assert len(t) == 3
    with pytest.raises(SlotError) as exc:
        t.insert(cap())
    assert exc.value.limit is True


def test_default_limit_is_enforced():
    t = CapTable()
    for _ in range(DEFAULT_LIMIT):
        t.insert(cap())
    with pytest.raises(SlotError) as exc:
        t.insert(cap())
    assert exc.value.limit is True
    assert len(t) == DEFAULT_LIMIT


def test_largest_limit_uses_every_index():
    t = CapTable(limit=INDEX_MASK)
    slots = [t.insert(cap()) for _ in range(INDEX_MASK)]
    assert {s & INDEX_MASK for s in slots} == set(range(1, INDEX_MASK + 1))
    with pytest.raises(SlotError) as exc:
        t.insert(cap())
    assert exc.value.limit is True


@pytest.mark.parametrize("limit", [0, -1, INDEX_MASK + 1, 2**20])
def test_limit_outside_the_index_space_is_refused(limit):
    with pytest.raises(ValueError):
        CapTable(limit=limit)


def test_clear_returns_everything_and_empties_the_table():
    t = CapTable()
    caps = [cap(i) for i in range(10)]
    slots = [t.insert(c) for c in caps]
    t.remove(slots[3])
    held = t.clear()
    assert {id(c) for c in held} == {id(c) for i, c in enumerate(caps) if i != 3}
    assert len(t) == 0
    assert list(t) == []
    for s in slots:
        with pytest.raises(SlotError):
            t.lookup(s)
    assert t.clear() == []
    s = t.insert(cap("after"))  # still usable
    assert t.lookup(s).obj == "after"


def test_repr_shows_the_slot_in_hex():
    t = CapTable()
    c = cap("ep", Rights.SEND | Rights.RECEIVE, badge=5)
    s = t.insert(c)
    assert f"slot={s:#x}" in repr(c)
    assert "badge=5" in repr(c)


def test_default_rights_are_within_all_rights():
    for rights in (DEFAULT_ENDPOINT_RIGHTS, DEFAULT_NOTIFICATION_RIGHTS, DEFAULT_REPLY_RIGHTS):
        assert rights & Rights.ALL == rights
        assert rights != Rights.NONE
    assert Rights.ALL == sum(r for r in Rights if r not in (Rights.NONE, Rights.ALL))
    assert Rights.TRANSFER in DEFAULT_REPLY_RIGHTS
    assert Rights.RECEIVE not in DEFAULT_REPLY_RIGHTS


class CapTableMachine(RuleBasedStateMachine):
    """The table against a dict model: live slots resolve, every other slot does not."""

    live = Bundle("live")

    def __init__(self) -> None:
        super().__init__()
        self.table = CapTable(limit=8)
        self.model: dict[int, Capability] = {}
        self.closed: dict[int, str] = {}  # slot -> why, latest closure per index only
        self.counter = 0

    @precondition(lambda self: len(self.model) < 8)
    @rule(target=live)
    def insert(self):
        self.counter += 1
        c = cap(self.counter)
        s = self.table.insert(c)
        assert s not in self.model
        assert s not in self.closed  # a closed slot number is never handed out again
        self.model[s] = c
        return s

    @precondition(lambda self: len(self.model) >= 8)
    @rule()
    def insert_when_full(self):
        with pytest.raises(SlotError) as exc:
            self.table.insert(cap())
        assert exc.value.limit

    @rule(s=consumes(live), why=st.sampled_from(["was closed", "was transferred"]))
    def remove(self, s, why):
        assert self.table.remove(s, why) is self.model.pop(s)
        self.closed = {k: v for k, v in self.closed.items() if k & INDEX_MASK != s & INDEX_MASK}
        self.closed[s] = why

    @rule(s=live)
    def lookup_live(self, s):
        assert self.table.lookup(s) is self.model[s]

    @rule(s=SLOTS)
    def lookup_random(self, s):
        if s in self.model:
            assert self.table.lookup(s) is self.model[s]
            return
        with pytest.raises(SlotError) as exc:
            self.table.lookup(s)
        assert not exc.value.limit

    @invariant()
    def closed_slots_say_why(self):
        for s, why in self.closed.items():
            with pytest.raises(SlotError, match=why):
                self.table.lookup(s)

    @invariant()
    def length_matches(self):
        assert len(self.table) == len(self.model)
        assert {id(c) for c in self.table} == {id(c) for c in self.model.values()}


TestCapTableModel = CapTableMachine.TestCase
TestCapTableModel.settings = settings(
    max_examples=100,
    stateful_step_count=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
