"""Networks and ports in etcd: every claim (VXLAN id, /64, MAC, IPv4 address) is an index
entry created in the same compare-and-swap transaction as the object that holds it (a
network's with its owner's quota usage: see ucloud.quota.charge), and deleted with it
(models.Network.index_keys, models.port_claims). Two writers racing for the same claim: one
transaction fails, and is retried with a fresh choice."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from ucloud.config import Settings
from ucloud.models import VM, Network, Port, network_ports_folder
from ucloud.network import allocate
from ucloud.store import Conflict, Guard, Store, Versioned

ATTEMPTS = 20


class NetworkInUse(Exception):
    """A network cannot be deleted while VMs are attached to it."""

    def __init__(self, network: Network, vms: list[str]) -> None:
        self.vms = vms
        super().__init__(
            f"network {network.name} ({network.uuid}) is attached to VM(s) {', '.join(vms)}: "
            "detach them first"
        )


class Changed(Exception):
    """What a request depends on kept changing; it was not done."""


def new_network(
    store: Store,
    settings: Settings,
    *,
    name: str,
    owner: str,
    owner_realm: str,
    shared: bool = False,
    ipv4_subnet: str = "",
    mtu: int = 0,
) -> Network:
    """A new network (not stored yet) with the lowest free VXLAN id of the range and the first
    free /64 of the pool as now claimed (AllocationError when none is left or the input is
    wrong). Its creation must find its claims (``index_keys``) absent: one taken meanwhile
    fails the transaction, which is retried with a fresh choice (see quota.charge)."""
    lo, hi = allocate.vni_range(settings.network_vni_range)
    subnet = str(allocate.ipv4_subnet(ipv4_subnet)) if ipv4_subnet else ""
    vnis, _ = store.list_index("vni/")
    prefixes, _ = store.list_index("prefix6/")
    return Network(
        name=name,
        owner=owner,
        owner_realm=owner_realm,
        shared=shared,
        vni=allocate.first_free((int(v) for v in vnis), lo, hi),
        ipv6_prefix=str(allocate.free_prefix(settings.network_ipv6_pool, prefixes)),
        ipv4_subnet=subnet,
        mtu=mtu or settings.network_mtu,
    )


def new_port(store: Store, network: Network, taken_here: Sequence[Port] = ()) -> Port:
    """A port on ``network`` with a new MAC and the lowest free IPv4 address (if it has
    IPv4); ``taken_here``: ports chosen in the same transaction."""
    mac = allocate.new_mac()
    ipv4 = ""
    if network.ipv4_subnet:
        claimed, _ = store.list_index(f"ipv4/{network.uuid}/")
        taken = [*claimed, *(p.ipv4 for p in taken_here if p.network == network.uuid)]
        ipv4 = allocate.free_ipv4(network.ipv4_subnet, taken)
    return Port(
        network=network.uuid, mac=mac, ipv6=allocate.eui64(network.ipv6_prefix, mac), ipv4=ipv4
    )


def _new_claims(vm: VM, was: VM | None) -> list[str]:
    before = set(was.index_keys()) if was is not None else set()
    return [k for k in vm.index_keys() if k not in before and not k.startswith("placement/")]


def give_ports(store: Store, vm: VM, networks: Sequence[Versioned[Network]]) -> list[str]:
    """Give a new ``vm`` a port on each network; the claims its creation must find absent
    (made in the transaction that creates it, with each network compared unchanged)."""
    chosen: list[Port] = []
    for found in networks:
        chosen.append(new_port(store, found.value, chosen))
    vm.ports = chosen
    return _new_claims(vm, None)


def attach(store: Store, vm: Versioned[VM], network: Versioned[Network]) -> Versioned[VM]:
    """Give ``vm`` a port on ``network`` (its record only: its host agent does the rest)."""
    for _ in range(ATTEMPTS):
        if network.value.deleting:
            raise Changed(f"network {network.value.name} is being deleted")
        if network.value.uuid in vm.value.networks:
            raise Conflict(f"VM {vm.value.uuid} is already attached to {network.value.name}")
        changed = vm.value.model_copy(deep=True)
        changed.ports = [*changed.ports, new_port(store, network.value)]
        changed.record("api", f"attached to network {network.value.name}")
        claims = _new_claims(changed, vm.value)
        revision = store.commit(swap=[(changed, vm)], unchanged=[network], absent=claims)
        if revision is not None:
            return Versioned(changed, revision)
        vm, network = _fresh_vm(store, vm), fresh_network(store, network)
    raise Changed("the VM or the network kept changing meanwhile; try again")


def detach(store: Store, vm: Versioned[VM], network: str) -> Versioned[VM]:
    """Remove ``vm``'s port on ``network``; its claims go in the same transaction."""
    for _ in range(ATTEMPTS):
        if network not in vm.value.networks:
            raise Conflict(f"VM {vm.value.uuid} is not attached to network {network}")
        changed = vm.value.model_copy(deep=True)
        changed.ports = [p for p in changed.ports if p.network != network]
        changed.record("api", f"detached from network {network}")
        revision = store.commit(swap=[(changed, vm)])
        if revision is not None:
            return Versioned(changed, revision)
        vm = _fresh_vm(store, vm)
    raise Changed("the VM kept changing meanwhile; try again")


def attached_vms(store: Store, network: str) -> list[str]:
    entries, _ = store.list_index(network_ports_folder(network))
    return sorted(entries)


def lock_for_deletion(store: Store, found: Versioned[Network]) -> Versioned[Network]:
    """The network marked ``deleting`` (every attachment compares the network unchanged, so
    none can slip in from then on) with no VM attached: ready to be deleted, as read.
    NetworkInUse while a VM is attached (the mark undone, unless its deletion was accepted
    already: ``deleted``)."""
    for _ in range(ATTEMPTS):
        if found.value.deleting:
            break
        # The scheduler writes networks too (their router): a race is retried, not refused.
        marked = store.swap_edited(found, lambda n: setattr(n, "deleting", True))
        if marked is not None:
            found = marked
            break
        again = store.get(Network, found.value.uuid)
        if again is None:
            raise Changed(f"network {found.value.uuid} is gone")
        found = again
    else:
        raise Changed(f"network {found.value.uuid} kept changing meanwhile; try again")
    vms = attached_vms(store, found.value.uuid)
    if vms:
        if not found.value.deleted:
            store.swap_edited(found, lambda n: setattr(n, "deleting", False))
        raise NetworkInUse(found.value, vms)
    return found


def remove_if_unused(store: Store, found: Versioned[Network], guard: Guard | None = None) -> bool:
    """Delete a network whose deletion was accepted (``deleted``) if no VM is attached any
    more; True if it is gone. No VM can attach it meanwhile (it is ``deleting``)."""
    if not found.value.deleted or attached_vms(store, found.value.uuid):
        return False
    return store.delete(found, guard)


def _fresh_vm(store: Store, found: Versioned[VM]) -> Versioned[VM]:
    again = store.get(VM, found.value.uuid)
    if again is None:
        raise Changed(f"VM {found.value.uuid} is gone")
    return again


def fresh_network(store: Store, found: Versioned[Network]) -> Versioned[Network]:
    again = store.get(Network, found.value.uuid)
    if again is None or again.value.deleting:
        raise Changed(f"network {found.value.name} is being deleted")
    return again


def ipv6_gateway(network: Network) -> str:
    """The network's router address (the prefix's ::1)."""
    return str(ipaddress.IPv6Network(network.ipv6_prefix).network_address + 1)
