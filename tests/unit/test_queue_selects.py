"""The compiled queue's selection rule is abi.queue_selects, the one the client's
stash of cancelled receives uses too: they must never disagree."""

from __future__ import annotations

import itertools

from kernel import abi
from kernel._core.queues import selects

TYPES = [1, 2, 3, 7, abi.MAX_QUEUE_TYPE]
SELECTORS = [0, 1, 2, 3, 7, -1, -2, -3, -7, abi.MAX_QUEUE_TYPE, -abi.MAX_QUEUE_TYPE]
FLAGS = [0, abi.QUEUE_EXCEPT, abi.QUEUE_TRUNCATE, abi.QUEUE_EXCEPT | abi.QUEUE_TRUNCATE]


def test_the_compiled_rule_is_abis_rule() -> None:
    for mtype, selector, flags in itertools.product(TYPES, SELECTORS, FLAGS):
        assert selects(mtype, selector, flags) == abi.queue_selects(mtype, selector, flags), (
            mtype,
            selector,
            flags,
        )
