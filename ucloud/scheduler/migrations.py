"""Live migrations, the scheduler's part: choose each requested migration's target (REQUESTED
→ SCHEDULED) with the placement filters and weighers, the source excluded, its capacity then
held on both hosts by the Ledger; and give up migrations that cannot go on: no host fits, the
VM is no longer running (or suspended) where it was, a host left, the target did not prepare
in time.

The agents do the rest (see docs/design-decisions.md, "Live migration and drains"). Once the
source agent has begun (MIGRATING) the VM may be on either host: only the agents, which ask
their libvirtds, end such a migration. A source that dies then is the target agent's to settle
(it keeps the VM if it runs it, else lets it go): HostLifecycle waits for it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from ucloud.config import SchedulerSettings
from ucloud.mirror import Mirror
from ucloud.models import VM, Host, HostStatus, MigrationPhase
from ucloud.scheduler import metrics, placement
from ucloud.scheduler.ledger import Ledger
from ucloud.scheduler.writes import Writes
from ucloud.store import Versioned

log = logging.getLogger(__name__)

ME = "scheduler"


def can_receive(h: placement.HostState) -> bool:
    """A target must have published where peers send a migration."""
    return bool(h.host.migration_uri)


class Migrations:
    def __init__(
        self,
        settings: SchedulerSettings,
        vms: Mirror[VM],
        hosts: Mirror[Host],
        ledger: Ledger,
        writes: Writes,
    ) -> None:
        self.settings = settings
        self.vms = vms
        self.hosts = hosts
        self.ledger = ledger
        self.writes = writes
        self.todo: set[str] = set()
        self.active: set[str] = set()  # VMs with a migration, looked at again when hosts change
        self.next_deadline_check = 0.0

    def vm_changed(self, id: str, new: VM | None) -> None:
        if new is None or new.migration is None:
            self.todo.discard(id)
            self.active.discard(id)
            return
        self.active.add(id)
        self.todo.add(id)

    def step(self, hosts_changed: bool) -> None:
        if hosts_changed or time.monotonic() >= self.next_deadline_check:
            self.todo.update(self.active)
            self.next_deadline_check = time.monotonic() + 1.0
        for id in list(self.todo):
            self.todo.discard(id)
            found = self.vms.get(id)
            if found is not None and found.value.migration is not None:
                self.look_at(found)

    def look_at(self, found: Versioned[VM]) -> None:
        vm = found.value
        m = vm.migration
        assert m is not None
        if m.phase == MigrationPhase.MIGRATING:
            return  # the agents' to end; a dead source: HostLifecycle waits for the target
        why = self.stale(vm)
        if why:
            self.give_up(found, why)
        elif m.phase == MigrationPhase.REQUESTED:
            self.schedule(found)
        elif time.time() - m.phase_since > self.settings.migration_prepare_deadline:
            self.give_up(
                found,
                f"not begun {self.settings.migration_prepare_deadline:g} s after it was "
                f"{m.phase} (target {m.target})",
            )

    def stale(self, vm: VM) -> str:
        """Why a migration not yet begun cannot go on, or ''."""
        m = vm.migration
        assert m is not None
        if vm.hostname != m.source:
            return f"the VM is no longer on {m.source}"
        if vm.arrived_paused:
            return "the VM " + vm.unmigratable()
        if not vm.migratable():  # a user's action came first: it is carried out where it is
            return f"the VM is {vm.status}, wanted {vm.desired}"
        if m.abort:
            return "aborted"
        for name in (m.source, m.target):
            host = self.hosts.get(name) if name else None
            if name and (host is None or host.value.status == HostStatus.DEAD):
                return f"host {name} is down"
        return ""

    def schedule(self, found: Versioned[VM]) -> None:
        vm = found.value
        m = vm.migration
        assert m is not None
        hosts = [
            h
            for h in self.ledger.host_states()
            if h.name != m.source and (not m.target or h.name == m.target)
        ]
        if m.target and not hosts:
            self.give_up(found, f"no host {m.target}")
            return
        refused = [h.name for h in hosts if not can_receive(h)]
        pool = placement.candidates(h for h in hosts if can_receive(h))
        pool.rejected["takes no migrations"] += len(refused)
        chosen, why = placement.choose(vm, pool)
        if chosen is None:
            self.give_up(found, why)
            return
        target = chosen.name

        def scheduled(vm: VM) -> None:
            assert vm.migration is not None
            vm.migration = vm.migration.model_copy(
                update={
                    "target": target,
                    "phase": MigrationPhase.SCHEDULED,
                    "phase_since": time.time(),
                }
            )
            vm.record(ME, f"migration scheduled: {m.source} -> {target}")

        # Only while the target is as chosen (not put in maintenance meanwhile: see Writes).
        if self.writes.vm(found, scheduled, [chosen.as_read]):
            log.info("VM %s: migration %s -> %s scheduled", vm.uuid, m.source, target)
            metrics.migration_counted("scheduled")

    def give_up(self, found: Versioned[VM], why: str) -> None:
        if self.writes.vm(found, cleared(f"migration given up: {why}")):
            log.warning("VM %s: migration given up: %s", found.value.uuid, why)
            metrics.migration_counted("failed")


def cleared(message: str, by: str = ME) -> Callable[[VM], None]:
    """The change that ends a migration without moving the VM (it stays on its source)."""

    def change(vm: VM) -> None:
        vm.migration = None
        vm.record(by, message)

    return change
