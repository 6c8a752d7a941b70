"""The scheduler's writes: guarded compare-and-swaps, mirrored as soon as they succeed.

Every write carries the leadership Guard, so a deposed scheduler cannot write. A write that
loses a race is dropped: the watch brings what changed, and the part that wrote looks again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ucloud.mirror import Diff, Mirror
from ucloud.models import VM, Host
from ucloud.store import MAX_TXN_OPS, Guard, Store, Versioned

BATCH = MAX_TXN_OPS - 1  # one compare is the leadership guard


class Deposed(Exception):
    """Another scheduler leads now."""


class Writes:
    def __init__(
        self,
        store: Store,
        guard: Guard | None,
        vms: Mirror[VM],
        hosts: Mirror[Host],
        on_vm: Callable[[Diff[VM]], None],
        on_host: Callable[[str], None],
    ) -> None:
        self.store = store
        self.guard = guard
        self.vms = vms
        self.hosts = hosts
        self.on_vm = on_vm
        self.on_host = on_host

    def vm(self, vm: VM, mod_revision: int) -> bool:
        revision = self.store.swap_many([(vm, mod_revision)], self.guard)
        if revision is None:
            self.check_guard()
            return False
        self.on_vm(self.vms.put_local(vm.uuid, vm, revision))
        return True

    def vms_in_batches(self, writes: Sequence[tuple[VM, int]]) -> None:
        """Many VMs, BATCH to a transaction; a batch that loses a race is written one VM at a
        time, and those that changed meanwhile are left to the watch."""
        for start in range(0, len(writes), BATCH):
            chunk = writes[start : start + BATCH]
            revision = self.store.swap_many(chunk, self.guard)
            if revision is None:
                self.check_guard()
                for vm, mod_revision in chunk:
                    self.vm(vm, mod_revision)
                continue
            for vm, _ in chunk:
                self.on_vm(self.vms.put_local(vm.uuid, vm, revision))

    def delete_vm(self, found: Versioned[VM]) -> bool:
        if not self.store.delete(VM, found.value.uuid, found.mod_revision, self.guard):
            self.check_guard()
            return False
        if (diff := self.vms.drop_local(found.value.uuid)) is not None:
            self.on_vm(diff)
        return True

    def host(self, host: Host, mod_revision: int) -> bool:
        revision = self.store.swap_many([(host, mod_revision)], self.guard)
        if revision is None:
            self.check_guard()
            return False
        self.hosts.put_local(host.name, host, revision)
        self.on_host(host.name)
        return True

    def check_guard(self) -> None:
        """Raise Deposed if this scheduler no longer leads (a write failed: maybe that is why)."""
        if self.guard is not None and not self.store.holds(self.guard):
            raise Deposed()
