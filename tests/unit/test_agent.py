# ruff: noqa: F811  (the fixtures imported from agentbed are parameters here)
"""The host agent's decisions (ucloud/host/agent.py), one reconcile pass at a time.

The agent runs on the fake hypervisor (ucloud/host/fake_driver.py, recording what it is asked),
a storage double and the store double (tests/unit/memstore.py, which compares revisions as etcd
does; its watch delivers only when the test flushes it). These are unit tests of what the agent
decides: that a feature really works (a QEMU guest boots from an RBD clone, a dead host's VM is
fenced and runs elsewhere) is shown by tests/test_host.py and tests/test_failover.py on real
etcd, Ceph and libvirtd.

The agent's ``time`` is a clock the tests move (back-off, ACPI timeout); ``reconcile(id)`` is
called directly, as one of its workers would.
"""

from __future__ import annotations

import time

import pytest
from prometheus_client import REGISTRY

import ucloud.host.metrics
from tests.unit.agentbed import (  # noqa: F401  (fixtures)
    HERE,
    IMAGE,
    Clock,
    Hypervisor,
    Storage,
    agent,
    ask,
    change,
    clock,
    hv,
    lease,
    place,
    running,
    storage,
    store,
    vm_in,
)
from ucloud.host.agent import HostAgent
from ucloud.host.hypervisor import Power
from ucloud.host.metrics import HostMetrics
from ucloud.models import VM, Action, Specs, Status
from ucloud.retry import Retry


def test_a_vm_placed_here_is_claimed_naming_its_disk_then_started_then_running(
    store, hv, storage, agent
):
    id = place(store)
    at_start: list[VM] = []
    hv.on_start = lambda vm: at_start.append(vm_in(store, vm))
    agent.reconcile(id)
    assert [(w.status, w.disk) for w in store.writes_of(VM, id)] == [
        (Status.SCHEDULED, ""),
        (Status.CREATING, id),  # the claim names the disk, before the disk is made
        (Status.RUNNING, id),
    ]
    assert [(v.status, v.disk) for v in at_start] == [(Status.CREATING, id)]
    assert storage.calls == [("create_disk", id), ("fence_disk", id)]
    assert hv.calls == [("start", id)]
    assert hv.power(id) == Power.RUNNING


def test_an_hdd_disk_is_named_in_the_claim_made_fenced_attached_and_deleted(
    store, hv, storage, agent
):
    id = place(store, specs=Specs(cpu=1, ram=1, ssd=10, hdd=20))
    agent.reconcile(id)
    hdd = f"{id}-hdd"
    claim = store.writes_of(VM, id)[1]
    assert (claim.status, claim.disk, claim.hdd_disk, claim.hdd_pool) == (
        Status.CREATING,
        id,
        hdd,
        "ucloud",  # the pool itself (hdd_pool unset: ceph_pool), not "the default"
    )
    assert storage.calls == [
        ("create_disk", id),
        ("create_blank_disk", f"ucloud/{hdd}"),
        ("fence_disk", id),
        ("fence_disk", hdd),
    ]
    assert hv.started_with.disk_xml == (
        f"<disk name='{id}' pool='' target='vda'/><disk name='{hdd}' pool='ucloud' target='vdb'/>"
    )
    ask(store, id, Action.DELETE)
    agent.reconcile(id)
    assert store.get(VM, id) is None
    assert storage.disks == set()


def test_a_vm_without_hdd_gets_no_second_disk(store, hv, storage, agent):
    id = place(store)
    agent.reconcile(id)
    assert vm_in(store, id).hdd_disk == ""
    assert [c for c in storage.calls if c[0] == "create_blank_disk"] == []


def test_a_vm_whose_disk_is_named_keeps_that_disk(store, storage, agent):
    id = place(store, disk="disk-of-web")  # started before, stopped elsewhere
    agent.reconcile(id)
    assert vm_in(store, id).disk == "disk-of-web"
    assert storage.disks == {"disk-of-web"}


def test_stale_clients_of_the_disk_are_fenced_and_logged_before_the_start(store, storage, agent):
    id = place(store)
    storage.open_elsewhere[id] = ["client.4242 at 10.0.0.9"]
    agent.reconcile(id)
    vm = vm_in(store, id)
    assert vm.status == Status.RUNNING
    assert "fenced stale clients of its disk: client.4242 at 10.0.0.9" in [
        e.message for e in vm.log
    ]


def test_a_failed_creation_is_logged_on_the_vm_and_retried(store, hv, storage, agent):
    id = place(store)
    storage.create_fails = "pool ucloud is full"
    with pytest.raises(Retry):  # the work queue backs off and hands the VM out again
        agent.reconcile(id)
    vm = vm_in(store, id)
    assert (vm.status, vm.log[-1].message) == (
        Status.CREATING,
        "create failed: pool ucloud is full",
    )
    assert hv.calls == []
    agent.reconcile(id)
    assert vm_in(store, id).status == Status.RUNNING


def moved_elsewhere(vm: VM) -> None:
    vm.hostname = "node2"


def deleted_by_its_user(vm: VM) -> None:
    vm.apply(Action.DELETE, "api")


@pytest.mark.parametrize("meanwhile", [moved_elsewhere, deleted_by_its_user])
def test_a_vm_changed_between_the_agents_read_and_its_claim_is_not_started(
    store, hv, storage, agent, meanwhile
):
    id = place(store)
    change(store, id, meanwhile, deliver=False)  # the agent has not seen it yet
    written = vm_in(store, id)
    agent.reconcile(id)
    assert hv.calls == []
    assert storage.calls == []
    assert vm_in(store, id) == written  # the claim lost: nothing was written over it


def test_a_running_vm_is_left_alone(store, hv, storage, agent, running):
    revision = store.revision
    agent.reconcile(running)
    assert (hv.calls, storage.calls, store.revision) == ([], [], revision)


def test_a_vm_not_running_long_after_its_creation_began_goes_to_error(store, hv, agent):
    id = place(store, Status.CREATING, status_since=time.time() - 301, disk="d")
    agent.reconcile(id)
    vm = vm_in(store, id)
    assert (vm.status, vm.hostname) == (Status.ERROR, "")
    assert vm.reason == "not running 300 s after creation began"
    assert hv.power(id) is None


def test_a_vm_stopped_while_scheduled_is_never_started(store, hv, agent):
    id = place(store)
    ask(store, id, Action.STOP)
    agent.reconcile(id)
    agent.reconcile(id)
    assert ("start", id) not in hv.calls
    assert vm_in(store, id).status == Status.STOPPED


# --- where VMs are not placed here -------------------------------------------------------------


def test_a_local_domain_of_a_vm_placed_elsewhere_is_destroyed(store, hv, agent, running):
    change(store, running, moved_elsewhere)
    agent.reconcile(running)
    assert hv.power(running) is None
    assert hv.calls == [("undefine", running)]
    assert vm_in(store, running).hostname == "node2"  # the agent wrote nothing


def test_a_local_domain_of_a_vm_that_no_longer_exists_is_destroyed(store, hv, agent, running):
    assert store.delete(store.get(VM, running))
    store.flush()
    agent.reconcile(running)
    assert hv.power(running) is None


# --- the lease -----------------------------------------------------------------------------------


def test_with_the_lease_lost_the_agent_destroys_its_domains_first_and_starts_nothing(
    store, hv, storage, agent, lease, running
):
    new = place(store)
    lease.left = 0.0  # lost, or this process was paused past its expiry
    revision = store.revision
    agent.reconcile(new)
    assert hv.calls == [("destroy", running)]
    assert hv.power(running) == Power.SHUTOFF
    assert storage.calls == []
    assert store.revision == revision  # no claim either
    agent.reconcile(running)
    assert hv.calls == [("destroy", running)]  # done once for this lease


def test_stopping_the_domains_after_a_lost_lease_is_retried_until_it_works(
    hv, agent, lease, running
):
    lease.left = 0.0
    hv.fail_once.add("destroy")  # libvirtd did not answer then
    agent.reconcile(running)
    assert hv.power(running) == Power.RUNNING
    agent.reconcile(running)  # the next worker's turn
    assert hv.power(running) == Power.SHUTOFF


def test_a_vm_is_claimed_but_not_started_while_the_lease_may_run_out(
    store, hv, storage, agent, lease
):
    id = place(store)
    lease.left = 2.0  # less than host_start_margin
    agent.reconcile(id)
    assert vm_in(store, id).status == Status.CREATING
    assert (hv.calls, storage.calls) == ([], [])
    lease.left = 10.0  # renewed
    agent.reconcile(id)
    assert vm_in(store, id).status == Status.RUNNING


def test_a_start_that_outlasts_the_lease_is_destroyed_at_once(store, hv, agent, lease):
    id = place(store)
    hv.on_start = lambda vm: setattr(lease, "left", 0.0)  # the start took too long
    agent.reconcile(id)
    assert hv.power(id) == Power.SHUTOFF
    assert vm_in(store, id).status == Status.CREATING  # never reported RUNNING


# --- users' actions ------------------------------------------------------------------------------


def test_suspend_pauses_the_domain_and_resume_runs_it_again(store, hv, agent, running):
    ask(store, running, Action.SUSPEND)
    agent.reconcile(running)
    assert (hv.power(running), vm_in(store, running).status) == (Power.PAUSED, Status.SUSPENDED)
    ask(store, running, Action.RESUME)
    agent.reconcile(running)
    vm = vm_in(store, running)
    assert (hv.power(running), vm.status, vm.reason) == (Power.RUNNING, Status.RUNNING, "resumed")
    assert hv.calls == [("suspend", running), ("resume", running)]


def test_stop_asks_the_guest_then_releases_the_host(store, hv, agent, running):
    ask(store, running, Action.STOP)
    agent.reconcile(running)
    assert hv.calls == [("shutdown", running)]  # ACPI; the fake guest powers off at once
    agent.reconcile(running)
    vm = vm_in(store, running)
    assert (vm.status, vm.hostname, vm.disk) == (Status.STOPPED, "", running)
    assert vm.observed_generation == vm.generation
    assert hv.power(running) is None


def test_a_guest_that_ignores_acpi_is_stopped_hard_after_the_timeout(
    store, hv, agent, clock, running
):
    hv.acpi = False
    ask(store, running, Action.STOP)
    agent.reconcile(running)
    clock.advance(59)
    agent.reconcile(running)
    assert (hv.power(running), vm_in(store, running).status) == (Power.RUNNING, Status.RUNNING)
    clock.advance(1)
    agent.reconcile(running)
    assert hv.calls == [("shutdown", running), ("destroy", running), ("undefine", running)]
    assert vm_in(store, running).status == Status.STOPPED


def test_a_suspended_vm_is_stopped_hard_at_once(store, hv, agent, running):
    ask(store, running, Action.SUSPEND)
    agent.reconcile(running)
    ask(store, running, Action.STOP)
    agent.reconcile(running)  # a paused guest cannot answer ACPI
    assert ("shutdown", running) not in hv.calls
    assert vm_in(store, running).status == Status.STOPPED


def test_reboot_resets_the_domain_once_per_request(store, hv, agent, running):
    ask(store, running, Action.REBOOT)
    agent.reconcile(running)
    agent.reconcile(running)
    vm = vm_in(store, running)
    assert hv.calls == [("reboot", running)]
    assert (vm.reboot_done, vm.reboot_seq, vm.log[-1].message) == (1, 1, "rebooted")


def test_delete_removes_the_domain_the_disk_then_the_record(store, hv, storage, agent, running):
    ask(store, running, Action.DELETE)
    agent.reconcile(running)
    assert store.get(VM, running) is None
    assert [w.status if w else None for w in store.writes_of(VM, running)][-2:] == [
        Status.DELETING,
        None,
    ]
    assert hv.power(running) is None
    assert storage.disks == set()


# --- crashes -------------------------------------------------------------------------------------


def counted(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def test_a_crashed_vm_is_restarted_with_back_off_then_put_in_error(
    store, hv, agent, clock, running
):
    crashes, restarts = counted("ucloud_vm_crashes_total"), counted("ucloud_vm_restarts_total")
    for delay in (1, 2, 4):
        hv.crash(running)
        agent.reconcile(running)
        vm = vm_in(store, running)
        assert (vm.status, vm.reason) == (Status.KILLED, f"QEMU died; restarting in {delay} s")
        clock.advance(delay - 0.5)
        agent.reconcile(running)
        assert hv.power(running) == Power.SHUTOFF  # not yet
        clock.advance(0.5)
        agent.reconcile(running)
        assert (hv.power(running), vm_in(store, running).status) == (Power.RUNNING, Status.RUNNING)
    hv.crash(running)  # a fourth death within crash_window: more than crash_limit
    agent.reconcile(running)
    vm = vm_in(store, running)
    assert (vm.status, vm.hostname) == (Status.ERROR, "")
    assert vm.reason == "its QEMU died 4 times within 600 s"
    assert hv.power(running) is None
    # Each death counted once, the last one too; three restarts.
    assert counted("ucloud_vm_crashes_total") - crashes == 4
    assert counted("ucloud_vm_restarts_total") - restarts == 3


def recent_crashes(agent: HostAgent) -> dict[str, float]:
    """``ucloud_vm_recent_crashes`` as the agent's /metrics would give it now."""
    families = HostMetrics(agent, agent.settings).families()
    return {
        s.labels["vm"]: s.value
        for f in families
        if f.name == "ucloud_vm_recent_crashes"
        for s in f.samples
    }


def test_recent_crashes_are_exported_while_the_vm_is_placed_here(
    store, hv, agent, clock, running, monkeypatch
):
    monkeypatch.setattr(ucloud.host.metrics, "time", clock)
    for delay in (1, 2):
        hv.crash(running)
        agent.reconcile(running)
        clock.advance(delay)
        agent.reconcile(running)
    assert recent_crashes(agent) == {running: 2}
    # Its user stops it: it leaves the host, and so does its series (no crash-loop alert for
    # a stopped VM while the agent still remembers its deaths).
    ask(store, running, Action.STOP)
    agent.reconcile(running)
    agent.reconcile(running)
    store.flush()
    assert vm_in(store, running).hostname == ""
    assert running in agent.crashes
    assert recent_crashes(agent) == {}


def test_deaths_older_than_the_crash_window_are_forgotten(store, hv, agent, clock, running):
    for delay in (1, 2, 4):
        hv.crash(running)
        agent.reconcile(running)
        clock.advance(delay)
        agent.reconcile(running)
    clock.advance(600)
    hv.crash(running)
    agent.reconcile(running)
    vm = vm_in(store, running)
    assert (vm.status, vm.reason) == (Status.KILLED, "QEMU died; restarting in 1 s")


def test_a_death_whose_write_loses_a_race_counts_once(store, hv, agent, running):
    crashes = counted("ucloud_vm_crashes_total")
    hv.crash(running)
    change(store, running, lambda vm: vm.record("api", "a user looked"), deliver=False)
    agent.reconcile(running)  # its KILLED loses to that write: nothing counted
    store.flush()
    agent.reconcile(running)
    vm = vm_in(store, running)
    assert (vm.status, vm.reason) == (Status.KILLED, "QEMU died; restarting in 1 s")
    assert counted("ucloud_vm_crashes_total") - crashes == 1


def test_vms_stopped_for_a_lost_lease_are_restarted_and_no_crash(store, hv, agent, lease, running):
    crashes = counted("ucloud_vm_crashes_total")
    for _ in range(5):  # etcd flapping: more losses than crash_limit
        store.leases[-1].left = 0.0
        agent.reconcile(running)
        assert hv.power(running) == Power.SHUTOFF
        agent.take_lease()
        agent.reconcile(running)
        assert (hv.power(running), vm_in(store, running).status) == (Power.RUNNING, Status.RUNNING)
        messages = [e.message for e in vm_in(store, running).log]
        assert messages[-2:] == [
            "RUNNING -> CREATING: restarting: it was stopped when its host lost its lease",
            "CREATING -> RUNNING",
        ]
    assert agent.crashes.get(running, []) == []
    assert counted("ucloud_vm_crashes_total") == crashes
