"""Quotas on a real etcd: limits, usage, refusals, releases, the recount, and races through the
real API (gunicorn)."""

from __future__ import annotations

import threading

import pytest
import requests

from tests.conftest import Account
from tests.servers import wait_for
from ucloud import quota
from ucloud.config import Settings
from ucloud.models import VM, Desired, Image, Network, Status
from ucloud.quota import Usage

SPECS = {"cpu": 2, "ram": 1, "ssd": 4}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "quota_vms": 3,
            "quota_cpu": 4,
            "quota_ram": 8,
            "quota_disk": 100,
            "quota_images": 2,
            "quota_networks": 1,
        }
    )


def create(client, account: Account, image: Image, specs=SPECS, name: str = "web"):
    return client.post(
        "/vm/create", json=account.creds(vm_name=name, specs=specs, image=image.uuid)
    )


def usage(client, account: Account) -> dict:
    r = client.get("/quota/show", json=account.creds())
    assert r.status_code == 200, r.json
    return r.json["usage"]


def act(client, account: Account, vmid: str, action: str):
    return client.post("/vm/action", json=account.creds(vmid=vmid, action=action))


def test_limits_refuse_with_the_limit_and_usage_and_change_nothing(client, alice, image, store):
    first = create(client, alice, image)
    second = create(client, alice, image)
    assert (first.status_code, second.status_code) == (202, 202)
    r = create(client, alice, image)  # a third VM: 6 CPUs of 4
    assert r.status_code == 403
    assert r.json["error"].startswith("quota exceeded: cpu limit is 4, 4 in use, this needs 2")
    assert len(store.list(VM)[0]) == 2
    assert usage(client, alice) == {
        "vms": 2,
        "cpu": 4,
        "ram": 2.0,
        "disk": 8.0,
        "networks": 0,
        "images": 0,
    }
    r = create(client, alice, image, specs={"cpu": 1, "ram": 1, "ssd": 93})
    assert r.status_code == 403
    assert r.json["error"].startswith(
        "quota exceeded: cpu limit is 4, 4 in use, this needs 1 more; "
        "disk limit is 100 GiB, 8 GiB in use, this needs 93 GiB more"
    )


def test_stop_releases_cpu_and_ram_start_is_checked(client, alice, image, store, scheduler):
    a = create(client, alice, image).json["uuid"]
    b = create(client, alice, image).json["uuid"]
    assert act(client, alice, a, "stop").status_code == 202
    wait_for(lambda: store.get(VM, a).value.status == Status.STOPPED, 10, "a STOPPED")
    assert usage(client, alice)["cpu"] == 2
    c = create(client, alice, image).json["uuid"]  # the stopped VM holds no CPU
    assert usage(client, alice) == {
        "vms": 3,
        "cpu": 4,
        "ram": 2.0,
        "disk": 12.0,
        "networks": 0,
        "images": 0,
    }
    r = act(client, alice, a, "start")
    assert r.status_code == 403
    assert "cpu limit is 4, 4 in use" in r.json["error"]
    r = create(client, alice, image, specs={"cpu": 1, "ram": 1, "ssd": 1})
    assert r.status_code == 403 and "vms limit is 3, 3 in use" in r.json["error"]
    # A deletion releases everything at once, whatever the VM's status.
    assert client.post("/vm/delete", json=alice.creds(vmid=b)).status_code == 202
    assert usage(client, alice)["vms"] == 2
    assert act(client, alice, a, "start").status_code == 202
    assert usage(client, alice) == {
        "vms": 2,
        "cpu": 4,
        "ram": 2.0,
        "disk": 8.0,
        "networks": 0,
        "images": 0,
    }
    assert c


def test_administrators_set_limits_users_see_their_own(client, admin, alice, bob, image):
    r = client.post(
        "/quota/set", json=admin.creds(user="alice", user_realm="users", cpu=-1, ram="64G")
    )
    assert r.status_code == 200, r.json
    assert r.json["limits"]["cpu"] == -1 and r.json["limits"]["ram"] == 64.0
    assert r.json["overrides"] == {"cpu": -1, "ram": 64.0}
    for _ in range(3):
        assert create(client, alice, image).status_code == 202  # 6 CPUs: no CPU limit now
    shown = client.get("/quota/show", json=admin.creds(user="alice", user_realm="users")).json
    assert shown["usage"]["cpu"] == 6 and shown["limits"]["vms"] == 3
    # Back to the default; the usage above it stays, new VMs are refused.
    r = client.post("/quota/set", json=admin.creds(user="alice", user_realm="users", cpu=None))
    assert r.json["limits"]["cpu"] == 4 and r.json["overrides"] == {"ram": 64.0}
    # Users see only their own; only administrators set limits.
    r = client.get("/quota/show", json=bob.creds(user="alice", user_realm="users"))
    assert r.status_code == 403
    r = client.post("/quota/set", json=bob.creds(user="bob", user_realm="users", vms=100))
    assert r.status_code == 403
    r = client.post("/quota/set", json=admin.creds(user="nobody", user_realm="users", vms=1))
    assert r.status_code == 404
    r = client.post("/quota/set", json=admin.creds(user="bob", user_realm="users", vms=-2))
    assert r.status_code == 400


def test_images_count_until_deleted(client, alice, store):
    from tests.conftest import make_image

    made = [make_image(store, name=f"i{n}", owner=alice, public=False) for n in range(2)]
    # Records made straight in etcd: the first check counts them (no usage record yet).
    assert usage(client, alice)["images"] == 2
    r = client.post("/image/delete", json=alice.creds(uuid=made[0].uuid))
    assert r.status_code == 202
    assert usage(client, alice)["images"] == 1


def test_recount_repairs_drifted_usage(client, alice, image, store):
    vmid = create(client, alice, image).json["uuid"]
    found = store.get(Usage, "users/alice")
    assert found is not None and found.value.used.vms == 1
    wrong = found.value.model_copy(deep=True)
    wrong.used.vms, wrong.used.cpu = 7, 99  # drifted (a bug, a hand edit)
    assert store.swap(wrong, found)
    assert quota.recount(store) == 1
    assert usage(client, alice) == {
        "vms": 1,
        "cpu": 2,
        "ram": 1.0,
        "disk": 4.0,
        "networks": 0,
        "images": 0,
    }
    assert quota.recount(store) == 0  # nothing left to repair
    # A VM deleted behind the API's back (by hand) is not counted either.
    vm = store.get(VM, vmid)
    assert vm is not None
    assert store.delete(vm)
    assert quota.recount(store) == 1
    assert usage(client, alice)["vms"] == 0


def test_networks_are_charged_refused_and_released(client, alice, image, store):
    r = client.post("/network/create", json=alice.creds(network_name="a"))
    assert r.status_code == 201, r.json
    assert usage(client, alice)["networks"] == 1
    r = client.post("/network/create", json=alice.creds(network_name="b"))
    assert r.status_code == 403
    assert r.json["error"].startswith(
        "quota exceeded: networks limit is 1, 1 in use, this needs 1 more"
    )
    assert [n.value.name for n in store.list(Network)[0].values()] == ["a"]
    assert len(store.list_index("vni/")[0]) == 1  # nothing claimed for it either
    # A deletion refused (a VM is attached) releases nothing.
    body = alice.creds(vm_name="v", specs=SPECS, image=image.uuid, networks=["a"])
    vmid = client.post("/vm/create", json=body).json["uuid"]
    assert client.post("/network/delete", json=alice.creds(network="a")).status_code == 409
    assert usage(client, alice)["networks"] == 1
    r = client.post("/vm/network/detach", json=alice.creds(vmid=vmid, network="a"))
    assert r.status_code == 202
    assert client.post("/network/delete", json=alice.creds(network="a")).status_code == 200
    assert usage(client, alice)["networks"] == 0
    assert client.post("/network/create", json=alice.creds(network_name="b")).status_code == 201


def test_recount_heals_a_drifted_network_count(client, alice, store):
    r = client.post("/network/create", json=alice.creds(network_name="a"))
    assert r.status_code == 201
    found = store.get(Usage, "users/alice")
    assert found is not None and found.value.used.networks == 1
    wrong = found.value.model_copy(deep=True)
    wrong.used.networks = 0  # drifted: the user could make one more than their limit
    assert store.swap(wrong, found)
    assert quota.recount(store) == 1
    assert usage(client, alice)["networks"] == 1
    network = store.get(Network, r.json["network"]["uuid"])
    assert network is not None and store.delete(network)  # by hand, behind the API's back
    assert quota.recount(store) == 1
    assert usage(client, alice)["networks"] == 0
    assert quota.recount(store) == 0


def test_recount_leaves_a_record_changed_after_its_list(client, alice, image, store):
    """A usage changed by the API after the recount listed VMs is not overwritten."""
    create(client, alice, image)
    real_list = store.list
    raced = []

    def list_then_race(kind, under=""):
        result = real_list(kind, under)
        if kind is VM and not raced:
            raced.append(create(client, alice, image).status_code)  # right after the list
        return result

    store.list = list_then_race  # type: ignore[method-assign]
    try:
        assert quota.recount(store) == 0
    finally:
        store.list = real_list  # type: ignore[method-assign]
    assert raced == [202]
    assert usage(client, alice)["vms"] == 2


# --- the real API under parallel requests -----------------------------------------------------


def test_parallel_creates_never_exceed_the_limit(api, alice, image, store):
    results: list[int] = []
    barrier = threading.Barrier(20)

    def one(i: int) -> None:
        body = alice.creds(vm_name=f"p{i}", specs={"cpu": 1, "ram": 1, "ssd": 1}, image=image.uuid)
        barrier.wait()
        results.append(requests.post(f"{api.url}/vm/create", json=body, timeout=60).status_code)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert sorted(results) == [202] * 3 + [403] * 17
    vms = [v.value for v in store.list(VM)[0].values()]
    assert len(vms) == 3 and all(v.desired == Desired.RUNNING for v in vms)
    found = store.get(Usage, "users/alice")
    assert found is not None and (found.value.used.vms, found.value.used.cpu) == (3, 3)
