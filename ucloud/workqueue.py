"""A keyed work queue, as Kubernetes controllers use: a key waits at most once in the queue,
is never processed by two workers at once, and a key added while it is being processed is
processed again afterwards, so no change is lost and no object is handled concurrently.

Retries live here, not in handlers: a handler that raises (Retry, or any error) has its key put
back after the key's next back-off delay (ucloud.retry); a handler that returns has its
failures forgotten."""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections.abc import Callable, Iterable

from ucloud.retry import Backoff, Retry

log = logging.getLogger(__name__)


class WorkQueue:
    def __init__(self, backoff: Backoff | None = None) -> None:
        self.backoff = backoff or Backoff(0.5, 30.0)
        self._failures: dict[str, int] = {}
        self._cond = threading.Condition()
        self._queue: list[str] = []
        self._queued: set[str] = set()
        self._active: set[str] = set()
        self._again: set[str] = set()  # added while active
        self._later: list[tuple[float, str]] = []  # (when, key) heap
        self._closed = False

    def add(self, key: str) -> None:
        with self._cond:
            if key in self._active:
                self._again.add(key)
            elif key not in self._queued:
                self._queued.add(key)
                self._queue.append(key)
                self._cond.notify()

    def add_all(self, keys: Iterable[str]) -> None:
        for key in keys:
            self.add(key)

    def add_after(self, key: str, delay: float) -> None:
        with self._cond:
            heapq.heappush(self._later, (time.monotonic() + delay, key))
            self._cond.notify()

    def add_rate_limited(self, key: str) -> float:
        """Add ``key`` after its next back-off delay (one more failure in a row); the delay."""
        with self._cond:
            failures = self._failures[key] = self._failures.get(key, 0) + 1
        delay = self.backoff.delay(failures)
        self.add_after(key, delay)
        return delay

    def forget(self, key: str) -> None:
        """``key`` succeeded: its next failure backs off from the start."""
        with self._cond:
            self._failures.pop(key, None)

    def failures(self, key: str) -> int:
        """How many times in a row ``key`` has failed."""
        with self._cond:
            return self._failures.get(key, 0)

    def get(self) -> str | None:
        """The next key to process (mark it done()), or None once the queue is closed."""
        with self._cond:
            while True:
                if self._closed:
                    return None
                now = time.monotonic()
                while self._later and self._later[0][0] <= now:
                    _, key = heapq.heappop(self._later)
                    if key in self._active:
                        self._again.add(key)
                    elif key not in self._queued:
                        self._queued.add(key)
                        self._queue.append(key)
                if self._queue:
                    key = self._queue.pop(0)
                    self._queued.discard(key)
                    self._active.add(key)
                    return key
                timeout = self._later[0][0] - now if self._later else None
                self._cond.wait(timeout)

    def done(self, key: str) -> None:
        with self._cond:
            self._active.discard(key)
            if key in self._again:
                self._again.discard(key)
                self._queued.add(key)
                self._queue.append(key)
                self._cond.notify()

    def handle(self, key: str, handle: Callable[[str], None]) -> None:
        """Call ``handle(key)`` and apply the retry policy to what it raises."""
        try:
            handle(key)
        except Retry as e:
            if e.after is None:
                delay = self.add_rate_limited(key)
            else:
                self.add_after(key, e.after)
                delay = e.after
            log.info("%s: %s; again in %.1f s", key, e, delay)
        except Exception:  # a worker thread must not die
            delay = self.add_rate_limited(key)
            log.exception("handling %s failed; again in %.1f s", key, delay)
        else:
            self.forget(key)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def run_workers(
        self, count: int, handle: Callable[[str], None], name: str
    ) -> list[threading.Thread]:
        """Start ``count`` threads that call ``handle(key)`` for each key until close(); a
        handler that raises has its key retried (see the module's docstring)."""

        def work() -> None:
            while (key := self.get()) is not None:
                try:
                    self.handle(key, handle)
                finally:
                    self.done(key)

        threads = [
            threading.Thread(target=work, name=f"{name}-{i}", daemon=True) for i in range(count)
        ]
        for t in threads:
            t.start()
        return threads
