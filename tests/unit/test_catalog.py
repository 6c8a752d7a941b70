"""The API's watch-fed catalog (ucloud/api/catalog.py): what it serves from memory, what it asks
the store for, and when a user's cached listing is rebuilt.

It is fed by the store double (tests/unit/memstore.py), whose watch delivers only when the test
flushes it: these are unit tests of the catalog's bookkeeping, not of a watch on etcd (the API
tests on a real etcd are tests/test_api.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import cast

import pytest

from tests.unit.memstore import MemStore
from ucloud.api.catalog import Catalog
from ucloud.models import VM, Specs, Status, User
from ucloud.store import Store

ALICE = ("users", "alice")
BOB = ("users", "bob")


def add_vm(store: MemStore, owner: tuple[str, str], name: str, created: float) -> VM:
    realm, user = owner
    vm = VM(
        name=name,
        owner=user,
        owner_realm=realm,
        specs=Specs(cpu=1, ram=1),
        image="i",
        created=created,
    )
    store.create(vm)
    return vm


def set_status(store: MemStore, id: str, status: Status) -> None:
    def change(vm: VM) -> None:
        vm.status = status

    store.update(VM, id, change)


def names(listing: bytes) -> list[str]:
    return [v["name"] for v in json.loads(listing)]


@pytest.fixture
def store() -> MemStore:
    s = MemStore()
    s.create(User(name="alice", realm="users", totp_secret="s"))
    return s


@pytest.fixture
def vms(store: MemStore) -> dict[str, VM]:
    return {
        "web": add_vm(store, ALICE, "web", created=2),
        "db": add_vm(store, ALICE, "db", created=1),
        "bobs": add_vm(store, BOB, "bobs", created=3),
    }


@pytest.fixture
def catalog(store: MemStore, vms: dict[str, VM]) -> Iterator[Catalog]:
    c = Catalog(cast(Store, store)).start()
    c._starter.join(5)  # start() follows users and VMs in a thread of its own
    assert len(store.followers) == 2
    yield c
    c.stop()


def test_before_the_watch_is_open_every_read_goes_to_the_store(store, vms):
    c = Catalog(cast(Store, store))  # not started
    reads = store.reads
    found = c.vm(vms["web"].uuid)
    assert found is not None and found.value.name == "web"
    assert names(c.vms_json(ALICE)) == ["db", "web"]
    assert store.reads == reads + 2


def test_once_followed_reads_make_no_round_trip_and_see_each_change(store, vms, catalog):
    reads = store.reads
    assert catalog.user("users/alice") is not None
    assert catalog.vm(vms["web"].uuid).value.status == Status.PENDING
    set_status(store, vms["web"].uuid, Status.RUNNING)
    store.flush()
    assert catalog.vm(vms["web"].uuid).value.status == Status.RUNNING
    assert json.loads(catalog.vms_json(ALICE))[1]["status"] == "RUNNING"
    assert store.reads == reads + 1  # set_status's own read: none by the catalog


def test_a_vm_not_delivered_yet_is_read_from_the_store(store, catalog):
    new = add_vm(store, ALICE, "new", created=4)  # through another worker, a moment ago
    reads = store.reads
    found = catalog.vm(new.uuid)
    assert found is not None and found.value.name == "new"
    assert store.reads == reads + 1


def test_while_the_watch_is_down_reads_are_never_stale(store, vms, catalog):
    for follower in store.followers:
        follower.live = False  # etcd lost: the watch is not open
    set_status(store, vms["web"].uuid, Status.RUNNING)  # and its event never arrived
    assert catalog.vm(vms["web"].uuid).value.status == Status.RUNNING
    assert json.loads(catalog.vms_json(ALICE))[1]["status"] == "RUNNING"


def test_a_users_listing_holds_only_their_vms_oldest_first(catalog):
    assert names(catalog.vms_json(ALICE)) == ["db", "web"]
    assert names(catalog.vms_json(BOB)) == ["bobs"]
    assert names(catalog.vms_json(("users", "carol"))) == []
    assert names(catalog.vms_json(None)) == ["db", "web", "bobs"]  # an administrator's


def test_a_listing_is_kept_until_one_of_its_owners_vms_changes(store, vms, catalog):
    alices = catalog.vms_json(ALICE)
    everyone = catalog.vms_json(None)
    assert catalog.vms_json(ALICE) is alices  # the same bytes, not built again

    set_status(store, vms["bobs"].uuid, Status.RUNNING)
    store.flush()
    assert catalog.vms_json(ALICE) is alices
    assert catalog.vms_json(None) is not everyone

    set_status(store, vms["db"].uuid, Status.RUNNING)
    store.flush()
    assert json.loads(catalog.vms_json(ALICE))[0]["status"] == "RUNNING"


def test_a_deleted_vm_leaves_the_listings(store, vms, catalog):
    web = vms["web"].uuid
    assert store.delete(store.get(VM, web))
    store.flush()
    assert names(catalog.vms_json(ALICE)) == ["db"]
    assert names(catalog.vms_json(None)) == ["db", "bobs"]
    assert catalog.vm(web) is None


def test_own_write_is_served_at_once_and_its_event_changes_nothing(store, vms, catalog):
    web = store.get(VM, vms["web"].uuid)
    web.value.status = Status.SCHEDULED
    revision = store.swap(web.value, web)
    catalog.wrote(web.value, revision)  # before the watch brings it
    assert catalog.vm(web.value.uuid).value.status == Status.SCHEDULED
    listing = catalog.vms_json(ALICE)
    assert json.loads(listing)[1]["status"] == "SCHEDULED"
    assert store.flush() == 1
    assert catalog.vm(web.value.uuid).mod_revision == revision
    assert catalog.vms_json(ALICE) is listing  # the event was known: nothing rebuilt


def test_own_write_older_than_what_the_watch_brought_is_ignored(store, vms, catalog):
    web = store.get(VM, vms["web"].uuid)
    web.value.status = Status.SCHEDULED
    ours = store.swap(web.value, web)
    set_status(store, web.value.uuid, Status.RUNNING)  # someone else, right after
    store.flush()  # the watch was faster than our wrote()
    catalog.wrote(web.value, ours)
    found = catalog.vm(web.value.uuid)
    assert (found.value.status, found.mod_revision) == (Status.RUNNING, ours + 1)
    assert json.loads(catalog.vms_json(ALICE))[1]["status"] == "RUNNING"
