"""Drains: a host an administrator put in maintenance is emptied by live migration.

For each host in maintenance the scheduler requests migrations of its RUNNING and SUSPENDED
VMs (a suspended one moves paused, memory and all: models.MIGRATABLE)
(``VM.migration = Migration(source, by="drain")``, phase REQUESTED, by compare-and-swap), at
most ``drain_parallel`` out of the host at once; the migration core (migrations.py and the
agents) chooses each target and moves the VM (see models.Migration). A VM is asked to move
only when some host that takes migrations has room for it now, by the placement filters over a
scratch copy of the capacity ledger that also holds the VMs requested but not yet given a
target; a VM with nowhere to go is reported (an event in its log, a reason in the host's
``drain`` record) and keeps running where it is, and is looked at again whenever hosts or
capacity change. A drain's migration that fails is asked again after the retry policy's
back-off.

Leaving maintenance takes nothing back: the drain record goes and no new migration is asked;
those in flight finish. VMs in other statuses on the host (SCHEDULED, CREATING, a crashed one
restarting, one being stopped, suspended or resumed) are counted and moved once settled
(stopped VMs hold no host). A suspended VM that arrived by a migration and has not run since
(VM.arrived_paused) is reported and moved once resumed: QEMU 7.2 cannot migrate it again.
"""

from __future__ import annotations

import dataclasses
import logging
import time

from ucloud.config import SchedulerSettings
from ucloud.mirror import Mirror
from ucloud.models import (
    VM,
    AdminState,
    Drain,
    Host,
    HostStatus,
    Migration,
    MigrationPhase,
)
from ucloud.retry import Backoff
from ucloud.scheduler import placement
from ucloud.scheduler.ledger import Ledger
from ucloud.scheduler.migrations import can_receive
from ucloud.scheduler.placement import Candidates
from ucloud.scheduler.writes import Edit, Writes
from ucloud.store import Versioned

log = logging.getLogger(__name__)

ME = "scheduler"
BY = "drain"  # Migration.by of the migrations a drain asks for
HELD = (
    "drain: not migrated: it arrived suspended, by a live migration, and has not run since "
    "(this QEMU cannot move it again before it runs); it is moved once resumed, or leaves "
    "the host once stopped"
)


class Drains:
    def __init__(
        self,
        settings: SchedulerSettings,
        backoff: Backoff,
        vms: Mirror[VM],
        hosts: Mirror[Host],
        ledger: Ledger,
        writes: Writes,
    ) -> None:
        self.settings = settings
        self.backoff = backoff
        self.vms = vms
        self.hosts = hosts
        self.ledger = ledger
        self.writes = writes
        self.dirty: set[str] = set()  # hosts to look at on the next pass
        self.untargeted: set[str] = set()  # VMs whose migration has no target yet (anyone's)
        self.failures: dict[str, int] = {}  # VM -> a drain's migrations failed in a row
        self.retry_at: dict[str, tuple[float, str]] = {}  # VM -> (monotonic time, its host)
        self.released = False  # a migration without a target ended: a VM may fit now

    # --- changes -------------------------------------------------------------------------------

    def vm_changed(self, id: str, old: VM | None, new: VM | None) -> None:
        for vm in (old, new):
            if vm is not None and vm.hostname:
                self.dirty.add(vm.hostname)
        if new is not None and new.migration is not None and not new.migration.target:
            self.untargeted.add(id)
        elif id in self.untargeted:
            self.untargeted.discard(id)
            self.released = True  # the room held for it in scratch() may be free again
        if new is None or (old is not None and new.hostname != old.hostname):
            self.failures.pop(id, None)  # moved (or gone): its drain is done
            self.retry_at.pop(id, None)
            return
        was = old.migration if old is not None else None
        if was is not None and was.by == BY and new.migration is None:
            # The core ended it and the VM stayed on its source: a failed migration.
            failures = self.failures.get(id, 0) + 1
            self.failures[id] = failures
            delay = self.backoff.delay(failures)
            self.retry_at[id] = (time.monotonic() + delay, new.hostname)
            log.warning("VM %s: drain migration failed (%d); again in %g s", id, failures, delay)

    def host_changed(self, name: str) -> None:
        self.dirty.add(name)

    def resync(self) -> None:
        self.dirty.update(self.hosts.items)

    # --- passes --------------------------------------------------------------------------------

    def step(self, hosts_changed: bool) -> None:
        """Look at the hosts whose VMs or record changed; at every draining host when capacity
        may have changed anywhere, or when a failed VM's back-off ran out."""
        if hosts_changed or self.released:
            self.released = False
            self.dirty.update(n for n, h in self.hosts.items.items() if _draining(h.value))
        now = time.monotonic()
        for when, host in self.retry_at.values():
            if when <= now:
                self.dirty.add(host)
        if not self.dirty:
            return
        for name in sorted(self.dirty):
            self.dirty.discard(name)
            found = self.hosts.get(name)
            if found is not None:
                self.drain_host(found)

    def drain_host(self, found: Versioned[Host]) -> None:
        host = found.value
        if host.admin_state != AdminState.MAINTENANCE:
            for id in [id for id, (_, on) in self.retry_at.items() if on == host.name]:
                del self.retry_at[id]  # no drain asks again
            if host.drain is not None:
                self.writes.host(found, _set_drain(None))  # out of maintenance: no drain
            return
        on = self.vms_on(host.name)
        migrating = [v for v in on if v.value.migration is not None]
        idle = [v for v in on if v.value.migration is None]
        movable = [v for v in idle if v.value.migratable()]
        # Suspended and moved here paused: its QEMU cannot move it again before it runs.
        held = [v for v in idle if v.value.arrived_paused]
        # Biggest first (first fit decreasing): small ones fill the gaps big ones leave.
        movable.sort(key=lambda v: (-v.value.specs.ram, -v.value.specs.cpu, v.value.uuid))
        up = host.status == HostStatus.UP and host.name in self.ledger.alive.items
        slots = self.settings.drain_parallel - len(migrating) if up else 0
        scratch = self.scratch()
        blocked: list[tuple[Versioned[VM], str]] = []
        failing = 0
        asked: list[Versioned[VM]] = []
        now = time.monotonic()
        for v in movable:
            target, why = placement.choose(v.value, scratch)
            if target is None:
                blocked.append((v, why))
                continue
            target.used = target.used + v.value.specs  # held for it in this pass
            waits = self.retry_at.get(v.value.uuid)
            if waits is not None and waits[0] > now:
                failing += 1
                continue
            self.retry_at.pop(v.value.uuid, None)  # its back-off ran out (or it had none)
            if slots > 0:
                asked.append(v)
                slots -= 1
        for v in asked:
            if self.writes.vm(v, asked_to_move(host.name)):
                log.info("drain of %s: asked to migrate VM %s", host.name, v.value.uuid)
        for v, why in blocked:
            self.report(v, f"drain: no host has room: {why}")
        for v in held:
            self.report(v, HELD)
        reason = ""
        if blocked:
            v, why = blocked[0]
            reason = f"VM {v.value.uuid} ({v.value.name}) has nowhere to go: {why}"
        elif failing:
            reason = f"{failing} VM(s) failed to migrate; tried again after a back-off"
        elif held:
            reason = (
                f"{len(held)} VM(s) arrived suspended by a migration and have not run since: "
                "moved once resumed, gone once stopped"
            )
        self.write_progress(
            found,
            Drain(
                remaining=len(on),
                migrating=len(migrating) + len(asked),
                blocked=len(blocked),
                failing=failing,
                suspended=len(held),
                reason=reason,
            ),
        )

    def vms_on(self, name: str) -> list[Versioned[VM]]:
        """The VMs placed on the host (not those migrating to it)."""
        return [
            v
            for id in self.ledger.vms_on(name)
            if (v := self.vms.get(id)) is not None and v.value.hostname == name
        ]

    def scratch(self) -> Candidates:
        """The placement candidates, on copies of their states, with the capacity of the VMs
        whose migration has no target yet held where they would go: what a pass may use."""
        pool = self.ledger.candidates()
        copies = [dataclasses.replace(h) for h in pool.hosts if can_receive(h)]
        rejected = pool.rejected.copy()
        rejected["takes no migrations"] += len(pool.hosts) - len(copies)
        scratch = Candidates(copies, +rejected)
        for id in sorted(self.untargeted):
            found = self.vms.get(id)
            if found is None or found.value.migration is None:
                continue
            target, _ = placement.choose(found.value, scratch)
            if target is not None:
                target.used = target.used + found.value.specs
        scratch.start = 0
        return scratch

    def report(self, found: Versioned[VM], message: str) -> None:
        """An event in the VM's log, once for each new reason (its last drain event says it)."""
        last = next((e for e in reversed(found.value.log) if e.message.startswith("drain:")), None)
        if last is not None and last.message == message:
            return
        log.warning("VM %s: %s", found.value.uuid, message)
        self.writes.vm(found, lambda vm: vm.record(ME, message))

    def write_progress(self, found: Versioned[Host], now: Drain) -> None:
        """The host's drain record, written only when a figure changed."""
        old = found.value.drain
        if old is None:
            drain = now.model_copy(update={"total": now.remaining})
        else:
            # VMs that arrived since (placed before maintenance, seen now) count as more to do.
            total = old.total + max(0, now.remaining - old.remaining)
            drain = now.model_copy(update={"total": total, "since": old.since})
        if drain != old:
            self.writes.host(found, _set_drain(drain))


def _draining(host: Host) -> bool:
    return host.admin_state == AdminState.MAINTENANCE or host.drain is not None


def _set_drain(drain: Drain | None) -> Edit[Host]:
    def change(host: Host) -> None:
        host.drain = drain

    return change


def asked_to_move(host: str) -> Edit[VM]:
    """The change that asks the migration core to move a VM off ``host`` (in maintenance)."""

    def change(vm: VM) -> None:
        vm.migration = Migration(source=vm.hostname, by=BY, phase=MigrationPhase.REQUESTED)
        vm.record(ME, f"drain: live migration requested (host {host} is in maintenance)")

    return change
