"""The derivation tree (DESIGN §5): derive, unlink with reparenting, descendants."""

from hypothesis import given, settings
from hypothesis import strategies as st

from capabilities.table import Capability, derive, descendants, unlink


def test_descendants_reach_every_depth_but_not_the_root():
    root = Capability("obj", 7)
    a = derive(root, 3, 0)
    b = derive(a, 1, 0)
    c = derive(root, 1, 9)
    assert set(map(id, descendants(root))) == {id(a), id(b), id(c)}
    assert descendants(b) == []
    assert (b.parent, c.badge) == (a, 9)


def test_unlinking_a_middle_node_moves_its_children_up():
    root = Capability("obj", 7)
    middle = derive(root, 3, 0)
    leaf = derive(middle, 1, 0)
    unlink(middle)
    assert leaf.parent is root
    assert root.children == [leaf]
    assert (middle.parent, middle.children) == (None, [])


def test_a_capability_made_without_init_has_no_children_and_unlinks_cleanly():
    reply = Capability.__new__(Capability)  # as the kernel's per-call reply caps are
    assert descendants(reply) == []
    unlink(reply)


@given(st.lists(st.integers(0, 50), max_size=60), st.data())
@settings(max_examples=100, deadline=None)
def test_unlinking_never_loses_a_descendant_of_the_survivors(parents, data):
    nodes = [Capability("obj", 1)]
    for p in parents:
        nodes.append(derive(nodes[p % len(nodes)], 1, 0))
    root = nodes[0]
    doomed = data.draw(st.sets(st.integers(1, max(1, len(nodes) - 1)), max_size=len(nodes)))
    for i in sorted(doomed):
        if i < len(nodes):
            unlink(nodes[i])
    alive = {id(n) for i, n in enumerate(nodes) if i and i not in doomed}
    assert {id(n) for n in descendants(root)} == alive
