"""The scheduler's reconcile loop: a small loop joining parts that each do one job.

It mirrors VMs, hosts and alive keys in memory (list, then watch), hands every change to the
parts, and in one thread runs a pass of each:
- HostLifecycle (lifecycle.py): each host's status follows its alive key; the VMs of a host
  DEAD past the grace are taken off it and their disks fenced before they may run elsewhere;
- Chores (chores.py): VMs without a host whose desired state needs a step;
- Placer (placer.py): placement and the SCHEDULED deadlines;
- PlacementIndex (index.py): the hosts' placement index made whole at start and each resync;
- Migrations (migrations.py): live migrations' targets chosen, and those that cannot go on
  given up;
- DeletedNetworks (networks.py): networks deleted with their owner, removed when their last
  VM goes;
- Routers (routers.py): each network's router host, chosen again when it can no longer route;
- Drains (drain.py): live migrations asked for the VMs of hosts in maintenance;
- the quota recount (ucloud.quota.recount), every quota_recount seconds: usage records that
  disagree with the objects are repaired;
all over one capacity Ledger (ledger.py), and writing through Writes (writes.py): guarded
compare-and-swaps, so a deposed scheduler cannot write. Only the periodic resync looks at
everything.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any

from ucloud import quota
from ucloud.config import Settings
from ucloud.mirror import Diff, Mirror
from ucloud.models import VM, Alive, Host, Network
from ucloud.retry import Backoff
from ucloud.scheduler.chores import Chores
from ucloud.scheduler.drain import Drains
from ucloud.scheduler.index import PlacementIndex
from ucloud.scheduler.ledger import Ledger
from ucloud.scheduler.lifecycle import HostLifecycle
from ucloud.scheduler.migrations import Migrations
from ucloud.scheduler.networks import DeletedNetworks
from ucloud.scheduler.placer import Placer
from ucloud.scheduler.routers import Routers
from ucloud.scheduler.writes import Deposed, Writes
from ucloud.storage import Storage, open_storage
from ucloud.store import Change, Follower, Guard, Snapshot, Store, Unavailable

log = logging.getLogger(__name__)


class Scheduler:
    def __init__(
        self,
        store: Store,
        settings: Settings,
        guard: Guard | None = None,
        storage: Storage | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.vms: Mirror[VM] = Mirror()
        self.hosts: Mirror[Host] = Mirror()
        self.alive: Mirror[Alive] = Mirror()
        self.inbox: queue.Queue[Snapshot[Any] | Change[Any]] = queue.Queue()
        self.followers: list[Follower[Any]] = []

        self.ledger = Ledger(settings, self.hosts, self.alive)
        self.writes = Writes(store, guard, self.vms, self.hosts, self.vm_changed, self.host_changed)
        self.lifecycle = HostLifecycle(
            settings,
            self.vms,
            self.hosts,
            self.alive,
            self.ledger,
            self.writes,
            storage or open_storage(settings),  # connects on first use: fencing
        )
        self.chores = Chores(self.vms, self.ledger, self.writes)
        self.placer = Placer(settings, self.vms, self.ledger, self.writes)
        self.migrations = Migrations(settings, self.vms, self.hosts, self.ledger, self.writes)
        self.index = PlacementIndex(self.vms, self.writes)
        self.deleted_networks = DeletedNetworks(store, guard)
        self.routers = Routers(self.ledger, self.writes)
        self.drains = Drains(
            settings, Backoff.of(settings), self.vms, self.hosts, self.ledger, self.writes
        )

    # --- the loop ------------------------------------------------------------------------------

    def start(self) -> None:
        for kind in (Host, Alive, VM, Network):
            self.followers.append(self.store.follow(kind, self.inbox.put))

    def stop(self) -> None:
        for follower in self.followers:
            follower.stop()
        self.followers.clear()

    def run(self, stop: threading.Event, lost: threading.Event | None = None) -> None:
        """Reconcile until ``stop`` (or ``lost``: leadership gone) is set."""
        self.start()
        next_resync = time.monotonic() + self.settings.scheduler_resync
        next_recount = time.monotonic()  # soon after it leads: then every quota_recount
        index_checked = False  # once the first snapshots are in: then at each resync
        backoff, failures = Backoff.of(self.settings), 0
        try:
            while not stop.is_set() and not (lost and lost.is_set()):
                self.drain(timeout=0.5)
                try:
                    if not index_checked:
                        self.index.repair()
                        index_checked = True
                    if time.monotonic() >= next_resync:
                        self.resync()
                        next_resync = time.monotonic() + self.settings.scheduler_resync
                    if time.monotonic() >= next_recount:
                        quota.recount(self.store, self.writes.guard)
                        next_recount = time.monotonic() + self.settings.quota_recount
                    self.step()
                    failures = 0
                except Deposed:
                    log.error("another scheduler leads now; stepping down")
                    return
                except Unavailable as e:
                    failures += 1
                    log.warning("etcd unavailable (%s); will retry", e)
                    stop.wait(backoff.delay(failures))
        finally:
            self.stop()

    def drain(self, timeout: float) -> None:
        """Apply every queued delivery; wait up to ``timeout`` for the first."""
        try:
            item = self.inbox.get(timeout=timeout)
        except queue.Empty:
            return
        while True:
            self.deliver(item)
            try:
                item = self.inbox.get_nowait()
            except queue.Empty:
                return

    def deliver(self, item: Snapshot[Any] | Change[Any]) -> None:
        kind = item.kind
        if kind is VM:
            for diff in self.vms.apply(item):
                self.vm_changed(diff)
        elif kind is Host:
            for id, _, _ in self.hosts.apply(item):
                self.host_changed(id)
        elif kind is Alive:
            for id, _, _ in self.alive.apply(item):
                self.host_changed(id)
        elif kind is Network:
            self.routers.deliver(item)

    def step(self) -> None:
        """One pass towards desired state over what changed."""
        self.lifecycle.step()
        hosts_changed = self.ledger.take_changed()
        self.chores.step(hosts_changed)
        self.placer.step(hosts_changed)
        self.drains.step(hosts_changed)  # before migrations: its requests get targets at once
        self.migrations.step(hosts_changed)
        self.deleted_networks.step()
        self.routers.step()

    def resync(self) -> None:
        """The safety net: look at every host and VM again, as if each had changed."""
        self.lifecycle.resync()
        self.ledger.everything_changed()
        for id, v in self.vms.items.items():
            self.vm_changed((id, v, v))
        self.placer.resync()
        self.index.repair()
        self.deleted_networks.resync()
        self.routers.resync()
        self.drains.resync()

    # --- changes, to every part ----------------------------------------------------------------

    def vm_changed(self, diff: Diff[VM]) -> None:
        id, before, after = diff
        new = after.value if after is not None else None
        old = before.value if before is not None else None
        self.ledger.vm_changed(id, old, new)
        self.deleted_networks.vm_changed(old, new)
        self.lifecycle.vm_changed(id, new)
        self.chores.vm_changed(id, new)
        self.placer.vm_changed(id, new)
        self.migrations.vm_changed(id, new)
        self.drains.vm_changed(id, old, new)

    def host_changed(self, name: str) -> None:
        self.ledger.host_changed(name)
        self.lifecycle.host_changed(name)
        self.routers.host_changed(name)
        self.drains.host_changed(name)
