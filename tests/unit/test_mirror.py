"""Mirror (ucloud/mirror.py): a daemon's in-memory copy of one kind, fed Snapshots and Changes
as a Follower delivers them, and the daemon's own writes (put_local)."""

from __future__ import annotations

from ucloud.mirror import Mirror
from ucloud.models import VM, Specs, Status
from ucloud.store import Change, Snapshot, Versioned


def vm(name: str, status: Status = Status.PENDING) -> VM:
    return VM(
        uuid=name,
        name=name,
        owner="alice",
        owner_realm="users",
        specs=Specs(cpu=1, ram=1),
        image="i",
        status=status,
    )


def snapshot(revision: int, *items: tuple[VM, int]) -> Snapshot[VM]:
    return Snapshot(VM, {v.uuid: Versioned(v, rev) for v, rev in items}, revision)


def put(v: VM, revision: int) -> Change[VM]:
    return Change(VM, v.uuid, v, revision)


def gone(id: str, revision: int) -> Change[VM]:
    return Change(VM, id, None, revision)


def state(m: Mirror[VM]) -> dict[str, tuple[Status, int]]:
    return {id: (v.value.status, v.mod_revision) for id, v in m.items.items()}


def test_a_first_snapshot_is_every_object_new():
    m: Mirror[VM] = Mirror()
    diffs = m.apply(snapshot(10, (vm("a"), 5), (vm("b"), 9)))
    assert sorted((id, before, after.mod_revision) for id, before, after in diffs) == [
        ("a", None, 5),
        ("b", None, 9),
    ]
    assert state(m) == {"a": (Status.PENDING, 5), "b": (Status.PENDING, 9)}


def test_a_later_snapshot_reports_only_what_changed_meanwhile():
    m: Mirror[VM] = Mirror()
    m.apply(snapshot(10, (vm("same"), 5), (vm("changed"), 6), (vm("removed"), 7)))
    diffs = m.apply(
        snapshot(20, (vm("same"), 5), (vm("changed", Status.SCHEDULED), 15), (vm("new"), 18))
    )
    assert sorted((id, b is not None, a is not None) for id, b, a in diffs) == [
        ("changed", True, True),
        ("new", False, True),
        ("removed", True, False),
    ]
    assert state(m) == {
        "same": (Status.PENDING, 5),
        "changed": (Status.SCHEDULED, 15),
        "new": (Status.PENDING, 18),
    }


def test_a_change_already_in_the_snapshot_is_ignored():
    m: Mirror[VM] = Mirror()
    m.apply(snapshot(10, (vm("a", Status.RUNNING), 10)))
    assert m.apply(put(vm("a", Status.SCHEDULED), 8)) == []
    assert m.apply(put(vm("b"), 10)) == []  # at the snapshot's revision: in it (or deleted)
    assert state(m) == {"a": (Status.RUNNING, 10)}


def test_a_change_after_the_snapshot_applies_and_says_what_it_replaced():
    m: Mirror[VM] = Mirror()
    m.apply(snapshot(10, (vm("a"), 5)))
    [(id, before, after)] = m.apply(put(vm("a", Status.SCHEDULED), 11))
    assert id == "a"
    assert before is not None and before.value.status == Status.PENDING
    assert after is not None and (after.value.status, after.mod_revision) == (Status.SCHEDULED, 11)


def test_own_write_is_seen_at_once_and_its_watch_event_changes_nothing():
    m: Mirror[VM] = Mirror()
    m.apply(snapshot(10, (vm("a", Status.SCHEDULED), 5)))
    m.put_local("a", vm("a", Status.CREATING), 12)
    assert state(m) == {"a": (Status.CREATING, 12)}
    # The watch brings the scheduler's write at 11 and ours at 12, later.
    assert m.apply(put(vm("a", Status.PENDING), 11)) == []
    assert m.apply(put(vm("a", Status.CREATING), 12)) == []
    assert state(m) == {"a": (Status.CREATING, 12)}
    # A later write by someone else applies.
    assert len(m.apply(put(vm("a", Status.RUNNING), 13))) == 1
    assert state(m) == {"a": (Status.RUNNING, 13)}


def test_a_delete_removes_the_object_once():
    m: Mirror[VM] = Mirror()
    m.apply(snapshot(10, (vm("a"), 5)))
    [(id, before, after)] = m.apply(gone("a", 11))
    assert (id, before is not None, after) == ("a", True, None)
    assert len(m) == 0
    assert m.apply(gone("a", 12)) == []  # already gone: nothing to report
    assert m.apply(gone("never-seen", 13)) == []


def test_a_delete_older_than_own_write_is_ignored():
    m: Mirror[VM] = Mirror()
    m.apply(snapshot(10, (vm("a"), 5)))
    m.put_local("a", vm("a", Status.STOPPED), 15)
    assert m.apply(gone("a", 14)) == []
    assert state(m) == {"a": (Status.STOPPED, 15)}


def test_a_recreated_object_after_a_delete_is_new():
    m: Mirror[VM] = Mirror()
    m.apply(snapshot(10, (vm("a"), 5)))
    m.apply(gone("a", 11))
    [(_, before, after)] = m.apply(put(vm("a"), 12))
    assert before is None and after is not None and after.mod_revision == 12
