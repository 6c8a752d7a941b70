"""Networks whose deletion was accepted while VMs were still on them (their owner was deleted
with all they own): each is deleted when its last VM goes.

Woken by the deletion of a VM that had ports; every such network is looked at again at each
resync, so one whose last VM went while no scheduler led (or etcd was away) still goes. The
API deletes one at once if nothing is attached when it accepts the deletion; either side looks
after its own change, so one of them always sees the network both accepted and unused.
"""

from __future__ import annotations

import logging

from ucloud.models import VM, Network
from ucloud.network import ports
from ucloud.store import Guard, Store

log = logging.getLogger(__name__)


class DeletedNetworks:
    def __init__(self, store: Store, guard: Guard | None) -> None:
        self.store = store
        self.guard = guard
        self.todo: set[str] = set()
        self.everything = True  # at start: then at each resync

    def vm_changed(self, before: VM | None, after: VM | None) -> None:
        if before is not None and after is None:
            self.todo.update(before.networks)

    def resync(self) -> None:
        self.everything = True

    def step(self) -> None:
        # What is looked at is forgotten only once done: etcd going away retries it.
        if self.everything:
            listed, _ = self.store.list(Network)
            self.todo.update(id for id, n in listed.items() if n.value.deleted)
            self.everything = False
        for id in list(self.todo):
            found = self.store.get(Network, id)
            if found is not None and ports.remove_if_unused(self.store, found, self.guard):
                log.info("network %s (%s) deleted: its last VM is gone", found.value.name, id)
            self.todo.discard(id)
