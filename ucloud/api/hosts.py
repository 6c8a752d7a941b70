"""Host endpoints, for administrators."""

from __future__ import annotations

from flask import Blueprint

from ucloud.api import errors, replies
from ucloud.api.endpoint import Principal, Reply, context, endpoint
from ucloud.api.schemas import HostCreate, HostMaintenance, Listing
from ucloud.models import AdminState, Host, Specs
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
    summary="Every host with its state",
    admin=True,
    reply=replies.HostList,
)
def list_hosts(body: Listing, user: Principal) -> Reply:
    items, _ = context().store.list(Host)
    return {"hosts": [v.value.model_dump(mode="json") for _, v in sorted(items.items())]}, 200


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
