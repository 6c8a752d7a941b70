"""Leader election on an etcd lease: one active daemon, the others on standby.

The leader's key is created in a transaction only if absent, bound to the leader's lease. When
the leader dies its lease expires, the key goes, and a standby's next attempt wins. The leader
hands every write a Guard on its key's create revision, so a leader that was deposed without
knowing it (a long pause) cannot write anymore.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading

from ucloud.retry import Backoff
from ucloud.store import Guard, KeepAlive, Store, Unavailable

log = logging.getLogger(__name__)


class Election:
    def __init__(self, store: Store, name: str, ttl: int) -> None:
        self.store = store
        self.name = name
        self.ttl = ttl
        self.identity = json.dumps({"host": socket.gethostname(), "pid": os.getpid()})
        self.lost = threading.Event()
        self._keepalive: KeepAlive | None = None

    def campaign(self, stop: threading.Event) -> Guard | None:
        """Block until this process leads (returning the Guard for its writes) or ``stop``."""
        announced = False
        backoff, failures = Backoff.of(self.store.settings), 0
        while not stop.is_set():
            keepalive: KeepAlive | None = None
            try:
                keepalive = self.store.hold_lease(self.ttl, self._on_lost)
                guard = self.store.campaign(self.name, self.identity, keepalive.lease)
                if guard is not None:
                    self.lost.clear()
                    self._keepalive = keepalive
                    log.info("leading (%s)", guard.key)
                    return guard
                keepalive.stop(revoke=True)
                leader = self.store.leader(self.name)
                if leader is None:
                    continue  # the leader just left
                identity, revision = leader
                if not announced:
                    log.info("standing by; leader is %s", identity)
                    announced = True
                # The key disappears within the leader's lease TTL after it dies.
                self.store.wait_deleted(self.store.election_key(self.name), revision, self.ttl)
            except Unavailable:
                if keepalive is not None and keepalive is not self._keepalive:
                    keepalive.stop()
                failures += 1
                stop.wait(backoff.delay(failures))
        return None

    def resign(self) -> None:
        if self._keepalive is not None:
            self._keepalive.stop(revoke=True)
            self._keepalive = None

    def _on_lost(self) -> None:
        log.error("lost leadership (%s): lease expired", self.store.election_key(self.name))
        self.lost.set()
