"""/vm/migrate and /vm/migrate/abort on a real etcd: who may, which VMs, which targets."""

from __future__ import annotations

from tests.conftest import create_vm
from ucloud.models import VM, AdminState, Alive, Host, MigrationPhase, Specs, Status
from ucloud.store import Store

CAPACITY = Specs(cpu=8, ram=16)


def add_host(store: Store, name: str, alive: bool = True, **fields) -> None:
    store.create(Host(name=name, capacity=CAPACITY, status="UP" if alive else "DEAD", **fields))
    if alive:
        store.create(Alive(name=name))


def running_on(store: Store, vmid: str, host: str) -> None:
    def change(vm: VM) -> None:
        vm.hostname = host
        vm.status = Status.RUNNING

    store.update(VM, vmid, change)


def test_migrate_checks_and_records(client, admin, alice, image, store):
    add_host(store, "h1")
    add_host(store, "h2")
    add_host(store, "h3", alive=False)
    add_host(store, "h4", admin_state=AdminState.MAINTENANCE)
    vmid = create_vm(client, alice, image)

    def migrate(account=admin, **fields):
        return client.post("/vm/migrate", json=account.creds(vmid=vmid, **fields))

    # Users may not; a VM that does not run may not migrate (409 names its status).
    r = migrate(alice)
    assert r.status_code == 403, r.json
    r = migrate()
    assert r.status_code == 409 and "PENDING" in r.json["error"], r.json
    running_on(store, vmid, "h1")
    # Targets: unknown 404; itself, dead, in maintenance 409 with the reason; nothing written.
    assert migrate(to="nowhere").status_code == 404
    for to, why in (("h1", "already"), ("h3", "DEAD"), ("h4", "maintenance")):
        r = migrate(to=to)
        assert r.status_code == 409 and why in r.json["error"], (to, r.json)
    assert store.get(VM, vmid).value.migration is None

    r = migrate(to="h2")
    assert r.status_code == 202, r.json
    m = store.get(VM, vmid).value.migration
    assert (m.source, m.target, m.phase, m.by) == (
        "h1",
        "h2",
        "requested",
        f"admin {admin.realm}/{admin.name}",
    )
    assert "requested" in r.json["vm"]["log"][-1]["message"]
    # Once is enough: a second request names the one in flight.
    r = migrate()
    assert r.status_code == 409 and "migrating already" in r.json["error"], r.json
    # Both hosts follow it while it lasts.
    assert set(store.get(VM, vmid).value.index_keys()) >= {
        f"placement/h1/{vmid}",
        f"placement/h2/{vmid}",
    }

    # Aborting one nobody acted on yet cancels it at once.
    r = client.post("/vm/migrate/abort", json=admin.creds(vmid=vmid))
    assert r.status_code == 202 and r.json["vm"]["migration"] is None, r.json
    r = client.post("/vm/migrate/abort", json=admin.creds(vmid=vmid))
    assert r.status_code == 409 and "not migrating" in r.json["error"]

    # One under way gets the flag, for its source agent.
    assert migrate().status_code == 202

    def scheduled(vm: VM) -> None:
        assert vm.migration is not None
        vm.migration = vm.migration.model_copy(
            update={"phase": MigrationPhase.SCHEDULED, "target": "h2"}
        )

    store.update(VM, vmid, scheduled)
    r = client.post("/vm/migrate/abort", json=admin.creds(vmid=vmid))
    assert r.status_code == 202 and r.json["vm"]["migration"]["abort"] is True, r.json
    assert client.post("/vm/migrate/abort", json=alice.creds(vmid=vmid)).status_code == 403
