"""The scheduler's writes: guarded compare-and-swaps, mirrored as soon as they succeed.

Every write carries the leadership Guard, so a deposed scheduler cannot write. A write that
loses a race is dropped: the watch brings what changed, and the part that wrote looks again.

A write decided from hosts (a placement, a migration's target) also compares each host's record
as the scheduler read it: hosts and VMs come on two watches, so a VM may be seen before a change
of its host that etcd made first (a maintenance, a DEAD status). Such a write fails, and the
hosts are read again from etcd at once, so the next try decides from the host as it is.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ucloud.mirror import Diff, Mirror
from ucloud.models import VM, Host
from ucloud.store import MAX_TXN_OPS, Guard, IndexFix, M, Store, Versioned, edited

# VMs a transaction: each is a put and, when its host changes, one placement index entry put or
# deleted (the scheduler never moves a VM from one host straight to another: that would be a
# third operation). One compare more is the leadership guard, and one for each host a batch of
# placements was decided from (see fits).
BATCH = MAX_TXN_OPS // 2


def fits(vms: int, hosts: int) -> bool:
    """Whether a transaction of ``vms`` VMs written, compared with ``hosts`` host records as
    read and the guard, stays within etcd's operations a transaction."""
    return vms <= BATCH and vms + hosts + 1 <= MAX_TXN_OPS


Edit = Callable[[M], object]  # changes an object in place (see ucloud.store.edited)


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

    def vm(self, was: Versioned[VM], edit: Edit[VM], hosts: Sequence[Versioned[Host]] = ()) -> bool:
        """Change a VM as read (Store.swap_edited, guarded) and mirror it; if ``hosts`` are
        given (the change was decided from them), only while they are still as read."""
        return self._vm(edited(was, edit), was, hosts)

    def _vm(self, vm: VM, was: Versioned[VM], hosts: Sequence[Versioned[Host]] = ()) -> bool:
        revision = self.transaction([(vm, was)], hosts)
        if revision is None:
            return False
        self.on_vm(self.vms.put_local(vm.uuid, vm, revision))
        return True

    def transaction(
        self, writes: Sequence[tuple[VM, Versioned[VM]]], hosts: Sequence[Versioned[Host]] = ()
    ) -> int | None:
        """VMs written over as read, guarded, in one transaction, while every host of ``hosts``
        is still as read; the new revision (nothing mirrored yet), or None if anything changed.
        Then the hosts are read again (a changed one is mirrored and told as a change): the
        watch may bring it later than the caller's next try. Raises Deposed."""
        revision = self.store.commit(swap=writes, unchanged=hosts, guard=self.guard)
        if revision is None:
            self.check_guard()
            self.reread_hosts(hosts)
        return revision

    def reread_hosts(self, hosts: Sequence[Versioned[Host]]) -> None:
        """Take etcd's word for each host that changed since it was read as in ``hosts``."""
        for was in hosts:
            name = was.value.name
            fresh = self.store.get(Host, name)
            if fresh is not None and fresh.mod_revision == was.mod_revision:
                continue
            mirrored = self.hosts.get(name)
            if fresh is None:
                if self.hosts.drop_local(name) is not None:
                    self.on_host(name)
            elif mirrored is None or mirrored.mod_revision < fresh.mod_revision:
                self.hosts.put_local(name, fresh.value, fresh.mod_revision)
                self.on_host(name)

    def vms_in_batches(self, changes: Sequence[tuple[Versioned[VM], Edit[VM]]]) -> None:
        """Many VMs changed as read, BATCH to a transaction; a batch that loses a race is
        written one VM at a time, and those that changed meanwhile are left to the watch."""
        writes = [(edited(was, edit), was) for was, edit in changes]
        for start in range(0, len(writes), BATCH):
            chunk = writes[start : start + BATCH]
            revision = self.store.swap_many(chunk, self.guard)
            if revision is None:
                self.check_guard()
                for vm, was in chunk:
                    self._vm(vm, was)
                continue
            for vm, _ in chunk:
                self.on_vm(self.vms.put_local(vm.uuid, vm, revision))

    def delete_vm(self, found: Versioned[VM]) -> bool:
        if not self.store.delete(found, self.guard):
            self.check_guard()
            return False
        if (diff := self.vms.drop_local(found.value.uuid)) is not None:
            self.on_vm(diff)
        return True

    def host(self, was: Versioned[Host], edit: Edit[Host]) -> bool:
        host = edited(was, edit)
        revision = self.store.swap_many([(host, was)], self.guard)
        if revision is None:
            self.check_guard()
            return False
        self.hosts.put_local(host.name, host, revision)
        self.on_host(host.name)
        return True

    def fix_index(self, fixes: Sequence[IndexFix]) -> None:
        """Index fixes, as many to a transaction as etcd takes; a batch that fails is tried
        one fix at a time, and those whose VM changed meanwhile are left to the next pass."""
        batch: list[IndexFix] = []
        ops = 0
        for fix in [*fixes, None]:
            size = len(fix.put) + len(fix.delete) if fix is not None else 0
            if batch and (fix is None or len(batch) == BATCH or ops + size > MAX_TXN_OPS):
                if not self.store.fix_index(VM, batch, self.guard):
                    self.check_guard()
                    for one in batch:
                        self.store.fix_index(VM, [one], self.guard)
                batch, ops = [], 0
            if fix is not None:
                batch.append(fix)
                ops += size

    def check_guard(self) -> None:
        """Raise Deposed if this scheduler no longer leads (a write failed: maybe that is why)."""
        if self.guard is not None and not self.store.holds(self.guard):
            raise Deposed()
