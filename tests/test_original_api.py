"""The original API's request shapes, verbatim: a VM made from ``name``, ``realm``, ``seed``
and ``specs`` alone gets a generated name and the cluster's default image."""

from __future__ import annotations

import pyotp
import pytest
import requests

from tests.conftest import Account, make_image
from tests.servers import wait_for
from ucloud.config import Settings
from ucloud.models import VM, Image
from ucloud.store import Store

SPECS = {"cpu": 1, "ram": 1, "hdd": 0, "ssd": 4}


def original(account: Account, **fields: object) -> dict[str, object]:
    """A request as the original documents it: the password field is ``seed``."""
    return {
        "name": account.name,
        "realm": account.realm,
        "seed": pyotp.TOTP(account.secret).now(),
        **fields,
    }


@pytest.fixture
def default_image(store: Store) -> Image:
    return make_image(store, name="debian-default")


@pytest.fixture
def app(settings: Settings, store: Store, default_image: Image):
    from ucloud.api import create_app

    app = create_app(settings.model_copy(update={"default_image": default_image.name}), store)
    yield app
    app.extensions["ucloud"].catalog.stop()


def test_create_inspect_delete_with_the_original_shapes(client, alice, default_image, store):
    names = set()
    for _ in range(3):
        r = client.post("/vm/create", json=original(alice, specs=SPECS))
        assert r.status_code == 202, r.json
        vm = r.json["vm"]
        assert vm["image"] == default_image.uuid
        assert vm["name"].startswith("vm-")
        names.add(vm["name"])
        vmid = r.json["uuid"]
    assert len(names) == 3  # generated names are unique among the owner's VMs

    r = client.get("/vm/status", json=original(alice, id=vmid))
    assert (r.status_code, r.json["uuid"], r.json["specs"]["ssd"]) == (200, vmid, 4.0)
    r = client.post("/vm/delete", json=original(alice, vmid=vmid))
    assert (r.status_code, r.json["vm"]["desired"]) == (202, "deleted")
    assert store.get(VM, vmid).value.desired == "deleted"


def test_a_given_name_and_image_are_kept(client, alice, store):
    other = make_image(store, name="other")
    r = client.post(
        "/vm/create", json=original(alice, specs=SPECS, vm_name="web", image=other.name)
    )
    assert r.status_code == 202, r.json
    assert (r.json["vm"]["name"], r.json["vm"]["image"]) == ("web", other.uuid)


def test_a_users_own_image_does_not_stand_in_for_the_default(client, alice, default_image, store):
    make_image(store, name=default_image.name, owner=alice, public=False)
    r = client.post("/vm/create", json=original(alice, specs=SPECS))
    assert r.status_code == 202, r.json
    assert r.json["vm"]["image"] == default_image.uuid


@pytest.mark.parametrize(
    ("default", "message"),
    [
        ("", "this cluster has no default image (setting UCLOUD_DEFAULT_IMAGE)"),
        ("no-such-image", "default image 'no-such-image' is not a public image"),
    ],
)
def test_no_default_image_is_a_clear_400(settings, store, alice, default, message):
    from ucloud.api import create_app

    app = create_app(settings.model_copy(update={"default_image": default}), store)
    try:
        r = app.test_client().post("/vm/create", json=original(alice, specs=SPECS))
    finally:
        app.extensions["ucloud"].catalog.stop()
    assert r.status_code == 400
    assert message in r.json["error"]
    assert store.list(VM)[0] == {}


def test_a_script_of_the_original_documents_creates_inspects_and_deletes(api_url, alice, scheduler):
    """What a user's old script sends, over HTTP, and nothing else: the original's field
    names and size strings, GET with a JSON body."""
    specs = {"cpu": 1, "ram": "1 GB", "os-ssd": "10 GB", "hdd": "0 GB"}
    r = requests.post(f"{api_url}/vm/create", json=original(alice, specs=specs), timeout=10)
    assert r.status_code == 202, r.text
    vmid = r.json()["uuid"]
    r = requests.get(f"{api_url}/vm/status", json=original(alice, id=vmid), timeout=10)
    assert r.status_code == 200, r.text
    assert (r.json()["specs"], r.json()["desired"]) == (
        {"cpu": 1, "ram": 1.0, "hdd": 0.0, "ssd": 10.0},
        "running",
    )
    r = requests.post(f"{api_url}/vm/delete", json=original(alice, vmid=vmid), timeout=10)
    assert r.status_code == 202, r.text

    def gone() -> bool:
        status = requests.get(f"{api_url}/vm/status", json=original(alice, id=vmid), timeout=10)
        return status.status_code == 404

    wait_for(gone, 30, "the VM to be deleted")
