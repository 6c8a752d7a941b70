"""The placement index made whole: every VM whose record names a host has its entry under that
host's folder (``<prefix>/placement/<host>/<vm>``, what the host's agent follows), and there is
no other entry.

Every write keeps the index in step by itself (Store.swap_many writes a VM and its entry in one
transaction). What no write kept in step: VMs placed before the index existed (a cluster
upgraded to it), and writes of a daemon from before it (during a rolling upgrade). So the
leader, when it starts to lead and at each resync, lists the index (keys only) and, from its
VM mirror, puts the entries missing and deletes the stray ones, each only while its VM is still
as the mirror has it (compared on its mod_revision; 0 for a VM the mirror does not have), under
the leadership guard. A VM that changed meanwhile is left to the next pass.
"""

from __future__ import annotations

import logging

from ucloud.mirror import Mirror
from ucloud.models import PLACEMENT, VM, placement_key
from ucloud.scheduler.writes import Writes
from ucloud.store import IndexFix

log = logging.getLogger(__name__)


class PlacementIndex:
    def __init__(self, vms: Mirror[VM], writes: Writes) -> None:
        self.vms = vms
        self.writes = writes

    def repair(self) -> None:
        entries, _ = self.writes.store.list_index(f"{PLACEMENT}/")
        listed: dict[str, set[str]] = {}  # VM id -> the hosts whose folder names it
        for path in entries:
            host, _, id = path.partition("/")
            listed.setdefault(id, set()).add(host)
        fixes = []
        for id, found in self.vms.items.items():
            # Its host's, and a migration's target's (models.VM.index_keys).
            hosts = placed_on(found.value)
            have = listed.pop(id, set())
            put = tuple(placement_key(h, id) for h in sorted(hosts - have))
            delete = tuple(placement_key(h, id) for h in sorted(have - hosts))
            if put or delete:
                fixes.append(IndexFix(id, found.mod_revision, put, delete))
        for id, hosts in listed.items():
            if VM.is_id(id):  # entries of a VM that does not exist (if it still does not)
                fixes.append(IndexFix(id, 0, (), tuple(placement_key(h, id) for h in hosts)))
        if fixes:
            log.warning("placement index: fixing the entries of %d VM(s)", len(fixes))
            self.writes.fix_index(fixes)


def placed_on(vm: VM) -> set[str]:
    """The hosts whose placement folder names ``vm``, as its own writes keep them."""
    folder = f"{PLACEMENT}/"
    return {k[len(folder) :].partition("/")[0] for k in vm.index_keys() if k.startswith(folder)}
