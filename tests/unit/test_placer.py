"""Placements decided from a stale view of a host (ucloud/scheduler/placer.py, writes.py):
hosts and VMs reach the scheduler on two watches, so it may see a VM before a change of its
host that etcd made first. The in-memory store delivers changes only when told, so a test can
hold the host's change back and let the scheduler act on the VM alone. (On a real etcd, with
the real watches racing: tests/test_scheduler.py.)"""

from __future__ import annotations

from typing import Any, cast

from tests.unit.memstore import MemStore
from ucloud.config import Settings
from ucloud.models import (
    VM,
    AdminState,
    Alive,
    Host,
    HostStatus,
    Migration,
    MigrationPhase,
    Specs,
    Status,
)
from ucloud.scheduler.daemon import Scheduler
from ucloud.store import Store, Versioned, edited


class NoStorage:
    def fence_disk(self, disk: str, pool: str = "") -> list[str]:
        return []


def add_host(store: MemStore, name: str, ram: float = 8) -> None:
    store.create(
        Host(
            name=name,
            capacity=Specs(cpu=8, ram=ram),
            status=HostStatus.UP,
            migration_uri=f"qemu+tcp://{name}/system",
        )
    )
    store.create(Alive(name=name))


def new_vm(name: str = "vm", **fields: Any) -> VM:
    return VM(
        name=name,
        owner="alice",
        owner_realm="users",
        specs=Specs(cpu=1, ram=1),
        image="i",
        **fields,
    )


def start(store: MemStore) -> Scheduler:
    guard = store.elect()  # its compare counts against etcd's limits too
    s = Scheduler(cast(Store, store), Settings(), guard, NoStorage())  # type: ignore[arg-type]
    s.start()
    s.drain(0)
    return s


def into_maintenance(host: Versioned[Host]) -> Host:
    return edited(host, lambda h: setattr(h, "admin_state", AdminState.MAINTENANCE))


def deliver_all_but_hosts(store: MemStore, s: Scheduler) -> list[Any]:
    """What the watches bring, but the hosts' changes: returned, not delivered."""
    store.flush()
    held = []
    while not s.inbox.empty():
        item = s.inbox.get_nowait()
        if item.kind is Host:
            held.append(item)
        else:
            s.deliver(item)
    return held


def hosts_written(store: MemStore, id: str) -> set[str]:
    return {vm.hostname for vm in store.writes_of(VM, id) if vm is not None and vm.hostname}


def test_a_vm_placed_from_a_stale_view_of_its_host_is_placed_again_elsewhere():
    store = MemStore()
    add_host(store, "big", ram=64)  # the one spreading prefers
    add_host(store, "small", ram=8)
    s = start(store)
    big = store.get(Host, "big")
    assert big is not None
    vm = new_vm()
    # The maintenance and the VM in one transaction; the scheduler sees only the VM.
    assert store.commit(create=[vm], swap=[(into_maintenance(big), big)]) is not None
    held = deliver_all_but_hosts(store, s)
    assert held, "the host's change was not held back: the test tests nothing"

    s.step()
    # Its placement on big compared big as the scheduler saw it, and failed; big was read again.
    assert vm.uuid not in {id for id, v in store.list(VM)[0].items() if v.value.hostname}
    seen = s.hosts.get("big")
    assert seen is not None and seen.value.admin_state == AdminState.MAINTENANCE

    s.step()
    placed = store.get(VM, vm.uuid)
    assert placed is not None
    assert (placed.value.status, placed.value.hostname) == (Status.SCHEDULED, "small")
    assert hosts_written(store, vm.uuid) == {"small"}
    for item in held:  # the late watch event changes nothing
        s.deliver(item)
    s.step()
    assert hosts_written(store, vm.uuid) == {"small"}


def test_a_vm_with_only_a_stale_host_to_go_to_waits_with_the_reason():
    store = MemStore()
    add_host(store, "only")
    s = start(store)
    only = store.get(Host, "only")
    assert only is not None
    vm = new_vm()
    assert store.commit(create=[vm], swap=[(into_maintenance(only), only)]) is not None
    deliver_all_but_hosts(store, s)
    s.step()
    s.step()
    found = store.get(VM, vm.uuid)
    assert found is not None
    assert (found.value.status, found.value.hostname) == (Status.PENDING, "")
    assert found.value.reason == "no host fits 1 CPU, 1 GiB RAM, 0 GiB disk: 1 in maintenance"
    assert hosts_written(store, vm.uuid) == set()


def test_batches_compare_every_host_they_use_and_stay_within_etcds_limits():
    """150 VMs over 80 hosts in one pass: batches of many VMs on many hosts (the store
    double refuses a transaction of more than etcd's 128 compares or operations), one host
    put in maintenance in the transaction that created the VMs."""
    store = MemStore()
    names = [f"h{i:02d}" for i in range(80)]
    for name in names:
        add_host(store, name, ram=64)
    s = start(store)
    doomed = store.get(Host, "h00")
    assert doomed is not None
    vms = [new_vm(f"vm{i}") for i in range(150)]
    assert store.commit(create=vms[:100], swap=[(into_maintenance(doomed), doomed)]) is not None
    for vm in vms[100:]:
        store.create(vm)
    deliver_all_but_hosts(store, s)
    for _ in range(3):
        s.step()
    placed = {id: v.value.hostname for id, v in store.list(VM)[0].items()}
    assert all(placed[vm.uuid] for vm in vms), "every VM placed"
    assert "h00" not in placed.values()
    assert all(hosts_written(store, vm.uuid) <= set(names[1:]) for vm in vms)
    assert len(set(placed.values())) == 79  # spread over every other host


def test_a_migration_target_chosen_from_a_stale_view_is_chosen_again():
    store = MemStore()
    add_host(store, "src")
    add_host(store, "big", ram=64)
    add_host(store, "spare")
    s = start(store)
    vm = new_vm(status=Status.RUNNING, hostname="src")
    store.create(vm)
    s.drain(0)
    store.flush()
    s.drain(0)
    found, big = store.get(VM, vm.uuid), store.get(Host, "big")
    assert found is not None and big is not None
    asked = edited(found, lambda v: setattr(v, "migration", Migration(source="src")))
    assert store.commit(swap=[(asked, found), (into_maintenance(big), big)]) is not None
    deliver_all_but_hosts(store, s)
    s.step()
    s.step()
    now = store.get(VM, vm.uuid)
    assert now is not None and now.value.migration is not None
    assert (now.value.migration.phase, now.value.migration.target) == (
        MigrationPhase.SCHEDULED,
        "spare",
    )
    targets = {
        v.migration.target for v in store.writes_of(VM, vm.uuid) if v and v.migration is not None
    }
    assert targets == {"", "spare"}
