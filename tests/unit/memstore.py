"""An in-memory stand-in for ``ucloud.store.Store``, for unit tests of daemons' decisions.

It honours compare-and-swap exactly as etcd does: one global revision counter, bumped once per
write (a transaction of several puts is one revision); each key keeps the revision of its last
write (``mod_revision``; 0 for a missing key), and ``swap``, ``swap_many``, ``delete``,
``create`` and ``update`` fail when a compared revision differs. Values are kept as JSON, so a
caller never shares an object with the store.

Watches are explicit: ``follow()`` delivers a Snapshot at once (as ``Follower.start`` does),
then Changes wait until the test calls ``flush()``, which delivers them in revision order. So a
test can let a daemon act on a stale view, as the latency of a real watch does.

This is never a stand-in for etcd where a test claims a real feature works: tests/test_store.py
and the integration tests check the real store on a real etcd. Here it only lets unit tests
check what a daemon decides.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ucloud.models import Stored
from ucloud.store import MAX_TXN_OPS, Change, Conflict, Guard, M, Snapshot, Store, Versioned


@dataclass
class _Key:
    json: str
    create_revision: int
    mod_revision: int
    lease: FakeLease | None = None


@dataclass(frozen=True)
class Event:
    """One write to one key, as the store's history keeps it."""

    revision: int
    key: str
    json: str | None  # None: deleted


class FakeLease:
    """What ``Store.hold_lease`` returns (a ``KeepAlive``), reduced to what callers use. Set
    ``left`` to say how long the lease surely lasts; ``expire()`` does what etcd does when a
    lease runs out (its keys go) and tells the holder, as the keeper does."""

    def __init__(self, store: MemStore, ttl: int, on_lost: Callable[[], None]) -> None:
        self.store = store
        self.ttl = ttl
        self.on_lost = on_lost
        self.left = float(ttl)
        self.lease = self  # KeepAlive.lease: what put_owned binds a key to
        self.stopped = False
        self.revoked = False

    def remaining(self) -> float:
        return self.left

    def stop(self, revoke: bool = False) -> None:
        self.stopped = True
        if revoke:
            self.revoked = True
            self.store._drop_lease(self)

    def expire(self) -> None:
        self.left = 0.0
        self.store._drop_lease(self)
        self.on_lost()


class MemFollower:
    """What ``Store.follow`` returns: ``live`` (a watch is open) and ``stop()``."""

    def __init__(self, folder: str, kind: type[Any], deliver: Callable[[Any], None]) -> None:
        self.folder = folder
        self.kind = kind
        self.deliver = deliver
        self.position = 0  # index of the next event of the store's history to look at
        self.live = True

    def stop(self) -> None:
        self.live = False


class MemStore:
    def __init__(self, prefix: str = "/v1") -> None:
        self.prefix = prefix
        self.revision = 1  # etcd starts at 1
        self.keys: dict[str, _Key] = {}
        self.history: list[Event] = []
        self.followers: list[MemFollower] = []
        self.leases: list[FakeLease] = []
        self.reads = 0  # get() and list() calls: round trips a real store would make
        self._lock = threading.RLock()

    # --- keys ----------------------------------------------------------------------------------

    def folder(self, kind: type[Stored]) -> str:
        return f"{self.prefix}/{kind.kind}/"

    def key(self, kind: type[Stored], id: str) -> str:
        return self.folder(kind) + id

    def key_of(self, obj: Stored) -> str:
        return self.key(type(obj), obj.id)

    def _mod(self, key: str) -> int:
        entry = self.keys.get(key)
        return entry.mod_revision if entry else 0

    def _put(self, key: str, json: str, revision: int, lease: FakeLease | None = None) -> None:
        entry = self.keys.get(key)
        created = entry.create_revision if entry else revision
        self.keys[key] = _Key(json, created, revision, lease)
        self.history.append(Event(revision, key, json))

    def _remove(self, key: str, revision: int) -> None:
        del self.keys[key]
        self.history.append(Event(revision, key, None))

    def holds(self, guard: Guard) -> bool:
        with self._lock:
            return self._holds(guard)

    def _holds(self, guard: Guard | None) -> bool:
        if guard is None:
            return True
        entry = self.keys.get(guard.key)
        return entry is not None and entry.create_revision == guard.create_revision

    def elect(self, name: str = "scheduler") -> Guard:
        """Hold election ``name`` (Store.campaign, without its lease): the leader's Guard."""
        with self._lock:
            self.revision += 1
            key = f"{self.prefix}/election/{name}"
            self._put(key, "{}", self.revision)
            return Guard(key, self.revision)

    # --- reads ---------------------------------------------------------------------------------

    def get(self, kind: type[M], id: str) -> Versioned[M] | None:
        with self._lock:
            self.reads += 1
            entry = self.keys.get(self.key(kind, id))
            if entry is None:
                return None
            return Versioned(kind.model_validate_json(entry.json), entry.mod_revision)

    def list(self, kind: type[M], under: str = "") -> tuple[dict[str, Versioned[M]], int]:
        with self._lock:
            self.reads += 1
            return self._items(kind, under), self.revision

    def _items(self, kind: type[M], under: str = "") -> dict[str, Versioned[M]]:
        folder = self.folder(kind)
        return {
            key[len(folder) :]: Versioned(kind.model_validate_json(e.json), e.mod_revision)
            for key, e in sorted(self.keys.items())
            if key.startswith(folder + under)
        }

    # --- writes --------------------------------------------------------------------------------

    def create(self, obj: Stored, lease: FakeLease | None = None) -> int:
        with self._lock:
            key = self.key_of(obj)
            if key in self.keys:
                raise Conflict(f"{obj.kind} {obj.id} already exists")
            self.revision += 1
            self._put(key, obj.model_dump_json(), self.revision, lease)
            return self.revision

    def put_owned(self, obj: Stored, lease: FakeLease) -> None:
        with self._lock:
            self.revision += 1
            self._put(self.key_of(obj), obj.model_dump_json(), self.revision, lease)

    def swap(self, obj: Stored, was: Versioned[Any]) -> int | None:
        return self.swap_many([(obj, was)])

    # The real one, on this double's swap_many: it only copies, edits and swaps.
    swap_edited = Store.swap_edited

    def swap_many(
        self, writes: Sequence[tuple[Stored, Versioned[Any] | None]], guard: Guard | None = None
    ) -> int | None:
        # (The real store also keeps index entries, such as the placement index, in step: no
        # reader of this double follows an index.)
        if not writes:
            return None
        self._check_size(
            len(writes) + (guard is not None),
            [(was.value if was else None, o) for o, was in writes],
        )
        with self._lock:
            if not self._holds(guard):
                return None
            if any(
                self._mod(self.key_of(obj)) != (was.mod_revision if was else 0)
                for obj, was in writes
            ):
                return None
            self.revision += 1
            for obj, _ in writes:
                self._put(self.key_of(obj), obj.model_dump_json(), self.revision)
            return self.revision

    def commit(
        self,
        *,
        create: Sequence[Stored] = (),
        swap: Sequence[tuple[Stored, Versioned[Any] | None]] = (),
        delete: Sequence[Versioned[Any]] = (),
        unchanged: Sequence[Versioned[Any]] = (),
        absent: Sequence[str] = (),
        guard: Guard | None = None,
    ) -> int | None:
        # This double keeps no index entries, so it cannot honour ``absent``: a test that needs
        # it needs the real store.
        if absent:
            raise NotImplementedError("MemStore keeps no index entries")
        self._check_size(
            len(create) + len(swap) + len(delete) + len(unchanged) + (guard is not None),
            [
                *((None, o) for o in create),
                *((was.value if was else None, o) for o, was in swap),
                *((f.value, None) for f in delete),
            ],
        )
        with self._lock:
            if not self._holds(guard):
                return None
            if any(self.key_of(obj) in self.keys for obj in create):
                return None
            compared = [(obj, was.mod_revision if was else 0) for obj, was in swap]
            compared += [(f.value, f.mod_revision) for f in (*delete, *unchanged)]
            if any(self._mod(self.key_of(obj)) != revision for obj, revision in compared):
                return None
            if not (create or swap or delete):
                return None  # etcd: nothing to answer with a revision
            self.revision += 1
            for obj in [*create, *(obj for obj, _ in swap)]:
                self._put(self.key_of(obj), obj.model_dump_json(), self.revision)
            for f in delete:
                if self.key_of(f.value) in self.keys:
                    self._remove(self.key_of(f.value), self.revision)
            return self.revision

    @staticmethod
    def _check_size(compares: int, writes: Sequence[tuple[Stored | None, Stored | None]]) -> None:
        """Refuse what etcd would (its --max-txn-ops), counting index entries as the real
        store writes them (it keeps them in the object's transaction; this double does not)."""
        success = len(writes)
        for old, new in writes:
            before = set(old.index_keys()) if old is not None else set()
            after = set(new.index_keys()) if new is not None else set()
            success += len(before ^ after)
        assert compares <= MAX_TXN_OPS, f"{compares} compares: split batches"
        assert success <= MAX_TXN_OPS, f"{success} operations: split batches"

    def delete(self, found: Versioned[Any], guard: Guard | None = None) -> bool:
        with self._lock:
            key = self.key_of(found.value)
            if not self._holds(guard) or self._mod(key) != found.mod_revision:
                return False
            if key in self.keys:  # etcd: a transaction that deletes nothing writes nothing
                self.revision += 1
                self._remove(key, self.revision)
            return True

    def update(
        self,
        kind: type[M],
        id: str,
        change: Callable[[M], bool | None],
        *,
        attempts: int = 20,
    ) -> Versioned[M] | None:
        for _ in range(attempts):
            current = self.get(kind, id)
            if current is None:
                return None
            obj = current.value.model_copy(deep=True)
            if change(obj) is False:
                return current
            revision = self.swap(obj, current)
            if revision is not None:
                return Versioned(obj, revision)
        raise Conflict(f"{kind.kind} {id} kept changing; gave up after {attempts} attempts")

    # --- leases --------------------------------------------------------------------------------

    def lease(self, ttl: int) -> FakeLease:
        """A lease nobody renews (``Store.lease``): ``expire()`` removes its keys."""
        lease = FakeLease(self, ttl, lambda: None)
        self.leases.append(lease)
        return lease

    def hold_lease(self, ttl: int, on_lost: Callable[[], None]) -> FakeLease:
        lease = FakeLease(self, ttl, on_lost)
        self.leases.append(lease)
        return lease

    def _drop_lease(self, lease: FakeLease) -> None:
        with self._lock:
            bound = [k for k, e in self.keys.items() if e.lease is lease]
            if bound:
                self.revision += 1
                for key in bound:
                    self._remove(key, self.revision)

    # --- watches -------------------------------------------------------------------------------

    def follow(self, kind: type[M], deliver: Callable[[Snapshot[M] | Change[M]], None]) -> Any:
        with self._lock:
            follower = MemFollower(self.folder(kind), kind, deliver)
            snapshot = Snapshot(kind, self._items(kind), self.revision)
            follower.position = len(self.history)
            self.followers.append(follower)
        deliver(snapshot)
        return follower

    def flush(self) -> int:
        """Deliver every Change not delivered yet to each live follower, in revision order
        (also those that deliveries cause); return how many were delivered."""
        delivered = 0
        while True:
            with self._lock:
                behind = [f for f in self.followers if f.live and f.position < len(self.history)]
            if not behind:
                return delivered
            for f in behind:
                while f.live and f.position < len(self.history):
                    event = self.history[f.position]
                    f.position += 1
                    if not event.key.startswith(f.folder):
                        continue
                    id = event.key[len(f.folder) :]
                    value = None if event.json is None else f.kind.model_validate_json(event.json)
                    f.deliver(Change(f.kind, id, value, event.revision))
                    delivered += 1

    # --- for assertions ------------------------------------------------------------------------

    def writes_of(self, kind: type[M], id: str) -> list[M | None]:
        """Each value written to the object's key, oldest first (None: a delete)."""
        key = self.key(kind, id)
        return [
            None if e.json is None else kind.model_validate_json(e.json)
            for e in self.history
            if e.key == key
        ]
