"""Placement and its deadlines: every VM that wants a host is placed on the best one that fits
(placement.py's filters and weighers, over the ledger's hosts), in batched guarded
compare-and-swaps; a VM that fits nowhere waits with the reason, and is tried again when
capacity changes; a VM SCHEDULED past its deadline is placed again, and goes to ERROR after a
few attempts.

What a pass costs grows with what changed: VMs that want a host wait in an ordered dict, those
in SCHEDULED in a heap ordered by their deadline.
"""

from __future__ import annotations

import heapq
import logging
import time

from ucloud.config import SchedulerSettings
from ucloud.mirror import Mirror
from ucloud.models import VM, Host, Status
from ucloud.scheduler import metrics, placement
from ucloud.scheduler.ledger import Ledger
from ucloud.scheduler.placement import HostState
from ucloud.scheduler.writes import Edit, Writes, fits
from ucloud.store import Unavailable, Versioned, edited

log = logging.getLogger(__name__)

ME = "scheduler"


class Placer:
    def __init__(
        self, settings: SchedulerSettings, vms: Mirror[VM], ledger: Ledger, writes: Writes
    ) -> None:
        self.settings = settings
        self.vms = vms
        self.ledger = ledger
        self.writes = writes
        self.pending: dict[str, None] = {}  # VMs that want a host, oldest first
        self.unfit: set[str] = set()  # pending VMs no host could take; retried on change
        self.scheduled: dict[str, float] = {}  # VMs in SCHEDULED -> since when
        self.deadlines: list[tuple[float, str]] = []  # heap: (when SCHEDULED runs out, VM)
        # VMs that want a host -> since when (monotonic; for the scheduling latency metric)
        self.wanting: dict[str, float] = {}

    def vm_changed(self, id: str, new: VM | None) -> None:
        self.pending.pop(id, None)
        self.unfit.discard(id)
        since = self.scheduled.pop(id, None)
        if new is None or not new.wants_host:
            self.wanting.pop(id, None)
        if new is None:
            return
        if new.wants_host:
            self.pending[id] = None
            self.wanting.setdefault(id, time.monotonic())
        if new.status == Status.SCHEDULED:
            self.scheduled[id] = new.status_since
            if since != new.status_since:
                due = new.status_since + self.settings.scheduled_deadline
                heapq.heappush(self.deadlines, (due, id))

    def resync(self) -> None:
        limit = self.settings.scheduled_deadline
        self.deadlines = [(since + limit, id) for id, since in self.scheduled.items()]
        heapq.heapify(self.deadlines)

    def step(self, hosts_changed: bool) -> None:
        if hosts_changed:
            for id in self.unfit:
                self.pending[id] = None
            self.unfit.clear()
        self.place()
        self.check_deadlines()

    # --- placement -----------------------------------------------------------------------------

    def place(self) -> None:
        if not self.pending:
            return
        pool = self.ledger.candidates()
        batch: list[tuple[VM, Versioned[VM]]] = []
        hosts: dict[str, Versioned[Host]] = {}  # the batch's hosts, as this pass saw them
        waited: list[float] = []  # by each VM of the batch, for the latency metric
        for id in list(self.pending):
            found = self.vms.get(id)
            self.pending.pop(id, None)
            if found is None or not found.value.wants_host:
                continue
            host = self.choose(found, pool)
            if host is not None and not fits(len(batch) + 1, len(hosts) + (host.name not in hosts)):
                if not self.commit(batch, hosts, waited):
                    pool = self.ledger.candidates()  # with the hosts read again
                    host = self.choose(found, pool)
                batch, hosts, waited = [], {}, []
            if host is None:
                continue
            placed = edited(found, placed_on(host.name))
            batch.append((placed, found))
            hosts[host.name] = host.as_read
            waited.append(time.monotonic() - self.wanting.get(id, time.monotonic()))
            # Count it against the host now, so the next VM of this pass sees it.
            self.writes.on_vm(self.vms.put_local(id, placed, 0))
        self.commit(batch, hosts, waited)

    def commit(
        self,
        batch: list[tuple[VM, Versioned[VM]]],
        hosts: dict[str, Versioned[Host]],
        waited: list[float],
    ) -> bool:
        """Write a batch of placements while each VM and each of their hosts is still as this
        pass saw it (hosts come on a watch of their own: one may have been put in maintenance
        after the pass's view of it, and before a VM's change this pass saw). False if it
        lost a race (nothing written)."""
        if not batch:
            return True
        try:
            revision = self.writes.transaction(batch, list(hosts.values()))
        except Unavailable:
            # Unknown whether it was written. Believe it was not: if it was, the watch brings
            # each placement with its revision, and the mirror takes it over this guess.
            for vm, was in batch:
                self.writes.on_vm(self.vms.put_local(vm.uuid, was.value, was.mod_revision))
            raise
        if revision is not None:
            for vm, _ in batch:
                self.vms.put_local(vm.uuid, vm, revision)
                log.debug("placed VM %s on %s", vm.uuid, vm.hostname)
            metrics.placed(waited)
            log.info("placed %d VM(s)", len(batch))
            return True
        # A VM or a host changed meanwhile (the hosts are read again already): take etcd's
        # word for each VM, which puts those that still want a host back in line.
        for vm, _ in batch:
            fresh = self.writes.store.get(VM, vm.uuid)
            if fresh is None:
                diff = self.vms.drop_local(vm.uuid)
            else:
                diff = self.vms.put_local(vm.uuid, fresh.value, fresh.mod_revision)
            if diff is not None:
                self.writes.on_vm(diff)
        return False

    def choose(self, found: Versioned[VM], pool: placement.Candidates) -> HostState | None:
        """The host for a VM, or None (it waits, with the reason, until capacity changes)."""
        host, reason = placement.choose(found.value, pool)
        if host is None:
            self.unfit.add(found.value.uuid)
            self.mark_unplaceable(found, reason)
        return host

    def mark_unplaceable(self, found: Versioned[VM], reason: str) -> None:
        vm = found.value
        if vm.status == Status.PENDING and vm.reason == reason:
            return
        log.info("VM %s waits: %s", vm.uuid, reason)
        self.writes.vm(found, lambda vm: vm.set_status(Status.PENDING, ME, reason))

    # --- deadlines -----------------------------------------------------------------------------

    def too_late(self, vm: VM) -> None:
        """The change of a VM SCHEDULED past its deadline: placed again, or in ERROR."""
        late = f"host {vm.hostname} did not start it within {self.settings.scheduled_deadline:g} s"
        vm.hostname = ""
        if vm.attempts >= self.settings.schedule_attempts:
            vm.observed_generation = vm.generation
            vm.set_status(Status.ERROR, ME, f"{late}, after {vm.attempts} attempts")
        else:
            vm.set_status(Status.PENDING, ME, f"{late}; placing it again")

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
            if not self.writes.vm(found, self.too_late):
                heapq.heappush(self.deadlines, (now + 1.0, id))  # look again shortly


def placed_on(host: str) -> Edit[VM]:
    def change(vm: VM) -> None:
        vm.hostname = host
        vm.attempts += 1
        vm.observed_generation = vm.generation
        vm.set_status(Status.SCHEDULED, ME, f"placed on {host}")

    return change
