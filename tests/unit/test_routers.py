"""The routers of tenant networks (ucloud/scheduler/routers.py): the filters and the weigher
on hosts made in memory, and the scheduler choosing, keeping and replacing routers over the
store double (tests/unit/memstore.py), its loop as the daemon runs it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.unit.memstore import FakeLease, MemStore
from ucloud.config import Settings
from ucloud.models import AdminState, Alive, Host, HostStatus, Network, Specs
from ucloud.scheduler import routers
from ucloud.scheduler.daemon import Scheduler
from ucloud.scheduler.placement import HostState
from ucloud.scheduler.writes import Deposed
from ucloud.store import Guard


def state(
    name: str = "r1",
    *,
    router: bool = True,
    alive: bool = True,
    status: HostStatus = HostStatus.UP,
    admin: AdminState = AdminState.UP,
) -> HostState:
    capacity = Specs(cpu=8, ram=16)
    h = Host(name=name, capacity=capacity, status=status, admin_state=admin, router=router)
    return HostState(h, alive, limit=capacity)


# --- filters and the weigher ------------------------------------------------------------------


def test_a_host_may_route_only_when_it_offers_to_and_is_up_and_not_in_maintenance():
    assert routers.may_route(state()) == ""
    assert "network_router" in routers.may_route(state(router=False))
    assert routers.may_route(state(alive=False)) == "down"  # its alive key is gone
    assert routers.may_route(state(status=HostStatus.DEAD)) == "down"
    assert routers.may_route(state(admin=AdminState.MAINTENANCE)) == "in maintenance"


def test_the_host_routing_the_fewest_networks_is_chosen_then_the_first_name():
    hosts = [state("r1"), state("r2"), state("r3")]
    assert routers.choose(hosts, {"r1": 3, "r2": 1, "r3": 2}).name == "r2"
    assert routers.choose(hosts, {"r1": 1, "r2": 0, "r3": 0}).name == "r2"
    assert routers.choose(hosts, {}).name == "r1"
    assert routers.choose([], {}) is None
    assert routers.fewest_routed(state("r1"), {"r1": 4}) < routers.fewest_routed(state("r2"), {})


def test_without_a_possible_router_the_reason_counts_the_hosts_by_what_they_lack():
    passed, reason = routers.routers(
        [
            state("a", router=False),
            state("b", router=False),
            state("c", status=HostStatus.DEAD),
            state("d", admin=AdminState.MAINTENANCE),
        ]
    )
    assert passed == []
    assert reason == (
        "no host may route it: 2 not offering to route (network_router), 1 down, 1 in maintenance"
    )
    assert routers.routers([]) == ([], "no host may route it: no hosts are registered")
    passed, reason = routers.routers([state("a"), state("b", router=False)])
    assert [h.name for h in passed] == ["a"] and reason == ""


# --- the scheduler, on the store double ---------------------------------------------------------


class Cluster:
    """Hosts (a record and an alive key on a lease each) and networks in the store double,
    and a scheduler that runs passes over them as its loop does."""

    def __init__(self) -> None:
        self.store = MemStore()
        self.leases: dict[str, FakeLease] = {}
        self.scheduler: Scheduler | None = None

    def host(self, name: str, router: bool = True) -> None:
        self.store.create(Host(name=name, capacity=Specs(cpu=4, ram=8), router=router))
        self.leases[name] = self.store.lease(10)
        self.store.put_owned(Alive(name=name), self.leases[name])

    def network(self, name: str, **fields: object) -> str:
        n = len(self.store.list(Network)[0])
        net = Network(
            name=name,
            owner="alice",
            owner_realm="users",
            vni=1000 + n,
            ipv6_prefix=f"fd00:0:0:{n}::/64",
            mtu=1450,
            **fields,
        )
        self.store.create(net)
        return net.uuid

    def start(self) -> Scheduler:
        settings = Settings(dead_host_grace=0)
        self.scheduler = Scheduler(self.store, settings, storage=object())  # type: ignore[arg-type]
        self.scheduler.start()
        self.run()
        return self.scheduler

    def run(self) -> None:
        """Deliver what changed and run passes until nothing more changes."""
        assert self.scheduler is not None
        for _ in range(10):
            self.store.flush()
            self.scheduler.drain(timeout=0)
            self.scheduler.step()
            if not self.store.flush():
                return
            self.scheduler.drain(timeout=0)
        raise AssertionError("the scheduler kept writing")

    def edit_host(self, name: str, **fields: object) -> None:
        self.store.update(Host, name, lambda h: [setattr(h, k, v) for k, v in fields.items()])
        self.run()

    def router(self, id: str) -> tuple[str, str]:
        found = self.store.get(Network, id)
        assert found is not None
        return found.value.router, found.value.router_reason


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    c = Cluster()
    yield c
    if c.scheduler is not None:
        c.scheduler.stop()


def test_each_network_gets_the_router_routing_the_fewest(cluster: Cluster):
    cluster.host("a")
    cluster.host("b")
    cluster.host("vms-only", router=False)
    nets = [cluster.network(f"n{i}") for i in range(4)]
    cluster.start()
    chosen = [cluster.router(n)[0] for n in nets]
    assert sorted(chosen) == ["a", "a", "b", "b"]  # spread, never the host that does not offer
    late = cluster.network("late")
    cluster.run()
    assert cluster.router(late) == ("a", "")  # a tie: the first name


def test_a_network_without_a_possible_router_waits_with_the_reason_then_gets_one(
    cluster: Cluster,
):
    cluster.host("vms-only", router=False)
    net = cluster.network("lan")
    cluster.start()
    assert cluster.router(net) == (
        "",
        "no host may route it: 1 not offering to route (network_router)",
    )
    cluster.host("r")
    cluster.run()
    assert cluster.router(net) == ("r", "")
    # A host that starts offering (its agent restarted with network_router) is a candidate too.
    cluster.leases["r"].expire()
    cluster.run()
    assert cluster.router(net)[0] == ""
    assert "1 down" in cluster.router(net)[1]
    cluster.edit_host("vms-only", router=True)
    assert cluster.router(net) == ("vms-only", "")


def test_a_router_that_dies_goes_into_maintenance_or_stops_offering_is_replaced(
    cluster: Cluster,
):
    for name in ("a", "b", "c"):
        cluster.host(name)
    net = cluster.network("lan")
    cluster.start()
    assert cluster.router(net)[0] == "a"

    cluster.leases["a"].expire()  # its agent is gone: the host goes DEAD
    cluster.run()
    assert cluster.store.get(Host, "a").value.status == HostStatus.DEAD
    assert cluster.router(net)[0] == "b"

    cluster.edit_host("b", admin_state=AdminState.MAINTENANCE)
    assert cluster.router(net)[0] == "c"

    cluster.host("d")
    cluster.run()
    assert cluster.router(net)[0] == "c"  # a router that may route is kept: no rebalancing
    cluster.edit_host("c", router=False)
    assert cluster.router(net)[0] == "d"

    cluster.edit_host("d", admin_state=AdminState.MAINTENANCE)
    assert cluster.router(net) == (
        "",
        "no host may route it: 2 in maintenance, 1 down, 1 not offering to route (network_router)",
    )
    cluster.edit_host("b", admin_state=AdminState.UP)
    assert cluster.router(net) == ("b", "")


def test_a_named_router_is_kept_while_it_may_route_then_failed_over(cluster: Cluster):
    cluster.host("a")
    cluster.host("b")
    busy = [cluster.network(f"n{i}") for i in range(2)]
    cluster.start()
    assert sorted(cluster.router(n)[0] for n in busy) == ["a", "b"]
    named = cluster.network("named", router="b")
    later = cluster.network("later")
    cluster.run()
    assert cluster.router(named) == ("b", "")  # not the least loaded: kept, as named
    assert cluster.router(later)[0] == "a"  # b routes two now
    # An administrator names another router of an existing network: kept as well.
    cluster.store.update(Network, later, lambda n: setattr(n, "router", "b"))
    cluster.run()
    assert cluster.router(later)[0] == "b"
    cluster.leases["b"].expire()
    cluster.run()
    assert {cluster.router(n)[0] for n in (named, later, *busy)} == {"a"}


def test_a_router_whose_host_record_is_gone_is_replaced_and_deleting_networks_get_none(
    cluster: Cluster,
):
    cluster.host("a")
    cluster.host("b")
    net = cluster.network("lan", router="ghost")  # named, then its record was deleted
    going = cluster.network("going", deleting=True)
    cluster.start()
    assert cluster.router(net)[0] == "a"
    assert cluster.router(going) == ("", "")
    assert len(cluster.store.writes_of(Network, going)) == 1  # never written by the scheduler


def test_a_deposed_scheduler_chooses_no_router(cluster: Cluster):
    cluster.store.create(Host(name="a", capacity=Specs(cpu=4, ram=8), router=True, status="UP"))
    cluster.store.put_owned(Alive(name="a"), cluster.store.lease(10))
    net = cluster.network("lan")
    lost = Guard(f"{cluster.store.prefix}/election/scheduler", 1)  # no such key: not the leader
    cluster.scheduler = Scheduler(cluster.store, Settings(), guard=lost, storage=object())  # type: ignore[arg-type]
    cluster.scheduler.start()
    cluster.scheduler.drain(timeout=0)
    with pytest.raises(Deposed):
        cluster.scheduler.step()
    assert cluster.router(net) == ("", "")


def test_a_dead_hosts_record_lists_no_networks_until_its_agent_publishes_them_anew(
    cluster: Cluster,
):
    """Peers send a network's frames to the hosts whose records list it: a host back from the
    dead must not be one for what it held before (its stale router copy, its VMs' old copies)
    before its agent's first pass has removed them and published what it holds."""
    cluster.host("a")
    cluster.store.update(Host, "a", lambda h: setattr(h, "networks", ["n1", "n2"]))
    cluster.start()
    assert cluster.store.get(Host, "a").value.networks == ["n1", "n2"]  # UP: kept
    cluster.leases["a"].expire()
    cluster.run()
    host = cluster.store.get(Host, "a").value
    assert (host.status, host.networks) == (HostStatus.DEAD, [])
    cluster.store.put_owned(Alive(name="a"), cluster.store.lease(10))  # its agent is back
    cluster.run()
    host = cluster.store.get(Host, "a").value
    assert (host.status, host.networks) == (HostStatus.UP, [])
