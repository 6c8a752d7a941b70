"""A VM's disks as a host makes them: the system disk (a clone of its image) and, when its
specs ask for ``hdd`` GiB, an empty second disk in the HDD pool.

Both are named in the compare-and-swap that claims the VM's start (CREATING), before either
is made or opened: fencing and deletion act on what the record names (docs/design-decisions.md,
"Fencing: the rule"), so a disk the record does not name was never made.
"""

from __future__ import annotations

from ucloud.config import Settings
from ucloud.models import VM

HDD_TARGET = "vdb"  # the guest's second virtio disk


def claimed(vm: VM, settings: Settings) -> dict[str, str]:
    """The fields a claim writes: the system disk's name, and the HDD disk's name and pool
    if the VM has one (a VM claimed before keeps the names it has)."""
    fields = {"disk": vm.disk_name}
    if vm.specs.hdd > 0 and not vm.hdd_disk:
        fields["hdd_disk"] = f"{vm.uuid}-hdd"
        # The pool itself, not "the setting": a later change of the setting must not lose it.
        fields["hdd_pool"] = settings.hdd_pool or settings.ceph_pool
    return fields
