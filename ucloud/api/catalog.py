"""Watch-fed copies of the users and VMs in each API worker, for reads without etcd round trips.

Kubernetes' API server keeps a watch cache for the same reason: the token check, /vm/status
and /vm/list are most of the API's traffic, and each used to cost etcd round trips, parsing
and serialising. Here a read costs a dictionary lookup, and a user's VM list is kept as the
JSON bytes of the answer until one of their VMs changes.

Reads are as fresh as the watch (events reach every worker within milliseconds); a write made
by this worker is applied at once, so a client sees its own writes through the same worker.
Whenever a kind's watch is not open (starting up, etcd lost), reads of it go to etcd, so an
outage is an error and never a stale answer. Writes always go to etcd, compare-and-swap.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Generic

from ucloud.mirror import Diff, Mirror
from ucloud.models import PUBLIC_EXCLUDE, VM, ZERO, Specs, User
from ucloud.store import Change, Follower, M, Snapshot, Store, Versioned

Owner = tuple[str, str]  # (realm, name); None below: every VM (administrators)


class _Kind(Generic[M]):
    """One kind's mirror and follower; the catalog's lock guards the mirror's changes."""

    def __init__(self, kind: type[M]) -> None:
        self.kind = kind
        self.mirror: Mirror[M] = Mirror()
        self.follower: Follower[M] | None = None
        self.seen = 0  # the revision of the last delivery

    @property
    def live(self) -> bool:
        return self.follower is not None and self.follower.live


class Catalog:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._users = _Kind(User)
        self._vms = _Kind(VM)
        self._by_owner: dict[Owner, dict[str, Versioned[VM]]] = {}
        self._json: dict[str, tuple[int, bytes]] = {}  # VM id -> (mod_revision, its JSON)
        self._listings: dict[Owner | None, bytes] = {}  # answers to keep until a VM changes
        self._stopped = threading.Event()
        self._starter = threading.Thread(target=self._start, name="catalog", daemon=True)

    def start(self) -> Catalog:
        """Follow users and VMs in the background; until then every read goes to etcd."""
        self._starter.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        for kind in (self._users, self._vms):
            if kind.follower is not None:
                kind.follower.stop()

    # --- reads ---------------------------------------------------------------------------------

    def user(self, id: str) -> User | None:
        found = self._read(self._users, id)
        return found.value if found else None

    def vm(self, id: str) -> Versioned[VM] | None:
        return self._read(self._vms, id)

    def vm_json(self, vm: Versioned[VM]) -> bytes:
        """The VM as JSON, serialised once a revision."""
        cached = self._json.get(vm.value.id)
        if cached is not None and cached[0] == vm.mod_revision:
            return cached[1]
        data = vm.value.model_dump_json(exclude=PUBLIC_EXCLUDE).encode()
        if self._vms.live:
            self._json[vm.value.id] = (vm.mod_revision, data)
        return data

    def vms_json(self, owner: Owner | None) -> bytes:
        """A JSON array of ``owner``'s VMs (every VM for None), oldest first."""
        if not self._vms.live:
            items, _ = self.store.list(VM)
            return self._array(v for v in items.values() if owner in (None, _owner(v.value)))
        with self._lock:
            listing = self._listings.get(owner)
            if listing is None:
                vms = self._vms.mirror.items if owner is None else self._by_owner.get(owner, {})
                listing = self._listings[owner] = self._array(vms.values())
            return listing

    def allocated(self) -> dict[str, Specs]:
        """What the VMs placed on each host are given, by host name (``host list``), counting
        a VM migrating to a host there too, as the scheduler does (``VM.migrating_to``)."""
        if self._vms.live:
            with self._lock:
                vms = [v.value for v in self._vms.mirror.items.values()]
        else:
            vms = [v.value for v in self.store.list(VM)[0].values()]
        by_host: dict[str, Specs] = {}
        for vm in vms:
            for host in (vm.hostname, vm.migrating_to):
                if host:
                    by_host[host] = by_host.get(host, ZERO) + vm.specs
        return by_host

    def vm_names(self, owner: Owner) -> set[str]:
        """The names of ``owner``'s VMs."""
        if not self._vms.live:
            items, _ = self.store.list(VM)
            return {v.value.name for v in items.values() if _owner(v.value) == owner}
        with self._lock:
            return {v.value.name for v in self._by_owner.get(owner, {}).values()}

    def _array(self, vms: Iterable[Versioned[VM]]) -> bytes:
        ordered = sorted(vms, key=lambda v: v.value.created)
        return b"[" + b",".join(self.vm_json(v) for v in ordered) + b"]"

    def _read(self, kind: _Kind[M], id: str) -> Versioned[M] | None:
        if kind.live:
            found = kind.mirror.get(id)
            if found is not None:
                return found
        # Not followed yet, or not seen yet: a VM created a moment ago through another worker.
        return self.store.get(kind.kind, id)

    # --- changes -------------------------------------------------------------------------------

    def wrote(self, vm: VM, revision: int) -> None:
        """Apply a write this worker made, before its watch event arrives (unless the watch
        was faster and brought it, or a later change, already)."""
        with self._lock:
            if revision > self._vms.seen:  # events arrive in order: seen covers the write
                self._index([self._vms.mirror.put_local(vm.id, vm, revision)])

    def _start(self) -> None:
        self._follow(self._users)
        self._follow(self._vms, self._index)

    def _follow(
        self, kind: _Kind[M], on_diffs: Callable[[list[Diff[M]]], None] | None = None
    ) -> None:
        """Follow one kind; ``on_diffs`` sees each delivery's changes, under the lock."""
        if self._stopped.is_set():
            return
        # Follower.start lists, retrying while etcd is away, then watches.
        follower = kind.follower = self.store.follow(kind.kind, self._deliverer(kind, on_diffs))
        if self._stopped.is_set():  # stop() ran while we listed
            follower.stop()

    def _deliverer(
        self, kind: _Kind[M], on_diffs: Callable[[list[Diff[M]]], None] | None
    ) -> Callable[[Snapshot[M] | Change[M]], None]:
        def deliver(update: Snapshot[M] | Change[M]) -> None:
            with self._lock:
                diffs = kind.mirror.apply(update)
                kind.seen = max(kind.seen, update.revision)
                if on_diffs is not None:
                    on_diffs(diffs)

        return deliver

    def _index(self, diffs: list[Diff[VM]]) -> None:
        for id, before, after in diffs:
            for old_or_new in (before, after):
                if old_or_new is not None:
                    self._listings.pop(_owner(old_or_new.value), None)
            self._listings.pop(None, None)
            if before is not None:
                owned = self._by_owner.get(_owner(before.value), {})
                owned.pop(id, None)
                if not owned:
                    self._by_owner.pop(_owner(before.value), None)
            if after is not None:
                self._by_owner.setdefault(_owner(after.value), {})[id] = after
            else:
                self._json.pop(id, None)


def _owner(vm: VM) -> Owner:
    return (vm.owner_realm, vm.owner)
