"""The placement index on a real etcd: every writer keeps it in step with the VM records, the
scheduler makes it whole, and a host agent follows it: it sees its own VMs (and the change that
moves one off it), never another host's, across etcd restarts and compactions."""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.etcdclients import reconnected
from tests.scheduling import FakeAgent, new_vm, vm_of, wait_status
from tests.servers import Etcd, wait_for
from ucloud.config import Settings
from ucloud.host.agent import HostAgent
from ucloud.host.fake_driver import FakeHypervisor
from ucloud.host.hypervisor import Power
from ucloud.mirror import Mirror
from ucloud.models import (
    PLACEMENT,
    VM,
    Action,
    Desired,
    Host,
    HostStatus,
    Image,
    ImageStatus,
    Migration,
    MigrationPhase,
    Specs,
    Status,
    placement_folder,
    placement_key,
)
from ucloud.scheduler.daemon import Scheduler
from ucloud.store import Change, IndexFollower, Snapshot, Store, Versioned

# --- helpers --------------------------------------------------------------------------------------


def index(store: Store) -> dict[str, set[str]]:
    """VM id -> the hosts whose index folder names it."""
    entries, _ = store.list_index(f"{PLACEMENT}/")
    found: dict[str, set[str]] = {}
    for path in entries:
        host, _, vm = path.partition("/")
        found.setdefault(vm, set()).add(host)
    return found


def records(store: Store) -> dict[str, set[str]]:
    """VM id -> {its host}, for every placed VM: what the index must say."""
    return {id: {v.value.hostname} for id, v in store.list(VM)[0].items() if v.value.hostname}


def assert_index_agrees(store: Store) -> None:
    assert index(store) == records(store)


def vm(name: str = "vm", host: str = "", **fields: object) -> VM:
    defaults = {"owner": "alice", "owner_realm": "users", "specs": Specs(cpu=1, ram=1)}
    return VM.model_validate({**defaults, "image": "img", **fields, "name": name, "hostname": host})


def moved(store: Store, id: str, host: str, **fields: object) -> Versioned[VM]:
    """A compare-and-swap that sets the VM's host, as the scheduler or an agent writes it."""

    def change(v: VM) -> None:
        v.hostname = host
        for k, value in fields.items():
            setattr(v, k, value)

    written = store.update(VM, id, change)
    assert written is not None
    return written


def start_scheduler(settings: Settings) -> tuple[Scheduler, threading.Event, threading.Thread]:
    s = Scheduler(Store(settings), settings)
    stop = threading.Event()
    thread = threading.Thread(target=s.run, args=(stop,), daemon=True)
    thread.start()
    return s, stop, thread


# --- every write keeps the index ------------------------------------------------------------------


def test_every_store_write_keeps_the_index_with_the_record(store: Store):
    a, b = vm("a"), vm("b", host="h1")
    store.create(a)
    store.create(b)  # created placed: its entry with it
    assert index(store) == {b.uuid: {"h1"}}
    moved(store, a.uuid, "h1")
    moved(store, b.uuid, "h2")  # one host to another: one entry deleted, one put
    assert index(store) == {a.uuid: {"h1"}, b.uuid: {"h2"}}
    store.update(VM, a.uuid, lambda v: setattr(v, "desired", Desired.SUSPENDED))  # host unchanged
    moved(store, b.uuid, "")
    assert index(store) == {a.uuid: {"h1"}}
    found = store.get(VM, a.uuid)
    assert found is not None
    assert not store.delete(Versioned(found.value, found.mod_revision - 1))  # stale: nothing
    assert index(store) == {a.uuid: {"h1"}}
    assert store.delete(found)
    assert index(store) == {}
    # A batch that loses its compare writes no entry either.
    c = vm("c")
    store.create(c)
    stale = store.get(VM, c.uuid)
    assert stale is not None
    store.update(VM, c.uuid, lambda v: setattr(v, "name", "c2"))
    placed = stale.value.model_copy(update={"hostname": "h3"})
    assert store.swap_many([(placed, stale)]) is None
    assert index(store) == {}


def test_scheduler_placements_evacuations_and_deletions_keep_the_index(
    store: Store, settings: Settings
):
    _, stop, thread = start_scheduler(settings)
    try:
        doomed = FakeAgent(store, "doomed", cpu=8, ram=32)
        wait_for(lambda: store.get(Host, "doomed").value.status == HostStatus.UP, 10, "UP")
        vms = [new_vm(store, name=f"vm{i}") for i in range(4)]
        for v in vms:
            wait_status(store, v, Status.SCHEDULED)
        assert index(store) == {v.uuid: {"doomed"} for v in vms}

        # The host dies: its VMs are taken off it (evacuated) and placed on the spare.
        FakeAgent(store, "spare", cpu=8, ram=32)
        doomed.die()
        for v in vms:
            wait_for(lambda v=v: vm_of(store, v).hostname == "spare", 20, "moved to spare")
        assert index(store) == {v.uuid: {"spare"} for v in vms}

        # Off their host (as an agent gives up on a VM: ERROR, no host), then deleted: one
        # with a disk is handed to a live host (DELETING there), one without is deleted.
        with_disk, without = vms[0], vms[1]
        moved(store, with_disk.uuid, "", status=Status.ERROR, disk="d0")
        moved(store, without.uuid, "", status=Status.ERROR)
        assert index(store) == {v.uuid: {"spare"} for v in vms[2:]}

        def delete(v: VM) -> None:
            v.apply(Action.DELETE, "test")

        store.update(VM, with_disk.uuid, delete)
        store.update(VM, without.uuid, delete)
        wait_status(store, with_disk, Status.DELETING)
        wait_for(lambda: store.get(VM, without.uuid) is None, 10, "the VM without disk deleted")
        assert index(store) == {v.uuid: {"spare"} for v in [with_disk, *vms[2:]]}
        assert_index_agrees(store)
    finally:
        stop.set()
        thread.join(10)


def test_scheduled_deadlines_take_the_entry_off(store: Store, settings: Settings):
    settings = settings.model_copy(update={"scheduled_deadline": 0.5, "schedule_attempts": 2})
    _, stop, thread = start_scheduler(settings)
    try:
        FakeAgent(store, "lazy")  # alive, but never creates anything
        v = new_vm(store)
        wait_status(store, v, Status.SCHEDULED)
        assert index(store) == {v.uuid: {"lazy"}}
        failed = wait_status(store, v, Status.ERROR, timeout=15)
        assert failed.hostname == ""
        assert index(store) == {}
    finally:
        stop.set()
        thread.join(10)


def test_the_leader_makes_an_index_from_before_whole(store: Store, settings: Settings):
    """A cluster from before the index: placed VMs without entries, a stray entry and one of a
    VM that no longer exists. The scheduler fixes them when it starts to lead."""
    FakeAgent(store, "h1", cpu=8, ram=32)
    FakeAgent(store, "h2", cpu=8, ram=32)
    t = store.client.transactions
    placed = [vm(f"old{i}", host="h1", status=Status.RUNNING) for i in range(3)]
    unplaced = vm("stopped", status=Status.STOPPED, desired=Desired.STOPPED)
    for v in [*placed, unplaced]:  # written as an older daemon would: no index entries
        store.client.transaction(
            compare=[], success=[t.put(store.key_of(v), v.model_dump_json())], failure=[]
        )
    gone = vm("gone")
    strays = [placement_key("h2", placed[0].uuid), placement_key("h2", unplaced.uuid)]
    for path in [*strays, placement_key("h1", gone.uuid)]:
        store.client.put(store.index_key(path), b"")
    assert index(store) != records(store)

    _, stop, thread = start_scheduler(settings)
    try:
        wait_for(lambda: index(store) == records(store), 10, "the index to agree")
        assert index(store) == {v.uuid: {"h1"} for v in placed}
    finally:
        stop.set()
        thread.join(10)


def test_the_leader_keeps_a_migrating_vms_entry_on_its_target(store: Store, settings: Settings):
    """While a migration lasts the VM is in both hosts' folders (VM.index_keys): the repair
    puts a missing target entry and never takes it away as a stray."""
    FakeAgent(store, "h1", cpu=8, ram=32)
    FakeAgent(store, "h2", cpu=8, ram=32)
    m = Migration(source="h1", target="h2", phase=MigrationPhase.MIGRATING, by="drain")
    moving = vm("moving", host="h1", status=Status.RUNNING, migration=m)
    store.create(moving)
    assert index(store) == {moving.uuid: {"h1", "h2"}}
    store.client.delete(store.index_key(placement_key("h2", moving.uuid)))

    _, stop, thread = start_scheduler(settings)
    try:
        wait_for(lambda: index(store) == {moving.uuid: {"h1", "h2"}}, 10, "the target entry")
        time.sleep(3 * settings.scheduler_resync)  # resyncs repair again: it stays
        assert index(store) == {moving.uuid: {"h1", "h2"}}
    finally:
        stop.set()
        thread.join(10)


# --- an index follower: one host's VMs ------------------------------------------------------


class Seen:
    """What a follower delivered, applied to a Mirror as a daemon does."""

    def __init__(self) -> None:
        self.mirror: Mirror[VM] = Mirror()
        self.deliveries: list[Snapshot[VM] | Change[VM]] = []
        self.lock = threading.Lock()

    def __call__(self, update: Snapshot[VM] | Change[VM]) -> None:
        with self.lock:
            self.deliveries.append(update)
            self.mirror.apply(update)

    def ids(self) -> set[str]:
        with self.lock:
            return {d.id for d in self.deliveries if isinstance(d, Change)} | {
                id for d in self.deliveries if isinstance(d, Snapshot) for id in d.items
            }

    def value(self, id: str) -> VM | None:
        with self.lock:
            found = self.mirror.get(id)
            return found.value if found is not None else None

    def snapshots(self) -> int:
        with self.lock:
            return sum(isinstance(d, Snapshot) for d in self.deliveries)

    def here(self, host: str) -> set[str]:
        with self.lock:
            return {id for id, v in self.mirror.items.items() if v.value.hostname == host}


@pytest.fixture
def follow(store: Store) -> Iterator[object]:
    followers: list[IndexFollower[VM]] = []

    def start(host: str, via: Store = store) -> Seen:
        seen = Seen()
        followers.append(via.follow_index(VM, placement_folder(host), seen))
        return seen

    yield start
    for f in followers:
        f.stop()


def test_host_follower_sees_its_vms_and_the_change_that_moves_one_off(store: Store, follow):
    before = vm("before", host="h1")
    store.create(before)
    seen = follow("h1")
    assert seen.here("h1") == {before.uuid}
    a, other = vm("a"), vm("other", host="h2")
    store.create(a)
    store.create(other)
    moved(store, a.uuid, "h1", status=Status.SCHEDULED)
    wait_for(lambda: seen.here("h1") == {before.uuid, a.uuid}, 5, "a placed on h1")

    store.update(VM, a.uuid, lambda v: setattr(v, "desired", Desired.SUSPENDED))
    wait_for(lambda: seen.value(a.uuid).desired == Desired.SUSPENDED, 5, "a's desired state")

    moved(store, a.uuid, "h2")  # moved off: the agent sees it go
    wait_for(lambda: seen.value(a.uuid).hostname == "h2", 5, "a moved to h2")
    store.update(VM, a.uuid, lambda v: setattr(v, "name", "renamed"))  # not ours any more
    moved(store, before.uuid, "", status=Status.STOPPED)
    wait_for(lambda: seen.value(before.uuid).hostname == "", 5, "before stopped")
    assert seen.value(a.uuid).name == "a"

    moved(store, a.uuid, "h1")  # back again
    wait_for(lambda: seen.value(a.uuid).hostname == "h1", 5, "a back on h1")
    assert seen.value(a.uuid).name == "renamed"
    found = store.get(VM, a.uuid)
    assert store.delete(found)
    wait_for(lambda: seen.value(a.uuid) is None, 5, "a deleted")

    store.update(VM, other.uuid, lambda v: setattr(v, "desired", Desired.STOPPED))
    moved(store, other.uuid, "h3")
    assert other.uuid not in seen.ids()  # never on h1: never delivered
    assert seen.snapshots() == 1


def test_many_vms_placed_at_once_reach_their_host(store: Store, follow):
    """A scheduler batch places many VMs on one host in one transaction."""
    seen = follow("h1")
    vms = [vm(f"v{i}") for i in range(150)]
    for v in vms:
        store.create(v)
    found = store.list(VM)[0]
    writes = [
        (found[v.uuid].value.model_copy(update={"hostname": "h1"}), found[v.uuid]) for v in vms
    ]
    for start in range(0, len(writes), 64):
        assert store.swap_many(writes[start : start + 64]) is not None
    wait_for(lambda: len(seen.here("h1")) == 150, 10, "150 VMs on h1")
    for v in vms[:10]:
        store.update(VM, v.uuid, lambda x: setattr(x, "desired", Desired.STOPPED))
    wait_for(
        lambda: all(seen.value(v.uuid).desired == Desired.STOPPED for v in vms[:10]),
        10,
        "their changes",
    )


def _slow_retry(store: Store) -> Store:
    """A store whose watches wait 10 s before they resume (a follower's back-off is capped at
    etcd_reconnect_max): room, on a loaded machine too, for etcd to start again, for the
    test's own client to reach it and for the test to write while they are away."""
    update = {"retry_initial": 10.0, "etcd_reconnect_max": 10.0}
    return Store(store.settings.model_copy(update=update))


@pytest.mark.parametrize("compact", [False, True], ids=["resumed", "compacted"])
def test_host_follower_loses_nothing_across_an_etcd_restart(
    store: Store, etcd: Etcd, follow, compact: bool
):
    a, b, c = vm("a", host="h1"), vm("b", host="h2"), vm("c")
    for v in (a, b, c):
        store.create(v)
    slow = _slow_retry(store)
    try:
        seen = follow("h1", slow)
        assert seen.here("h1") == {a.uuid}
        etcd.stop()
        etcd.start()  # same data and ports; the follower waits before it watches again
        reconnected(store)
        moved(store, a.uuid, "h2")
        moved(store, b.uuid, "h1")
        moved(store, c.uuid, "h1")
        store.update(VM, c.uuid, lambda v: setattr(v, "desired", Desired.SUSPENDED))
        moved(store, a.uuid, "h1", desired=Desired.STOPPED)
        if compact:
            _, revision = store.list(VM)
            store.client.compact(revision)
        wait_for(
            lambda: (
                seen.here("h1") == {a.uuid, b.uuid, c.uuid}
                and seen.value(c.uuid).desired == Desired.SUSPENDED
                and seen.value(a.uuid).desired == Desired.STOPPED
            ),
            30,  # the follower's next attempt, or the one after (2 x 10 s)
            "every change made while the follower was away",
        )
        assert seen.snapshots() == (2 if compact else 1)  # compacted: listed again
        store.update(VM, b.uuid, lambda v: setattr(v, "desired", Desired.STOPPED))
        wait_for(lambda: seen.value(b.uuid).desired == Desired.STOPPED, 5, "a later change")
    finally:
        slow.close()


# --- the host agent -------------------------------------------------------------------------------


class Disks:
    """Storage for the fake hypervisor: disks are names."""

    def __init__(self) -> None:
        self.disks: set[str] = set()

    def create_disk(self, disk: str, image: str, size_gib: float, *, pool: str = "") -> None:
        self.disks.add(disk)

    def delete_disk(self, disk: str, *, pool: str = "") -> None:
        self.disks.discard(disk)

    def fence_disk(self, disk: str, *, pool: str = "") -> list[str]:
        return []

    def disk_xml(self, disk: str, *, pool: str = "", target: str = "vda") -> str:
        return f"<disk name='{disk}'/>"

    def libvirt_secret(self) -> None:
        return None


def test_agent_runs_its_vms_only_and_destroys_one_moved_off(
    store: Store, settings: Settings, etcd: Etcd, tmp_path: Path
):
    image = Image(name="img", owner="a", owner_realm="r", status=ImageStatus.CREATED)
    store.create(image)
    host = settings.model_copy(
        update={
            "hostname": "node1",
            "state_dir": str(tmp_path),
            "vnc_dir": tempfile.mkdtemp(prefix="ucvnc-"),
            "host_cpu": 4,
            "host_ram": 8,
            "host_resync": 3600.0,  # everything the agent does here comes from its watch
            "host_lease_ttl": 10,
        }
    )
    hv = FakeHypervisor()
    agent = HostAgent(Store(host), host, hv, Disks())  # type: ignore[arg-type]
    stop = threading.Event()
    thread = threading.Thread(target=agent.run, args=(stop,), daemon=True)
    thread.start()

    def placed(name: str, on: str) -> str:
        v = vm(name, host=on, status=Status.SCHEDULED, image=image.uuid)
        store.create(v)
        return v.uuid

    def status(id: str, wanted: Status, timeout: float = 10) -> None:
        wait_for(lambda: store.get(VM, id).value.status == wanted, timeout, f"{id} {wanted}")

    def power(id: str) -> Power | None:
        dom = hv.domain(id)
        return dom.power if dom else None

    try:
        wait_for(lambda: store.get(Host, "node1"), 10, "the agent to register")
        mine, theirs = placed("mine", "node1"), placed("theirs", "node2")
        status(mine, Status.RUNNING)
        assert power(mine) == Power.RUNNING

        store.update(VM, mine, lambda v: v.apply(Action.SUSPEND, "test"))
        status(mine, Status.SUSPENDED)
        assert power(mine) == Power.PAUSED

        # etcd restarts: the agent's follower resumes, and answers the next request.
        etcd.stop()
        etcd.start()
        reconnected(store)
        store.update(VM, mine, lambda v: v.apply(Action.RESUME, "test"))
        status(mine, Status.RUNNING, timeout=20)
        assert power(mine) == Power.RUNNING

        # Moved off the host (as if the scheduler placed it elsewhere): its domain goes.
        moved(store, mine, "node2", status=Status.SCHEDULED)
        wait_for(lambda: hv.domain(mine) is None, 10, "the moved VM's domain destroyed")
        assert store.get(VM, mine).value.status == Status.SCHEDULED
        assert store.get(VM, theirs).value.status == Status.SCHEDULED  # never touched
        with agent.lock:
            assert theirs not in agent.vms.items
        assert hv.domain(theirs) is None
    finally:
        stop.set()
        thread.join(15)
