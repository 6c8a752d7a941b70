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
    change,
    clock,
    place,
    storage,
    store,
    vm_in,
)
from ucloud.host.hypervisor import Domain, DomainSpec, Power, Unreachable
from ucloud.models import VM, FirstBoot, Host, HostStatus, Migration, MigrationPhase, Port, Specs
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

    def incoming(self, vm: str, power: Power) -> None:
        """A domain libvirt made here for an incoming migration."""
        self.start(DomainSpec(vm, 1, 1024, "", "", "", ""))
        self._set(vm, power)


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
