"""For tests of the scheduler alone on a real etcd: hosts whose agent the test plays (a host
record and an alive key on a lease), and VMs written straight to the store."""

from __future__ import annotations

from tests.servers import wait_for
from ucloud.models import VM, Alive, Host, Specs, Status
from ucloud.store import Store


class FakeAgent:
    """What a host agent does for liveness: a host record, and an alive key on a lease.
    (The real agent is ucloud-host; these tests drive the scheduler alone.)"""

    def __init__(
        self, store: Store, name: str, cpu: int = 4, ram: float = 8, register: bool = True
    ):
        self.store, self.name = store, name
        if register:
            store.create(Host(name=name, capacity=Specs(cpu=cpu, ram=ram)))
        self.keepalive = store.hold_lease(store.settings.host_lease_ttl, lambda: None)
        store.put_owned(Alive(name=name), self.keepalive.lease)

    def die(self) -> None:
        """Stop renewing: the alive key goes when the lease expires."""
        self.keepalive.stop()


def new_vm(store: Store, cpu: int = 1, ram: float = 1, name: str = "vm") -> VM:
    vm = VM(
        name=name, owner="alice", owner_realm="users", specs=Specs(cpu=cpu, ram=ram), image="img"
    )
    store.create(vm)
    return vm


def vm_of(store: Store, vm: VM) -> VM:
    return store.get(VM, vm.uuid).value


def wait_status(store: Store, vm: VM, status: Status, timeout: float = 10) -> VM:
    return wait_for(
        lambda: (v := vm_of(store, vm)).status == status and v,
        timeout,
        f"VM {vm.name} to be {status}",
    )
