"""The drain's choices (ucloud/scheduler/drain.py): the real scheduler (its migration part
included: it gives the drain's requests their targets) over an in-memory store, with hosts and
VMs made in memory. The agents are played by the test: it finishes or fails the migrations, as
models.Migration says they do. (Real migrations on real hosts: tests/test_drain.py.)"""

from __future__ import annotations

import time

from tests.unit.agentbed import Storage
from tests.unit.memstore import MemStore
from ucloud.config import load_settings
from ucloud.models import (
    VM,
    AdminState,
    Alive,
    Desired,
    Drain,
    Host,
    HostStatus,
    Migration,
    MigrationPhase,
    Specs,
    Status,
)
from ucloud.scheduler.daemon import Scheduler


class Bed:
    def __init__(self, **settings: object) -> None:
        self.store = MemStore()
        self.settings = load_settings(
            cpu_allocation_ratio=1.0, retry_initial=0.2, retry_max=0.2, **settings
        )
        self.scheduler: Scheduler | None = None

    def host(self, name: str, ram: float = 8, maintenance: bool = False) -> None:
        admin = AdminState.MAINTENANCE if maintenance else AdminState.UP
        self.store.create(
            Host(
                name=name,
                capacity=Specs(cpu=16, ram=ram),
                status=HostStatus.UP,
                admin_state=admin,
                migration_uri=f"qemu+tcp://{name}/system",  # it takes migrations
            )
        )
        self.store.create(Alive(name=name))

    def vm(self, host: str, ram: float = 1, status: Status = Status.RUNNING, **more) -> str:
        vm = VM(
            name=f"vm-{ram:g}",
            owner="alice",
            owner_realm="users",
            specs=Specs(cpu=1, ram=ram),
            image="i",
            hostname=host,
            status=status,
            **more,
        )
        self.store.create(vm)
        return vm.uuid

    def start(self) -> Scheduler:
        self.scheduler = Scheduler(self.store, self.settings, storage=Storage())  # type: ignore[arg-type]
        self.scheduler.start()
        self.scheduler.drain(0.01)
        return self.scheduler

    def step(self, passes: int = 3) -> None:
        assert self.scheduler is not None
        for _ in range(passes):  # a pass, then what its own writes caused
            self.store.flush()
            self.scheduler.drain(0.01)
            self.scheduler.step()
        self.store.flush()
        self.scheduler.drain(0.01)

    def get(self, id: str) -> VM:
        found = self.store.get(VM, id)
        assert found is not None
        return found.value

    def drain_of(self, host: str) -> Drain | None:
        found = self.store.get(Host, host)
        assert found is not None
        return found.value.drain

    def asked(self) -> set[str]:
        return {
            id
            for id, v in self.store.list(VM)[0].items()
            if v.value.migration is not None and v.value.migration.by == "drain"
        }

    def edit_vm(self, id: str, change) -> None:
        found = self.store.get(VM, id)
        assert found is not None
        vm = found.value.model_copy(deep=True)
        change(vm)
        assert self.store.swap(vm, found) is not None

    def migrated(self, id: str, target: str) -> None:
        """What the core writes at the end of a migration that worked."""

        def change(vm: VM) -> None:
            vm.hostname = target
            vm.migration = None
            vm.record("host", "migrated")

        self.edit_vm(id, change)

    def failed(self, id: str) -> None:
        """What the core writes when a migration fails: the VM stays on its source."""

        def change(vm: VM) -> None:
            vm.migration = None
            vm.record("host", "migration failed: too slow")

        self.edit_vm(id, change)

    def set_maintenance(self, name: str, on: bool) -> None:
        def change(h: Host) -> None:
            h.admin_state = AdminState.MAINTENANCE if on else AdminState.UP

        self.store.update(Host, name, change)


def drain_events(vm: VM) -> list[str]:
    return [e.message for e in vm.log if e.message.startswith("drain:")]


def test_a_host_in_maintenance_is_drained_drain_parallel_at_a_time():
    bed = Bed(drain_parallel=2)
    bed.host("a", maintenance=True)
    bed.host("b")
    vms = [bed.vm("a") for _ in range(3)]
    bed.start()
    bed.step()

    asked = bed.asked()
    assert len(asked) == 2  # at most drain_parallel in flight
    for id in asked:
        m = bed.get(id).migration
        assert m is not None
        # Asked by the drain (REQUESTED), given its target by the scheduler's migration part.
        assert (m.source, m.target, m.phase) == ("a", "b", MigrationPhase.SCHEDULED)
        assert bed.get(id).hostname == "a"  # the agents move it, not the drain
        assert "drain: live migration requested (host a is in maintenance)" in drain_events(
            bed.get(id)
        )
    drain = bed.drain_of("a")
    assert drain is not None
    assert (drain.total, drain.remaining, drain.migrating) == (3, 3, 2)
    assert drain.describe() == "draining 0/3"

    first = sorted(asked)[0]
    bed.migrated(first, "b")
    bed.step()
    assert bed.asked() == set(vms) - {first}  # the third asked once a slot freed
    assert bed.drain_of("a").describe() == "draining 1/3"

    for id in bed.asked():
        bed.migrated(id, "b")
    bed.step()
    assert bed.asked() == set()
    assert bed.drain_of("a").describe() == "drained"
    assert bed.drain_of("b") is None  # only hosts in maintenance have a drain


def test_a_vm_with_nowhere_to_go_is_reported_keeps_running_and_goes_when_room_appears():
    bed = Bed(drain_parallel=4)
    bed.host("a", ram=16, maintenance=True)
    bed.host("b", ram=4)
    big = bed.vm("a", ram=3)
    small = bed.vm("a", ram=2)
    bed.start()
    bed.step()

    # b takes one of them: the biggest first; the other is not asked, but reported.
    assert bed.asked() == {big}
    vm = bed.get(small)
    assert (vm.status, vm.hostname, vm.migration) == (Status.RUNNING, "a", None)
    (event,) = drain_events(vm)
    assert event.startswith("drain: no host has room: no host fits 1 CPU, 2 GiB RAM")
    assert "1 short of RAM" in event  # b, with big's RAM held for it
    drain = bed.drain_of("a")
    assert drain.blocked == 1 and f"VM {small} (vm-2) has nowhere to go" in drain.reason
    assert drain.describe() == "draining 0/2, 1 VM has nowhere to go"

    bed.migrated(big, "b")
    bed.step()
    assert bed.asked() == set()
    assert drain_events(bed.get(small)) == [event]  # reported once, not at every pass
    assert bed.drain_of("a").describe() == "blocked: 1 VM has nowhere to go"

    bed.host("c", ram=4)  # hosts change: it is tried again
    bed.step()
    assert bed.asked() == {small}
    assert bed.drain_of("a").blocked == 0


def test_requested_migrations_without_a_target_hold_capacity():
    """Another host's drain (or an administrator) asked first: its VM will need room too."""
    bed = Bed(drain_parallel=4)
    bed.host("a", maintenance=True)
    bed.host("b", ram=4)
    bed.host("x", ram=3)
    elsewhere = bed.vm("x", ram=3, migration=Migration(source="x", by="admin users/root"))
    mine = bed.vm("a", ram=2)
    bed.start()
    bed.step()
    assert bed.asked() == set()
    assert drain_events(bed.get(mine))[0].startswith("drain: no host has room")

    bed.edit_vm(elsewhere, lambda vm: setattr(vm, "migration", None))  # it went elsewhere
    bed.step()
    assert bed.asked() == {mine}


def test_a_failed_migration_is_asked_again_after_a_back_off():
    bed = Bed(drain_parallel=2)
    bed.host("a", maintenance=True)
    bed.host("b")
    id = bed.vm("a")
    bed.start()
    bed.step()
    assert bed.asked() == {id}

    bed.failed(id)
    bed.step()
    assert bed.asked() == set()  # not at once: it just failed
    drain = bed.drain_of("a")
    assert drain.failing == 1
    assert drain.describe() == "draining 0/1, 1 failed to migrate, retrying"
    time.sleep(0.3)  # retry_initial 0.2 s
    bed.step()
    assert bed.asked() == {id}
    assert bed.drain_of("a").failing == 0


def test_suspended_vms_are_moved_and_vms_on_their_way_elsewhere_wait():
    bed = Bed(drain_parallel=8)
    bed.host("a", maintenance=True)
    bed.host("b")
    suspended = bed.vm("a", status=Status.SUSPENDED, desired=Desired.SUSPENDED)
    resuming = bed.vm("a", status=Status.SUSPENDED, desired=Desired.RUNNING)
    creating = bed.vm("a", status=Status.CREATING)
    stopping = bed.vm("a", desired=Desired.STOPPED)  # being stopped: it leaves by itself
    bed.start()
    bed.step()
    assert bed.asked() == {suspended}  # moved paused, as it is
    drain = bed.drain_of("a")
    assert drain is not None and drain.remaining == 4
    assert drain.describe() == "draining 0/4"
    assert drain_events(bed.get(suspended)) == [
        "drain: live migration requested (host a is in maintenance)"
    ]

    bed.edit_vm(creating, lambda vm: setattr(vm, "status", Status.RUNNING))
    bed.edit_vm(resuming, lambda vm: setattr(vm, "status", Status.RUNNING))
    bed.step()
    assert bed.asked() == {suspended, resuming, creating}  # settled now: moved
    assert stopping not in bed.asked()
    m = bed.get(suspended).migration
    assert m is not None and m.target == "b"  # the core gave it its target
    bed.migrated(suspended, "b")
    bed.step()
    assert bed.drain_of("a").remaining == 3


def test_a_suspended_vm_that_arrived_paused_waits_until_it_has_run():
    bed = Bed()
    bed.host("a", maintenance=True)
    bed.host("b")
    held = bed.vm("a", status=Status.SUSPENDED, desired=Desired.SUSPENDED, arrived_paused=True)
    bed.start()
    bed.step()
    assert bed.asked() == set()
    drain = bed.drain_of("a")
    assert drain is not None and (drain.remaining, drain.suspended) == (1, 1)
    assert drain.describe() == "draining 0/1, 1 suspended, moved once resumed"
    assert "have not run since" in drain.reason
    (event,) = drain_events(bed.get(held))
    assert event.startswith("drain: not migrated: it arrived suspended, by a live migration")

    # Resumed (its agent writes RUNNING, which clears the mark): moved.
    bed.edit_vm(
        held,
        lambda vm: (
            setattr(vm, "desired", Desired.RUNNING),
            vm.set_status(Status.RUNNING, "host"),
        ),
    )
    bed.step()
    assert bed.asked() == {held}
    assert bed.drain_of("a").suspended == 0


def test_leaving_maintenance_takes_nothing_back_and_asks_no_more():
    bed = Bed(drain_parallel=1)
    bed.host("a", maintenance=True)
    bed.host("b")
    first, second = bed.vm("a"), bed.vm("a")
    bed.start()
    bed.step()
    (asked,) = bed.asked()
    bed.set_maintenance("a", False)
    bed.step()
    assert bed.drain_of("a") is None
    assert bed.asked() == {asked}  # in flight: left to finish
    bed.migrated(asked, "b")
    bed.step()
    assert bed.asked() == set()  # the other one stays
    assert bed.get(first if asked == second else second).hostname == "a"


def test_a_dead_host_in_maintenance_is_left_to_evacuation():
    bed = Bed(drain_parallel=2)
    bed.host("a", maintenance=True)
    bed.host("b")
    bed.vm("a")
    bed.store.delete(bed.store.get(Alive, "a"))  # its agent is gone
    # A grace long enough for the test: the VM stays placed on the dead host meanwhile.
    bed.settings = load_settings(dead_host_grace=3600)
    bed.start()
    bed.step()
    assert bed.asked() == set()


def test_what_host_list_shows():
    assert Drain(total=5, remaining=2, migrating=2).describe() == "draining 3/5"
    assert Drain(total=5, remaining=0).describe() == "drained"
    assert Drain(total=0, remaining=0).describe() == "drained"
    assert Drain(total=2, remaining=2, blocked=2).describe() == "blocked: 2 VMs have nowhere to go"
