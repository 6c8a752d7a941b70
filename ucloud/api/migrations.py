"""Live migration, for administrators: ask for one (to a named host, or to one the scheduler
picks), or abort one. Only the VM's ``migration`` field is written here (REQUESTED, or the
abort flag); the scheduler, the target agent and the source agent take it from there (see
docs/design-decisions.md, "Live migration and drains")."""

from __future__ import annotations

from flask import Blueprint
from pydantic import Field

from ucloud.api import errors, replies
from ucloud.api.endpoint import Principal, Reply, context, endpoint
from ucloud.api.schemas import Name, VMRef
from ucloud.api.vms import change_vm, owned_vm, public
from ucloud.models import (
    VM,
    AdminState,
    Alive,
    Host,
    HostStatus,
    Migration,
    MigrationPhase,
)

bp = Blueprint("migrate", __name__)


class VMMigrate(VMRef):
    to: Name | None = Field(
        None, description="the host to move it to; default: one the scheduler picks"
    )


@endpoint(
    bp,
    "/vm/migrate",
    summary="Live-migrate a running or suspended VM to another host (administrators)",
    admin=True,
    responses={
        202: "queued",
        404: "no such VM, or no such host",
        409: "the VM is neither running nor suspended, or migrates already; or the host "
        "cannot take it",
    },
    reply=replies.VMQueued,
)
def migrate(body: VMMigrate, user: Principal) -> Reply:
    if body.to is not None:
        check_target(body.to)
    by = f"admin {user.realm}/{user.name}"

    def change(vm: VM) -> None:
        if vm.migration is not None:
            m = vm.migration
            raise errors.Conflict(
                f"VM {vm.uuid} is migrating already ({m.phase}, {m.source} -> "
                f"{m.target or 'a host the scheduler picks'})"
            )
        why = vm.unmigratable()
        if why:
            raise errors.Conflict(f"cannot migrate VM {vm.uuid}: {why}")
        if body.to == vm.hostname:
            raise errors.Conflict(f"VM {vm.uuid} runs on {body.to} already")
        vm.migration = Migration(source=vm.hostname, target=body.to or "", by=by)
        vm.record(
            "api", f"migration from {vm.hostname} to {body.to or 'any host'} requested by {by}"
        )

    vm = change_vm(body.vmid, user, change)
    return {"message": "migration queued", "vm": public(vm)}, 202


@endpoint(
    bp,
    "/vm/migrate/abort",
    summary="Abort a VM's live migration; it keeps running on its source (administrators)",
    admin=True,
    responses={202: "queued", 404: "no such VM", 409: "not migrating"},
    reply=replies.VMQueued,
)
def abort(body: VMRef, user: Principal) -> Reply:
    owned_vm(body.vmid, user)
    by = f"admin {user.realm}/{user.name}"

    def change(vm: VM) -> None:
        if vm.migration is None:
            raise errors.Conflict(f"VM {vm.uuid} is not migrating")
        if vm.migration.phase == MigrationPhase.REQUESTED:
            # Nobody acted on it yet: nothing to undo anywhere.
            vm.migration = None
            vm.record("api", f"migration cancelled by {by}")
            return
        if vm.migration.abort:
            return
        vm.migration = vm.migration.model_copy(update={"abort": True})
        vm.record("api", f"migration abort requested by {by}")

    vm = change_vm(body.vmid, user, change)
    message = "migration aborted" if vm.migration is None else "migration abort queued"
    return {"message": message, "vm": public(vm)}, 202


def check_target(name: str) -> None:
    """A named target must exist (404), be UP, alive and not in maintenance (409). Its room is
    the scheduler's to check, as for any placement."""
    store = context().store
    found = store.get(Host, name)
    if found is None:
        raise errors.NotFound(f"no host {name}")
    host = found.value
    if host.admin_state == AdminState.MAINTENANCE:
        raise errors.Conflict(f"host {name} is in maintenance")
    if host.status != HostStatus.UP or store.get(Alive, name) is None:
        raise errors.Conflict(f"host {name} is {HostStatus.DEAD}: its agent is not running")
