"""Host lifecycle, kept out of placement as Kubernetes keeps node lifecycle out of its
scheduler: each host's status follows its alive key; the VMs of a host DEAD past the grace
are taken off it, their disks fenced, and only then let go to be placed again.

See docs/design-decisions.md, "Fencing: the rule".
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor

from ucloud.config import SchedulerSettings
from ucloud.mirror import Mirror
from ucloud.models import VM, Alive, Host, HostStatus, MigrationPhase, Status
from ucloud.scheduler import metrics
from ucloud.scheduler.ledger import Ledger
from ucloud.scheduler.writes import Edit, Writes
from ucloud.storage import Storage, StorageError
from ucloud.store import Versioned

log = logging.getLogger(__name__)

ME = "scheduler"
FENCE_RETRY = 2.0  # seconds before fencing that failed (Ceph unreachable) is tried again
FENCE_THREADS = 16  # each block-list entry is a monitor proposal: many at once share one


class HostLifecycle:
    def __init__(
        self,
        settings: SchedulerSettings,
        vms: Mirror[VM],
        hosts: Mirror[Host],
        alive: Mirror[Alive],
        ledger: Ledger,
        writes: Writes,
        storage: Storage,
    ) -> None:
        self.settings = settings
        self.vms = vms
        self.hosts = hosts
        self.alive = alive
        self.ledger = ledger
        self.writes = writes
        self.storage = storage
        self.to_check: set[str] = set()  # hosts whose status or VMs need a look
        self.unfenced: set[str] = set()  # VMs taken off a dead host, their disks not yet fenced
        self.fence_after = 0.0  # monotonic time before which fencing is not retried

    def host_changed(self, name: str) -> None:
        self.to_check.add(name)

    def vm_changed(self, id: str, new: VM | None) -> None:
        self.unfenced.discard(id)
        if new is None:
            return
        if new.fencing and not new.hostname:
            self.unfenced.add(id)
        host = self.hosts.get(new.hostname) if new.hostname else None
        if host is not None and host.value.status == HostStatus.DEAD:
            self.to_check.add(new.hostname)  # placed on a dead host: move it

    def resync(self) -> None:
        self.to_check.update(self.hosts.items)

    def step(self) -> None:
        self.check_hosts()
        self.fence()

    # --- hosts ---------------------------------------------------------------------------------

    def check_hosts(self) -> None:
        """Keep each host's status in step with its alive key; take the VMs off dead hosts."""
        now = time.time()
        for name in list(self.to_check):
            found = self.hosts.get(name)
            if found is None:
                self.to_check.discard(name)
                continue
            host = found.value
            alive = name in self.alive.items
            if alive and host.status != HostStatus.UP:
                self.write_host(found, HostStatus.UP)
            elif not alive and host.status == HostStatus.UP:
                log.warning("host %s lost its lease: DEAD", name)
                if not self.write_host(found, HostStatus.DEAD):
                    continue  # the watch brings what changed; look again
                host = self.hosts.items[name].value
            if not alive and self.ledger.vms_on(name):
                in_grace = now - host.status_since < self.settings.dead_host_grace
                if in_grace and not host.evacuation_asked:  # `host evacuate` skips the grace
                    continue  # look again on the next pass, until the grace runs out
                self.evacuate(name)
                if self.ledger.vms_on(name):
                    continue  # some VM changed meanwhile: the watch brings it; look again
            self.to_check.discard(name)

    def write_host(self, found: Versioned[Host], status: HostStatus) -> bool:
        def change(host: Host) -> None:
            host.status = status
            host.status_since = time.time()
            if status == HostStatus.DEAD:
                # What it held is stale: when it is UP again, its peers take it back only for
                # the networks its agent publishes anew, after its first pass has removed the
                # copies left there (VMs, a router's gateway). Peers ignore it meanwhile.
                host.networks = []

        return self.writes.host(found, change)

    def evacuate(self, name: str) -> None:
        """Take every VM off a dead host: KILLED, no host, and (unless the host never claimed
        it) ``fencing`` naming the host, in guarded compare-and-swaps. Once a VM's record no
        longer names the host, its agent can start nothing more for it (every start follows a
        compare-and-swap on that record), so what fence() then block-lists is every client that
        may ever have the disk open there."""
        vms = self.ledger.vms_on(name)
        asked = " (evacuation asked by an administrator)" if self.asked(name) else ""
        log.warning("host %s is dead: moving its %d VMs%s", name, len(vms), asked)

        def take_off(vm: VM) -> None:
            if vm.status != Status.SCHEDULED:  # claimed there: its disk may be open there
                vm.disk = vm.disk_name
                vm.fencing = name
            vm.hostname = ""
            vm.set_status(Status.KILLED, ME, f"host {name} died{asked}")

        found = [v for id in vms if (v := self.vms.get(id)) is not None]
        self.writes.vms_in_batches([(v, take_off) for v in found if v.value.migration is None])
        for v in found:
            m = v.value.migration
            if m is None:
                continue
            if m.phase == MigrationPhase.MIGRATING and m.target in self.alive.items:
                # It may run on the target already: the target's agent, which asks its
                # libvirtd, keeps it (then it is placed there) or lets it go (then it is
                # taken off here, fenced, placed again); see migrations.py.
                log.debug("VM %s: waiting for its migration target %s", v.value.uuid, m.target)
                continue

            def off_and_over(vm: VM) -> None:
                vm.migration = None
                take_off(vm)

            # One VM a transaction: its source's and its target's index entries go.
            self.writes.vm(v, off_and_over)

    def asked(self, name: str) -> bool:
        found = self.hosts.get(name)
        return found is not None and found.value.evacuation_asked

    # --- fencing -------------------------------------------------------------------------------

    def fence(self) -> None:
        """Block-list whoever has the disks of VMs taken off dead hosts open (all at once: each
        entry costs a monitor proposal), then let those VMs be placed again. A disk that cannot
        be fenced keeps its VM where it is, and is tried again: availability waits for safety."""
        if not self.unfenced or time.monotonic() < self.fence_after:
            return
        todo = [found for id in self.unfenced if (found := self.vms.get(id)) is not None]

        def fence_one(found: Versioned[VM]) -> list[str] | StorageError:
            try:
                return [
                    client
                    for disk, pool in found.value.disks  # the system disk and its HDD disk
                    for client in self.storage.fence_disk(disk, pool=pool)
                ]
            except StorageError as e:
                return e

        with ThreadPoolExecutor(min(FENCE_THREADS, len(todo) or 1)) as pool:
            results = list(pool.map(fence_one, todo))
        changes: list[tuple[Versioned[VM], Edit[VM]]] = []
        for found, fenced in zip(todo, results, strict=True):
            if isinstance(fenced, StorageError):
                log.error("VM %s waits: cannot fence its disk: %s", found.value.uuid, fenced)
                self.fence_after = time.monotonic() + FENCE_RETRY
                continue
            changes.append((found, fenced_now(fenced)))
        metrics.fenced(done=len(changes), failed=len(todo) - len(changes))
        self.writes.vms_in_batches(changes)


def fenced_now(clients: list[str]) -> Edit[VM]:
    """The change that lets a VM be placed again, its disk's ``clients`` fenced."""

    def change(vm: VM) -> None:
        why = f"host {vm.fencing} died; " + (
            f"fenced its disk's clients {', '.join(clients)}"
            if clients
            else "no client had its disk open"
        )
        vm.fencing = ""
        vm.set_status(Status.KILLED, ME, why)

    return change
