"""The one retry policy: exponential back-off, per key in a work queue (Kubernetes' item
exponential failure rate limiter) and per loop for a daemon's start-up and watches.

Handlers do not sleep or count their failures: they raise Retry (or let an error escape), and
the work queue puts the key back after the key's next back-off delay; a success forgets it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from ucloud.config import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Backoff:
    """``initial`` seconds after the first failure, twice that after the second, ... at most
    ``maximum``."""

    initial: float
    maximum: float

    @classmethod
    def of(cls, settings: Settings) -> Backoff:
        return cls(settings.retry_initial, settings.retry_max)

    def delay(self, failures: int) -> float:
        """The wait after the ``failures``-th failure in a row (1 for the first)."""
        return min(self.initial * 2 ** max(failures - 1, 0), self.maximum)


class Retry(Exception):
    """Raised by a work queue handler: handle this key again later, after ``after`` seconds,
    or, if None, after the key's next back-off delay."""

    def __init__(self, reason: str, after: float | None = None) -> None:
        super().__init__(reason)
        self.after = after


def until_done(
    stop: threading.Event,
    what: str,
    action: Callable[[], None],
    backoff: Backoff,
    retry_on: tuple[type[BaseException], ...],
    waiting: Callable[[], None] = lambda: None,
) -> bool:
    """Call ``action`` until it succeeds (True) or ``stop`` is set (False), backing off after
    each of the ``retry_on`` errors; ``waiting`` runs before each wait."""
    failures = 0
    while not stop.is_set():
        try:
            action()
            return True
        except retry_on as e:
            failures += 1
            delay = backoff.delay(failures)
            log.warning("cannot %s yet (%s); trying again in %.1f s", what, e, delay)
            waiting()
            stop.wait(delay)
    return False
