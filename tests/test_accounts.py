"""Accounts on a real etcd: listing users, deleting one (and, on the real stack, all they own),
resetting a TOTP seed, and deleting hosts."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import Account, make_account, make_image, register_image
from tests.onehost import Cluster
from tests.servers import Daemon, wait_for
from tests.stack import Ceph, Libvirtd, daemon
from ucloud.config import Settings
from ucloud.models import (
    VM,
    AdminState,
    File,
    Host,
    HostStatus,
    Image,
    Network,
    Specs,
    SSHKey,
    User,
)
from ucloud.quota import Quota, Usage
from ucloud.storage.rbd import RBDStorage
from ucloud.store import Store

SPECS = {"cpu": 1, "ram": 1, "ssd": 1}


@pytest.fixture
def settings(settings: Settings, tmp_path: Path) -> Settings:
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    return settings.model_copy(update={"upload_root": str(uploads), "imagescanner_resync": 2.0})


def test_users_are_listed_with_what_they_own(client, admin, alice, bob, image):
    r = client.post("/vm/create", json=alice.creds(vm_name="a", specs=SPECS, image=image.uuid))
    assert r.status_code == 202
    r = client.get("/user/list", json=admin.creds())
    assert r.status_code == 200
    listed = {(u["realm"], u["name"]): u["owns"] for u in r.json["users"]}
    nothing = {"vms": 0, "images": 0, "files": 0, "keys": 0, "networks": 0}
    assert listed == {
        ("ucloud-admin", "root"): nothing,
        ("users", "alice"): {**nothing, "vms": 1},
        ("users", "bob"): nothing,
    }
    assert client.get("/user/list", json=alice.creds()).status_code == 403


def test_a_user_who_owns_something_is_kept_unless_asked(client, admin, alice, image, store):
    vmid = client.post(
        "/vm/create", json=alice.creds(vm_name="a", specs=SPECS, image=image.uuid)
    ).json["uuid"]
    make_image(store, "mine", owner=alice, public=False)
    r = client.post("/user/delete", json=admin.creds(user="alice", user_realm="users"))
    assert r.status_code == 409
    assert r.json["error"].startswith("user users/alice owns 1 vms, 1 images: delete them first")
    assert store.get(User, "users/alice") is not None
    assert store.get(VM, vmid).value.desired == "running"
    r = client.post("/user/delete", json=admin.creds(user="nobody", user_realm="users"))
    assert r.status_code == 404
    r = client.post("/user/delete", json=admin.creds(user="root", user_realm="ucloud-admin"))
    assert r.status_code == 409 and "yourself" in r.json["error"]
    r = client.post("/user/delete", json=alice.creds(user="alice", user_realm="users"))
    assert r.status_code == 403


def test_a_public_image_other_users_vms_use_keeps_its_owner(client, admin, alice, bob, store):
    shared = make_image(store, "shared", owner=alice, public=True)
    r = client.post("/vm/create", json=bob.creds(vm_name="b", specs=SPECS, image=shared.uuid))
    assert r.status_code == 202
    body = admin.creds(user="alice", user_realm="users", delete_owned=True)
    r = client.post("/user/delete", json=body)
    assert r.status_code == 409 and "other users' VMs use this user's images" in r.json["error"]
    assert store.get(Image, shared.uuid).value.desired == "created"


def add_key(client, user: Account, folder: Path) -> None:
    path = folder / "id"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    body = user.creds(key_name="laptop", public_key=path.with_suffix(".pub").read_text())
    assert client.post("/key/add", json=body).status_code == 201


def test_a_user_owning_only_a_key_is_kept_unless_asked(client, admin, alice, store, tmp_path):
    add_key(client, alice, tmp_path)
    r = client.post("/user/delete", json=admin.creds(user="alice", user_realm="users"))
    assert r.status_code == 409
    assert r.json["error"].startswith("user users/alice owns 1 keys: delete them first")
    assert store.get(User, "users/alice") is not None
    assert store.get(SSHKey, "users/alice/laptop") is not None


def test_deleting_a_user_removes_their_keys_and_networks_once_their_vms_are_gone(
    request, client, admin, alice, image, store, tmp_path
):
    add_key(client, alice, tmp_path)
    r = client.post("/network/create", json=alice.creds(network_name="lan", ipv4="10.0.0.0/24"))
    net = r.json["network"]["uuid"]
    body = alice.creds(vm_name="a", specs=SPECS, image=image.uuid, networks=[net])
    vmid = client.post("/vm/create", json=body).json["uuid"]
    r = client.get("/user/list", json=admin.creds())
    owns = {u["name"]: u["owns"] for u in r.json["users"]}["alice"]
    assert owns == {"vms": 1, "images": 0, "files": 0, "keys": 1, "networks": 1}

    body = admin.creds(user="alice", user_realm="users", delete_owned=True)
    r = client.post("/user/delete", json=body)
    assert r.status_code == 202, r.json
    assert r.json["deleting"] == {"vms": 1, "images": 0, "files": 0, "keys": 1, "networks": 1}
    assert store.get(User, "users/alice") is None
    assert store.get(SSHKey, "users/alice/laptop") is None
    # No scheduler yet: the VM is still there, so is the network it is attached to.
    found = store.get(Network, net)
    assert found is not None and found.value.deleted
    assert store.get(VM, vmid).value.desired == "deleted"

    request.getfixturevalue("scheduler")  # deletes the VM (it never had a disk), then the network
    wait_for(lambda: store.get(VM, vmid) is None, 30, "the VM to be deleted")
    wait_for(lambda: store.get(Network, net) is None, 30, "the network to be deleted")
    for claims in ("vni/", "prefix6/", "mac/", "ipv4/", "netport/", "lease/"):
        assert store.list_index(claims)[0] == {}, claims
    for kind in (User, Usage, Quota):
        assert store.get(kind, "users/alice") is None


def test_another_users_vm_on_a_shared_network_keeps_its_owner(
    client, admin, bob, image, store, settings
):
    ops = make_account(store, "ops", settings.admin_realm)
    body = ops.creds(network_name="shared", shared=True)
    net = client.post("/network/create", json=body).json["network"]["uuid"]
    body = bob.creds(vm_name="b", specs=SPECS, image=image.uuid, networks=[net])
    vmid = client.post("/vm/create", json=body).json["uuid"]
    body = admin.creds(user="ops", user_realm=settings.admin_realm, delete_owned=True)
    r = client.post("/user/delete", json=body)
    assert r.status_code == 409
    assert f"other users' VMs are attached to this user's networks ({vmid})" in r.json["error"]
    assert store.get(User, f"{settings.admin_realm}/ops") is not None
    assert not store.get(Network, net).value.deleting


def test_reset_totp(client, admin, alice):
    r = client.post("/user/reset-totp", json=admin.creds(user="alice", user_realm="users"))
    assert r.status_code == 200
    new = r.json["seed"]
    assert new != alice.secret and r.json["otpauth"].startswith("otpauth://totp/")
    wait_for(
        lambda: client.get("/vm/list", json=alice.creds()).status_code == 401, 5, "old seed refused"
    )
    renewed = Account("alice", "users", new)
    assert client.get("/vm/list", json=renewed.creds()).status_code == 200
    r = client.post("/user/reset-totp", json=alice.creds(user="alice", user_realm="users"))
    assert r.status_code == 401  # (the old seed; with the new one it would be 403)
    r = client.post("/user/reset-totp", json=renewed.creds(user="alice", user_realm="users"))
    assert r.status_code == 403


def test_host_deletion_needs_an_empty_host_out_of_service(client, admin, alice, store, image):
    def delete(name: str):
        return client.post("/host/delete", json=admin.creds(hostname=name))

    store.create(Host(name="dead", capacity=Specs(cpu=4, ram=8)))  # DEAD: never seen alive
    store.create(Host(name="up", capacity=Specs(cpu=4, ram=8), status=HostStatus.UP))
    store.create(
        Host(
            name="maint",
            capacity=Specs(cpu=4, ram=8),
            status=HostStatus.UP,
            admin_state=AdminState.MAINTENANCE,
        )
    )
    vm = VM(name="x", owner="alice", owner_realm="users", specs=Specs(cpu=1, ram=1), image="i")
    vm.hostname = "maint"
    store.create(vm)  # placed on it (and in its placement index)

    r = delete("up")
    assert r.status_code == 409
    assert r.json["error"].startswith("host up is UP and in service: put it in maintenance")
    r = delete("maint")
    assert r.status_code == 409
    assert r.json["error"].startswith(f"host maint still has 1 VM(s) ({vm.uuid})")
    assert delete("nope").status_code == 404
    assert client.post("/host/delete", json=alice.creds(hostname="dead")).status_code == 403
    assert store.get(Host, "up") and store.get(Host, "maint")

    r = delete("dead")
    assert r.status_code == 200 and r.json["message"] == "host dead deleted"
    assert store.get(Host, "dead") is None
    store.update(VM, vm.uuid, lambda v: setattr(v, "hostname", ""))
    assert delete("maint").status_code == 200
    assert store.get(Host, "maint") is None


# --- on the real stack ------------------------------------------------------------------------


@pytest.mark.slow
def test_deleting_a_user_and_all_they_own_leaves_nothing(
    cluster: Cluster,
    settings: Settings,
    store: Store,
    admin: Account,
    ceph: Ceph,
    libvirtd: Libvirtd,
    guests,
    tmp_path: Path,
):
    alice, client = cluster.user, cluster.client
    storage = RBDStorage(cluster.host)
    mine = register_image(store, storage, str(guests.bootsector), "mine", "alice", "users", False)
    scanner: Daemon = daemon("ucloud.imagescanner.main", cluster.host, tmp_path / "images.log")
    try:
        # With an HDD disk: both of its disks must go.
        body = alice.creds(vm_name="a", specs={**SPECS, "hdd": 1}, image=mine.uuid)
        vmid = client.post("/vm/create", json=body).json["uuid"]
        vm = cluster.wait(vmid, "RUNNING")
        assert vm.hdd_disk
        home = Path(settings.upload_root) / "alice"
        home.mkdir()
        (home / "disk.img").write_bytes(b"x" * 4096)
        store.create(
            File(
                owner="alice", owner_realm="users", name="disk.img", size=4096, sha512="0", mtime=0
            )
        )
        r = client.post("/user/delete", json=admin.creds(user="alice", user_realm="users"))
        assert r.status_code == 409
        assert "owns 1 vms, 1 images, 1 files" in r.json["error"]

        body = admin.creds(user="alice", user_realm="users", delete_owned=True)
        r = client.post("/user/delete", json=body)
        assert r.status_code == 202, r.json
        assert r.json["deleting"] == {
            "vms": 1,
            "images": 1,
            "files": 1,
            "keys": 0,
            "networks": 0,
        }

        wait_for(lambda: store.get(VM, vmid) is None, 60, "the VM to be deleted")
        # The image goes once no disk is cloned from it (the scanner retries until then).
        wait_for(lambda: store.get(Image, mine.uuid) is None, 90, "the image to be deleted")
        rbd = ceph.rbd("ls", ceph.pool).split()
        assert vm.disk not in rbd and vm.hdd_disk not in rbd and mine.uuid not in rbd
        assert f"ucloud-{vmid}" not in libvirtd.virsh("list", "--all", "--name")
        assert not home.exists()
        assert [f for f in store.list(File)[0].values() if f.value.owner == "alice"] == []
        for kind in (User, Usage, Quota):
            assert store.get(kind, "users/alice") is None
        assert client.get("/vm/list", json=alice.creds()).status_code == 401
        users = client.get("/user/list", json=admin.creds()).json["users"]
        assert [u["name"] for u in users] == ["root"]
    finally:
        scanner.stop()
        storage.delete_image(mine.uuid)
