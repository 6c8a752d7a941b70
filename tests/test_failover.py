"""Failover on the real stack: two hypervisors (each its own libvirtd and agent), a scheduler
that fences through Ceph, and QEMU guests whose disks are RBD clones (tests/failover_stack.py).

The rule every test here checks: a VM's disk is never open in two un-fenced Ceph clients at
once, whatever dies and whenever."""

from __future__ import annotations

import os
import signal
import time

from tests.failover_stack import (  # noqa: F401  (the fixtures libvirtds and pair)
    BOOT,
    NODES,
    DiskWatch,
    Pair,
    alive,
    block_list,
    disk_clients,
    libvirtds_fixture,
    pair_fixture,
)
from tests.servers import wait_for
from tests.stack import qemu_pid, wait_console
from ucloud.models import VM, HostStatus, Status


def test_a_dead_hosts_vm_is_fenced_then_runs_elsewhere(pair: Pair):
    """A host agent dies but its QEMU goes on (cut off from etcd, not from Ceph): the VM is
    started on another host only after the old QEMU was block-listed, so it can never write
    to the disks the new one uses (its system disk and its HDD disk)."""
    for name in NODES:
        pair.start_agent(name)
        pair.wait_host(name, HostStatus.UP)
    vmid = pair.create(hdd=1)
    vm = wait_for(lambda: (v := pair.vm(vmid)).status == Status.RUNNING and v, 90, "RUNNING")
    dead, other = vm.hostname, next(n for n in NODES if n != vm.hostname)
    old_qemu = qemu_pid(vmid)
    (old_client,) = disk_clients(pair.ceph, vm.disk)
    (old_hdd_client,) = disk_clients(pair.ceph, vm.hdd_disk)
    watch = DiskWatch(pair.ceph)
    watch.disks |= {vm.disk, vm.hdd_disk}

    pair.agents[dead].stop(signal.SIGKILL)
    moved = pair.wait_running_on(vmid, other)
    wait_console(pair.tmp / other, vmid, BOOT)
    watch.stop()
    assert alive(old_qemu)  # the old QEMU still runs on the dead host...
    assert {old_client, old_hdd_client} <= block_list(pair.ceph)  # ...but Ceph refuses its writes
    assert any(
        e.message.endswith(f"fenced its disk's clients {old_client}, {old_hdd_client}")
        for e in moved.log
    )
    assert (moved.disk, moved.hdd_disk) == (vm.disk, vm.hdd_disk)  # the same disks, moved
    assert disk_clients(pair.ceph, vm.hdd_disk) != [old_hdd_client]  # opened by the new QEMU
    assert watch.violations == [] and watch.samples > 0

    # The dead host's agent comes back: it destroys its copy, placed elsewhere now.
    pair.start_agent(dead)
    wait_for(lambda: not alive(old_qemu), 60, "the old QEMU to be destroyed")


def test_a_host_that_dies_while_creating_a_vm_is_fenced(pair: Pair):
    """The agent is killed after its QEMU started and before it wrote RUNNING (issue 10's
    defect 1): the disk it opened is named in etcd all the same, and fenced before the VM
    starts on the other host."""
    crashing = pair.start_agent("node-a", UCLOUD_FAILPOINTS="agent-domain-started=kill")
    pair.wait_host("node-a", HostStatus.UP)
    vmid = pair.create()
    wait_for(lambda: not crashing.alive(), 60, "the agent to die at its failpoint")
    vm = pair.vm(vmid)
    # CREATING on node-a, unless the scheduler already took node-a for dead (its lease and grace,
    # some 2 s after the agent's last renewal): then its log says what it found.
    assert vm.disk == vmid
    assert (vm.status, vm.hostname) == (Status.CREATING, "node-a") or (
        "CREATING -> KILLED: host node-a died" in [e.message for e in vm.log]
    ), vm.log[-3:]
    old_qemu = qemu_pid(vmid)
    assert old_qemu is not None
    (old_client,) = wait_for(lambda: disk_clients(pair.ceph, vm.disk), 30, "QEMU's client")
    watch = DiskWatch(pair.ceph)
    watch.disks.add(vm.disk)

    pair.start_agent("node-b")
    moved = pair.wait_running_on(vmid, "node-b")
    wait_console(pair.tmp / "node-b", vmid, BOOT)
    watch.stop()
    messages = [e.message for e in moved.log]
    assert "CREATING -> KILLED: host node-a died" in messages
    assert f"still KILLED: host node-a died; fenced its disk's clients {old_client}" in messages
    assert old_client in block_list(pair.ceph)
    assert alive(old_qemu)
    assert watch.violations == [] and watch.samples > 0


def test_a_stuck_agent_that_resumes_destroys_its_domains_and_writes_nothing(pair: Pair):
    """SIGSTOP an agent until its lease expires and its VM runs elsewhere, then SIGCONT it:
    it finds that it lost its lease before it does anything else, destroys its domain, and
    never writes the moved VM."""
    stuck = pair.start_agent("node-a")
    pair.wait_host("node-a", HostStatus.UP)
    vmid = pair.create()
    pair.wait_running_on(vmid, "node-a")
    old_qemu = qemu_pid(vmid)
    pair.start_agent("node-b")
    pair.wait_host("node-b", HostStatus.UP)

    os.kill(stuck.pid, signal.SIGSTOP)
    try:
        moved = pair.wait_running_on(vmid, "node-b")
    finally:
        os.kill(stuck.pid, signal.SIGCONT)
    wait_for(lambda: not alive(old_qemu), 30, "the stuck agent to destroy its domain")
    pair.wait_host("node-a", HostStatus.UP)  # it took a new lease and is back
    time.sleep(2)
    after = pair.store.get(VM, vmid)
    assert after.value.hostname == "node-b"
    late = [e for e in after.value.log if e.by == "host node-a" and e.time > moved.status_since]
    assert late == []
    assert "lost its lease: stopping every local VM" in stuck.output()
