"""Resizing a stopped VM: the API's rules on a real etcd, and the disk grown on real Ceph, seen
by the real QEMU."""

from __future__ import annotations

import json
import re

import pytest

from tests.conftest import Account
from tests.onehost import Cluster
from tests.servers import wait_for
from tests.stack import Ceph, Libvirtd
from ucloud.config import Settings
from ucloud.models import VM, Host, Image, Specs, Status
from ucloud.store import Store

SPECS = {"cpu": 1, "ram": 1, "ssd": 4}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"quota_disk": 20, "cpu_allocation_ratio": 2.0})


def resize(client, account: Account, vmid: str, **fields):
    return client.post("/vm/resize", json=account.creds(vmid=vmid, **fields))


@pytest.fixture
def stopped(client, alice: Account, image: Image, store: Store, scheduler) -> str:
    store.create(Host(name="h1", capacity=Specs(cpu=4, ram=16)))  # 8 CPUs at ratio 2
    r = client.post("/vm/create", json=alice.creds(vm_name="web", specs=SPECS, image=image.uuid))
    vmid = r.json["uuid"]
    # No agent runs here: the VM stays PENDING, and the scheduler stops it when asked.
    r = client.post("/vm/action", json=alice.creds(vmid=vmid, action="stop"))
    assert r.status_code == 202
    wait_for(lambda: store.get(VM, vmid).value.status == Status.STOPPED, 10, "STOPPED")
    return vmid


def test_resize_a_stopped_vm(client, alice, stopped, store):
    r = resize(client, alice, stopped, cpu=8, ram="2G", ssd=6)
    assert r.status_code == 200, r.json
    assert r.json["vm"]["specs"] == {"cpu": 8, "ram": 2.0, "hdd": 0.0, "ssd": 6.0}
    vm = store.get(VM, stopped).value
    assert vm.specs == Specs(cpu=8, ram=2, ssd=6)
    assert vm.log[-1].message == "resized to cpu=8 ram=2G ssd=6G hdd=0G"
    r = client.get("/quota/show", json=alice.creds())
    assert r.json["usage"]["disk"] == 6.0


def test_refusals_change_nothing(client, alice, bob, stopped, store, image):
    before = store.get(VM, stopped)
    r = resize(client, alice, stopped, ssd=2)
    assert r.status_code == 409
    assert r.json["error"] == "disks only grow: ssd is 4 GiB, 2 GiB asked"
    r = resize(client, alice, stopped, hdd=3)
    assert r.status_code == 200
    r = resize(client, alice, stopped, hdd=1)
    assert r.status_code == 409
    assert r.json["error"] == "disks only grow: hdd is 3 GiB, 1 GiB asked"
    before = store.get(VM, stopped)
    r = resize(client, alice, stopped, cpu=9)  # 8 CPUs at most, on the only host
    assert r.status_code == 409
    assert r.json["error"] == "no host in service can hold cpu=9 ram=1G ssd=4G hdd=3G"
    r = resize(client, alice, stopped, ssd=21)
    assert r.status_code == 403
    assert "disk limit is 20 GiB, 7 GiB in use, this needs 17 GiB more" in r.json["error"]
    r = resize(client, alice, stopped)
    assert r.status_code == 400 and "at least one of cpu, ram, ssd, hdd" in r.json["error"]
    r = resize(client, alice, stopped, ram=0)
    assert r.status_code == 400
    assert resize(client, bob, stopped, cpu=2).status_code == 404  # not bob's
    assert store.get(VM, stopped) == before
    # A VM that should run: stop it first.
    body = alice.creds(vm_name="live", specs=SPECS, image=image.uuid)
    live = client.post("/vm/create", json=body).json["uuid"]
    r = resize(client, alice, live, cpu=2)
    assert r.status_code == 409
    assert r.json["error"] == (
        f"VM {live} is PENDING, being running: stop it first (ucloud vm stop live --wait), "
        "then resize it"
    )


@pytest.mark.slow
def test_grown_disk_and_cpus_are_what_qemu_gets(
    cluster: Cluster,
    ceph: Ceph,
    libvirtd: Libvirtd,
):
    vmid = cluster.create(ssd=1)
    vm = cluster.wait(vmid, Status.RUNNING)
    r = resize(cluster.client, cluster.user, vmid, ssd=2)
    assert r.status_code == 409 and "stop it first" in r.json["error"]
    cluster.act(vmid, "stop")
    cluster.wait(vmid, Status.STOPPED)
    # It had no HDD disk: one is made at the start, as for a VM created with one.
    r = resize(cluster.client, cluster.user, vmid, cpu=2, ram=0.25, ssd=2, hdd=1)
    assert r.status_code == 200, r.json
    cluster.act(vmid, "start")
    vm = cluster.wait(vmid, Status.RUNNING)
    info = json.loads(ceph.rbd("info", "--format=json", f"{ceph.pool}/{vm.disk}"))
    assert info["size"] == 2 << 30
    assert vm.hdd_disk == f"{vmid}-hdd"
    hdd = json.loads(ceph.rbd("info", "--format=json", f"{vm.hdd_pool}/{vm.hdd_disk}"))
    assert hdd["size"] == 1 << 30
    domain = f"ucloud-{vmid}"
    blk = libvirtd.virsh("domblkinfo", domain, "vda")
    assert re.search(r"Capacity:\s+2147483648\b", blk), blk
    blk = libvirtd.virsh("domblkinfo", domain, "vdb")
    assert re.search(r"Capacity:\s+1073741824\b", blk), blk
    dominfo = libvirtd.virsh("dominfo", domain)
    assert re.search(r"CPU\(s\):\s+2\b", dominfo), dominfo
    assert re.search(r"Max memory:\s+262144 KiB", dominfo), dominfo
