"""Two hypervisors on the real stack, for the failover and chaos tests: each its own libvirtd
and host agent, a scheduler that fences through Ceph, QEMU guests whose disks are RBD clones;
and a sampler of ``rbd status`` that checks a disk is never open in two un-fenced clients."""

from __future__ import annotations

import json
import os
import subprocess
import threading
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
    running_libvirtds,
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
        timeout=60,
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

    def __init__(self, ceph: Ceph, interval: float = 0.3) -> None:
        self.ceph = ceph
        self.interval = interval
        self.disks: set[str] = set()
        self.samples = 0
        self.violations: list[tuple[str, list[str]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            for disk in list(self.disks):
                try:
                    clients = disk_clients(self.ceph, disk)
                except subprocess.CalledProcessError:
                    continue  # not made yet, or deleted
                except subprocess.TimeoutExpired:
                    continue  # Ceph busy: no sample
                if len(clients) < 2:
                    self.samples += 1
                    continue
                # Read after the watchers: a client block-listed in between is not counted
                # against the rule (its writes are refused from then on).
                try:
                    fenced = block_list(self.ceph)
                except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
                    continue
                unfenced = [c for c in clients if c not in fenced]
                if len(unfenced) > 1:
                    self.violations.append((disk, unfenced))
                self.samples += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


def start_scheduler(hosts: dict[str, Settings], tmp: Path) -> Daemon:
    # The scheduler fences through Ceph: it gets the same Ceph settings as the hosts.
    return daemon("ucloud.scheduler.main", hosts["node-a"], tmp / "scheduler.log")


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

    def start_scheduler(self) -> Daemon:
        self.scheduler = start_scheduler(self.hosts, self.tmp)
        return self.scheduler

    def wait_host(self, name: str, status: HostStatus, timeout: float = 60) -> Host:
        return wait_for(
            lambda: (h := self.store.get(Host, name)) and h.value.status == status and h.value,
            timeout,
            f"{name} {status}",
        )

    def create(self, name: str = "web", **specs: object) -> str:
        body = self.user.creds(vm_name=name, specs={**SPECS, **specs}, image=self.image.uuid)
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


# Fixtures, named for the tests that use them: import both into a test module.
@pytest.fixture(scope="module", name="libvirtds")
def libvirtds_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Libvirtd]]:
    yield from running_libvirtds(tmp_path_factory.mktemp("failover-lv"), NODES)


@pytest.fixture(name="pair")
def pair_fixture(
    settings, store, client, alice, ceph: Ceph, guests, libvirtds, tmp_path
) -> Iterator[Pair]:
    hosts = {n: host_settings(settings, ceph, libvirtds[n], n, tmp_path / n) for n in NODES}
    storage = RBDStorage(hosts["node-a"])
    image = register_image(store, storage, str(guests.bootsector), "boot", "root", "ucloud-admin")
    scheduler = start_scheduler(hosts, tmp_path)
    p = Pair(settings, store, client, alice, ceph, hosts, image, scheduler, tmp_path)
    try:
        yield p
    finally:
        try:
            for vmid in store.list(VM)[0]:
                client.post("/vm/delete", json=alice.creds(vmid=vmid))
            for name in NODES:  # every host up, so that each can remove what it holds
                if name not in p.agents or not p.agents[name].alive():
                    p.start_agent(name)
            if not p.scheduler.alive():  # a test may have killed it
                p.start_scheduler()
            wait_for(lambda: not store.list(VM)[0], 90, "the test's VMs to be deleted")
            # Nothing of this test may run on in the shared libvirtds. A restarted agent
            # removes the domains of deleted VMs once it has listed them: wait for it.
            for name, lv in libvirtds.items():
                wait_for(
                    lambda lv=lv: not lv.virsh("list", "--all", "--name").split(),
                    30,
                    f"{name}'s libvirtd to hold no domain",
                )
        finally:
            # Stopped even if the clean-up failed: an agent left running would destroy the
            # next test's domains in the shared libvirtds (not placed on its host).
            for agent in p.agents.values():
                agent.stop()
            p.scheduler.stop()
        storage.delete_image(image.uuid)
