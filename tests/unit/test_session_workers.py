"""kernel/_session_workers.py Slots: the bound on a Service's handlers at once.
(GroupWorkers is tested across processes in tests/integration/test_service.py.)"""

from __future__ import annotations

import threading
import time

from kernel._session_workers import Slots


def test_slots_let_at_most_n_threads_in_and_every_waiter_through() -> None:
    slots, lock = Slots(2), threading.Lock()
    inside, most = [0], [0]

    def work() -> None:
        for _ in range(30):
            slots.take()
            with lock:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
            time.sleep(0.001)  # others queue for a slot meanwhile
            with lock:
                inside[0] -= 1
            slots.give()

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)  # no waiter missed its wake-up
    assert most[0] == 2
    for _ in range(2):  # and both slots are free again
        slots.take()
