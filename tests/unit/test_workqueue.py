"""WorkQueue (ucloud/workqueue.py): a key waits at most once, is never handled by two workers at
once, and a key added while it is handled is handled again afterwards."""

from __future__ import annotations

import threading
import time
from collections import Counter

from ucloud.retry import Backoff, Retry
from ucloud.workqueue import WorkQueue


def nothing_else_waits(q: WorkQueue) -> bool:
    """True if no key is ready to be handed out: a probe added now comes out first (keys
    come out in the order they were added; get() would block on an empty queue)."""
    q.add("probe")
    first = q.get()
    q.done("probe")
    return first == "probe"


def test_keys_come_out_in_order_and_a_waiting_key_waits_once():
    q = WorkQueue()
    for key in ["a", "b", "a", "c", "b"]:
        q.add(key)
    assert [q.get(), q.get(), q.get()] == ["a", "b", "c"]
    assert nothing_else_waits(q)


def test_a_key_being_handled_is_not_handed_out_again_until_done():
    q = WorkQueue()
    q.add("a")
    assert q.get() == "a"
    q.add("a")  # changed while a worker handles it
    q.add("b")
    assert q.get() == "b"  # another worker gets b, not a second a
    assert nothing_else_waits(q)  # a is still being handled
    q.done("a")
    assert q.get() == "a"  # handled again, after
    q.done("a")
    assert nothing_else_waits(q)


def test_a_key_handled_without_changes_is_not_handed_out_again():
    q = WorkQueue()
    q.add("a")
    assert q.get() == "a"
    q.done("a")
    assert nothing_else_waits(q)


def test_add_after_hands_the_key_out_after_the_delay():
    q = WorkQueue()
    start = time.monotonic()
    q.add_after("slow", 0.2)
    q.add_after("fast", 0.05)
    assert q.get() == "fast"
    assert q.get() == "slow"
    assert time.monotonic() - start >= 0.2


def test_add_after_of_a_key_being_handled_comes_after_done():
    q = WorkQueue()
    q.add("a")
    assert q.get() == "a"
    q.add_after("a", 0.01)
    time.sleep(0.05)  # due, but a is being handled
    assert nothing_else_waits(q)
    q.done("a")
    assert q.get() == "a"


def test_add_after_of_a_key_already_waiting_does_not_queue_it_twice():
    q = WorkQueue()
    q.add("a")
    q.add_after("a", 0.01)
    time.sleep(0.05)
    assert q.get() == "a"
    q.done("a")
    assert nothing_else_waits(q)


def test_close_wakes_a_waiting_worker_with_none():
    q = WorkQueue()
    out: list[str | None] = []
    t = threading.Thread(target=lambda: out.append(q.get()), daemon=True)
    t.start()
    time.sleep(0.05)
    q.close()
    t.join(2)
    assert out == [None]


def test_workers_never_handle_one_key_at_once_and_miss_no_change():
    q = WorkQueue()
    lock = threading.Lock()
    active: set[str] = set()
    overlaps: list[str] = []
    handled_after: Counter[str] = Counter()  # handlings that began after the last add
    last_add: dict[str, float] = {}

    def handle(key: str) -> None:
        began = time.monotonic()
        with lock:
            if key in active:
                overlaps.append(key)
            active.add(key)
        time.sleep(0.002)
        with lock:
            active.discard(key)
            if began > last_add[key]:
                handled_after[key] += 1

    workers = q.run_workers(4, handle, "test")
    keys = ["a", "b", "c"]
    for _ in range(200):
        for key in keys:
            with lock:
                last_add[key] = time.monotonic()
            q.add(key)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not all(handled_after[k] for k in keys):
        time.sleep(0.01)
    q.close()
    for w in workers:
        w.join(2)
    assert overlaps == []
    assert all(handled_after[k] >= 1 for k in keys)  # every last change was handled
    assert not any(w.is_alive() for w in workers)  # close() ended them


# --- retries (per-key back-off) ----------------------------------------------------------------


def test_back_off_doubles_per_failure_in_a_row_up_to_the_maximum():
    q = WorkQueue(Backoff(0.01, 0.04))
    assert [q.add_rate_limited("a") for _ in range(4)] == [0.01, 0.02, 0.04, 0.04]
    assert q.failures("a") == 4
    assert q.add_rate_limited("b") == 0.01  # per key
    q.forget("a")
    assert q.add_rate_limited("a") == 0.01


def test_a_failed_handling_comes_back_after_its_delay_and_a_success_forgets_it():
    q = WorkQueue(Backoff(0.05, 1.0))
    outcomes = iter([RuntimeError("libvirtd hiccup"), Retry("not yet"), None])

    def handle(key: str) -> None:
        outcome = next(outcomes)
        if outcome is not None:
            raise outcome

    q.add("a")
    waited = []
    last = time.monotonic()
    for failures_after in (1, 2, 0):
        key = q.get()
        waited.append(time.monotonic() - last)
        last = time.monotonic()
        q.handle(key, handle)
        q.done(key)
        assert q.failures("a") == failures_after
    assert waited[1] >= 0.05  # after the first failure
    assert waited[2] >= 0.1  # after the second in a row
    assert nothing_else_waits(q)  # the success is not retried


def test_retry_with_a_delay_of_its_own_comes_back_after_that_delay():
    q = WorkQueue(Backoff(10.0, 10.0))

    def handle(key: str) -> None:
        raise Retry("the lease may run out", after=0.05)

    q.add("a")
    q.handle(q.get(), handle)
    q.done("a")
    start = time.monotonic()
    assert q.get() == "a"
    assert 0.04 <= time.monotonic() - start < 5
