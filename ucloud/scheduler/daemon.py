"""The scheduler's reconcile loop.

It mirrors VMs, hosts and alive keys in memory (list, then watch), and in one thread:
- places every VM that wants a host, in batched compare-and-swap transactions;
- keeps each host's status in step with its alive key, and takes the VMs off a host that has
  been DEAD longer than the grace period (KILLED, no host, to be fenced);
- fences the disks of VMs taken off dead hosts, then lets them be placed again;
- settles VMs that have no host: stopped ones become STOPPED, deleted ones are removed;
- re-places VMs that sat in SCHEDULED past their deadline, and gives up after a few attempts.

Every write carries the leadership Guard, so a deposed scheduler cannot write.

What a pass costs grows with what changed, not with the size of the cluster: each host's
state (capacity, what its VMs use) and the pool of hosts that pass the host filters are kept
between passes and updated from the watch events; the VMs in SCHEDULED wait in a heap ordered
by their deadline. Only the periodic resync looks at everything.
"""

from __future__ import annotations

import heapq
import logging
import queue
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ucloud.config import Settings
from ucloud.mirror import Diff, Mirror
from ucloud.models import VM, ZERO, Alive, Desired, Host, HostStatus, Specs, Status, Stored
from ucloud.scheduler import placement
from ucloud.scheduler.placement import HostState
from ucloud.storage import Storage, StorageError, open_storage
from ucloud.store import (
    MAX_TXN_OPS,
    UNAVAILABLE,
    Change,
    Follower,
    Guard,
    Snapshot,
    Store,
    Versioned,
)

log = logging.getLogger(__name__)

ME = "scheduler"
BATCH = MAX_TXN_OPS - 1  # one compare is the leadership guard
FENCE_RETRY = 2.0  # seconds before fencing that failed (Ceph unreachable) is tried again
FENCE_THREADS = 16  # each block-list entry is a monitor proposal: many at once share one


class Deposed(Exception):
    """Another scheduler leads now."""


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
        self.guard = guard
        self.storage = storage or open_storage(settings)  # connects on first use: fencing
        self.vms: Mirror[VM] = Mirror()
        self.hosts: Mirror[Host] = Mirror()
        self.alive: Mirror[Alive] = Mirror()
        self.inbox: queue.Queue[Snapshot[Any] | Change[Any]] = queue.Queue()
        self.followers: list[Follower[Any]] = []

        # Derived state, kept in step with the mirrors by on_vm/on_host.
        self.used: dict[str, Specs] = {}  # host name -> what its VMs use
        self.placed: dict[str, set[str]] = {}  # host name -> its VMs
        self.states: dict[str, HostState] = {}  # host name -> its state, used kept in step
        self.stale_hosts: set[str] = set()  # hosts whose record or alive key changed
        self.pool: placement.Candidates | None = None  # None: rebuild from states
        self.pending: dict[str, None] = {}  # VMs that want a host, oldest first
        self.unfit: set[str] = set()  # pending VMs no host could take; retried on change
        self.chores: set[str] = set()  # VMs without host whose desired state needs a step
        self.homeless: set[str] = set()  # deleted VMs with a disk, waiting for a live host
        self.unfenced: set[str] = set()  # VMs taken off a dead host, their disks not yet fenced
        self.fence_after = 0.0  # monotonic time before which fencing is not retried
        self.scheduled: dict[str, float] = {}  # VMs in SCHEDULED -> since when
        self.deadlines: list[tuple[float, str]] = []  # heap: (when SCHEDULED runs out, VM)
        self.hosts_to_check: set[str] = set()
        self.capacity_changed = False

    # --- the loop ------------------------------------------------------------------------------

    def start(self) -> None:
        for kind in (Host, Alive, VM):
            self.followers.append(self.store.follow(kind, self.inbox.put))

    def stop(self) -> None:
        for follower in self.followers:
            follower.stop()
        self.followers.clear()

    def run(self, stop: threading.Event, lost: threading.Event | None = None) -> None:
        """Reconcile until ``stop`` (or ``lost``: leadership gone) is set."""
        self.start()
        next_resync = time.monotonic() + self.settings.scheduler_resync
        try:
            while not stop.is_set() and not (lost and lost.is_set()):
                self.drain(timeout=0.5)
                try:
                    if time.monotonic() >= next_resync:
                        self.resync()
                        next_resync = time.monotonic() + self.settings.scheduler_resync
                    self.step()
                except Deposed:
                    log.error("another scheduler leads now; stepping down")
                    return
                except UNAVAILABLE as e:
                    log.warning("etcd unavailable (%s); will retry", type(e).__name__)
                    stop.wait(1.0)
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
                self.on_vm(*diff)
        elif kind is Host:
            for id, _, _ in self.hosts.apply(item):
                self.hosts_to_check.add(id)
                self.stale_hosts.add(id)
                self.capacity_changed = True
        elif kind is Alive:
            for id, _, _ in self.alive.apply(item):
                self.hosts_to_check.add(id)
                self.stale_hosts.add(id)
                self.capacity_changed = True

    def step(self) -> None:
        """One pass towards desired state over what changed."""
        self.check_hosts()
        self.fence()
        self.do_chores()
        self.place()
        self.check_deadlines()

    def resync(self) -> None:
        """The safety net: look at every host and VM again, as if each had changed."""
        self.hosts_to_check.update(v.value.name for v in self.hosts.items.values())
        self.stale_hosts.update(self.hosts.items)
        for id, v in self.vms.items.items():
            self.on_vm(id, v, v)
        limit = self.settings.scheduled_deadline
        self.deadlines = [(since + limit, id) for id, since in self.scheduled.items()]
        heapq.heapify(self.deadlines)
        self.capacity_changed = True

    # --- derived state -------------------------------------------------------------------------

    def on_vm(self, id: str, before: Any, after: Any) -> None:
        old: VM | None = before.value if before else None
        new: VM | None = after.value if after else None
        if old is not None and old.hostname:
            self.use(old.hostname, self.used.get(old.hostname, ZERO) - old.specs)
            self.placed.get(old.hostname, set()).discard(id)
        if new is not None and new.hostname:
            self.use(new.hostname, self.used.get(new.hostname, ZERO) + new.specs)
            self.placed.setdefault(new.hostname, set()).add(id)
        if old is not None and old.hostname and (new is None or new.hostname != old.hostname):
            self.capacity_changed = True

        self.pending.pop(id, None)
        self.unfit.discard(id)
        self.chores.discard(id)
        self.homeless.discard(id)
        self.unfenced.discard(id)
        since = self.scheduled.pop(id, None)
        if new is None:
            return
        if new.fencing and not new.hostname:
            self.unfenced.add(id)
        elif new.wants_host:
            self.pending[id] = None
        elif not new.hostname and _needs_chore(new):
            self.chores.add(id)
        if new.status == Status.SCHEDULED:
            self.scheduled[id] = new.status_since
            if since != new.status_since:
                due = new.status_since + self.settings.scheduled_deadline
                heapq.heappush(self.deadlines, (due, id))
        host = self.hosts.get(new.hostname) if new.hostname else None
        if host is not None and host.value.status == HostStatus.DEAD:
            self.hosts_to_check.add(new.hostname)  # placed on a dead host: move it

    def use(self, host: str, used: Specs) -> None:
        self.used[host] = used
        state = self.states.get(host)
        if state is not None:
            state.used = used

    def host_states(self) -> list[HostState]:
        self.refresh_hosts()
        return list(self.states.values())

    def refresh_hosts(self) -> None:
        """Bring the states of the hosts that changed up to date (and drop the pool)."""
        if not self.stale_hosts:
            return
        for name in self.stale_hosts:
            found = self.hosts.get(name)
            if found is None:
                self.states.pop(name, None)
                continue
            state = HostState.of(found.value, name in self.alive.items, self.settings)
            state.used = self.used.get(name, ZERO)
            self.states[name] = state
        self.stale_hosts.clear()
        self.pool = None

    def candidates(self) -> placement.Candidates:
        """The hosts that pass the host filters, kept until a host changes."""
        self.refresh_hosts()
        if self.pool is None:
            self.pool = placement.candidates(self.states.values())
        return self.pool

    # --- hosts ---------------------------------------------------------------------------------

    def check_hosts(self) -> None:
        """Keep each host's status in step with its alive key; move the VMs of dead hosts."""
        now = time.time()
        for name in list(self.hosts_to_check):
            found = self.hosts.get(name)
            if found is None:
                self.hosts_to_check.discard(name)
                continue
            host = found.value
            alive = name in self.alive.items
            if alive and host.status != HostStatus.UP:
                self.write_host(found, HostStatus.UP)
            elif not alive and host.status == HostStatus.UP:
                log.warning("host %s lost its lease: DEAD", name)
                if not self.write_host(found, HostStatus.DEAD):
                    continue  # the watch brings what changed; look again
                host = self.hosts.get(name).value  # type: ignore[union-attr]
            if not alive and self.placed.get(name):
                if now - host.status_since < self.settings.dead_host_grace:
                    continue  # look again on the next pass, until the grace runs out
                self.evacuate(name)
                if self.placed.get(name):
                    continue  # some VM changed meanwhile: the watch brings it; look again
            self.hosts_to_check.discard(name)

    def write_host(self, found: Any, status: HostStatus) -> bool:
        host = found.value.model_copy(deep=True)
        host.status = status
        host.status_since = time.time()
        return self.write(host, found.mod_revision, self.hosts)

    def evacuate(self, name: str) -> None:
        """Take every VM off a dead host: KILLED, no host, and (unless the host never claimed
        it) ``fencing`` naming the host, in guarded compare-and-swaps. Once a VM's record no
        longer names the host, its agent can start nothing more for it (every start follows a
        compare-and-swap on that record), so what fence() then block-lists is every client that
        may ever have the disk open there."""
        log.warning("host %s is dead: moving its %d VMs", name, len(self.placed.get(name, ())))
        writes = []
        for id in self.placed.get(name, ()):
            found = self.vms.get(id)
            if found is None:
                continue
            vm = found.value.model_copy(deep=True)
            if vm.status != Status.SCHEDULED:  # claimed there: its disk may be open there
                vm.disk = vm.disk_name
                vm.fencing = name
            vm.hostname = ""
            vm.set_status(Status.KILLED, ME, f"host {name} died")
            writes.append((vm, found.mod_revision))
        self.write_vms(writes)

    def fence(self) -> None:
        """Block-list whoever has the disks of VMs taken off dead hosts open (all at once: each
        entry costs a monitor proposal), then let those VMs be placed again. A disk that cannot
        be fenced keeps its VM where it is, and is tried again: availability waits for safety."""
        if not self.unfenced or time.monotonic() < self.fence_after:
            return
        todo = [found for id in self.unfenced if (found := self.vms.get(id)) is not None]

        def fence_one(found: Versioned[VM]) -> list[str] | StorageError:
            try:
                return self.storage.fence_disk(found.value.disk_name)
            except StorageError as e:
                return e

        with ThreadPoolExecutor(min(FENCE_THREADS, len(todo) or 1)) as pool:
            results = list(pool.map(fence_one, todo))
        writes = []
        for found, fenced in zip(todo, results, strict=True):
            vm = found.value.model_copy(deep=True)
            if isinstance(fenced, StorageError):
                log.error("VM %s waits: cannot fence its disk: %s", vm.uuid, fenced)
                self.fence_after = time.monotonic() + FENCE_RETRY
                continue
            why = f"host {vm.fencing} died; " + (
                f"fenced its disk's clients {', '.join(fenced)}"
                if fenced
                else "no client had its disk open"
            )
            vm.fencing = ""
            vm.set_status(Status.KILLED, ME, why)
            writes.append((vm, found.mod_revision))
        self.write_vms(writes)

    # --- VMs without a host ------------------------------------------------------------------

    def do_chores(self) -> None:
        for id in list(self.chores):
            self.chores.discard(id)
            found = self.vms.get(id)
            if found is None:
                continue
            vm = found.value.model_copy(deep=True)
            if vm.hostname:
                continue
            if vm.desired == Desired.DELETED:
                if vm.disk:
                    if not self.hand_over_for_deletion(found):
                        self.homeless.add(id)
                elif self.store.delete(VM, id, found.mod_revision, self.guard):
                    log.info("VM %s deleted (it never had a disk)", id)
                    for diff in self.vms.apply(Change(VM, id, None, found.mod_revision + 1)):
                        self.on_vm(*diff)
            elif vm.desired == Desired.STOPPED:
                vm.set_status(Status.STOPPED, ME)
                vm.observed_generation = vm.generation
                self.write(vm, found.mod_revision, self.vms)

    def hand_over_for_deletion(self, found: Any) -> bool:
        """A VM with a disk but no host: a live host agent removes the disk, then the VM.
        False if no host is up (retried when one comes up: capacity_changed)."""
        up = [h for h in self.host_states() if placement.is_up(h)]
        if not up:
            return False
        host = min(up, key=lambda h: len(self.placed.get(h.name, ())))
        vm = found.value.model_copy(deep=True)
        vm.hostname = host.name
        vm.set_status(Status.DELETING, ME, f"host {host.name} removes its disk")
        self.write(vm, found.mod_revision, self.vms)
        return True

    # --- placement -----------------------------------------------------------------------------

    def place(self) -> None:
        if self.capacity_changed:
            self.capacity_changed = False
            for id in self.unfit:
                self.pending[id] = None
            self.unfit.clear()
            # A host coming up may let a deleted VM's disk be removed.
            self.chores.update(self.homeless)
            self.homeless.clear()
        if not self.pending:
            return
        pool = self.candidates()
        batch: list[tuple[VM, Versioned[VM]]] = []
        for id in list(self.pending):
            found = self.vms.get(id)
            if found is None or not found.value.wants_host:
                self.pending.pop(id, None)
                continue
            vm = found.value
            host, reason = placement.choose(vm, pool)
            self.pending.pop(id, None)
            if host is None:
                self.unfit.add(id)
                self.mark_unplaceable(found, reason)
                continue
            placed = vm.model_copy(deep=True)
            placed.hostname = host.name
            placed.attempts += 1
            placed.observed_generation = placed.generation
            placed.set_status(Status.SCHEDULED, ME, f"placed on {host.name}")
            batch.append((placed, found))
            # Count it against the host now (on_vm updates its state), so the next VM of this
            # pass sees it.
            self.on_vm(id, found, self.vms.put_local(id, placed, 0)[2])
            if len(batch) == BATCH:
                self.commit(batch)
                batch = []
        self.commit(batch)

    def commit(self, batch: list[tuple[VM, Versioned[VM]]]) -> None:
        if not batch:
            return
        try:
            revision = self.store.swap_many(
                [(vm, was.mod_revision) for vm, was in batch], self.guard
            )
        except UNAVAILABLE:
            # Unknown whether it was written. Believe it was not: if it was, the watch brings
            # each placement with its revision, and the mirror takes it over this guess.
            for vm, was in batch:
                self.on_vm(
                    vm.uuid,
                    self.vms.get(vm.uuid),
                    self.vms.put_local(vm.uuid, was.value, was.mod_revision)[2],
                )
            raise
        if revision is not None:
            for vm, _ in batch:
                self.vms.put_local(vm.uuid, vm, revision)
            for vm, _ in batch:
                log.debug("placed VM %s on %s", vm.uuid, vm.hostname)
            log.info("placed %d VM(s)", len(batch))
            return
        self.check_guard()
        # Some VM changed meanwhile: take etcd's word for each, and let the loop try again.
        for vm, _ in batch:
            fresh = self.store.get(VM, vm.uuid)
            before = self.vms.get(vm.uuid)
            if fresh is None:
                self.vms.items.pop(vm.uuid, None)
                self.on_vm(vm.uuid, before, None)
            else:
                self.on_vm(
                    vm.uuid, before, self.vms.put_local(vm.uuid, fresh.value, fresh.mod_revision)[2]
                )

    def mark_unplaceable(self, found: Any, reason: str) -> None:
        vm: VM = found.value
        if vm.status == Status.PENDING and vm.reason == reason:
            return
        vm = vm.model_copy(deep=True)
        vm.set_status(Status.PENDING, ME, reason)
        log.info("VM %s waits: %s", vm.uuid, reason)
        self.write(vm, found.mod_revision, self.vms)

    # --- deadlines -----------------------------------------------------------------------------

    def check_deadlines(self) -> None:
        """Re-place VMs whose host has not taken them up in time; give up after a few tries."""
        now = time.time()
        deadline = now - self.settings.scheduled_deadline
        while self.deadlines and self.deadlines[0][0] <= now:
            _, id = heapq.heappop(self.deadlines)
            found = self.vms.get(id)
            if found is None or found.value.status != Status.SCHEDULED:
                continue
            if found.value.status_since > deadline:
                continue  # SCHEDULED again since: a later entry stands for it
            vm = found.value.model_copy(deep=True)
            late = (
                f"host {vm.hostname} did not start it within {self.settings.scheduled_deadline:g} s"
            )
            vm.hostname = ""
            if vm.attempts >= self.settings.schedule_attempts:
                vm.observed_generation = vm.generation
                vm.set_status(Status.ERROR, ME, f"{late}, after {vm.attempts} attempts")
            else:
                vm.set_status(Status.PENDING, ME, f"{late}; placing it again")
            if not self.write(vm, found.mod_revision, self.vms):
                heapq.heappush(self.deadlines, (now + 1.0, id))  # look again shortly

    # --- writes ------------------------------------------------------------------------------

    def write_vms(self, writes: Sequence[tuple[VM, int]]) -> None:
        """Compare-and-swap VMs in guarded batches and mirror them. A batch that loses a race is
        written one VM at a time: those that changed meanwhile are left to the watch."""
        for start in range(0, len(writes), BATCH):
            chunk = writes[start : start + BATCH]
            revision = self.store.swap_many(chunk, self.guard)
            if revision is None:
                self.check_guard()
                for vm, mod_revision in chunk:
                    self.write(vm, mod_revision, self.vms)
                continue
            for vm, _ in chunk:
                self.on_vm(*self.vms.put_local(vm.uuid, vm, revision))

    def write(self, obj: Stored, mod_revision: int, mirror: Mirror[Any]) -> bool:
        """Compare-and-swap one object and mirror it; on conflict, the watch brings the news
        and the object is looked at again."""
        revision = self.store.swap_many([(obj, mod_revision)], self.guard)
        if revision is None:
            self.check_guard()
            return False
        diff: Diff[Any] = mirror.put_local(obj.id, obj, revision)
        if mirror is self.vms:
            self.on_vm(*diff)
        else:
            self.hosts_to_check.add(obj.id)
            self.stale_hosts.add(obj.id)
        return True

    def check_guard(self) -> None:
        if self.guard is None:
            return
        _, meta = self.store.client.get(self.guard.key)
        if meta is None or meta.create_revision != self.guard.create_revision:
            raise Deposed()


def _needs_chore(vm: VM) -> bool:
    if vm.desired == Desired.DELETED:
        return True
    return vm.desired == Desired.STOPPED and vm.status != Status.STOPPED
