"""Network endpoints: create, list, delete; attach a VM to one and detach it."""

from __future__ import annotations

from typing import Any

from flask import Blueprint
from pydantic import Field

from ucloud import quota
from ucloud.api import errors, replies, vms
from ucloud.api.endpoint import Principal, Reply, context, endpoint, visible
from ucloud.api.quotas import charged
from ucloud.api.schemas import Listing, NetworkCreate, NetworkRef, NetworkRouter, VMNetwork
from ucloud.models import Host, Network
from ucloud.network import ports
from ucloud.network.allocate import AllocationError
from ucloud.quota import Amounts, Plan
from ucloud.store import Conflict, Versioned

bp = Blueprint("network", __name__)


class NetworkInfo(Network):
    """A network as the API shows it: with the VMs attached to it."""

    attached: list[str] = Field(
        description="the uuids of the VMs attached: all of them for the network's owner, "
        "the caller's own on a shared network of someone else's"
    )


class NetworkDone(replies.Reply):
    message: str
    network: NetworkInfo


class NetworkList(replies.Reply):
    networks: list[NetworkInfo]


@endpoint(
    bp,
    "/network/create",
    summary="Create a network",
    responses={
        201: "created",
        403: "a shared network, or a router named, by a user who is no administrator; or "
        "over the caller's quota (the message names the limit and the usage)",
        409: "no VXLAN id or prefix left, or they kept being taken meanwhile; or the router "
        "named may not route now (not offering to, not UP, in maintenance)",
    },
    reply=NetworkDone,
)
def create(body: NetworkCreate, user: Principal) -> Reply:
    if body.shared and not user.admin:
        raise errors.Forbidden("only administrators may create shared networks")
    if body.router is not None and not user.admin:
        raise errors.Forbidden("only administrators may name a network's router")
    ctx = context()
    if body.router is not None:
        check_router(body.router)
    made: list[Network] = []

    def plan() -> Plan:
        # Called again on every retry: a VXLAN id or prefix taken meanwhile is chosen again.
        network = ports.new_network(
            ctx.store,
            ctx.settings,
            name=body.network_name,
            owner=user.name,
            owner_realm=user.realm,
            shared=body.shared,
            ipv4_subnet=body.ipv4 or "",
            mtu=body.mtu or 0,
        )
        network.router = body.router or ""
        made[:] = [network]
        return Plan([(network, None)], quota.of_network(network), absent=network.index_keys())

    try:
        charged((user.realm, user.name), plan)
    except AllocationError as e:
        raise errors.BadRequest(str(e)) from e
    except Conflict as e:
        raise errors.Conflict(str(e)) from e
    return {"message": "network created", "network": network_json(made[0], user)}, 201


@endpoint(
    bp,
    "/network/list",
    "GET",
    summary="The caller's networks and the shared ones",
    reply=NetworkList,
)
def list_networks(body: Listing, user: Principal) -> Reply:
    items, _ = context().store.list(Network)
    visible = [
        v.value
        for v in items.values()
        if (v.value.shared or user.owns(v.value)) and not v.value.deleted
    ]
    visible.sort(key=lambda n: n.created)
    return {"networks": [network_json(n, user) for n in visible]}, 200


@endpoint(
    bp,
    "/network/delete",
    summary="Delete a network (refused while VMs are attached)",
    responses={
        200: "deleted",
        404: "no such network of the caller's",
        409: "VMs are attached (named), or it changed meanwhile",
    },
    reply=NetworkDone,
)
def delete(body: NetworkRef, user: Principal) -> Reply:
    found = visible_network(body.network, user)
    if found is None or not user.owns(found.value):
        # A shared network is visible to all, but only its owner (or an admin) deletes it.
        raise errors.NotFound(f"no network {body.network}")
    store = context().store
    try:
        marked = ports.lock_for_deletion(store, found)
    except (ports.NetworkInUse, ports.Changed) as e:
        raise errors.Conflict(str(e)) from e

    def plan() -> Plan:
        # The deletion and the release of its owner's quota, in one transaction.
        now = store.get(Network, marked.value.uuid)
        if now is None or now.mod_revision != marked.mod_revision:
            raise errors.Conflict(f"network {body.network} changed meanwhile; try again")
        return Plan([], Amounts() - quota.of_network(now.value), deletes=[now])

    charged((marked.value.owner_realm, marked.value.owner), plan)
    return {"message": "network deleted", "network": network_json(found.value, user)}, 200


@endpoint(
    bp,
    "/network/router",
    summary="Name the host that routes a network (administrators); the scheduler keeps it "
    "while it may route, then chooses another",
    admin=True,
    responses={
        200: "done",
        404: "no such network",
        409: "the host may not route now (not offering to, not UP, in maintenance), the "
        "network is being deleted, or it kept changing",
    },
    reply=NetworkDone,
)
def set_router(body: NetworkRouter, user: Principal) -> Reply:
    found = visible_network(body.network, user)
    if found is None:
        raise errors.NotFound(f"no network {body.network}")
    check_router(body.router)

    def change(network: Network) -> bool:
        if network.deleting:
            raise errors.Conflict(f"network {network.name} is being deleted")
        if network.router == body.router:
            return False
        network.router, network.router_reason = body.router, ""
        return True

    try:
        written = context().store.update(Network, found.value.uuid, change)
    except Conflict as e:
        raise errors.Conflict(str(e)) from e
    if written is None:
        raise errors.NotFound(f"no network {body.network}")
    message = f"network {written.value.name} is routed by {body.router}"
    return {"message": message, "network": network_json(written.value, user)}, 200


def check_router(name: str) -> None:
    """400 if there is no such host, 409 if it may not route networks now."""
    host = context().store.get(Host, name)
    if host is None:
        raise errors.BadRequest(f"no host {name}")
    why = host.value.why_not_router()
    if why:
        raise errors.Conflict(f"host {name} may not route networks: {why}")


@endpoint(
    bp,
    "/vm/network/attach",
    summary="Attach a VM to a network (hot-plugged into a running VM)",
    responses={
        202: "queued",
        404: "no such VM or network of the caller's",
        409: "already attached, the network is being deleted, or its addresses are all taken",
    },
    reply=replies.VMQueued,
)
def attach(body: VMNetwork, user: Principal) -> Reply:
    vm = vms.owned_vm(body.vmid, user)
    network = find_network(body.network, user)
    try:
        written = ports.attach(context().store, vm, network)
    except (Conflict, ports.Changed) as e:
        raise errors.Conflict(str(e)) from e
    except AllocationError as e:
        raise errors.Conflict(str(e)) from e
    context().catalog.wrote(written.value, written.mod_revision)
    return {"message": "attachment queued", "vm": vms.public(written.value)}, 202


@endpoint(
    bp,
    "/vm/network/detach",
    summary="Detach a VM from a network (the NIC is removed from a running VM)",
    responses={
        202: "queued",
        404: "no such VM of the caller's",
        409: "not attached to that network",
    },
    reply=replies.VMQueued,
)
def detach(body: VMNetwork, user: Principal) -> Reply:
    vm = vms.owned_vm(body.vmid, user)
    attached = set(vm.value.networks)
    network = visible_network(body.network, user)
    uuid = network.value.uuid if network is not None else body.network
    if uuid not in attached:
        raise errors.Conflict(f"VM {vm.value.uuid} is not attached to network {body.network}")
    try:
        written = ports.detach(context().store, vm, uuid)
    except (Conflict, ports.Changed) as e:
        raise errors.Conflict(str(e)) from e
    context().catalog.wrote(written.value, written.mod_revision)
    return {"message": "detachment queued", "vm": vms.public(written.value)}, 202


def mark_deleted(uuid: str) -> bool:
    """Accept a network's deletion whatever is attached (its owner is being deleted with all
    they own, VMs included): marked ``deleted`` and ``deleting``, its owner's quota released
    in the same transaction; deleted at once if no VM is attached, else by the scheduler when
    its last VM goes. True if this call accepted it."""
    store = context().store
    accepted: list[Network] = []

    def plan() -> Plan | None:
        now = store.get(Network, uuid)
        if now is None or now.value.deleted:
            return None
        network = now.value.model_copy(update={"deleted": True, "deleting": True})
        accepted[:] = [network]
        return Plan([(network, now)], quota.of_network(network) - quota.of_network(now.value))

    first = store.get(Network, uuid)
    if first is None:
        return False
    revision = charged((first.value.owner_realm, first.value.owner), plan)
    if revision is None:
        return False
    # Attachments compared the network unchanged: none came in since it was marked.
    ports.remove_if_unused(store, Versioned(accepted[0], revision))
    return True


def visible_network(ref: str, user: Principal) -> Versioned[Network] | None:
    """The network ``ref`` names for ``user``: theirs, or a shared one."""
    return visible(Network, ref, user, lambda n: n.shared)


def find_network(ref: str, user: Principal) -> Versioned[Network]:
    """A network a VM may be attached to: 404 if the user may not see it."""
    found = visible_network(ref, user)
    if found is None:
        raise errors.NotFound(f"no network {ref}")
    if found.value.deleting:
        raise errors.Conflict(f"network {found.value.name} is being deleted")
    return found


def network_json(network: Network, user: Principal) -> dict[str, Any]:
    data = network.model_dump(mode="json", exclude={"deleting", "deleted"})
    attached = ports.attached_vms(context().store, network.uuid)
    if not user.owns(network):
        # A shared network is everyone's to use, not to see who else uses it: the others'
        # VMs are as invisible here as everywhere (a VM not yet in this worker's catalog is
        # left out until it is).
        catalog = context().catalog
        attached = [u for u in attached if (vm := catalog.vm(u)) and user.owns(vm.value)]
    data["attached"] = attached
    return data
