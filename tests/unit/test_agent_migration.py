"""The host agents' part of live migrations (ucloud/host/migration.py), one reconcile pass at a
time, on the fakes of agentbed.py: the target prepares and keeps its incoming domain; a
migration nobody drives any more is settled from what both libvirtds have. That a VM really
moves is tests/test_migration.py's, on the bed."""

# ruff: noqa: F811  (fixtures imported from agentbed.py, used by name)
from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from tests.unit.agentbed import (  # noqa: F401  (fixtures)
    HERE,
    Hypervisor,
    agent,
    ask,
    change,
    clock,
    place,
    storage,
    store,
    vm_in,
)
from ucloud.host.hypervisor import Domain, DomainSpec, Power, Unreachable
from ucloud.models import (
    VM,
    Action,
    Desired,
    FirstBoot,
    Host,
    HostStatus,
    Migration,
    MigrationPhase,
    Port,
    Specs,
)
from ucloud.retry import Retry

PEER = "node2"


class PeerHypervisor(Hypervisor):
    """The fake hypervisor, with the peer's libvirtd's answer in ``peer`` (a Domain, None, or
    "down": it does not answer)."""

    def __init__(self) -> None:
        super().__init__()
        self.peer: Domain | str | None = None

    def peer_domain(self, uri: str, vm: str) -> Domain | None:
        if self.peer == "down":
            raise Unreachable("down")
        assert not isinstance(self.peer, str)
        return self.peer

    def incoming(self, vm: str, power: Power, migrating: bool = False) -> None:
        """A domain libvirt made here for an incoming migration; ``migrating``: paused for it
        still (not yet handed over)."""
        self.start(DomainSpec(vm, 1, 1024, "", "", "", ""))
        self._set(vm, power)
        self._domains[vm] = Domain(vm, power, migrating)


@pytest.fixture
def hv() -> PeerHypervisor:
    return PeerHypervisor()


@pytest.fixture
def peer(store):
    store.create(
        Host(
            name=PEER,
            capacity=Specs(cpu=4, ram=8),
            status=HostStatus.UP,
            migration_uri="qemu+tcp://node2/system",
        )
    )


def migrating(source: str, target: str, phase: MigrationPhase) -> Migration:
    return Migration(source=source, target=target, phase=phase)


def test_the_target_prepares_then_keeps_its_incoming_domain(store, hv, agent, peer):
    port = Port(network="net1", mac="52:54:00:00:00:01", ipv6="fd00::1")
    id = place(
        store,
        status="RUNNING",
        host=PEER,
        ports=[port],
        first_boot=FirstBoot(hostname="web"),
        migration=migrating(PEER, HERE, MigrationPhase.SCHEDULED),
    )
    # Its networks count as this host's from now on, and are built before it is prepared.
    assert agent.local_ports() == [port]
    ensured = []
    agent.networks.ensure = ensured.append
    agent.reconcile(id)
    assert [vm.uuid for vm in ensured] == [id]
    assert agent.seeds.path(id).exists()
    vm = vm_in(store, id)
    assert vm.migration is not None and vm.migration.phase == MigrationPhase.PREPARED
    assert "target prepared" in vm.log[-1].message
    # Libvirt made the incoming domain (paused while the memory comes): it is not a stray.
    change(store, id, lambda vm: setattr(vm.migration, "phase", MigrationPhase.MIGRATING))
    hv.incoming(id, Power.PAUSED)
    hv.peer = Domain(id, Power.RUNNING)
    hv.calls.clear()
    agent.reconcile(id)
    assert hv.calls == [] and hv.power(id) == Power.PAUSED
    assert vm_in(store, id).hostname == PEER


def migrations(result: str) -> float:
    return REGISTRY.get_sample_value("ucloud_migrations_total", {"result": result}) or 0.0


def test_the_target_ends_it_once_it_runs_the_vm_and_the_source_does_not(store, hv, agent, peer):
    done = migrations("done")
    id = place(
        store,
        status="RUNNING",
        host=PEER,
        migration=migrating(PEER, HERE, MigrationPhase.MIGRATING),
    )
    hv.incoming(id, Power.RUNNING)
    hv.peer = Domain(id, Power.PAUSED)  # libvirt has not stopped it there yet
    with pytest.raises(Retry):
        agent.reconcile(id)
    assert vm_in(store, id).migration is not None
    hv.peer = None
    agent.reconcile(id)
    vm = vm_in(store, id)
    assert (vm.hostname, vm.migration) == (HERE, None)
    assert vm.log[-1].message == f"migrated from {PEER} to {HERE}"
    assert migrations("done") == done + 1  # once, though its first try was put off


def test_the_target_lets_go_when_the_source_died_before_it_ran_the_vm(store, hv, agent, peer):
    failed = migrations("failed")
    id = place(
        store,
        status="RUNNING",
        host=PEER,
        migration=migrating(PEER, HERE, MigrationPhase.MIGRATING),
    )
    hv.incoming(id, Power.PAUSED)
    hv.peer = "down"
    agent.reconcile(id)  # the source is not DEAD: wait
    assert vm_in(store, id).migration is not None and hv.power(id) == Power.PAUSED

    def dead(host: Host) -> None:
        host.status = HostStatus.DEAD

    store.update(Host, PEER, dead)
    agent.reconcile(id)
    vm = vm_in(store, id)
    assert vm.migration is None and vm.hostname == PEER  # the scheduler evacuates it, fenced
    assert hv.power(id) is None
    assert "died" in vm.log[-1].message
    assert migrations("failed") == failed + 1


def test_a_restarted_source_keeps_the_vm_it_still_runs(store, hv, agent, peer):
    id = place(
        store,
        status="RUNNING",
        host=HERE,
        migration=migrating(HERE, PEER, MigrationPhase.MIGRATING),
    )
    hv.incoming(id, Power.RUNNING)  # runs here (the migration's job is over)
    hv.peer = Domain(id, Power.PAUSED)  # the target's leftover, destroyed by its own agent
    agent.reconcile(id)
    vm = vm_in(store, id)
    assert (vm.hostname, vm.migration) == (HERE, None)
    assert "failed" in vm.log[-1].message and hv.power(id) == Power.RUNNING


def test_a_restarted_source_hands_over_a_vm_the_target_runs(store, hv, agent, peer):
    id = place(
        store,
        status="RUNNING",
        host=HERE,
        migration=migrating(HERE, PEER, MigrationPhase.MIGRATING),
    )
    hv.peer = Domain(id, Power.RUNNING)  # moved while the agent was away
    agent.reconcile(id)
    vm = vm_in(store, id)
    assert (vm.hostname, vm.migration) == (PEER, None)
    # Then it is placed elsewhere: nothing of it is left here.
    agent.reconcile(id)
    assert hv.power(id) is None


def test_a_source_waits_while_the_target_cannot_be_asked(store, hv, agent, peer):
    id = place(
        store,
        status="RUNNING",
        host=HERE,
        migration=migrating(HERE, PEER, MigrationPhase.MIGRATING),
    )
    hv.peer = "down"  # and the VM does not run here: it may run there
    with pytest.raises(Retry):
        agent.reconcile(id)
    vm = vm_in(store, id)
    assert vm.migration is not None and vm.hostname == HERE
    # Never restarted here meanwhile: that could make it run twice.
    assert hv.power(id) is None


def test_a_thread_of_an_earlier_migration_leaves_a_later_one_alone(store, hv, agent, peer):
    # The VM came here by an earlier migration whose source thread still runs on this host
    # (it lost the race to write the end); now it leaves again, the other way.
    id = place(
        store,
        status="RUNNING",
        host=PEER,
        migration=migrating(PEER, HERE, MigrationPhase.MIGRATING),
    )
    hv.incoming(id, Power.PAUSED)
    hv.peer = Domain(id, Power.RUNNING)
    found = store.get(VM, id)
    earlier = migrating(HERE, PEER, MigrationPhase.MIGRATING)
    agent.migrations.settle_by_id(id, earlier, source_side=True, done=True)
    agent.migrations.settle(found, source_side=True, done=True)  # not this host's side
    assert vm_in(store, id).migration == found.value.migration
    assert hv.power(id) == Power.PAUSED


# --- a suspended VM: it migrates paused and arrives paused ----------------------------------


def suspended_vm(store, host: str, source: str, target: str, phase: MigrationPhase) -> str:
    return place(
        store,
        status="SUSPENDED",
        host=host,
        desired=Desired.SUSPENDED,
        migration=migrating(source, target, phase),
    )


def test_the_target_ends_a_suspended_vms_migration_once_it_holds_it_paused(store, hv, agent, peer):
    id = suspended_vm(store, PEER, PEER, HERE, MigrationPhase.MIGRATING)
    # The incoming domain, paused while the memory comes; the source's gone already (its
    # QEMU died, say): not arrived, so not taken, and the source is alive: wait.
    hv.incoming(id, Power.PAUSED, migrating=True)
    hv.peer = None
    agent.reconcile(id)
    assert vm_in(store, id).migration is not None and vm_in(store, id).hostname == PEER
    assert hv.power(id) == Power.PAUSED
    # Handed over (paused, no longer for the migration) while the source still has it: wait.
    hv.incoming(id, Power.PAUSED)
    hv.calls.clear()
    hv.peer = Domain(id, Power.PAUSED, migrating=True)
    with pytest.raises(Retry):
        agent.reconcile(id)
    assert vm_in(store, id).migration is not None
    hv.peer = None
    agent.reconcile(id)
    vm = vm_in(store, id)
    assert (vm.hostname, vm.migration, vm.status) == (HERE, None, "SUSPENDED")
    assert vm.log[-1].message == f"migrated from {PEER} to {HERE}"
    # Placed here now, suspended: it stays paused (never resumed by the move).
    agent.reconcile(id)
    assert hv.power(id) == Power.PAUSED
    assert [c for c, _ in hv.calls if c in ("resume", "start")] == []


def test_a_running_vms_target_never_takes_a_paused_domain(store, hv, agent, peer):
    # A RUNNING VM arrives running; its domain paused here is not the VM handed over.
    id = place(
        store,
        status="RUNNING",
        host=PEER,
        migration=migrating(PEER, HERE, MigrationPhase.MIGRATING),
    )
    hv.incoming(id, Power.PAUSED)
    hv.peer = None
    agent.reconcile(id)
    assert vm_in(store, id).hostname == PEER and vm_in(store, id).migration is not None
    hv.incoming(id, Power.RUNNING)
    agent.reconcile(id)
    vm = vm_in(store, id)
    assert vm.hostname == HERE and not vm.arrived_paused  # arrived running: its disks active


def test_a_suspended_vms_target_lets_go_of_a_half_copied_domain_when_the_source_died(
    store, hv, agent, peer
):
    id = suspended_vm(store, PEER, PEER, HERE, MigrationPhase.MIGRATING)
    hv.incoming(id, Power.PAUSED, migrating=True)
    hv.peer = "down"

    def dead(host: Host) -> None:
        host.status = HostStatus.DEAD

    store.update(Host, PEER, dead)
    agent.reconcile(id)
    vm = vm_in(store, id)
    assert vm.migration is None and vm.hostname == PEER  # evacuated from there, fenced
    assert hv.power(id) is None


def test_a_source_hands_over_a_suspended_vm_the_target_holds_paused(store, hv, agent, peer):
    id = suspended_vm(store, HERE, HERE, PEER, MigrationPhase.MIGRATING)
    hv.peer = Domain(id, Power.PAUSED)  # libvirt said done, and undefined it here
    found = store.get(VM, id)
    agent.migrations.settle(found, source_side=True, done=True)
    vm = vm_in(store, id)
    assert (vm.hostname, vm.migration, vm.status) == (PEER, None, "SUSPENDED")


def test_a_restarted_source_keeps_a_suspended_vm_the_target_did_not_get(store, hv, agent, peer):
    id = suspended_vm(store, HERE, HERE, PEER, MigrationPhase.MIGRATING)
    hv.incoming(id, Power.PAUSED)  # paused here, as suspended
    hv.peer = Domain(id, Power.PAUSED, migrating=True)  # a half-copied leftover there
    hv.calls.clear()
    agent.reconcile(id)
    vm = vm_in(store, id)
    assert (vm.hostname, vm.migration) == (HERE, None)
    assert vm.log[-1].message.endswith("; it stays here, paused"), vm.log[-1]
    agent.reconcile(id)
    assert hv.power(id) == Power.PAUSED and ("resume", id) not in hv.calls


def test_a_suspended_vm_begins_migrating_paused(store, hv, agent, peer):
    id = suspended_vm(store, HERE, HERE, PEER, MigrationPhase.PREPARED)
    hv.incoming(id, Power.PAUSED)
    begun = []
    agent.migrations.begin = begun.append
    agent.reconcile(id)
    assert [f.value.uuid for f in begun] == [id]
    assert hv.power(id) == Power.PAUSED


def test_a_resume_before_it_begins_is_done_here_first(store, hv, agent, peer):
    # As a suspend of a RUNNING VM: the user's action comes first (the scheduler gives the
    # migration up, the drain asks again once the VM is settled).
    id = suspended_vm(store, HERE, HERE, PEER, MigrationPhase.PREPARED)
    hv.incoming(id, Power.PAUSED)
    ask(store, id, Action.RESUME)
    begun = []
    agent.migrations.begin = begun.append
    agent.reconcile(id)
    assert begun == [] and hv.power(id) == Power.RUNNING
    assert vm_in(store, id).status == "RUNNING"


def test_a_resume_asked_while_it_migrates_is_done_on_arrival(store, hv, agent, peer):
    id = suspended_vm(store, PEER, PEER, HERE, MigrationPhase.MIGRATING)
    ask(store, id, Action.RESUME)  # status stays SUSPENDED: the agents write none meanwhile
    hv.incoming(id, Power.PAUSED)
    hv.peer = None
    agent.reconcile(id)
    vm = vm_in(store, id)
    assert (vm.hostname, vm.migration) == (HERE, None)  # arrived paused: not resumed by it
    agent.reconcile(id)  # then the user's resume, here only
    assert hv.power(id) == Power.RUNNING and vm_in(store, id).status == "RUNNING"


def test_a_suspended_vm_that_arrived_paused_does_not_begin_again(store, hv, agent, peer):
    # Asked before the rule was known (or written by hand): its source does not begin it.
    id = suspended_vm(store, HERE, HERE, PEER, MigrationPhase.PREPARED)
    change(store, id, lambda vm: setattr(vm, "arrived_paused", True))
    hv.incoming(id, Power.PAUSED)
    begun = []
    agent.migrations.begin = begun.append
    agent.reconcile(id)
    assert begun == [] and hv.power(id) == Power.PAUSED
