"""Host endpoints, for administrators."""

from __future__ import annotations

from flask import Blueprint

from ucloud.api import errors, replies
from ucloud.api.endpoint import Principal, Reply, context, endpoint
from ucloud.api.schemas import HostCreate, HostMaintenance, HostRef, Listing
from ucloud.models import (
    ZERO,
    AdminState,
    Alive,
    Host,
    HostStatus,
    HostUsage,
    Specs,
    now,
    placement_folder,
)
from ucloud.store import Conflict

bp = Blueprint("host", __name__)


@endpoint(
    bp,
    "/host/create",
    summary="Register a hypervisor host",
    admin=True,
    responses={201: "created", 409: "exists"},
    reply=replies.HostDone,
)
def create(body: HostCreate, user: Principal) -> Reply:
    s = body.specs
    capacity = Specs(cpu=s.cpu, ram=s.ram, hdd=s.hdd, ssd=s.ssd)
    host = Host(name=body.hostname, capacity=capacity, capacity_by="admin")
    try:
        context().store.create(host)
    except Conflict as e:
        raise errors.Conflict(f"host {body.hostname} already exists") from e
    return {"message": "host registered", "host": host.model_dump(mode="json")}, 201


@endpoint(
    bp,
    "/host/list",
    "GET",
    summary="Every host with its state, and its allocated (placed and incoming VMs' specs) "
    "and used (measured by its agent; null if none) capacity",
    admin=True,
    reply=replies.HostList,
)
def list_hosts(body: Listing, user: Principal) -> Reply:
    ctx = context()
    items, _ = ctx.store.list(Host)
    usage, _ = ctx.store.list(HostUsage)
    allocated = ctx.catalog.allocated()
    hosts = []
    for name, v in sorted(items.items()):
        host = v.value.model_dump(mode="json")
        host["allocated"] = allocated.get(name, ZERO).model_dump(mode="json")
        used = usage.get(name)
        host["used"] = used.value.model_dump(mode="json", exclude={"name"}) if used else None
        hosts.append(host)
    return {"hosts": hosts}, 200


@endpoint(
    bp,
    "/host/maintenance",
    summary="Put a host in or out of maintenance",
    admin=True,
    responses={200: "done", 404: "no such host"},
    reply=replies.HostDone,
)
def maintenance(body: HostMaintenance, user: Principal) -> Reply:
    wanted = AdminState.MAINTENANCE if body.maintenance else AdminState.UP

    def change(host: Host) -> bool:
        if host.admin_state == wanted:
            return False
        host.admin_state = wanted
        return True

    written = context().store.update(Host, body.hostname, change)
    if written is None:
        raise errors.NotFound(f"no host {body.hostname}")
    return {"message": f"host is {wanted}", "host": written.value.model_dump(mode="json")}, 200


@endpoint(
    bp,
    "/host/evacuate",
    summary="Evacuate a host that is gone for good: its VMs are fenced and started elsewhere "
    "at once, without waiting for the dead host grace",
    admin=True,
    responses={200: "evacuation asked", 404: "no such host", 409: "the host is alive"},
    reply=replies.HostDone,
)
def evacuate(body: HostRef, user: Principal) -> Reply:
    """Only asks: the scheduler evacuates, with the same fencing as after the grace. A host
    whose agent still holds its lease is refused: its VMs may be running."""
    store = context().store
    found = store.get(Host, body.hostname)
    if found is None:
        raise errors.NotFound(f"no host {body.hostname}")
    host = found.value
    if store.get(Alive, host.name) is not None or host.status == HostStatus.UP:
        raise errors.Conflict(
            f"host {host.name} is alive (its agent holds its lease; status {host.status}): "
            "evacuation is for a host that is gone for good. To move its VMs while it runs, "
            f"put it in maintenance (ucloud host maintenance {host.name} on); to evacuate it, "
            "power it off or stop its agent first"
        )

    def change(h: Host) -> None:
        h.evacuate_requested = now()

    # Counted before asking: the scheduler may take the VMs off the host as soon as the
    # request is written, before a count after it.
    placed, _ = store.list_index(placement_folder(host.name))
    written = store.swap_edited(found, change)
    if written is None:
        raise errors.Conflict(f"host {host.name} changed meanwhile: look again and retry")
    moving = (
        f"its {len(placed)} VM(s) are fenced and started elsewhere now"
        if placed
        else "no VM is placed on it (any it had were moved already)"
    )
    return {
        "message": f"host {host.name} is DEAD, evacuation asked: {moving}",
        "host": written.value.model_dump(mode="json"),
    }, 200
