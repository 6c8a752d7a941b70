"""Chores of VMs without a host: no agent looks after them, so the scheduler takes their
desired state's step. A VM to stop becomes STOPPED; a VM to delete that never had a disk is
deleted; one with a disk is handed to a live host, whose agent removes the disk, then the VM.
"""

from __future__ import annotations

import logging

from ucloud.mirror import Mirror
from ucloud.models import VM, Desired, Status
from ucloud.scheduler.ledger import Ledger
from ucloud.scheduler.writes import Writes
from ucloud.store import Versioned

log = logging.getLogger(__name__)

ME = "scheduler"


def needs_chore(vm: VM) -> bool:
    if vm.hostname or vm.fencing:
        return False
    if vm.desired == Desired.DELETED:
        return True
    return vm.desired == Desired.STOPPED and vm.status != Status.STOPPED


class Chores:
    def __init__(self, vms: Mirror[VM], ledger: Ledger, writes: Writes) -> None:
        self.vms = vms
        self.ledger = ledger
        self.writes = writes
        self.todo: set[str] = set()
        self.homeless: set[str] = set()  # deleted VMs with a disk, waiting for a live host

    def vm_changed(self, id: str, new: VM | None) -> None:
        self.todo.discard(id)
        self.homeless.discard(id)
        if new is not None and needs_chore(new):
            self.todo.add(id)

    def step(self, hosts_changed: bool) -> None:
        if hosts_changed:
            # A host coming up may let a deleted VM's disk be removed.
            self.todo.update(self.homeless)
            self.homeless.clear()
        for id in list(self.todo):
            self.todo.discard(id)
            found = self.vms.get(id)
            if found is None or not needs_chore(found.value):
                continue
            vm = found.value
            if vm.desired == Desired.DELETED:
                if vm.disk:
                    if not self.hand_over_for_deletion(found):
                        self.homeless.add(id)
                elif self.writes.delete_vm(found):
                    log.info("VM %s deleted (it never had a disk)", id)
            else:

                def stopped(vm: VM) -> None:
                    vm.set_status(Status.STOPPED, ME)
                    vm.observed_generation = vm.generation

                self.writes.vm(found, stopped)

    def hand_over_for_deletion(self, found: Versioned[VM]) -> bool:
        """A VM with a disk but no host: a live host agent removes the disk, then the VM.
        False if no host is up (retried when hosts change)."""
        host = self.ledger.least_loaded_up_host()
        if host is None:
            return False

        def deleting(vm: VM) -> None:
            vm.hostname = host
            vm.set_status(Status.DELETING, ME, f"host {host} removes its disk")

        self.writes.vm(found, deleting)
        return True
