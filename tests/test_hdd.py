"""A VM's HDD disk (specs.hdd) on the real stack: an empty second disk in the HDD pool,
attached as the guest's vdb, kept across a stop and start, deleted with the VM. (It moves
with the VM and is fenced with it when its host dies: tests/test_failover.py.)"""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from tests.conftest import register_image
from tests.onehost import Cluster
from tests.servers import wait_for
from tests.stack import Ceph, Libvirtd, console_text, wait_console
from ucloud.models import VM, Status
from ucloud.storage.rbd import RBDStorage

LINUX_BOOT = "UCLOUD-LINUX-BOOT-OK"
HDD_POOL = "ucloud-hdd"


def ceph_admin(ceph: Ceph, *args: str) -> str:
    argv = ["ceph", "-c", str(ceph.conf), "-k", str(ceph.dir / "ceph.client.admin.keyring")]
    return subprocess.run(
        [*argv, *args], check=True, capture_output=True, text=True, timeout=120
    ).stdout


@pytest.fixture
def hdd_pool(ceph: Ceph) -> str:
    """A second pool for HDD disks, which client.ucloud may use, as the operator manual says."""
    if HDD_POOL not in ceph_admin(ceph, "osd", "pool", "ls").split():
        ceph_admin(ceph, "osd", "pool", "create", HDD_POOL, "8", "8")
        ceph_admin(ceph, "osd", "pool", "application", "enable", HDD_POOL, "rbd")
        pools = f"profile rbd pool={ceph.pool}, profile rbd pool={HDD_POOL}"
        ceph_admin(
            ceph, "auth", "caps", "client.ucloud", "mon", "profile rbd", "osd", pools, "mgr", pools
        )
    return HDD_POOL


def rbd_info(ceph: Ceph, pool: str, disk: str) -> dict:
    return json.loads(ceph.rbd("info", "--format=json", f"{pool}/{disk}"))


def test_an_hdd_disk_is_made_in_its_pool_seen_by_the_guest_kept_and_deleted(
    cluster: Cluster,
    ceph: Ceph,
    libvirtd: Libvirtd,
    guests,
    hdd_pool: str,
):
    cluster.host = cluster.host.model_copy(update={"hdd_pool": hdd_pool})
    cluster.restart_agent()
    linux = register_image(
        cluster.store, RBDStorage(cluster.host), str(guests.linux), "linux", "root", "ucloud-admin"
    )
    body = cluster.user.creds(
        vm_name="bulk", specs={"cpu": 1, "ram": 0.25, "ssd": 1, "hdd": 2}, image=linux.uuid
    )
    r = cluster.client.post("/vm/create", json=body)
    assert r.status_code == 202, r.json
    vmid = r.json["uuid"]
    vm = cluster.wait(vmid, Status.RUNNING, timeout=90)
    assert (vm.hdd_disk, vm.hdd_pool) == (f"{vmid}-hdd", hdd_pool)

    # In its pool, empty (no parent image), of the size asked for.
    info = rbd_info(ceph, hdd_pool, vm.hdd_disk)
    assert info["size"] == 2 << 30
    assert "parent" not in info
    assert vm.hdd_disk not in ceph.rbd("ls", ceph.pool).split()
    # Attached as the second virtio disk, and the guest's kernel found it.
    blocks = libvirtd.virsh("domblklist", f"ucloud-{vmid}")
    assert re.search(rf"^\s*vdb\s+{hdd_pool}/{vm.hdd_disk}\s*$", blocks, re.M), blocks
    capacity = libvirtd.virsh("domblkinfo", f"ucloud-{vmid}", "vdb")
    assert re.search(rf"^Capacity:\s+{2 << 30}$", capacity, re.M), capacity
    line = wait_console(cluster.state, vmid, LINUX_BOOT, timeout=120)
    disks = re.search(r"disks=([^=]*) nics=", line)
    # Its virtio disks (the first-boot seed is a CD-ROM, sr0, beside them).
    virtio = [d for d in (disks.group(1).split() if disks else []) if d.startswith("vd")]
    assert virtio == ["vda", "vdb"], line

    # A stop releases the host; the start uses the same disk again (not a new one).
    cluster.act(vmid, "stop")
    cluster.wait(vmid, Status.STOPPED)
    cluster.act(vmid, "start")
    cluster.wait(vmid, Status.RUNNING, timeout=90)
    wait_console(cluster.state, vmid, LINUX_BOOT, timeout=120, count=2)
    assert rbd_info(ceph, hdd_pool, vm.hdd_disk)["id"] == info["id"]
    assert console_text(cluster.state, vmid).count("vda vdb") == 2

    cluster.act(vmid, "delete")
    wait_for(lambda: cluster.store.get(VM, vmid) is None, 60, "the VM to be deleted")
    assert vm.hdd_disk not in ceph.rbd("ls", hdd_pool).split()
    assert vm.disk not in ceph.rbd("ls", ceph.pool).split()
    RBDStorage(cluster.host).delete_image(linux.uuid)


def test_the_file_driver_makes_grows_and_deletes_an_empty_disk(settings, tmp_path):
    from ucloud.storage.file import FileStorage

    storage = FileStorage(settings.model_copy(update={"state_dir": str(tmp_path)}))
    storage.create_blank_disk("vm1-hdd", 1)
    path = tmp_path / "disks" / "vm1-hdd.qcow2"
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", str(path)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    assert (info["format"], info["virtual-size"], info.get("backing-filename")) == (
        "qcow2",
        1 << 30,
        None,
    )
    storage.create_blank_disk("vm1-hdd", 2)  # again, larger: grown, not made anew
    storage.create_blank_disk("vm1-hdd", 1)  # smaller: never shrunk
    out = subprocess.run(
        ["qemu-img", "info", "--output=json", str(path)], check=True, capture_output=True
    ).stdout
    assert json.loads(out)["virtual-size"] == 2 << 30
    assert "<target dev=\"vdb\" bus='virtio'/>" in storage.disk_xml("vm1-hdd", target="vdb")
    storage.delete_disk("vm1-hdd")
    assert not storage.disk_exists("vm1-hdd")
