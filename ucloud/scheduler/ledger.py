"""The scheduler's one capacity ledger (Nova's HostManager, smaller): what each host offers,
which VMs are placed on it and what they use, kept in step with the watch, never re-listed.

A host's usage lives in exactly one place: its HostState while the host has a record, else
(VMs placed on a host whose record is gone, or not yet seen) in ``unknown``.
"""

from __future__ import annotations

from ucloud.config import SchedulerSettings
from ucloud.mirror import Mirror
from ucloud.models import VM, ZERO, Alive, Host, Specs
from ucloud.scheduler import placement
from ucloud.scheduler.placement import HostState


class Ledger:
    def __init__(
        self, settings: SchedulerSettings, hosts: Mirror[Host], alive: Mirror[Alive]
    ) -> None:
        self.settings = settings
        self.hosts = hosts
        self.alive = alive
        self.states: dict[str, HostState] = {}  # hosts with a record
        self.unknown: dict[str, Specs] = {}  # usage on hosts without a record
        self.placed: dict[str, set[str]] = {}  # host name -> its VMs
        self.stale: set[str] = set()  # hosts whose record or alive key changed
        self.pool: placement.Candidates | None = None  # None: rebuild from states
        # Set when capacity may have been freed or a host changed: VMs that fit nowhere, and
        # deletions waiting for a live host, are worth another try (see take_changed).
        self.changed = False

    # --- changes -------------------------------------------------------------------------------

    def vm_changed(self, id: str, old: VM | None, new: VM | None) -> None:
        if old is not None and old.hostname:
            self._use(old.hostname, -1, old.specs)
            self.placed.get(old.hostname, set()).discard(id)
        if new is not None and new.hostname:
            self._use(new.hostname, 1, new.specs)
            self.placed.setdefault(new.hostname, set()).add(id)
        if old is not None and old.hostname and (new is None or new.hostname != old.hostname):
            self.changed = True
        # A migration holds the VM's specs on its target too, from when the scheduler chose
        # the target until it is over (the VM is then placed there, or stays where it was).
        held = old.migrating_to if old is not None else ""
        holds = new.migrating_to if new is not None else ""
        if held:
            self._use(held, -1, old.specs)  # type: ignore[union-attr]
        if holds:
            self._use(holds, 1, new.specs)  # type: ignore[union-attr]
        if held and held != holds:
            self.changed = True

    def host_changed(self, name: str) -> None:
        """The host's record or alive key changed."""
        self.stale.add(name)
        self.changed = True

    def everything_changed(self) -> None:
        self.stale.update(self.hosts.items)
        self.stale.update(self.states)
        self.changed = True

    def _use(self, host: str, sign: int, specs: Specs) -> None:
        state = self.states.get(host)
        used = state.used if state is not None else self.unknown.get(host, ZERO)
        used = used + specs if sign > 0 else used - specs
        if state is not None:
            state.used = used
        else:
            self.unknown[host] = used

    def take_changed(self) -> bool:
        """Whether capacity may have been freed or a host changed since the last call."""
        changed, self.changed = self.changed, False
        return changed

    # --- reads ---------------------------------------------------------------------------------

    def vms_on(self, host: str) -> set[str]:
        return self.placed.get(host, set())

    def host_states(self) -> list[HostState]:
        self._refresh()
        return list(self.states.values())

    def candidates(self) -> placement.Candidates:
        """The hosts that pass the host filters, kept until a host changes."""
        self._refresh()
        if self.pool is None:
            self.pool = placement.candidates(self.states.values())
        return self.pool

    def least_loaded_up_host(self) -> str | None:
        up = [h for h in self.host_states() if placement.is_up(h)]
        if not up:
            return None
        return min(up, key=lambda h: len(self.vms_on(h.name))).name

    def _refresh(self) -> None:
        """Bring the states of the hosts that changed up to date (and drop the pool)."""
        if not self.stale:
            return
        for name in self.stale:
            found = self.hosts.get(name)
            old = self.states.pop(name, None)
            used = old.used if old is not None else self.unknown.pop(name, ZERO)
            if found is None:
                if self.placed.get(name):
                    self.unknown[name] = used
                continue
            state = HostState.of(
                found.value, name in self.alive.items, self.settings, found.mod_revision
            )
            state.used = used
            self.states[name] = state
        self.stale.clear()
        self.pool = None
