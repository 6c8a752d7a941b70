"""The daemons on a three-member etcd cluster whose members are SIGKILLed, the leader included.

Every Store here talks to all three members (as UCLOUD_ETCD_ENDPOINTS lists them); the store
under test is first pinned to the member about to be killed, so that its calls, watches and
lease renewals must fail over to another member."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import pytest

from tests.etcdclients import Recorder, create, pin, retrying
from tests.scheduling import FakeAgent
from tests.servers import EtcdCluster, wait_for
from ucloud.config import Settings, load_settings
from ucloud.models import VM, Alive, Host, HostStatus, Specs, Status
from ucloud.scheduler.daemon import Scheduler
from ucloud.store import Change, Snapshot, Store, Unavailable

T = TypeVar("T")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    c = EtcdCluster(tmp_path_factory.mktemp("etcd-cluster"))
    try:
        c.start()
        yield c
    finally:
        c.stop()


@pytest.fixture(autouse=True)
def whole_cluster(cluster: EtcdCluster) -> Iterator[None]:
    """Each test starts, and leaves the next one, with all three members up and a leader."""
    yield
    for i, member in enumerate(cluster.members):
        if not member.running():
            cluster.restart(i)
    cluster.leader()


@pytest.fixture
def settings(cluster: EtcdCluster) -> Settings:
    # Overrides conftest's settings (one member): the same, on the cluster. Lease TTLs longer
    # than a leader election (1 to 2 s with etcd's defaults), and renewals (every ttl/3) further
    # apart than the 1 s time_retry that used to send them back to the dead member.
    return load_settings(
        etcd_endpoints=cluster.endpoints,
        etcd_prefix=f"/test-{uuid.uuid4().hex[:8]}/v1",
        dead_host_grace=0.5,
        scheduler_lease_ttl=5,
        host_lease_ttl=5,
        scheduler_resync=2,
    )


def pinned(settings: Settings, cluster: EtcdCluster, index: int) -> Store:
    """A store on every member that starts on member ``index`` (python-etcd3 picks one at
    random), so that killing that member is sure to hit it."""
    store = Store(settings)
    pin(store, cluster, index)
    return store


def other_than(cluster: EtcdCluster, index: int) -> int:
    return next(i for i in range(len(cluster.members)) if i != index)


class Writer(threading.Thread):
    """Creates host records one after another, and keeps the revision of every one etcd
    acknowledged; a write whose answer was lost may have landed or not: it is not counted."""

    def __init__(self, store: Store) -> None:
        super().__init__(name="writer", daemon=True)
        self.store = store
        self.acked: dict[str, int] = {}
        self.unknown = 0
        self.stopped = threading.Event()

    def run(self) -> None:
        n = 0
        while not self.stopped.is_set():
            host = Host(name=f"w{n:06d}", capacity=Specs(cpu=1, ram=1))
            n += 1  # each name is written once: an unknown outcome stays unknown
            try:
                self.acked[host.name] = self.store.create(host)
            except Unavailable:
                self.unknown += 1
                self.stopped.wait(0.05)

    def stop(self) -> None:
        self.stopped.set()
        self.join(10)
        assert not self.is_alive()


def test_settings_name_every_member(settings: Settings, cluster: EtcdCluster) -> None:
    ports = [m.port for m in cluster.members]
    assert settings.etcd_endpoints == ",".join(f"127.0.0.1:{p}" for p in ports)
    assert settings.etcd_members() == [("127.0.0.1", p) for p in ports]
    store = Store(settings)
    try:
        assert sorted(store.client.endpoints) == sorted(f"127.0.0.1:{p}" for p in ports)
    finally:
        store.close()


def test_every_call_leaves_a_killed_member(settings: Settings, cluster: EtcdCluster) -> None:
    victim = other_than(cluster, cluster.leader())  # a follower: no election to wait out
    store = pinned(settings, cluster, victim)
    host = Host(name="h", capacity=Specs(cpu=1, ram=1))
    revision = store.create(host)
    calls: dict[str, Callable[[], object]] = {
        "get": lambda: store.get(Host, "h"),
        "list": lambda: store.list(Host),
        "create": lambda: store.create(Host(name=uuid.uuid4().hex, capacity=Specs(cpu=1, ram=1))),
        "update": lambda: store.update(Host, "h", lambda h: setattr(h, "addresses", ["a"])),
        "lease": lambda: store.lease(5).revoke(),
        "watch": lambda: store.wait_deleted(store.key_of(host), revision, timeout=0.2),
    }
    dead = store.client.endpoints[cluster.members[victim].endpoint]
    cluster.kill(victim)
    try:
        for name, call in calls.items():
            pin(store, cluster, victim)
            failures = 0
            while True:
                try:
                    call()
                    break
                except Unavailable:
                    failures += 1
                    assert failures < 3, f"{name} kept calling the killed member"
                    # A daemon retries after a back-off, often longer than time_retry: as if
                    # it had, retry with the dead member no longer counted failed.
                    dead.last_failed = 0
            assert failures == 1, f"{name} did not meet the killed member: the test tests nothing"
    finally:
        store.close()


def test_followers_deliver_every_write_while_the_leader_then_a_follower_is_killed(
    settings: Settings, cluster: EtcdCluster
) -> None:
    leader = cluster.leader()
    # One follower watching through each member: whichever dies, one stream breaks with it.
    stores = [pinned(settings, cluster, i) for i in range(3)]
    recorders = [Recorder() for _ in stores]
    writer_store = pinned(settings, cluster, leader)
    writer = Writer(writer_store)
    followers = [s.follow(Host, r) for s, r in zip(stores, recorders, strict=True)]
    try:
        writer.start()
        for victim_is_leader in (True, False):
            leader = cluster.leader()
            victim = leader if victim_is_leader else other_than(cluster, leader)
            before = len(writer.acked)
            wait_for(lambda b=before: len(writer.acked) >= b + 50, 10, "writes before the kill")
            cluster.kill(victim)
            # Not just after the restart: while the member is down, writes keep being
            # acknowledged and every follower keeps delivering them.
            done = len(writer.acked)
            wait_for(lambda d=done: len(writer.acked) >= d + 50, 15, "writes without a member")
            acked = dict(writer.acked)
            for r in recorders:
                wait_for(lambda r=r, a=acked: r.has(a), 15, "delivery without a member")
            cluster.restart(victim)
        writer.stop()
        for r in recorders:
            wait_for(lambda r=r: r.has(writer.acked), 15, "every acknowledged write delivered")
    finally:
        writer.stopped.set()
        for f in followers:
            f.stop()
        for s in (*stores, writer_store):
            s.close()

    assert len(writer.acked) >= 200
    for r in recorders:
        assert len(r.snapshots) == 1 and not r.snapshots[0].items  # no events missed: no relist
        revisions = [rev for _, rev in r.changes]
        assert revisions == sorted(set(revisions)), "out of order, or delivered twice"
        assert len(r.ids) == len(r.changes), "a key delivered twice"
        assert r.has(writer.acked)
        # What was delivered beyond the acknowledged writes can only be unknown outcomes.
        assert len(r.changes) - len(writer.acked) <= writer.unknown


def test_a_held_lease_outlives_the_leaders_death(settings: Settings, cluster: EtcdCluster) -> None:
    leader = cluster.leader()
    holder = pinned(settings, cluster, leader)
    observer = pinned(settings, cluster, other_than(cluster, leader))
    lost = threading.Event()
    ttl = settings.host_lease_ttl
    keepalive = holder.hold_lease(ttl, lost.set)
    try:
        holder.put_owned(Alive(name="holder"), keepalive.lease)
        cluster.kill(leader)
        # Past when it would expire, and on_lost be called, were it not renewed elsewhere.
        lost.wait(1.5 * ttl)
        assert not lost.is_set(), "on_lost was called"
        assert keepalive.remaining() > 0
        assert retrying(lambda: observer.get(Alive, "holder")) is not None
    finally:
        keepalive.stop(revoke=True)
        holder.close()
        observer.close()


@contextmanager
def scheduler_thread(store: Store, settings: Settings) -> Iterator[Scheduler]:
    """A scheduler in a thread of the test process, as conftest's ``scheduler`` fixture."""
    s = Scheduler(store, settings)
    stop = threading.Event()
    thread = threading.Thread(target=s.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield s
    finally:
        stop.set()
        thread.join(10)
        assert not thread.is_alive()


def test_scheduler_keeps_placing_after_the_leader_is_killed(
    settings: Settings, cluster: EtcdCluster
) -> None:
    leader = cluster.leader()
    survivor = other_than(cluster, leader)
    # The scheduler and the agent start on the doomed leader; the test reads through another.
    sched_store = pinned(settings, cluster, leader)
    agent_store = pinned(settings, cluster, leader)
    store = pinned(settings, cluster, survivor)
    statuses: list[HostStatus] = []  # every status h1's record had, in order

    def on_host(item: Snapshot[Host] | Change[Host]) -> None:
        if isinstance(item, Change) and item.value is not None:
            statuses.append(item.value.status)

    hosts = store.follow(Host, on_host)

    def vm(name: str) -> VM:
        v = VM(
            name=name, owner="alice", owner_realm="users", specs=Specs(cpu=1, ram=1), image="img"
        )
        create(store, v)
        return v

    def status(v: VM) -> Status | None:
        found = retrying(lambda: store.get(VM, v.uuid))
        return found.value.status if found else None

    try:
        agent = FakeAgent(agent_store, "h1", cpu=64, ram=256)
        with scheduler_thread(sched_store, settings):
            first = vm("first")
            wait_for(lambda: status(first) == Status.SCHEDULED, 10, "the first placement")
            cluster.kill(leader)
            burst = [vm(f"after{i}") for i in range(10)]
            for v in burst:
                wait_for(lambda v=v: status(v) == Status.SCHEDULED, 15, f"{v.name} placed")
            assert agent.keepalive.remaining() > 0
            assert retrying(lambda: store.get(Alive, "h1")) is not None
        assert HostStatus.UP in statuses
        assert HostStatus.DEAD not in statuses[statuses.index(HostStatus.UP) :], statuses
    finally:
        hosts.stop()
        for s in (sched_store, agent_store, store):
            s.close()
