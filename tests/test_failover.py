"""Failover on the real stack: two hypervisors (each its own libvirtd and agent), a scheduler
that fences through Ceph, and QEMU guests whose disks are RBD clones.

The rule every test here checks: a VM's disk is never open in two un-fenced Ceph clients at
once, whatever dies and whenever."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import register_image
from tests.servers import Daemon, wait_for
from tests.stack import (
    Ceph,
    Libvirtd,
    daemon,
    host_settings,
    qemu_pid,
    start_libvirtd,
    stop_libvirtd,
    wait_console,
)
from ucloud.config import Settings
from ucloud.models import VM, Host, HostStatus, Image, Status
from ucloud.storage.rbd import RBDStorage
from ucloud.store import Store

BOOT = "UCLOUD-BOOT-OK"
SPECS = {"cpu": 1, "ram": 0.125, "ssd": 1}
NODES = ("node-a", "node-b")


def disk_clients(ceph: Ceph, disk: str) -> list[str]:
    """The Ceph clients that have ``disk`` open, as ``rbd status`` shows them."""
    status = json.loads(ceph.rbd("status", f"{ceph.pool}/{disk}", "--format", "json"))
    return [w["address"] for w in status["watchers"]]


def block_list(ceph: Ceph) -> set[str]:
    argv = ["ceph", "-c", str(ceph.conf), "-k", str(ceph.dir / "ceph.client.admin.keyring")]
    out = subprocess.run(
        [*argv, "osd", "blocklist", "ls", "--format", "json"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    # Pacific prints two JSON lists: addresses, then address ranges.
    entries, _ = json.JSONDecoder().raw_decode(out.strip() or "[]")
    return {entry["addr"] for entry in entries}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


class DiskWatch:
    """Samples ``rbd status`` of disks in the background, as an operator would, and remembers
    every moment more than one client that is not block-listed had the same disk open."""

    def __init__(self, ceph: Ceph) -> None:
        self.ceph = ceph
        self.disks: set[str] = set()
        self.samples = 0
        self.violations: list[tuple[str, list[str]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.3):
            for disk in list(self.disks):
                try:
                    clients = disk_clients(self.ceph, disk)
                except subprocess.CalledProcessError:
                    continue  # not made yet, or deleted
                if len(clients) < 2:
                    self.samples += 1
                    continue
                # Read after the watchers: a client block-listed in between is not counted
                # against the rule (its writes are refused from then on).
                unfenced = [c for c in clients if c not in block_list(self.ceph)]
                if len(unfenced) > 1:
                    self.violations.append((disk, unfenced))
                self.samples += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


@dataclass
class Pair:
    """Two hypervisors and a scheduler on a fresh key prefix; agents started by the test."""

    settings: Settings
    store: Store
    client: object
    user: object
    ceph: Ceph
    hosts: dict[str, Settings]
    image: Image
    scheduler: Daemon
    tmp: Path
    agents: dict[str, Daemon] = field(default_factory=dict)

    def start_agent(self, name: str, **env: str) -> Daemon:
        agent = daemon("ucloud.host.main", self.hosts[name], self.tmp / f"{name}.log", **env)
        self.agents[name] = agent
        return agent

    def wait_host(self, name: str, status: HostStatus, timeout: float = 60) -> Host:
        return wait_for(
            lambda: (h := self.store.get(Host, name)) and h.value.status == status and h.value,
            timeout,
            f"{name} {status}",
        )

    def create(self, name: str = "web") -> str:
        body = self.user.creds(vm_name=name, specs=SPECS, image=self.image.uuid)
        r = self.client.post("/vm/create", json=body)
        assert r.status_code == 202, r.json
        return r.json["uuid"]

    def vm(self, vmid: str) -> VM:
        found = self.store.get(VM, vmid)
        assert found is not None
        return found.value

    def wait_running_on(self, vmid: str, host: str, timeout: float = 90) -> VM:
        return wait_for(
            lambda: (v := self.vm(vmid)).status == Status.RUNNING and v.hostname == host and v,
            timeout,
            f"VM {vmid} to run on {host}",
        )


@pytest.fixture(scope="module")
def libvirtds(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Libvirtd]]:
    base = tmp_path_factory.mktemp("failover-lv")
    lvs: dict[str, Libvirtd] = {}
    try:
        for name in NODES:
            lvs[name] = start_libvirtd(base / name)
        yield lvs
    finally:
        for lv in lvs.values():
            stop_libvirtd(lv)


@pytest.fixture
def pair(settings, store, client, alice, ceph: Ceph, guests, libvirtds, tmp_path) -> Iterator[Pair]:
    hosts = {n: host_settings(settings, ceph, libvirtds[n], n, tmp_path / n) for n in NODES}
    storage = RBDStorage(hosts["node-a"])
    image = register_image(store, storage, str(guests.bootsector), "boot", "root", "ucloud-admin")
    # The scheduler fences through Ceph: it gets the same Ceph settings as the hosts.
    scheduler = daemon("ucloud.scheduler.main", hosts["node-a"], tmp_path / "scheduler.log")
    p = Pair(settings, store, client, alice, ceph, hosts, image, scheduler, tmp_path)
    try:
        yield p
    finally:
        for vmid in store.list(VM)[0]:
            client.post("/vm/delete", json=alice.creds(vmid=vmid))
        for name in NODES:  # every host up, so that each can remove what it holds
            if name not in p.agents or not p.agents[name].alive():
                p.start_agent(name)
        wait_for(lambda: not store.list(VM)[0], 90, "the test's VMs to be deleted")
        # Nothing of this test may run on in the shared libvirtds. A restarted agent removes
        # the domains of deleted VMs once it has listed them: wait for it.
        for name, lv in libvirtds.items():
            wait_for(
                lambda lv=lv: not lv.virsh("list", "--all", "--name").split(),
                30,
                f"{name}'s libvirtd to hold no domain",
            )
        for agent in p.agents.values():
            agent.stop()
        scheduler.stop()
        storage.delete_image(image.uuid)


def test_a_dead_hosts_vm_is_fenced_then_runs_elsewhere(pair: Pair):
    """A host agent dies but its QEMU goes on (cut off from etcd, not from Ceph): the VM is
    started on another host only after the old QEMU was block-listed, so it can never write
    to the disk the new one uses."""
    for name in NODES:
        pair.start_agent(name)
        pair.wait_host(name, HostStatus.UP)
    vmid = pair.create()
    vm = wait_for(lambda: (v := pair.vm(vmid)).status == Status.RUNNING and v, 90, "RUNNING")
    dead, other = vm.hostname, next(n for n in NODES if n != vm.hostname)
    old_qemu = qemu_pid(vmid)
    (old_client,) = disk_clients(pair.ceph, vm.disk)
    watch = DiskWatch(pair.ceph)
    watch.disks.add(vm.disk)

    pair.agents[dead].stop(signal.SIGKILL)
    moved = pair.wait_running_on(vmid, other)
    wait_console(pair.tmp / other, vmid, BOOT)
    watch.stop()
    assert alive(old_qemu)  # the old QEMU still runs on the dead host...
    assert old_client in block_list(pair.ceph)  # ...but Ceph refuses its writes
    assert any(e.message.endswith(f"fenced its disk's clients {old_client}") for e in moved.log)
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
    assert (vm.status, vm.hostname, vm.disk) == (Status.CREATING, "node-a", vmid)
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
