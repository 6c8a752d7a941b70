"""The scheduler's part of live migrations (ucloud/scheduler/migrations.py, the Ledger, and
HostLifecycle's dead-host rule for migrating VMs), on hosts made in memory."""

from __future__ import annotations

from typing import cast

import pytest
from prometheus_client import REGISTRY

from tests.unit.memstore import MemStore
from ucloud.config import Settings
from ucloud.models import (
    VM,
    AdminState,
    Alive,
    Desired,
    Host,
    HostStatus,
    Migration,
    MigrationPhase,
    Specs,
    Status,
)
from ucloud.scheduler.daemon import Scheduler
from ucloud.store import Store


class NoStorage:
    def fence_disk(self, disk: str, pool: str = "") -> list[str]:
        return []


def add_host(store: MemStore, name: str, ram: float = 8, uri: bool = True, **fields) -> None:
    store.create(
        Host(
            name=name,
            capacity=Specs(cpu=8, ram=ram),
            status=HostStatus.UP,
            migration_uri=f"qemu+tcp://{name}/system" if uri else "",
            **fields,
        )
    )
    store.create(Alive(name=name))


def running_vm(store: MemStore, host: str, ram: float = 2, **migration) -> str:
    vm = VM(
        name="web",
        owner="alice",
        owner_realm="users",
        specs=Specs(cpu=1, ram=ram),
        image="img",
        status=Status.RUNNING,
        hostname=host,
    )
    if migration:
        vm.migration = Migration(source=host, **migration)
    store.create(vm)
    return vm.uuid


@pytest.fixture
def store() -> MemStore:
    return MemStore()


def scheduler(store: MemStore) -> Scheduler:
    s = Scheduler(cast(Store, store), Settings(), storage=NoStorage())  # type: ignore[arg-type]
    s.start()
    s.drain(0)
    return s


def settle(store: MemStore, s: Scheduler, passes: int = 3) -> None:
    for _ in range(passes):
        store.flush()
        s.drain(0)
        s.step()
    store.flush()
    s.drain(0)


def counted(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def vm_of(store: MemStore, id: str) -> VM:
    found = store.get(VM, id)
    assert found is not None
    return found.value


def test_a_requested_migration_gets_the_roomiest_other_host_and_holds_it(store):
    add_host(store, "a")
    add_host(store, "b", ram=4)
    add_host(store, "c", ram=16)
    add_host(store, "d", ram=64, admin_state=AdminState.MAINTENANCE)
    add_host(store, "e", ram=64, uri=False)  # takes no migrations
    id = running_vm(store, "a", migration={})
    scheduled = counted("ucloud_scheduler_migrations_total", result="scheduled")
    s = scheduler(store)
    settle(store, s)
    assert counted("ucloud_scheduler_migrations_total", result="scheduled") == scheduled + 1
    m = vm_of(store, id).migration
    assert m is not None and (m.phase, m.target) == (MigrationPhase.SCHEDULED, "c")
    assert "migration scheduled: a -> c" in vm_of(store, id).log[-1].message
    # Its capacity is held on both hosts while it lasts, on the target only once over.
    used = {h.name: h.used.ram for h in s.ledger.host_states()}
    assert (used["a"], used["c"]) == (2, 2)
    assert s.ledger.vms_on("c") == set()  # still placed on its source

    def over(vm: VM) -> None:
        vm.hostname, vm.migration = "c", None

    store.update(VM, id, over)
    settle(store, s)
    used = {h.name: h.used.ram for h in s.ledger.host_states()}
    assert (used["a"], used["c"]) == (0, 2)


def test_a_named_target_is_checked_like_any_placement(store):
    add_host(store, "a")
    add_host(store, "b", ram=1)
    id = running_vm(store, "a", target="b")
    failed = counted("ucloud_scheduler_migrations_total", result="failed")
    s = scheduler(store)
    settle(store, s)
    assert counted("ucloud_scheduler_migrations_total", result="failed") == failed + 1
    vm = vm_of(store, id)
    assert vm.migration is None and vm.hostname == "a"
    assert "migration given up: no host fits" in vm.log[-1].message
    assert "short of RAM" in vm.log[-1].message


def suspended(vm: VM) -> None:
    vm.status, vm.desired = Status.SUSPENDED, Desired.SUSPENDED


def test_a_suspended_vm_is_migrated_like_a_running_one(store):
    add_host(store, "a")
    add_host(store, "b")
    id = running_vm(store, "a", migration={})
    store.update(VM, id, suspended)
    s = scheduler(store)
    settle(store, s)
    m = vm_of(store, id).migration
    assert m is not None and (m.phase, m.target) == (MigrationPhase.SCHEDULED, "b")


@pytest.mark.parametrize(
    "status, desired",
    [
        (Status.SUSPENDED, Desired.RUNNING),  # resumed before the move began
        (Status.RUNNING, Desired.SUSPENDED),  # suspended before the move began
        (Status.SUSPENDED, Desired.STOPPED),
    ],
)
def test_a_users_action_before_it_begins_gives_the_migration_up(store, status, desired):
    add_host(store, "a")
    add_host(store, "b")
    id = running_vm(store, "a", target="b", phase=MigrationPhase.SCHEDULED)

    def acted(vm: VM) -> None:
        vm.status, vm.desired = status, desired

    store.update(VM, id, acted)
    s = scheduler(store)
    settle(store, s)
    vm = vm_of(store, id)
    assert vm.migration is None and vm.hostname == "a"
    assert f"migration given up: the VM is {status}, wanted {desired}" in vm.log[-1].message


def test_a_suspended_vm_that_arrived_paused_is_not_migrated_again(store):
    add_host(store, "a")
    add_host(store, "b")
    id = running_vm(store, "a", migration={})

    def arrived(vm: VM) -> None:
        suspended(vm)
        vm.arrived_paused = True

    store.update(VM, id, arrived)
    s = scheduler(store)
    settle(store, s)
    vm = vm_of(store, id)
    assert vm.migration is None and vm.hostname == "a"
    assert "arrived on a suspended, by a live migration" in vm.log[-1].message


def test_no_other_host_at_all_gives_up_with_the_reason(store):
    add_host(store, "a")
    add_host(store, "b", admin_state=AdminState.MAINTENANCE)
    id = running_vm(store, "a")
    vm_id2 = running_vm(store, "a", migration={})
    s = scheduler(store)
    settle(store, s)
    vm = vm_of(store, vm_id2)
    assert vm.migration is None
    assert "in maintenance" in vm.log[-1].message
    assert vm_of(store, id).migration is None


@pytest.mark.parametrize("phase", [MigrationPhase.SCHEDULED, MigrationPhase.PREPARED])
def test_a_migration_not_begun_is_given_up_when_its_target_dies(store, phase):
    add_host(store, "a")
    add_host(store, "b")
    id = running_vm(store, "a", target="b", phase=phase)
    s = scheduler(store)
    settle(store, s)
    assert vm_of(store, id).migration is not None
    store.delete(store.get(Alive, "b"))
    settle(store, s)
    vm = vm_of(store, id)
    assert vm.migration is None and vm.hostname == "a" and vm.status == Status.RUNNING
    assert "host b is down" in vm.log[-1].message
    used = {h.name: h.used.ram for h in s.ledger.host_states()}
    assert used["b"] == 0


def test_a_migration_under_way_is_left_to_the_agents_even_past_the_deadline(store):
    add_host(store, "a")
    add_host(store, "b")
    id = running_vm(store, "a", target="b", phase=MigrationPhase.MIGRATING, phase_since=0)
    s = scheduler(store)
    settle(store, s)
    assert vm_of(store, id).migration is not None


def test_a_prepared_migration_past_its_deadline_is_given_up(store):
    add_host(store, "a")
    add_host(store, "b")
    id = running_vm(store, "a", target="b", phase=MigrationPhase.PREPARED, phase_since=0)
    s = scheduler(store)
    settle(store, s)
    vm = vm_of(store, id)
    assert vm.migration is None and "not begun" in vm.log[-1].message


def test_a_dead_source_waits_for_a_live_target_while_migrating(store):
    add_host(store, "a")
    add_host(store, "b")
    id = running_vm(store, "a", target="b", phase=MigrationPhase.MIGRATING)
    s = scheduler(store)
    settle(store, s)
    store.delete(store.get(Alive, "a"))
    settle(store, s)
    vm = vm_of(store, id)
    # The VM may run on b already: b's agent settles it, the scheduler does not evacuate it.
    assert (vm.hostname, vm.status, vm.fencing) == ("a", Status.RUNNING, "")
    assert vm.migration is not None
    # b's agent found it does not run there and let it go: the usual fenced evacuation.

    def let_go(vm: VM) -> None:
        vm.migration = None

    store.update(VM, id, let_go)
    settle(store, s)
    vm = vm_of(store, id)
    assert vm.migration is None and vm.hostname != "a"
    assert any("host a died" in e.message for e in vm.log)


def test_a_dead_source_of_a_migration_not_begun_is_evacuated_and_the_migration_cleared(store):
    add_host(store, "a")
    add_host(store, "b")
    id = running_vm(store, "a", target="b", phase=MigrationPhase.PREPARED)
    s = scheduler(store)
    settle(store, s)
    fenced = counted("ucloud_fencing_total", result="done")
    store.delete(store.get(Alive, "a"))
    settle(store, s)
    vm = vm_of(store, id)
    assert vm.migration is None
    assert vm.hostname != "a"
    assert counted("ucloud_fencing_total", result="done") == fenced + 1  # its disk
    assert any("host a died" in e.message for e in vm.log)
    assert not [k for k in vm.index_keys() if k.startswith("placement/a/")]


def test_the_index_repair_keeps_a_migrating_vms_entry_on_its_target(store):
    from ucloud.scheduler.index import placed_on

    id = running_vm(store, "a", target="b", phase=MigrationPhase.MIGRATING)
    assert placed_on(vm_of(store, id)) == {"a", "b"}
    assert placed_on(vm_of(store, running_vm(store, "a"))) == {"a"}
