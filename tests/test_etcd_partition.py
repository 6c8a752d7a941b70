"""A member of a three-member etcd cluster cut off from its peers: alive, answering its clients,
but without a leader. A watch stream attached to it stays open and delivers nothing unless the
client requires a leader (etcd's ``hasleader`` metadata): then the member ends it, and the
store moves to a member of the majority.

The cut-off member runs in a network namespace of this module's own, joined to the machine by
a veth pair; the other two listen on the veth's address in the root namespace. The partition
is an nftables table inside that namespace that drops everything but the member's client
port: its clients still reach it, its peers do not. Deleting the namespace removes it all."""

from __future__ import annotations

import ipaddress
import random
import secrets
import subprocess
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import grpc
import pytest

from tests.etcdclients import Recorder, create, pin, retrying
from tests.servers import EtcdCluster, leader_of, wait_for
from ucloud.config import Settings, load_settings
from ucloud.models import Alive, Host, Specs
from ucloud.store import Store, Unavailable

CUT = 2  # the member in the namespace


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, text=True, timeout=30)


def _free_subnet() -> ipaddress.IPv4Network:
    """A /24 of 198.18.0.0/15 (RFC 2544, benchmarking) that no route of this machine covers
    (the test bed's scripts pick theirs the same way, and so avoid this one)."""
    used = []
    routes = subprocess.run(
        ["ip", "-4", "route", "show", "table", "all"], capture_output=True, text=True, check=True
    ).stdout
    for line in routes.splitlines():
        words = line.split()
        if not words:
            continue
        word = words[1] if words[0] in ("broadcast", "local", "unreachable") else words[0]
        if word == "default":
            continue
        with suppress(ValueError):
            used.append(ipaddress.ip_network(word, strict=False))
    free = [
        n
        for n in ipaddress.IPv4Network("198.18.0.0/15").subnets(new_prefix=24)
        if not any(n.overlaps(u) for u in used)
    ]
    return random.choice(free)


@contextmanager
def namespace() -> Iterator[tuple[str, str, str]]:
    """A network namespace joined to the root namespace by a veth pair: (namespace, the root
    side's address, the namespace side's address)."""
    name = f"ucp{secrets.token_hex(3)}"
    net = _free_subnet()
    outside, inside = str(net.network_address + 1), str(net.network_address + 2)
    _run("ip", "netns", "add", name)
    try:
        _run("ip", "link", "add", f"{name}a", "type", "veth", "peer", "name", f"{name}b")
        try:
            _run("ip", "link", "set", f"{name}b", "netns", name)
            _run("ip", "addr", "add", f"{outside}/24", "dev", f"{name}a")
            _run("ip", "link", "set", f"{name}a", "up")
            _run("ip", "-n", name, "addr", "add", f"{inside}/24", "dev", f"{name}b")
            _run("ip", "-n", name, "link", "set", f"{name}b", "up")
            _run("ip", "-n", name, "link", "set", "lo", "up")
            yield name, outside, inside
        finally:
            # Deleting either end deletes the pair; it is gone already if the namespace went.
            subprocess.run(["ip", "link", "del", f"{name}a"], capture_output=True, check=False)
    finally:
        _run("ip", "netns", "del", name)


class Partitioned(EtcdCluster):
    """Members 0 and 1 in the root namespace, member 2 in a namespace that cut() isolates."""

    def __init__(self, workdir: Path, ns: str, outside: str, inside: str) -> None:
        super().__init__(workdir, places=[(outside, None), (outside, None), (inside, ns)])
        self.ns = ns

    def cut(self) -> None:
        """Drop every packet of the member in the namespace but those of its client port."""
        port = self.members[CUT].port
        rules = f"""
        table inet ucpart {{
            chain input {{ type filter hook input priority 0; tcp dport != {port} drop; }}
            chain output {{ type filter hook output priority 0; tcp sport != {port} drop; }}
        }}
        """
        subprocess.run(
            ["ip", "netns", "exec", self.ns, "nft", "-f", "-"],
            input=rules,
            text=True,
            check=True,
            capture_output=True,
            timeout=30,
        )

    def heal(self) -> None:
        subprocess.run(
            ["ip", "netns", "exec", self.ns, "nft", "delete", "table", "inet", "ucpart"],
            capture_output=True,
            check=False,
            timeout=30,
        )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Partitioned]:
    with namespace() as (ns, outside, inside):
        c = Partitioned(tmp_path_factory.mktemp("etcd-partition"), ns, outside, inside)
        try:
            c.start()
            yield c
        finally:
            c.stop()


@pytest.fixture(autouse=True)
def healed(cluster: Partitioned) -> Iterator[None]:
    """Each test leaves the next one a whole cluster with a leader every member agrees on."""
    yield
    cluster.heal()
    cluster.leader(timeout=30)


@pytest.fixture
def settings(cluster: Partitioned) -> Settings:
    return load_settings(
        etcd_endpoints=cluster.endpoints,
        etcd_prefix=f"/test-{uuid.uuid4().hex[:8]}/v1",
    )


def cut_off(cluster: Partitioned) -> None:
    """Partition the member in the namespace and wait until it has no leader (etcd's election
    timeout, 1 s by default: it then stands for election, or steps down if it led)."""
    cluster.cut()
    wait_for(
        lambda: leader_of(cluster.members[CUT]) is None, 30, "the cut-off member to lose its leader"
    )


def write(writer: Store, name: str) -> int:
    """Create host ``name`` (retried while the majority elects a leader); its revision."""
    create(writer, Host(name=name, capacity=Specs(cpu=1, ram=1)), timeout=30)
    found = retrying(lambda: writer.get(Host, name), timeout=30)
    assert found is not None
    return found.mod_revision


def test_a_follower_on_a_member_that_lost_its_leader_moves_to_the_majority(
    settings: Settings, cluster: Partitioned
) -> None:
    cluster.leader()
    store = Store(settings)
    writer = Store(settings)
    pin(store, cluster, CUT)  # the follower's stream goes to the member about to be cut off
    pin(writer, cluster, 0)
    recorder = Recorder()
    follower = store.follow(Host, recorder)
    try:
        before = writer.create(Host(name="before", capacity=Specs(cpu=1, ram=1)))
        wait_for(lambda: recorder.has({"before": before}), 15, "a change before the partition")
        stream = follower._stream
        assert stream is not None and stream._endpoint.netloc == cluster.members[CUT].endpoint

        cut_off(cluster)
        # Written through the majority, which still has a leader: the writer is on member 0.
        during = {name: write(writer, name) for name in (f"during{i}" for i in range(5))}
        wait_for(lambda: recorder.has(during), 60, "changes written while the member was cut off")
        # Resumed where it stopped: no change missed, none twice, no fresh list needed.
        assert len(recorder.snapshots) == 1
        assert [id for id, _ in recorder.changes] == ["before", *during]
        stream = follower._stream
        assert stream is not None and stream._endpoint.netloc != cluster.members[CUT].endpoint
    finally:
        follower.stop()
        store.close()
        writer.close()


def test_a_follower_relists_when_the_majority_compacted_past_it_meanwhile(
    settings: Settings, cluster: Partitioned
) -> None:
    cluster.leader()
    store = Store(settings)
    writer = Store(settings)
    pin(store, cluster, CUT)
    pin(writer, cluster, 0)
    recorder = Recorder()
    follower = store.follow(Host, recorder)
    try:
        wait_for(lambda: follower.live, 15, "the follower's stream on the member")
        cut_off(cluster)
        during = {name: write(writer, name) for name in (f"during{i}" for i in range(5))}
        # The revision the follower would resume at is gone: only a fresh list brings these.
        retrying(lambda: writer.client.compact(max(during.values())), timeout=30)
        stream = follower._stream
        assert stream is not None and stream._endpoint.netloc == cluster.members[CUT].endpoint
        assert not recorder.changes, "the follower left before the compaction: nothing tested"

        def listed() -> bool:
            last = recorder.snapshots[-1]
            return all(
                id in last.items and last.items[id].mod_revision == rev
                for id, rev in during.items()
            )

        wait_for(listed, 60, "a fresh list with what was written while the member was cut off")
        assert len(recorder.snapshots) == 2
    finally:
        follower.stop()
        store.close()
        writer.close()


def grpc_details(error: BaseException) -> str:
    """The details of the gRPC error behind a store's error (python-etcd3 wraps it too)."""
    cause: BaseException | None = error
    while cause is not None and not isinstance(cause, grpc.RpcError):
        cause = cause.__cause__ or cause.__context__
    assert cause is not None, f"no gRPC error behind {error!r}"
    return str(cause.details())


def test_a_read_on_a_member_without_a_leader_is_refused_and_the_next_goes_elsewhere(
    settings: Settings, cluster: Partitioned
) -> None:
    cluster.leader()
    store = Store(settings)
    try:
        create(store, Host(name="h", capacity=Specs(cpu=1, ram=1)))
        cut_off(cluster)
        pin(store, cluster, CUT)
        with pytest.raises(Unavailable) as refused:
            store.get(Host, "h")
        # Refused for want of a leader, not timed out waiting for one (etcd_timeout).
        details = grpc_details(refused.value)
        assert "no leader" in details, details
        found = store.get(Host, "h")  # the next call goes to another member
        assert found is not None and found.value.name == "h"
    finally:
        store.close()


def test_a_lease_held_through_a_member_cut_off_is_kept(
    settings: Settings, cluster: Partitioned
) -> None:
    cluster.leader()
    holder = Store(settings)
    observer = Store(settings)
    pin(holder, cluster, CUT)
    pin(observer, cluster, 0)
    lost = threading.Event()
    ttl = settings.host_lease_ttl
    keepalive = holder.hold_lease(ttl, lost.set)
    try:
        holder.put_owned(Alive(name="holder"), keepalive.lease)
        cluster.cut()
        # Past when it would expire, and on_lost be called, were it not renewed elsewhere.
        lost.wait(2 * ttl)
        assert not lost.is_set(), "on_lost was called"
        assert keepalive.remaining() > 0
        assert retrying(lambda: observer.get(Alive, "holder")) is not None
    finally:
        keepalive.stop(revoke=True)
        holder.close()
        observer.close()
