"""The derivation tree as the fuzz tests model it: nodes with `parent`, `children`
and `alive`, and the two ways one leaves the tree (DESIGN §5)."""

from __future__ import annotations

from typing import Any


def descendants(node: Any) -> list[Any]:
    """Every node derived from `node`, at any depth (not `node` itself)."""
    out, stack = [], list(node.children)
    while stack:
        n = stack.pop()
        out.append(n)
        stack.extend(n.children)
    return out


def unlink(node: Any) -> None:
    """Closing: the node leaves the tree; its children move up to its parent."""
    parent = node.parent
    if parent is not None:
        parent.children.remove(node)
        parent.children.extend(node.children)
    for child in node.children:
        child.parent = parent
    node.children, node.parent, node.alive = [], None, False
