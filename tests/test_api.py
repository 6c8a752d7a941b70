"""The API on a real etcd: authentication, ownership, transitions, and bad input."""

from __future__ import annotations

import re
import time

import pyotp
import pytest

from tests.conftest import SPECS, Account, create_vm, make_account, make_image
from tests.etcdclients import reconnected
from tests.servers import Etcd, wait_for
from ucloud.models import VM, Action, Desired, Image, Migration, MigrationPhase, Specs, Status
from ucloud.store import Store


def all_vms(store: Store) -> dict:
    return store.list(VM)[0]


# --- authentication ---------------------------------------------------------------------------


def test_round_trip(client, alice, image, store):
    vmid = create_vm(client, alice, image)
    r = client.get("/vm/status", json=alice.creds(id=vmid))
    assert r.status_code == 200
    vm = r.json
    assert (vm["uuid"], vm["name"], vm["owner"], vm["owner_realm"]) == (
        vmid,
        "web",
        "alice",
        "users",
    )
    assert (vm["desired"], vm["status"], vm["hostname"]) == ("running", "PENDING", "")
    assert vm["specs"] == {"cpu": 1, "ram": 1.0, "hdd": 0.0, "ssd": 4.0}
    assert vm["log"][0]["message"] == "created by users/alice"
    assert [v["uuid"] for v in client.get("/vm/list", json=alice.creds()).json["vms"]] == [vmid]
    # Query parameters work as well as a JSON body for GET requests.
    assert client.get("/vm/status", query_string=alice.creds(id=vmid)).json["uuid"] == vmid


def test_original_field_names_and_sizes(client, alice, image):
    body = {
        "name": alice.name,
        "realm": alice.realm,
        "seed": pyotp.TOTP(alice.secret).now(),
        "vm_name": "old-script",
        "specs": {"cpu": 2, "ram": "2 GB", "os-ssd": "512 MiB", "hdd": "1T"},
        "image": image.name,
    }
    r = client.post("/vm/create", json=body)
    assert r.status_code == 202, r.json
    assert r.json["vm"]["specs"] == {"cpu": 2, "ram": 2.0, "hdd": 1024.0, "ssd": 0.5}


def test_wrong_token_is_refused(client, alice, image, store):
    wrong = f"{(int(pyotp.TOTP(alice.secret).now()) + 1) % 1000000:06d}"
    r = client.post(
        "/vm/create",
        json={**alice.creds(vm_name="x", specs=SPECS, image=image.uuid), "token": wrong},
    )
    assert r.status_code == 401
    assert "token" in r.json["error"]
    assert all_vms(store) == {}


def test_token_replayed_too_late_is_refused(client, alice):
    totp = pyotp.TOTP(alice.secret)
    late = totp.at(time.time() - 300)  # five minutes old
    r = client.get("/vm/list", json={**alice.creds(), "token": late})
    assert r.status_code == 401
    # One step old is within the configured window (clock drift between client and server).
    recent = totp.at(time.time() - 30)
    assert client.get("/vm/list", json={**alice.creds(), "token": recent}).status_code == 200


def test_unknown_user_and_realm_are_refused(client, alice):
    for fields in ({"name": "mallory"}, {"realm": "other"}, {"name": "../users/alice"}):
        r = client.get("/vm/list", json={**alice.creds(), **fields})
        assert r.status_code == 401, fields


# --- ownership --------------------------------------------------------------------------------


def test_users_see_and_change_only_their_own_vms(client, alice, bob, admin, image, store):
    vmid = create_vm(client, alice, image)
    before = store.get(VM, vmid)

    assert client.get("/vm/status", json=bob.creds(id=vmid)).status_code == 404
    assert client.get("/vm/list", json=bob.creds()).json["vms"] == []
    for action in Action:
        if action == Action.DELETE:
            r = client.post("/vm/delete", json=bob.creds(vmid=vmid))
        else:
            r = client.post("/vm/action", json=bob.creds(vmid=vmid, action=action.value))
        assert r.status_code == 404, action
        assert r.json["error"] == f"no VM {vmid}"
    assert store.get(VM, vmid) == before

    # An administrator sees and may change everything.
    assert client.get("/vm/status", json=admin.creds(id=vmid)).json["owner"] == "alice"
    assert [v["uuid"] for v in client.get("/vm/list", json=admin.creds()).json["vms"]] == [vmid]
    assert client.post("/vm/action", json=admin.creds(vmid=vmid, action="stop")).status_code == 202


# --- reads from each worker's watch-fed catalog -------------------------------------------------


def listed(client, account: Account) -> list[str]:
    r = client.get("/vm/list", json=account.creds())
    assert r.status_code == 200, r.json
    return [v["uuid"] for v in r.json["vms"]]


def test_reads_follow_what_other_daemons_write(client, alice, bob, admin, image, store):
    mine = create_vm(client, alice, image)
    # What the scheduler and host agents write reaches the API's answers.
    store.update(VM, mine, lambda vm: setattr(vm, "hostname", "h7"))
    wait_for(
        lambda: client.get("/vm/status", json=alice.creds(id=mine)).json["hostname"] == "h7",
        5,
        "the placement to show in /vm/status",
    )

    # VMs written straight into etcd (another API worker) are listed, oldest first.
    def written(name: str, owner: str) -> VM:
        vm = VM(
            name=name,
            owner=owner,
            owner_realm="users",
            specs=Specs(cpu=1, ram=1, ssd=1),
            image=image.uuid,
        )
        store.create(vm)
        return vm

    later, theirs = written("later", "alice"), written("b", "bob")
    wait_for(lambda: len(listed(client, admin)) == 3, 5, "every VM listed")
    assert listed(client, admin) == [mine, later.uuid, theirs.uuid]
    assert listed(client, alice) == [mine, later.uuid]
    assert listed(client, bob) == [theirs.uuid]
    assert client.get("/vm/status", json=alice.creds(id=later.uuid)).json["name"] == "later"

    # A VM's key removed (the host agent deleted it) leaves the lists.
    store.delete(store.get(VM, mine))
    wait_for(lambda: listed(client, alice) == [later.uuid], 5, "the deleted VM to leave the list")
    assert client.get("/vm/status", json=alice.creds(id=mine)).status_code == 404


def test_reads_during_an_etcd_outage_fail_instead_of_going_stale(tmp_path, settings, image):
    from ucloud.api import create_app

    own = Etcd(tmp_path / "etcd")
    own.start()
    settings = settings.model_copy(update={"etcd_endpoints": f"127.0.0.1:{own.port}"})
    store = Store(settings)
    app = create_app(settings, store)
    client = app.test_client()
    try:
        alice = make_account(store, "alice")
        store.create(image)
        vmid = create_vm(client, alice, image)
        wait_for(lambda: listed(client, alice) == [vmid], 5, "the VM to be listed")

        own.stop()
        wait_for(
            lambda: client.get("/vm/status", json=alice.creds(id=vmid)).status_code == 503,
            10,
            "status to answer 503 while etcd is down",
        )
        assert client.get("/vm/list", json=alice.creds()).status_code == 503

        own.start()  # returns once it answers; the store's channel follows within moments
        reconnected(store)
        assert store.update(VM, vmid, lambda vm: setattr(vm, "hostname", "h9")) is not None
        wait_for(
            lambda: (
                client.get("/vm/status", json=alice.creds(id=vmid)).json.get("hostname") == "h9"
            ),
            20,
            "the change made after the outage to show",
        )
    finally:
        app.extensions["ucloud"].catalog.stop()
        store.close()
        own.stop()


def test_private_images_are_their_owners(client, alice, bob, store):
    private = make_image(store, "alices-image", owner=alice, public=False)
    create_vm(client, alice, private)
    r = client.post("/vm/create", json=bob.creds(vm_name="x", specs=SPECS, image=private.uuid))
    assert r.status_code == 400
    assert "unknown image" in r.json["error"]
    r = client.post("/vm/create", json=bob.creds(vm_name="x", specs=SPECS, image="alices-image"))
    assert r.status_code == 400


def test_admin_endpoints_refuse_users(client, alice, store):
    calls = [
        ("post", "/host/create", {"hostname": "h1", "specs": {"cpu": 4, "ram": 8}}),
        ("get", "/host/list", {}),
        ("post", "/host/maintenance", {"hostname": "h1", "maintenance": True}),
        ("post", "/user/create", {"user": "eve", "user_realm": "users"}),
    ]
    for method, path, fields in calls:
        r = getattr(client, method)(path, json=alice.creds(**fields))
        assert r.status_code == 403, path
        assert r.json["error"] == "only administrators may do this"
    from ucloud.models import Host, User

    assert store.get(Host, "h1") is None
    assert store.get(User, "users/eve") is None


def test_admin_creates_users_who_can_log_in(client, admin):
    r = client.post("/user/create", json=admin.creds(user="carol", user_realm="users"))
    assert r.status_code == 201
    carol = Account("carol", "users", r.json["seed"])
    assert client.get("/vm/list", json=carol.creds()).status_code == 200
    again = client.post("/user/create", json=admin.creds(user="carol", user_realm="users"))
    assert again.status_code == 409
    assert "already exists" in again.json["error"]


# --- transitions ------------------------------------------------------------------------------


def set_status(store: Store, vmid: str, status: Status, desired: Desired | None = None) -> int:
    """Move a VM as the scheduler or a host agent would."""

    def change(vm: VM) -> None:
        vm.set_status(status, by="test")
        if desired is not None:
            vm.desired = desired

    return store.update(VM, vmid, change).mod_revision


SETTLED = {
    Status.RUNNING: Desired.RUNNING,
    Status.SUSPENDED: Desired.SUSPENDED,
    Status.STOPPED: Desired.STOPPED,
    Status.DELETING: Desired.DELETED,
}


@pytest.mark.parametrize("action", list(Action))
def test_every_refused_transition_is_409_and_changes_nothing(client, alice, image, store, action):
    from ucloud.models import ACTION_ALLOWED

    vmid = create_vm(client, alice, image)
    refused = [s for s in Status if s not in ACTION_ALLOWED[action]]
    assert refused, "every action has statuses it does not apply to"
    for status in refused:
        revision = set_status(store, vmid, status, SETTLED.get(status, Desired.RUNNING))
        if action == Action.DELETE:
            r = client.post("/vm/delete", json=alice.creds(vmid=vmid))
        else:
            r = client.post("/vm/action", json=alice.creds(vmid=vmid, action=action.value))
        assert r.status_code == 409, (action, status)
        assert status.value in r.json["error"]
        assert store.get(VM, vmid).mod_revision == revision


def test_accepted_transitions_set_desired(client, alice, image, store):
    vmid = create_vm(client, alice, image)
    set_status(store, vmid, Status.RUNNING)
    steps = [
        ("suspend", Desired.SUSPENDED, Status.SUSPENDED),
        ("resume", Desired.RUNNING, Status.RUNNING),
        ("stop", Desired.STOPPED, Status.STOPPED),
        ("start", Desired.RUNNING, Status.RUNNING),
    ]
    for action, desired, reached in steps:
        r = client.post("/vm/action", json=alice.creds(vmid=vmid, action=action))
        assert r.status_code == 202, r.json
        assert store.get(VM, vmid).value.desired == desired
        set_status(store, vmid, reached)
    r = client.post("/vm/action", json=alice.creds(vmid=vmid, action="reboot"))
    assert r.status_code == 202
    assert store.get(VM, vmid).value.reboot_seq == 1
    assert client.post("/vm/delete", json=alice.creds(vmid=vmid)).status_code == 202
    vm = store.get(VM, vmid).value
    assert vm.desired == Desired.DELETED
    assert [e.message for e in vm.log][-1] == "delete requested"


def test_action_contradicting_a_pending_request_is_refused(client, alice, image, store):
    vmid = create_vm(client, alice, image)
    set_status(store, vmid, Status.RUNNING)
    assert client.post("/vm/action", json=alice.creds(vmid=vmid, action="stop")).status_code == 202
    r = client.post("/vm/action", json=alice.creds(vmid=vmid, action="suspend"))
    assert r.status_code == 409
    assert r.json["error"].endswith("it is RUNNING, being stopped")


# --- bad input --------------------------------------------------------------------------------

BAD_CREATES = [
    ({"specs": {"ram": 1}}, "specs.cpu: Field required"),
    ({"specs": {"cpu": "two", "ram": 1}}, "specs.cpu"),
    ({"specs": {"cpu": True, "ram": 1}}, "specs.cpu"),
    ({"specs": {"cpu": 1, "ram": -1}}, "specs.ram"),
    ({"specs": {"cpu": 1, "ram": 1, "hdd": "-5 GB"}}, "specs.hdd"),
    ({"specs": {"cpu": 1, "ram": "lots"}}, "not a size"),
    ({"specs": {"cpu": 0, "ram": 1}}, "specs.cpu"),
    ({"specs": {"cpu": 1, "ram": 1, "gpu": 1}}, "specs.gpu"),
    ({"image": "no-such-image"}, "unknown image 'no-such-image'"),
    ({"vm_name": ""}, "vm_name"),
    ({"surprise": 1}, "surprise"),
]


@pytest.mark.parametrize(("fields", "message"), BAD_CREATES)
def test_bad_create_is_400_and_creates_nothing(client, alice, image, store, fields, message):
    body = alice.creds(vm_name="web", specs=SPECS, image=image.uuid)
    body.update(fields)
    r = client.post("/vm/create", json=body)
    assert r.status_code == 400, r.json
    assert message in r.json["error"]
    assert all_vms(store) == {}


def test_missing_credentials_malformed_and_oversized_bodies(client, alice, image, store, settings):
    r = client.post("/vm/create", json={"vm_name": "x"})
    assert r.status_code == 400
    assert "name: Field required" in r.json["error"]
    r = client.post("/vm/create", data="{not json", content_type="application/json")
    assert (r.status_code, r.json["error"]) == (400, "the request body is not valid JSON")
    r = client.post("/vm/create", data="[1, 2]", content_type="application/json")
    assert (r.status_code, r.json["error"]) == (400, "the request body must be a JSON object")
    big = alice.creds(vm_name="x" * (settings.api_max_body + 1), specs=SPECS, image=image.uuid)
    r = client.post("/vm/create", json=big)
    assert (r.status_code, r.json["error"]) == (
        413,
        f"the request body is over the API's limit of {settings.api_max_body} bytes",
    )
    r = client.post("/vm/action", json=alice.creds(vmid="nope", action="explode"))
    assert r.status_code == 400
    assert "action" in r.json["error"]
    assert client.get("/vm/status", json=alice.creds(id="../../x")).status_code == 404
    assert client.get("/no/such/endpoint").status_code == 404
    assert client.put("/vm/create").status_code == 405
    assert all_vms(store) == {}


def test_image_not_ready_is_409(client, alice, store):
    from ucloud.models import ImageStatus

    img = Image(name="half", owner="x", owner_realm="y", public=True, status=ImageStatus.CREATING)
    store.create(img)
    r = client.post("/vm/create", json=alice.creds(vm_name="x", specs=SPECS, image="half"))
    assert r.status_code == 409
    assert "CREATING" in r.json["error"]


# --- hosts and the API description ------------------------------------------------------------


def test_hosts_for_administrators(client, admin):
    r = client.post(
        "/host/create",
        json=admin.creds(hostname="h1", specs={"cpu": 8, "ram": "16 GiB", "ssd": 100}),
    )
    assert r.status_code == 201, r.json
    assert (
        client.post(
            "/host/create", json=admin.creds(hostname="h1", specs={"cpu": 8, "ram": 16})
        ).status_code
        == 409
    )
    bad = client.post("/host/create", json=admin.creds(hostname="a/b", specs={"cpu": 8, "ram": 16}))
    assert bad.status_code == 400
    r = client.post("/host/maintenance", json=admin.creds(hostname="h1", maintenance=True))
    assert r.json["host"]["admin_state"] == "MAINTENANCE"
    hosts = client.get("/host/list", json=admin.creds()).json["hosts"]
    assert [(h["name"], h["admin_state"], h["capacity"]["ram"]) for h in hosts] == [
        ("h1", "MAINTENANCE", 16.0)
    ]
    assert (
        client.post(
            "/host/maintenance", json=admin.creds(hostname="h9", maintenance=True)
        ).status_code
        == 404
    )


def test_host_list_allocates_a_migrating_vm_on_its_target_too(client, admin, store):
    """While a VM migrates it is given room on both hosts (the scheduler holds its specs on
    the target from when it chose it): `ucloud host list` shows it on both."""
    for name in ("src", "dst"):
        specs = {"cpu": 8, "ram": 16}
        r = client.post("/host/create", json=admin.creds(hostname=name, specs=specs))
        assert r.status_code == 201, r.json

    def running(name: str, ram: float, migration: Migration | None) -> None:
        vm = VM(
            name=name,
            owner="alice",
            owner_realm="users",
            specs=Specs(cpu=1, ram=ram),
            image="i",
            status=Status.RUNNING,
            hostname="src",
            migration=migration,
        )
        store.create(vm)

    running("moving", 2, Migration(source="src", target="dst", phase=MigrationPhase.MIGRATING))
    running("staying", 1, None)
    # Asked for, no target held yet: counted on its source only, as the scheduler counts it.
    running("asked", 4, Migration(source="src", target="dst"))

    def allocated() -> dict[str, tuple[int, float]]:
        hosts = client.get("/host/list", json=admin.creds()).json["hosts"]
        return {h["name"]: (h["allocated"]["cpu"], h["allocated"]["ram"]) for h in hosts}

    expected = {"src": (3, 7.0), "dst": (1, 2.0)}
    # The API serves VMs from its watch: the records just written may take a moment to come.
    wait_for(lambda: allocated() == expected, 10, f"allocated {expected}")


def test_openapi_describes_every_route(client, app):
    doc = client.get("/openapi.json").json
    routes = {
        (re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule), m.lower())
        for rule in app.url_map.iter_rules()
        for m in rule.methods - {"HEAD", "OPTIONS"}
        if not rule.endpoint.startswith("web.")  # the console page's, not the REST API's
    }
    described = {(path, method) for path, ops in doc["paths"].items() for method in ops}
    assert described == routes - {("/openapi.json", "get"), ("/static/{filename}", "get")}
    schemas = doc["components"]["schemas"]
    create = doc["paths"]["/vm/create"]["post"]["requestBody"]["content"]["application/json"][
        "schema"
    ]
    assert create["$ref"].rsplit("/", 1)[1] in schemas
    assert "specs" in schemas["VMCreate"]["required"]
    status_params = {p["name"] for p in doc["paths"]["/vm/status"]["get"]["parameters"]}
    assert {"name", "realm", "token", "vmid"} <= status_params
