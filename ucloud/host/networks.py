"""Which networks this host needs, and keeping its data plane and host record in step.

The networks needed here are those of the ports of the VMs placed here, and those whose
router (``Network.router``, chosen by the scheduler) is this host: it holds their gateway
addresses and runs their dnsmasq (gateway.py), and stops both when it no longer routes them.
For each, the peers are the underlay addresses of the other hosts whose records say they hold
it and that are not DEAD (a dead host's copies of VMs, and of a router's gateway, may still
run: nobody sends to it any more). The host publishes what it holds, its underlay address and
whether it offers to route (``network_router``) in its own record, by compare-and-swap.

One thread does it, woken by any change of the networks, the hosts or the VMs here, and
every ``host_resync`` seconds; ``ensure`` does it at once for a VM about to start.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from ucloud.config import Settings
from ucloud.host.gateway import Gateways, Routed, gateway_addresses
from ucloud.host.hypervisor import Nic
from ucloud.host.netfilter import PortGuard, tap_name
from ucloud.host.netplane import NetPlane, NetPlaneError, NoNetPlane, Segment, bridge_name
from ucloud.mirror import Mirror
from ucloud.models import VM, Host, HostStatus, Network, Port, network_leases_folder
from ucloud.store import Change, Follower, Snapshot, Store, StoreError

log = logging.getLogger(__name__)


class NetworkSync:
    def __init__(
        self,
        store: Store,
        settings: Settings,
        plane: NetPlane,
        local_ports: Callable[[], list[Port]],
    ) -> None:
        self.store = store
        self.settings = settings
        self.plane = plane
        self.local_ports = local_ports
        self.name = settings.hostname
        self.networks: Mirror[Network] = Mirror()
        self.hosts: Mirror[Host] = Mirror()
        self.lock = threading.Lock()  # guards the mirrors
        self.sync_lock = threading.Lock()  # one sync at a time
        self.built: set[str] = set()  # networks (uuids) whose devices are up here
        self.wake = threading.Event()
        self.followers: list[Follower[Network] | Follower[Host]] = []
        self.thread: threading.Thread | None = None
        self.stopped = threading.Event()
        # Nothing is built or published before the networks, the hosts and the VMs placed
        # here have each been listed once: a restarted agent must not take down, even for a
        # moment, what its VMs use (its first pass would see no VM at all).
        self.listed: set[str] = set()
        self.gateways = Gateways(Path(settings.state_dir))

    @property
    def enabled(self) -> bool:
        """A simulated host (the fake hypervisor) builds nothing, and follows nothing for it:
        a scale simulation runs thousands of agents."""
        return not isinstance(self.plane, NoNetPlane)

    def start(self) -> None:
        if not self.enabled:
            return
        self.followers = [
            self.store.follow(Network, self._deliver_networks),
            self.store.follow(Host, self._deliver_hosts),
        ]
        self.thread = threading.Thread(target=self._run, name="networks", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.stopped.set()
        self.wake.set()
        for f in self.followers:
            f.stop()
        if self.thread is not None:
            self.thread.join(timeout=10)

    def poke(self) -> None:
        """Something changed: sync soon (in the thread)."""
        self.wake.set()

    def vms_listed(self) -> None:
        """The agent has its VMs (their first snapshot was delivered)."""
        self.listed.add("vms")
        self.wake.set()

    def _deliver_networks(self, update: Snapshot[Network] | Change[Network]) -> None:
        with self.lock:
            self.networks.apply(update)
        if isinstance(update, Snapshot):
            self.listed.add("networks")
        self.wake.set()

    def _deliver_hosts(self, update: Snapshot[Host] | Change[Host]) -> None:
        with self.lock:
            self.hosts.apply(update)
        if isinstance(update, Snapshot):
            self.listed.add("hosts")
        self.wake.set()

    def _run(self) -> None:
        while not self.stopped.is_set():
            self.wake.wait(self.settings.host_resync)
            self.wake.clear()
            if self.stopped.is_set():
                return
            try:
                self.sync()
            except (NetPlaneError, StoreError) as e:
                log.warning("networks: %s; trying again", e)
                self.stopped.wait(1.0)
                self.wake.set()
            except Exception:
                log.exception("networks: sync failed; trying again")
                self.stopped.wait(1.0)
                self.wake.set()

    # --- the work ------------------------------------------------------------------------------

    def sync(self) -> None:
        if self.listed != {"vms", "networks", "hosts"}:
            return
        with self.sync_lock:
            needed = {p.network for p in self.local_ports()}
            with self.lock:
                routed = self._routed_here()
                needed |= routed  # a router holds its networks, VMs here or not
                networks = {id: self.networks.get(id) for id in needed}
                hosts = [h.value for h in self.hosts.items.values()]
            segments: dict[int, Segment] = {}
            by_vni: dict[int, str] = {}
            for id, found in networks.items():
                if found is None:
                    log.warning("network %s of a VM here is not known (yet)", id)
                    continue
                net = found.value
                peers = frozenset(
                    h.underlay
                    for h in hosts
                    if h.name != self.name
                    and h.underlay
                    and net.uuid in h.networks
                    and h.status != HostStatus.DEAD
                )
                gateways = (
                    gateway_addresses(net.ipv6_prefix, net.ipv4_subnet) if id in routed else ()
                )
                segments[net.vni] = Segment(net.vni, net.mtu, peers, gateways)
                by_vni[net.vni] = net.uuid
            guards = [PortGuard(p.mac, p.ipv6, p.ipv4) for p in self.local_ports()]
            built = self.plane.apply(segments, guards)
            self.built = {by_vni[v] for v in built if v in by_vni}
            # Every pass, router or not: the dnsmasqs of networks no longer routed here stop.
            self.gateways.apply(
                [
                    self._routed(found.value)
                    for id, found in networks.items()
                    if found is not None and id in self.built and id in routed
                ]
            )
            self._publish(sorted(self.built))

    def _routed_here(self) -> set[str]:
        """The networks whose router is this host (none unless it offers to route: an
        operator who turned ``network_router`` off is obeyed at once, before the scheduler
        has chosen other routers). Call with the lock held."""
        if not self.settings.network_router:
            return set()
        return {id for id, v in self.networks.items.items() if v.value.router == self.name}

    def _routed(self, net: Network) -> Routed:
        entries, _ = self.store.list_index(network_leases_folder(net.uuid))
        leases = []
        for entry in sorted(entries):
            mac, _, ipv4 = entry.partition(",")
            if ipv4:
                leases.append((mac, ipv4))
        return Routed(
            net.vni, bridge_name(net.vni), net.ipv6_prefix, net.ipv4_subnet, net.mtu, tuple(leases)
        )

    def _publish(self, held: list[str]) -> None:
        underlay = self.settings.network_underlay
        router = self.settings.network_router

        def change(host: Host) -> bool:
            if (host.networks, host.underlay, host.router) == (held, underlay, router):
                return False
            host.networks, host.underlay, host.router = held, underlay, router
            return True

        with self.lock:
            mine = self.hosts.get(self.name)
        if mine is not None and not change(mine.value.model_copy(deep=True)):
            return
        self.store.update(Host, self.name, change)

    def ensure(self, vm: VM) -> None:
        """The devices of ``vm``'s networks are up here (NetPlaneError if not: retried)."""
        if not self.enabled or all(p.network in self.built for p in vm.ports):
            return
        self.sync()
        missing = [p.network for p in vm.ports if p.network not in self.built]
        if missing and self.listed != {"vms", "networks", "hosts"}:
            raise NetPlaneError("the networks are not listed yet")
        if missing:
            raise NetPlaneError(f"network(s) {', '.join(missing)} not ready here yet")

    def nics(self, vm: VM) -> list[Nic]:
        """The VM's NICs as its domain has them (empty for a network not known here yet)."""
        nics = []
        with self.lock:
            for port in vm.ports:
                found = self.networks.get(port.network)
                if found is not None:
                    net = found.value
                    nics.append(Nic(port.mac, bridge_name(net.vni), net.mtu, tap_name(port.mac)))
        return nics
