"""An in-memory copy of one kind of stored object, as controllers keep (Kubernetes' informers).

A Follower delivers Snapshots and Changes on its watch thread; a daemon queues them and applies
them in its own worker thread, so a daemon's state is only ever touched by one thread.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic

from ucloud.store import Change, M, Snapshot, Versioned

# (id, before, after): before is None for a new object, after is None for a deleted one.
Diff = tuple[str, Versioned[M] | None, Versioned[M] | None]


class Mirror(Generic[M]):
    def __init__(self) -> None:
        self.items: dict[str, Versioned[M]] = {}
        self.floor = 0  # events at or below this revision are already in a snapshot
        # Until its first snapshot an empty mirror knows nothing, which is not "no objects".
        self.loaded = False

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[M]:
        return (v.value for v in self.items.values())

    def get(self, id: str) -> Versioned[M] | None:
        return self.items.get(id)

    def apply(self, update: Snapshot[M] | Change[M]) -> list[Diff[M]]:
        """Apply a delivery; return what changed (nothing for an event already seen)."""
        if isinstance(update, Snapshot):
            return self._replace(update)
        if update.seen_at <= self.floor:
            return []  # (a change read later than the snapshot is newer, whatever its revision)
        before = self.items.get(update.id)
        if before is not None and before.mod_revision >= update.revision:
            return []  # we wrote it ourselves and already applied it
        if update.value is None:
            if before is None:
                return []
            del self.items[update.id]
            return [(update.id, before, None)]
        after = Versioned(update.value, update.revision)
        self.items[update.id] = after
        return [(update.id, before, after)]

    def put_local(self, id: str, value: M, revision: int) -> Diff[M]:
        """Record a write this daemon just made, before its watch event arrives."""
        before = self.items.get(id)
        after = Versioned(value, revision)
        self.items[id] = after
        return (id, before, after)

    def drop_local(self, id: str) -> Diff[M] | None:
        """Record a delete this daemon just made (or forget an object it learned is gone)."""
        before = self.items.pop(id, None)
        return (id, before, None) if before is not None else None

    def _replace(self, snapshot: Snapshot[M]) -> list[Diff[M]]:
        diffs: list[Diff[M]] = []
        for id, gone in list(self.items.items()):
            if id not in snapshot.items:
                del self.items[id]
                diffs.append((id, gone, None))
        for id, after in snapshot.items.items():
            before = self.items.get(id)
            if before is None or before.mod_revision != after.mod_revision:
                self.items[id] = after
                diffs.append((id, before, after))
        self.floor = snapshot.revision
        self.loaded = True
        return diffs
