"""The VM state machine (ucloud/models.py): which action applies to which status, what an
accepted one changes, what a refused one says, and when a VM wants a host.

The expected tables are written out here from docs/design-decisions.md, not derived from the
code's own tables, so a change to either shows up as a failure.
"""

from __future__ import annotations

import pytest

from ucloud.models import VM, Action, Desired, Specs, Status, TransitionError

S = Status

# docs/design-decisions.md, "VM state machine": the statuses each action applies to.
ALLOWED: dict[Action, set[Status]] = {
    Action.START: {S.STOPPED, S.ERROR},
    Action.STOP: {S.PENDING, S.SCHEDULED, S.CREATING, S.RUNNING, S.SUSPENDED, S.KILLED, S.ERROR},
    Action.SUSPEND: {S.RUNNING},
    Action.RESUME: {S.SUSPENDED},
    Action.REBOOT: {S.RUNNING},
    Action.DELETE: set(Status) - {S.DELETING},
}

# What each action asks for (reboot keeps ``desired``).
ASKS: dict[Action, Desired | None] = {
    Action.START: Desired.RUNNING,
    Action.STOP: Desired.STOPPED,
    Action.SUSPEND: Desired.SUSPENDED,
    Action.RESUME: Desired.RUNNING,
    Action.REBOOT: None,
    Action.DELETE: Desired.DELETED,
}

# The desired state of a VM that is at rest in each status (nothing being carried out).
AT_REST: dict[Status, Desired] = {
    S.PENDING: Desired.RUNNING,
    S.SCHEDULED: Desired.RUNNING,
    S.CREATING: Desired.RUNNING,
    S.RUNNING: Desired.RUNNING,
    S.SUSPENDED: Desired.SUSPENDED,
    S.STOPPED: Desired.STOPPED,
    S.KILLED: Desired.RUNNING,
    S.ERROR: Desired.RUNNING,
    S.DELETING: Desired.DELETED,
}


def make_vm(status: Status, desired: Desired | None = None, **fields: object) -> VM:
    return VM(
        name="web",
        owner="alice",
        owner_realm="users",
        specs=Specs(cpu=1, ram=1),
        image="debian",
        status=status,
        desired=desired or AT_REST[status],
        generation=3,
        reboot_seq=2,
        **fields,
    )


EVERY_CASE = [(a, s) for a in Action for s in Status]


@pytest.mark.parametrize(
    ("action", "status"), [(a, s) for a, s in EVERY_CASE if s in ALLOWED[a]], ids=str
)
def test_an_allowed_action_changes_desired_and_bumps_generation(action: Action, status: Status):
    vm = make_vm(status)
    vm.apply(action, "api")
    if action == Action.REBOOT:
        assert (vm.desired, vm.reboot_seq) == (AT_REST[status], 3)
    else:
        assert (vm.desired, vm.reboot_seq) == (ASKS[action], 2)
    assert vm.generation == 4
    assert vm.status == status  # only the scheduler and host agents change it
    assert (vm.log[-1].by, vm.log[-1].message) == ("api", f"{action} requested")


@pytest.mark.parametrize(
    ("action", "status"), [(a, s) for a, s in EVERY_CASE if s not in ALLOWED[a]], ids=str
)
def test_a_refused_action_names_the_status_and_changes_nothing(action: Action, status: Status):
    vm = make_vm(status)
    before = vm.model_dump()
    with pytest.raises(TransitionError) as refused:
        vm.apply(action, "api")
    message = str(refused.value)
    assert message.startswith(f"cannot {action} VM {vm.uuid}: it is {status}")
    if status == S.DELETING:
        assert message.endswith("being deleted")
    assert vm.model_dump() == before


# (status, desired being carried out, action, accepted?)
CONFLICTS = [
    (S.RUNNING, Desired.STOPPED, Action.SUSPEND, False),
    (S.RUNNING, Desired.STOPPED, Action.REBOOT, False),
    (S.RUNNING, Desired.SUSPENDED, Action.REBOOT, False),
    (S.SUSPENDED, Desired.STOPPED, Action.RESUME, False),
    (S.RUNNING, Desired.DELETED, Action.STOP, False),
    (S.STOPPED, Desired.DELETED, Action.START, False),
    (S.RUNNING, Desired.DELETED, Action.SUSPEND, False),
    # Not contradictions: stopping overrides a suspend; deleting overrides anything;
    # asking again for what is being done is harmless.
    (S.RUNNING, Desired.SUSPENDED, Action.STOP, True),
    (S.RUNNING, Desired.STOPPED, Action.DELETE, True),
    (S.KILLED, Desired.STOPPED, Action.DELETE, True),
    (S.RUNNING, Desired.SUSPENDED, Action.SUSPEND, True),
    (S.STOPPED, Desired.RUNNING, Action.START, True),
    (S.SUSPENDED, Desired.RUNNING, Action.RESUME, True),
]


@pytest.mark.parametrize(("status", "desired", "action", "accepted"), CONFLICTS, ids=str)
def test_an_action_that_contradicts_one_in_progress_is_refused(
    status: Status, desired: Desired, action: Action, accepted: bool
):
    vm = make_vm(status, desired)
    if accepted:
        vm.apply(action, "api")
        assert vm.generation == 4
    else:
        before = vm.model_dump()
        with pytest.raises(TransitionError, match=f"it is {status}, being {desired}$"):
            vm.apply(action, "api")
        assert vm.model_dump() == before


def test_retry_from_error_is_start_and_makes_the_vm_want_a_host_again():
    vm = make_vm(S.ERROR, observed_generation=3)
    assert not vm.wants_host  # the ERROR answers the latest request
    vm.apply(Action.START, "api")
    assert vm.wants_host


def test_the_event_log_keeps_the_last_20():
    vm = make_vm(S.STOPPED)
    for _ in range(25):
        vm.apply(Action.START, "api")
    assert len(vm.log) == 20
    assert vm.generation == 3 + 25


# --- wants_host --------------------------------------------------------------------------------

WANTS_HOST_WHEN = {S.PENDING, S.STOPPED, S.KILLED}  # and desired running or suspended


@pytest.mark.parametrize("desired", list(Desired), ids=str)
@pytest.mark.parametrize("status", list(Status), ids=str)
def test_wants_host_without_a_host(status: Status, desired: Desired):
    vm = make_vm(status, desired, observed_generation=3)
    should_run = desired in (Desired.RUNNING, Desired.SUSPENDED)
    assert vm.wants_host == (should_run and status in WANTS_HOST_WHEN)


@pytest.mark.parametrize("desired", list(Desired), ids=str)
@pytest.mark.parametrize("status", list(Status), ids=str)
def test_a_vm_being_fenced_or_placed_never_wants_a_host(status: Status, desired: Desired):
    # generation > observed_generation: even an ERROR the user retried waits for the fence.
    assert not make_vm(status, desired, fencing="node1").wants_host
    assert not make_vm(status, desired, hostname="node1").wants_host


def test_error_wants_a_host_only_after_a_retry():
    assert not make_vm(S.ERROR, observed_generation=3).wants_host
    assert make_vm(S.ERROR, observed_generation=2).wants_host
    assert not make_vm(S.ERROR, Desired.STOPPED, observed_generation=2).wants_host


# --- disk_name ---------------------------------------------------------------------------------


def test_disk_name_is_the_recorded_disk_else_the_uuid():
    old = make_vm(S.RUNNING)  # a record from before disks were named in the claim
    assert old.disk_name == old.uuid
    assert make_vm(S.RUNNING, disk="vm-disk-1").disk_name == "vm-disk-1"


def test_set_status_records_the_transition_and_its_reason():
    vm = make_vm(S.RUNNING)
    vm.set_status(S.KILLED, "host node1", "QEMU died")
    assert (vm.status, vm.reason) == (S.KILLED, "QEMU died")
    assert vm.log[-1].message == "RUNNING -> KILLED: QEMU died"
    vm.set_status(S.KILLED, "host node1")
    assert (vm.reason, vm.log[-1].message) == ("", "still KILLED")
