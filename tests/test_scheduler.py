"""The scheduler on a real etcd: placement, capacity, liveness, deadlines, failover."""

from __future__ import annotations

import json
import random
import signal
import sys
import threading

import pytest

from tests.conftest import make_image
from tests.etcdclients import reconnected
from tests.scheduling import FakeAgent, new_vm, vm_of, wait_status
from tests.servers import Daemon, Etcd, wait_for
from ucloud.config import Settings
from ucloud.models import VM, AdminState, Desired, Host, HostStatus, Specs, Status
from ucloud.scheduler.daemon import Scheduler
from ucloud.store import Store, Unavailable, edited


def test_places_a_new_vm_on_a_live_host(store, scheduler):
    FakeAgent(store, "h1")
    vm = new_vm(store)
    placed = wait_status(store, vm, Status.SCHEDULED)
    assert placed.hostname == "h1"
    assert placed.log[-1].by == "scheduler"
    assert placed.log[-1].message == "PENDING -> SCHEDULED: placed on h1"
    assert store.get(Host, "h1").value.status == HostStatus.UP


def test_vm_created_through_the_api_is_placed(client, alice, store, scheduler):
    FakeAgent(store, "h1")
    image = make_image(store)
    r = client.post(
        "/vm/create", json=alice.creds(vm_name="web", specs={"cpu": 1, "ram": 1}, image=image.uuid)
    )
    vmid = r.json["uuid"]
    wait_for(
        lambda: client.get("/vm/status", json=alice.creds(id=vmid)).json["hostname"] == "h1",
        10,
        "placement",
    )


def test_capacity_is_never_exceeded_and_waiting_vms_truly_fit_nowhere(store, settings, scheduler):
    rng = random.Random(7)
    hosts = {f"h{i}": (rng.choice([2, 4, 8]), rng.choice([4, 8, 16])) for i in range(6)}
    for name, (cpu, ram) in hosts.items():
        FakeAgent(store, name, cpu=cpu, ram=ram)
    # Let the scheduler see every host alive first (they reach it on another watch than the
    # VMs): a VM it sees first waits, rightly, "no hosts are registered", which this test's
    # wait would take for a decision.
    for name in hosts:
        wait_for(lambda n=name: store.get(Host, n).value.status == HostStatus.UP, 10, "host UP")
    vms = [
        new_vm(store, cpu=rng.choice([1, 2, 4]), ram=rng.choice([0.5, 1, 2, 4]), name=f"vm{i}")
        for i in range(120)
    ]

    def settled() -> dict[str, VM] | None:
        now = {v.uuid: v for v in (vm_of(store, vm) for vm in vms)}
        if any(v.status == Status.PENDING and not v.reason for v in now.values()):
            return None
        return now

    def all_decided() -> dict[str, VM] | None:
        now = settled()
        if now is None or any(
            v.status not in (Status.SCHEDULED, Status.PENDING) for v in now.values()
        ):
            return None
        return now

    final = wait_for(all_decided, 20, "every VM placed or refused with a reason")
    used = {name: [0, 0.0] for name in hosts}
    for v in final.values():
        if v.status == Status.SCHEDULED:
            used[v.hostname][0] += v.specs.cpu
            used[v.hostname][1] += v.specs.ram
    for name, (cpu, ram) in hosts.items():
        assert used[name][0] <= cpu * settings.cpu_allocation_ratio, name
        assert used[name][1] <= ram * settings.ram_allocation_ratio, name
    waiting = [v for v in final.values() if v.status == Status.PENDING]
    assert 0 < len(waiting) < len(vms), "the test should fill the hosts, not more, not less"
    for v in waiting:
        assert v.reason.startswith("no host fits")
        for name, (cpu, ram) in hosts.items():
            cpu_free = cpu * settings.cpu_allocation_ratio - used[name][0]
            ram_free = ram * settings.ram_allocation_ratio - used[name][1]
            assert v.specs.cpu > cpu_free or v.specs.ram > ram_free, (v.name, name)


def test_spreads_over_equal_hosts_and_skips_maintenance(store, scheduler):
    for name in ("a", "b", "c", "m"):
        FakeAgent(store, name)
    store.update(Host, "m", lambda h: setattr(h, "admin_state", AdminState.MAINTENANCE))
    # Hosts, alive keys and VMs reach the scheduler on separate watches: let it see every host
    # alive first, or it may rightly place all three on the only host it knows.
    for name in ("a", "b", "c"):
        wait_for(lambda n=name: store.get(Host, n).value.status == HostStatus.UP, 10, "host UP")
    vms = [new_vm(store, name=f"vm{i}") for i in range(3)]
    placed = sorted(wait_status(store, vm, Status.SCHEDULED).hostname for vm in vms)
    assert placed == ["a", "b", "c"]


def test_a_vm_created_as_its_host_enters_maintenance_never_lands_there(store, scheduler):
    """Hosts and VMs reach the scheduler on two watches, so it may handle a VM before a change
    of its host that etcd made first. Each round puts the host it prefers (the bigger one) in
    maintenance and creates a VM in one transaction (as close as two writes can be), after
    the scheduler has seen the host back UP: a placement from its view of the host before
    the maintenance must fail and be made again, on the other host."""
    FakeAgent(store, "big", cpu=64, ram=256)
    FakeAgent(store, "small", cpu=4, ram=8)

    def seen(admin: AdminState) -> bool:  # by the scheduler, with both hosts UP
        hosts = [scheduler.hosts.get(n) for n in ("big", "small")]
        return all(h and h.value.status == HostStatus.UP for h in hosts) and (
            hosts[0].value.admin_state == admin
        )

    def set_admin(admin: AdminState):
        return lambda h: setattr(h, "admin_state", admin)

    landed: list[str] = []
    for i in range(ROUNDS):
        wait_for(lambda: seen(AdminState.UP), 10, "the scheduler to see big UP")
        vm = VM(
            name=f"r{i}", owner="alice", owner_realm="users", specs=Specs(cpu=1, ram=1), image="i"
        )

        def together(vm: VM = vm) -> bool:  # the scheduler writes hosts too (drain records)
            big = store.get(Host, "big")
            closed = edited(big, set_admin(AdminState.MAINTENANCE))
            return store.commit(create=[vm], swap=[(closed, big)]) is not None

        wait_for(together, 10, "the maintenance and the VM written together", interval=0)
        placed = wait_status(store, vm, Status.SCHEDULED)
        landed.append(placed.hostname)
        store.delete(store.get(VM, vm.uuid))
        store.update(Host, "big", set_admin(AdminState.UP))
    assert landed == ["small"] * ROUNDS, f"placed on big in maintenance: {landed.count('big')}"


ROUNDS = 100


def test_pending_with_reason_then_placed_when_a_host_is_added(store, scheduler):
    vm = new_vm(store, cpu=2, ram=4)
    waiting = wait_for(lambda: (v := vm_of(store, vm)).reason and v, 10, "a reason")
    assert (waiting.status, waiting.reason) == (Status.PENDING, "no hosts are registered")
    FakeAgent(store, "small", cpu=1, ram=2)  # 4 CPUs with the ratio, but only 2 GiB RAM
    wait_for(lambda: "short of RAM" in vm_of(store, vm).reason, 10, "the reason to name RAM")
    assert vm_of(store, vm).reason == "no host fits 2 CPU, 4 GiB RAM, 0 GiB disk: 1 short of RAM"
    FakeAgent(store, "big", cpu=8, ram=32)
    assert wait_status(store, vm, Status.SCHEDULED).hostname == "big"


def test_a_host_whose_lease_expires_has_its_vms_placed_elsewhere(store, scheduler):
    doomed = FakeAgent(store, "doomed", cpu=8, ram=32)
    vms = [new_vm(store, name=f"vm{i}") for i in range(4)]
    for vm in vms:
        assert wait_status(store, vm, Status.SCHEDULED).hostname == "doomed"
    FakeAgent(store, "spare", cpu=8, ram=32)
    doomed.die()
    wait_for(lambda: store.get(Host, "doomed").value.status == HostStatus.DEAD, 15, "host DEAD")
    for vm in vms:
        moved = wait_for(
            lambda vm=vm: (v := vm_of(store, vm)).hostname == "spare" and v, 15, "VM moved to spare"
        )
        messages = [e.message for e in moved.log]
        assert "SCHEDULED -> KILLED: host doomed died" in messages
        assert messages[-1] == "KILLED -> SCHEDULED: placed on spare"


def test_vm_without_host_is_stopped_and_deleted_by_the_scheduler(store, scheduler):
    vm = new_vm(store)  # no hosts: it stays PENDING
    wait_for(lambda: vm_of(store, vm).reason, 10, "a reason")
    store.update(VM, vm.uuid, lambda v: setattr(v, "desired", Desired.STOPPED))
    wait_status(store, vm, Status.STOPPED)
    store.update(VM, vm.uuid, lambda v: setattr(v, "desired", Desired.DELETED))
    wait_for(lambda: store.get(VM, vm.uuid) is None, 10, "the VM to be deleted")


def test_scheduled_too_long_is_placed_again_then_errors(store, etcd):
    from tests.conftest import load_settings

    settings = load_settings(
        etcd_endpoints=store.settings.etcd_endpoints,
        etcd_prefix=store.settings.etcd_prefix,
        scheduled_deadline=0.5,
        schedule_attempts=2,
    )
    s = Scheduler(Store(settings), settings)
    stop = threading.Event()
    thread = threading.Thread(target=s.run, args=(stop,), daemon=True)
    thread.start()
    try:
        FakeAgent(store, "lazy")  # alive, but never creates anything
        vm = new_vm(store)
        failed = wait_status(store, vm, Status.ERROR, timeout=15)
        assert failed.reason == "host lazy did not start it within 0.5 s, after 2 attempts"
        assert failed.hostname == ""
        assert sum("placing it again" in e.message for e in failed.log) == 1
    finally:
        stop.set()
        thread.join(10)


# --- separate processes: election and etcd restarts ----------------------------------------


def scheduler_process(settings: Settings, log) -> Daemon:
    env = {
        "UCLOUD_ETCD_ENDPOINTS": settings.etcd_endpoints,
        "UCLOUD_ETCD_PREFIX": settings.etcd_prefix,
        "UCLOUD_SCHEDULER_LEASE_TTL": "2",
        "UCLOUD_SCHEDULER_RESYNC": "5",
        "UCLOUD_ENV_FILE": "/dev/null",
    }
    return Daemon([sys.executable, "-m", "ucloud.scheduler.main"], env, log)


def leader_pid(store: Store) -> int | None:
    value, _ = store.client.get(f"{store.prefix}/election/scheduler")
    return json.loads(value)["pid"] if value else None


class LosesEtcdOnce(Store):
    """A real store whose first placement transaction fails as when etcd goes away mid-call:
    before etcd wrote it, or after (the caller cannot tell which)."""

    def __init__(self, settings: Settings, written: bool) -> None:
        super().__init__(settings)
        self.written = written
        self.armed = True

    def commit(self, **writes):
        if not self.armed or not writes.get("unchanged"):  # a placement compares its hosts
            return super().commit(**writes)
        self.armed = False
        if self.written:
            super().commit(**writes)
        raise Unavailable("lost mid-call")


@pytest.mark.parametrize("written", [False, True], ids=["lost", "written-unacknowledged"])
def test_placement_whose_transaction_fails_is_placed_once(store, settings, written):
    FakeAgent(store, "h1")
    flaky = LosesEtcdOnce(settings, written)
    s = Scheduler(flaky, settings)
    stop = threading.Event()
    thread = threading.Thread(target=s.run, args=(stop,), daemon=True)
    thread.start()
    try:
        vm = new_vm(store)
        placed = wait_status(store, vm, Status.SCHEDULED)
        assert not flaky.armed, "the transaction did not fail: the test tests nothing"
        assert (placed.hostname, placed.attempts) == ("h1", 1)
    finally:
        stop.set()
        thread.join(10)
        flaky.close()


def test_standby_takes_over_when_the_leader_is_killed(store, settings, tmp_path):
    first = scheduler_process(settings, tmp_path / "first.log")
    wait_for(lambda: leader_pid(store) == first.pid, 15, "the first scheduler to lead")
    second = scheduler_process(settings, tmp_path / "second.log")
    try:
        FakeAgent(store, "h1")
        vm = new_vm(store, name="before")
        wait_status(store, vm, Status.SCHEDULED, timeout=15)
        wait_for(lambda: "standing by" in second.output(), 15, "the second to stand by")

        first.stop(signal.SIGKILL)
        after = new_vm(store, name="after")
        placed = wait_status(store, after, Status.SCHEDULED, timeout=15)
        assert placed.hostname == "h1"
        assert leader_pid(store) == second.pid
        assert "leading" in second.output()
    finally:
        for d in (first, second):
            d.stop()


def test_etcd_restart_under_a_running_scheduler_loses_no_event(tmp_path, settings):
    own = Etcd(tmp_path / "etcd")
    own.start()
    settings = settings.model_copy(update={"etcd_endpoints": f"127.0.0.1:{own.port}"})
    store = Store(settings)
    daemon = scheduler_process(settings, tmp_path / "scheduler.log")
    try:
        FakeAgent(store, "h1", cpu=64, ram=256)
        wait_for(lambda: leader_pid(store) == daemon.pid, 15, "the scheduler to lead")
        first = new_vm(store, name="first")
        wait_status(store, first, Status.SCHEDULED, timeout=15)

        own.stop()
        own.start()  # same data and ports: like a restarted member
        reconnected(store)
        FakeAgent(store, "h2", cpu=64, ram=256)  # a new lease: the old one may have lapsed
        burst = [new_vm(store, name=f"after{i}") for i in range(20)]
        for vm in burst:
            assert wait_status(store, vm, Status.SCHEDULED, timeout=30).hostname in ("h1", "h2")
        assert daemon.alive(), daemon.output()
    finally:
        daemon.stop()
        store.close()
        own.stop()


@pytest.mark.parametrize("grace", [Settings.model_fields["dead_host_grace"].default, 3.0])
def test_a_dead_hosts_vms_move_when_the_grace_runs_out(store, grace):
    """With the default resync (30 s): the VMs move when the grace runs out, not at the next
    resync."""
    resync = Settings.model_fields["scheduler_resync"].default
    settings = store.settings.model_copy(
        update={"scheduler_resync": resync, "dead_host_grace": grace}
    )
    s = Scheduler(Store(settings), settings)
    stop = threading.Event()
    thread = threading.Thread(target=s.run, args=(stop,), daemon=True)
    thread.start()
    try:
        doomed = FakeAgent(store, "doomed", cpu=8, ram=32)
        vm = new_vm(store)
        assert wait_status(store, vm, Status.SCHEDULED).hostname == "doomed"
        FakeAgent(store, "spare", cpu=8, ram=32)
        doomed.die()
        dead = wait_for(
            lambda: (h := store.get(Host, "doomed").value).status == HostStatus.DEAD and h,
            15,
            "host DEAD",
        )
        moved = wait_for(
            lambda: (v := vm_of(store, vm)).hostname == "spare" and v, 25, "VM moved to spare"
        )
        killed = next(e for e in moved.log if e.message == "SCHEDULED -> KILLED: host doomed died")
        waited = killed.time - dead.status_since
        assert settings.dead_host_grace <= waited < settings.dead_host_grace + 2, waited
    finally:
        stop.set()
        thread.join(10)
