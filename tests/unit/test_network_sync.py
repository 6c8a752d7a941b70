"""What a host agent's network thread (ucloud/host/networks.py) asks of its data plane and
its dnsmasqs as the networks' routers change: it routes exactly the networks whose router it
is, and lets go of one as soon as it no longer is. A recording data plane and gateway stand in
for netlink and dnsmasq (the bed tests run the real ones)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.memstore import MemStore
from ucloud.config import Settings
from ucloud.host.gateway import Routed
from ucloud.host.netfilter import PortGuard
from ucloud.host.netplane import Segment
from ucloud.host.networks import NetworkSync
from ucloud.models import Host, Network, Port, Specs


class Plane:
    def __init__(self) -> None:
        self.segments: dict[int, Segment] = {}

    def apply(self, segments: dict[int, Segment], guards: list[PortGuard]) -> set[int]:
        self.segments = dict(segments)
        return set(segments)


class Gateways:
    def __init__(self) -> None:
        self.routed: list[int] | None = None

    def apply(self, routed: list[Routed]) -> None:
        self.routed = [r.vni for r in routed]


class Here:
    def __init__(self, tmp_path: Path, offers: bool = True, offered: bool = False) -> None:
        self.store = MemStore()
        self.store.create(Host(name="me", capacity=Specs(cpu=1, ram=1), router=offered))
        self.net = Network(
            name="lan",
            owner="alice",
            owner_realm="users",
            vni=1000,
            ipv6_prefix="fd00:0:0:1::/64",
            ipv4_subnet="10.0.0.0/24",
            mtu=1450,
        )
        self.store.create(self.net)
        self.ports: list[Port] = []
        settings = Settings(hostname="me", network_router=offers, state_dir=str(tmp_path))
        self.plane = Plane()
        self.sync = NetworkSync(self.store, settings, self.plane, lambda: self.ports)  # type: ignore[arg-type]
        self.gateways = Gateways()
        self.sync.gateways = self.gateways  # type: ignore[assignment]
        self.sync._routed = self._routed  # type: ignore[method-assign]
        self.store.follow(Network, self.sync._deliver_networks)
        self.store.follow(Host, self.sync._deliver_hosts)
        self.sync.vms_listed()

    def _routed(self, net: Network) -> Routed:
        return Routed(net.vni, f"ucbr{net.vni}", net.ipv6_prefix, net.ipv4_subnet, net.mtu, ())

    def route_by(self, host: str) -> None:
        self.store.update(Network, self.net.uuid, lambda n: setattr(n, "router", host))
        self.pass_()

    def pass_(self) -> None:
        self.store.flush()
        self.sync.sync()
        self.store.flush()

    def gateway_addresses(self) -> tuple[str, ...] | None:
        segment = self.plane.segments.get(1000)
        return None if segment is None else segment.gateways


@pytest.fixture
def here(tmp_path: Path) -> Here:
    return Here(tmp_path)


def test_a_router_holds_its_network_without_vms_and_lets_go_when_it_no_longer_routes(
    here: Here,
):
    here.pass_()
    assert here.plane.segments == {} and here.gateways.routed == []  # not its router
    host = here.store.get(Host, "me").value
    assert (host.router, host.networks) == (True, [])  # it offers to route

    here.route_by("me")
    assert here.gateway_addresses() == ("fd00:0:0:1::1/64", "10.0.0.1/24")
    assert here.gateways.routed == [1000]
    assert here.store.get(Host, "me").value.networks == [here.net.uuid]  # peers send to it

    here.route_by("other")  # the scheduler chose another router
    assert here.plane.segments == {}  # no VM here needs the network: its devices go
    assert here.gateways.routed == []  # its dnsmasq stops
    assert here.store.get(Host, "me").value.networks == []


def test_a_network_a_vm_here_needs_stays_without_its_gateway(here: Here):
    here.ports = [Port(network=here.net.uuid, mac="52:54:00:00:00:01", ipv6="fd00::1")]
    here.route_by("me")
    assert here.gateway_addresses() == ("fd00:0:0:1::1/64", "10.0.0.1/24")
    here.route_by("other")
    assert here.gateway_addresses() == ()  # the bridge stays for the VM, the addresses go
    assert here.gateways.routed == []


def test_a_host_that_does_not_offer_to_route_routes_nothing_even_if_named(tmp_path: Path):
    here = Here(tmp_path, offers=False, offered=True)  # network_router turned off
    here.route_by("me")
    assert here.plane.segments == {} and here.gateways.routed == []
    assert here.store.get(Host, "me").value.router is False  # so the scheduler moves it
