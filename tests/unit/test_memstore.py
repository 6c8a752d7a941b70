"""The store double (tests/unit/memstore.py) compares revisions as etcd does: the unit tests of
the agent and the catalog rely on it. (The real store is checked on a real etcd, in
tests/test_store.py; nothing here says anything about etcd.)"""

from __future__ import annotations

import pytest

from tests.unit.memstore import MemStore
from ucloud.models import VM, Specs, Status
from ucloud.store import Change, Conflict, Guard, Snapshot, Versioned


def vm(name: str = "web") -> VM:
    return VM(name=name, owner="alice", owner_realm="users", specs=Specs(cpu=1, ram=1), image="i")


def test_every_write_takes_the_next_global_revision():
    store = MemStore()
    a, b = vm("a"), vm("b")
    ra = store.create(a)
    rb = store.create(b)
    assert rb == ra + 1 == store.revision
    both = store.swap_many([(a, Versioned(a, ra)), (b, Versioned(b, rb))])
    assert both == rb + 1  # one transaction, one revision
    assert store.get(VM, a.uuid).mod_revision == store.get(VM, b.uuid).mod_revision == both


def test_create_refuses_an_existing_key():
    store = MemStore()
    v = vm()
    store.create(v)
    with pytest.raises(Conflict):
        store.create(v)


def test_swap_and_delete_refuse_a_stale_revision():
    store = MemStore()
    v = vm()
    first = Versioned(v, store.create(v))
    renamed = v.model_copy(update={"name": "renamed"})
    second = store.swap(renamed, first)
    assert second is not None
    assert store.swap(renamed, first) is None
    other = vm("other")
    assert store.swap_many([(other, Versioned(other, 0)), (renamed, first)]) is None  # all or none
    assert store.get(VM, other.uuid) is None
    assert not store.delete(first)
    assert store.delete(Versioned(renamed, second))
    assert store.get(VM, v.uuid) is None


def test_a_guard_must_hold_for_a_write():
    store = MemStore()
    v = vm()
    was = Versioned(v, store.create(v))
    leader = vm("leader")
    created = store.create(leader)
    assert store.swap_many([(v, was)], Guard(store.key_of(leader), created + 1)) is None
    assert store.swap_many([(v, was)], Guard(store.key_of(leader), created)) is not None


def test_values_are_copies():
    store = MemStore()
    v = vm()
    store.create(v)
    v.status = Status.RUNNING  # not written
    got = store.get(VM, v.uuid)
    assert got is not None and got.value.status == Status.PENDING
    got.value.status = Status.ERROR
    assert store.get(VM, v.uuid).value.status == Status.PENDING


def test_update_retries_until_its_compare_holds():
    store = MemStore()
    v = vm()
    store.create(v)
    raced = []

    def change(obj: VM) -> None:
        if not raced:  # another writer gets in between our read and our write, once
            other = store.get(VM, obj.uuid)
            other.value.name = "theirs"
            raced.append(store.swap(other.value, other))
        obj.status = Status.SCHEDULED

    written = store.update(VM, v.uuid, change)
    assert written is not None
    assert (written.value.name, written.value.status) == ("theirs", Status.SCHEDULED)


def test_follow_delivers_a_snapshot_then_each_change_in_order():
    store = MemStore()
    first = vm("first")
    store.create(first)
    got: list[Snapshot[VM] | Change[VM]] = []
    store.follow(VM, got.append)
    assert isinstance(got[0], Snapshot) and set(got[0].items) == {first.uuid}
    second = vm("second")
    r2 = store.create(second)
    assert store.delete(store.get(VM, first.uuid))
    r3 = store.revision
    assert len(got) == 1  # until flushed
    assert store.flush() == 2
    assert [(c.id, c.value is not None, c.revision) for c in got[1:]] == [
        (second.uuid, True, r2),
        (first.uuid, False, r3),
    ]
    assert store.flush() == 0


def test_an_expired_lease_takes_its_keys_and_tells_its_holder():
    store = MemStore()
    lost = []
    lease = store.hold_lease(10, lambda: lost.append(True))
    v = vm()
    store.put_owned(v, lease)
    assert lease.remaining() == 10
    lease.expire()
    assert (lease.remaining(), lost, store.get(VM, v.uuid)) == (0, [True], None)
