"""Tenancy on a real etcd: no user sees or reaches another's VMs, networks, images, files, keys
or consoles, through any operation of the API's OpenAPI document or any route of the console
page.

Alice owns one of every kind of object; an intruder calls every operation naming each of hers:
bob, of her realm, and another alice, of another realm (a namesake must be no one's key). A
refusal must say no more than it says for an object that does not exist (the same status, the
same message); an answer the intruder may have (their lists, things they make under names alice
uses) must name nothing of hers; and every key under the test's etcd prefix that existed before
their calls is byte for byte the same after them, unless it is theirs. An operation or a page
route this file does not know how to call fails the tests: new endpoints are covered by
construction.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SPECS, Account, create_vm, make_account, make_image
from tests.keyfiles import keygen
from tests.servers import wait_for
from tests.webclient import logged_in
from ucloud import auth
from ucloud.config import Settings
from ucloud.models import VM, File, Network, Status
from ucloud.store import Store

CONTENT = b"alice's disk image\n" * 100


@pytest.fixture
def settings(settings: Settings, tmp_path: Path) -> Settings:
    root = tmp_path / "uploads"
    root.mkdir()
    return settings.model_copy(
        update={
            "upload_root": str(root),
            "web_secret_key": secrets.token_hex(32),
            "web_cookie_secure": False,
        }
    )


@dataclass
class World:
    """What alice owns (and the intruder's own VM and network, to cross them with hers)."""

    vm: str
    network: str
    shared: str  # an administrator's shared network, alice's VM attached to it
    image: str
    file: str
    key: str
    public_key: str
    console_token: str
    intruders_vm: str
    intruders_network: str
    # Each reference to an object of alice's, and a reference of the same shape to none.
    missing: dict[str, str] = field(default_factory=dict)

    def secrets(self, intruder: Account) -> list[str]:
        """What no answer to the intruder may contain: alice's ids, her console token, and her
        name as an owner (her namesake's own things are owned by an "alice" too: of their
        realm, not of hers)."""
        owner = '"alice"' if intruder.name != "alice" else '"owner_realm":"users"'
        return [self.vm, self.network, self.image, self.file, self.console_token, owner]


def put(client, account: Account, name: str, data: bytes):
    return client.put(
        f"/file/upload/{name}",
        data=data,
        headers={
            "X-UCloud-User": account.name,
            "X-UCloud-Realm": account.realm,
            "X-UCloud-Token": auth.current_token(account.secret),
            "X-UCloud-SHA512": hashlib.sha512(data).hexdigest(),
        },
    )


@pytest.fixture
def world(client, store: Store, admin, alice, intruder, tmp_path: Path) -> World:
    image = make_image(store, "alices-image", owner=alice, public=False)
    r = client.post("/network/create", json=alice.creds(network_name="alices-net"))
    assert r.status_code == 201, r.json
    network = r.json["network"]["uuid"]
    # A network every user may attach VMs to: its being shared shares none of them.
    r = client.post("/network/create", json=admin.creds(network_name="lan", shared=True))
    assert r.status_code == 201, r.json
    shared = r.json["network"]["uuid"]
    public_key = keygen(tmp_path, "laptop", "-t", "ed25519").read_text()
    r = client.post("/key/add", json=alice.creds(key_name="alices-key", public_key=public_key))
    assert r.status_code == 201, r.json
    vm = create_vm(client, alice, image, networks=["alices-net", "lan"], ssh_keys=["alices-key"])
    # Uploaded through the API; registered as the file scanner does once it sees it.
    assert put(client, alice, "alices.iso", CONTENT).status_code == 201
    file = File(
        owner="alice",
        owner_realm="users",
        name="alices.iso",
        size=len(CONTENT),
        sha512=hashlib.sha512(CONTENT).hexdigest(),
        mtime=0,
    )
    store.create(file)
    # Running, as its host agent records it: it has a console, and alice opens it.
    store.update(VM, vm, lambda v: setattr(v, "status", Status.RUNNING))
    catalog = client.application.extensions["ucloud"].catalog
    wait_for(lambda: catalog.vm(vm).value.status == Status.RUNNING, 5, "the VM to run")
    r = client.post("/vm/console", json=alice.creds(vmid=vm))
    assert r.status_code == 200, r.json
    token = r.json["url"].rsplit("token=", 1)[1]

    public = make_image(store, "debian")
    r = client.post("/network/create", json=intruder.creds(network_name="their-net"))
    assert r.status_code == 201, r.json
    their_network = r.json["network"]["uuid"]
    their_vm = create_vm(client, intruder, public)
    w = World(
        vm,
        network,
        shared,
        image.uuid,
        file.uuid,
        "alices-key",
        public_key,
        token,
        their_vm,
        their_network,
    )
    w.missing = {
        vm: str(uuid.uuid4()),
        network: str(uuid.uuid4()),
        shared: str(uuid.uuid4()),
        image.uuid: str(uuid.uuid4()),
        file.uuid: str(uuid.uuid4()),
        "alices-net": "nobodys-net",
        "alices-image": "nobodys-image",
        "alices-key": "nobodys-key",
        "alice": "nobody",
    }
    return w


# --- what the intruder asks --------------------------------------------------------------------

# A probe: the fields the intruder sends (naming alice's objects), and the status they must get
# (or a function of the intruder that gives it). A 4xx must be the very answer they get for
# objects that do not exist; a 2xx is their own business, and must name nothing of alice's.
Fields = Callable[[World], dict[str, Any]]
Probe = tuple[Fields, int | Callable[[Account], int]]

ADMIN_ONLY = 403  # refused before any object is looked up

PROBES: dict[tuple[str, str], list[Probe]] = {
    # SSH keys: each user's own folder; a key of the same name, or the same key, is their own.
    ("get", "/key/list"): [(lambda w: {}, 200)],
    ("post", "/key/delete"): [(lambda w: {"key_name": w.key}, 404)],
    ("get", "/quota/show"): [(lambda w: {"user": "alice", "user_realm": "users"}, 403)],
    ("post", "/quota/set"): [(lambda w: {"user": "alice", "user_realm": "users", "vms": 0}, 403)],
    # Files and images.
    ("get", "/file/list"): [(lambda w: {}, 200)],
    ("post", "/image/create"): [(lambda w: {"image_name": "x", "file_uuid": w.file}, 404)],
    ("get", "/image/list"): [(lambda w: {}, 200)],
    ("post", "/image/delete"): [
        (lambda w: {"uuid": w.image}, 404),
        (lambda w: {"uuid": "alices-image"}, 404),
    ],
    ("post", "/image/store/create"): [(lambda w: {"image_store": "s2", "pool": "p2"}, 403)],
    ("get", "/image/store/list"): [(lambda w: {}, 200)],  # the cluster's stores, no one's
    # VMs.
    ("post", "/vm/create"): [
        (lambda w: {"vm_name": "web", "specs": SPECS, "image": w.image}, 400),
        (lambda w: {"vm_name": "web", "specs": SPECS, "image": "alices-image"}, 400),
        (
            lambda w: {
                "vm_name": "web",
                "specs": SPECS,
                "image": "debian",
                "networks": [w.network],
            },
            404,
        ),
        (
            lambda w: {
                "vm_name": "web",
                "specs": SPECS,
                "image": "debian",
                "networks": ["alices-net"],
            },
            404,
        ),
        (lambda w: {"vm_name": "web", "specs": SPECS, "image": "debian", "ssh_keys": [w.key]}, 400),
    ],
    ("get", "/vm/status"): [(lambda w: {"vmid": w.vm}, 404)],
    ("get", "/vm/list"): [(lambda w: {}, 200)],
    ("post", "/vm/action"): [
        (lambda w, a=a: {"vmid": w.vm, "action": a}, 404)
        for a in ("start", "stop", "suspend", "resume", "reboot", "delete")
    ],
    ("post", "/vm/delete"): [(lambda w: {"vmid": w.vm}, 404)],
    ("post", "/vm/resize"): [(lambda w: {"vmid": w.vm, "cpu": 2}, 404)],
    ("post", "/vm/console"): [
        (lambda w: {"vmid": w.vm}, 404),
        (lambda w: {"vmid": w.vm, "serial": True}, 404),
    ],
    ("post", "/vm/migrate"): [(lambda w: {"vmid": w.vm}, ADMIN_ONLY)],
    ("post", "/vm/migrate/abort"): [(lambda w: {"vmid": w.vm}, ADMIN_ONLY)],
    # Networks.
    ("get", "/network/list"): [(lambda w: {}, 200)],
    ("post", "/network/delete"): [
        (lambda w: {"network": w.network}, 404),
        (lambda w: {"network": "alices-net"}, 404),
        (lambda w: {"network": w.shared}, 404),  # seen by all, deleted by its owner
    ],
    ("post", "/network/router"): [(lambda w: {"network": w.network, "router": "h1"}, ADMIN_ONLY)],
    ("post", "/vm/network/attach"): [
        (lambda w: {"vmid": w.intruders_vm, "network": w.network}, 404),
        (lambda w: {"vmid": w.intruders_vm, "network": "alices-net"}, 404),
        (lambda w: {"vmid": w.vm, "network": w.intruders_network}, 404),
    ],
    ("post", "/vm/network/detach"): [
        (lambda w: {"vmid": w.vm, "network": w.network}, 404),
        (lambda w: {"vmid": w.vm, "network": w.shared}, 404),
        (lambda w: {"vmid": w.intruders_vm, "network": w.network}, 409),  # "not attached"
    ],
    # Administrators' operations on users and hosts.
    ("post", "/user/create"): [(lambda w: {"user": "alice", "user_realm": "users"}, ADMIN_ONLY)],
    ("get", "/user/list"): [(lambda w: {}, ADMIN_ONLY)],
    ("post", "/user/delete"): [
        (lambda w: {"user": "alice", "user_realm": "users", "delete_owned": True}, ADMIN_ONLY)
    ],
    ("post", "/user/reset-totp"): [
        (lambda w: {"user": "alice", "user_realm": "users"}, ADMIN_ONLY)
    ],
    ("get", "/user/sessions"): [(lambda w: {"user": "alice", "user_realm": "users"}, ADMIN_ONLY)],
    ("post", "/user/end-sessions"): [
        (lambda w: {"user": "alice", "user_realm": "users"}, ADMIN_ONLY)
    ],
    ("post", "/host/create"): [
        (lambda w: {"hostname": "h1", "specs": {"cpu": 4, "ram": 8}}, ADMIN_ONLY)
    ],
    ("get", "/host/list"): [(lambda w: {}, ADMIN_ONLY)],
    ("post", "/host/delete"): [(lambda w: {"hostname": "h1"}, ADMIN_ONLY)],
    ("post", "/host/maintenance"): [
        (lambda w: {"hostname": "h1", "maintenance": True}, ADMIN_ONLY)
    ],
    ("post", "/host/evacuate"): [(lambda w: {"hostname": "h1"}, ADMIN_ONLY)],
    # Last: the intruder makes things of their own under the names alice uses (and would
    # otherwise find them by those names in the probes above).
    ("post", "/key/add"): [(lambda w: {"key_name": w.key, "public_key": w.public_key}, 201)],
    # Into bob's own directory; the namesake is of no upload realm (directories are by name).
    ("put", "/file/upload/{name}"): [
        (lambda w: {"name": "alices.iso"}, lambda who: 201 if who.realm == "users" else 403)
    ],
    ("post", "/image/import"): [
        (lambda w: {"image_name": "alices-image", "url": "http://127.0.0.1:9/a.img"}, 202)
    ],
    ("post", "/network/create"): [(lambda w: {"network_name": "alices-net"}, 201)],
}


def substitute(value: Any, refs: dict[str, str]) -> Any:
    """``value`` with each reference to alice's objects replaced by its missing twin."""
    if isinstance(value, str):
        return refs.get(value, value)
    if isinstance(value, list):
        return [substitute(v, refs) for v in value]
    if isinstance(value, dict):
        return {k: substitute(v, refs) for k, v in value.items()}
    return value


def call(client, account: Account, method: str, path: str, fields: dict[str, Any]):
    if method == "put":  # the upload: credentials in headers, the file as the body
        return put(client, account, fields["name"], b"an intruder's own file\n")
    if method == "get":
        return client.get(path, query_string=account.creds(**fields))
    return client.post(path, json=account.creds(**fields))


def snapshot(store: Store) -> dict[bytes, bytes]:
    return {meta.key: value for value, meta in store.client.get_prefix(store.prefix + "/")}


def owner_of(key: bytes, value: bytes) -> str:
    """Whose record a key is (realm/name), as far as its value says ("" if it does not)."""
    try:
        data = json.loads(value)
    except ValueError:
        return ""
    if not isinstance(data, dict):
        return ""
    if "owner" in data:
        return f"{data['owner_realm']}/{data['owner']}"
    if "user" in data:  # a web session, a login's step
        return str(data["user"])
    if "realm" in data:  # a quota or a user
        return f"{data['realm']}/{data['name']}"
    return ""


def test_the_openapi_document_has_no_operation_this_test_does_not_call(client):
    doc = client.get("/openapi.json").json
    operations = {(method, path) for path, ops in doc["paths"].items() for method in ops}
    unknown = operations - PROBES.keys()
    assert not unknown, f"new operations: add them to PROBES in {__file__}: {sorted(unknown)}"
    assert not PROBES.keys() - operations, "PROBES names operations the API no longer has"


@pytest.fixture(params=["users/bob", "partners/alice"])
def intruder(request, store: Store, alice) -> Account:
    realm, name = request.param.split("/")
    return make_account(store, name, realm)


def test_no_operation_lets_an_intruder_see_or_reach_alices_objects(client, store, world, intruder):
    who = f"{intruder.realm}/{intruder.name}"
    before = snapshot(store)
    for (method, path), probes in PROBES.items():
        for fields_of, expected in probes:
            if callable(expected):
                expected = expected(intruder)
            fields = fields_of(world)
            r = call(client, intruder, method, path, fields)
            what = f"{who}: {method.upper()} {path} {fields}"
            assert r.status_code == expected, f"{what}: {r.status_code} {r.text}"
            sent = json.dumps(fields)
            for secret in world.secrets(intruder):
                # What was sent may be echoed back ("no VM <uuid>"): the rest is alice's.
                assert secret in sent or secret not in r.text, f"{what} reveals {secret}: {r.text}"
            if r.status_code < 400:
                continue
            twin = substitute(fields, world.missing)
            m = call(client, intruder, method, path, twin)
            unmasked = m.json["error"]
            for alices, missing in world.missing.items():
                unmasked = unmasked.replace(missing, alices)
            assert (r.status_code, r.json["error"]) == (m.status_code, unmasked), (
                f"{what} answers otherwise than for an object that does not exist: "
                f"{r.status_code} {r.json['error']!r} / {m.status_code} {m.json['error']!r}"
            )

    after = snapshot(store)
    # What existed before may change only if it is the intruder's own: their quota usage, as
    # they make things of their own. Not one of alice's keys, nor anyone else's.
    changed = {k: owner_of(k, before[k]) for k in before if after.get(k) != before[k]}
    assert changed == dict.fromkeys(changed, who), changed
    new = {k: owner_of(k, v) for k, v in after.items() if k not in before}
    # Index entries (empty values) are their records': a new network claims a VXLAN id and a
    # prefix.
    for kind in (VM, Network):
        for found in store.list(kind)[0].values():
            for key in found.value.index_keys():
                entry = store.index_key(key).encode()
                if new.get(entry) == "":
                    new[entry] = f"{found.value.owner_realm}/{found.value.owner}"
    theirs = {k: owner for k, owner in new.items() if owner != who}
    assert not theirs, f"records {who}'s calls wrote that are not theirs: {theirs}"
    upload = Path(client.application.extensions["ucloud"].settings.upload_root)
    assert (upload / "alice" / "alices.iso").read_bytes() == CONTENT
    assert sorted(os.listdir(upload / "alice")) == ["alices.iso"]


# --- the console page, as the intruder's browser ------------------------------------------------

# A page probe: the path the intruder's browser asks (naming alice's VM), the JSON it posts
# (None: a GET), and the status it must get. A string instead of a list: the route names no one's
# object, and why.
PageProbe = tuple[Callable[[World], str], dict[str, Any] | None, int]

PAGE_PROBES: dict[tuple[str, str], list[PageProbe] | str] = {
    ("get", "/console/"): [(lambda w: "/console/", None, 200)],
    ("get", "/console/api/vms"): [(lambda w: "/console/api/vms", None, 200)],
    ("get", "/console/vm/<vmid>"): [(lambda w: f"/console/vm/{w.vm}", None, 404)],
    ("get", "/console/api/vm/<vmid>"): [(lambda w: f"/console/api/vm/{w.vm}", None, 404)],
    ("post", "/console/api/vm/<vmid>/action"): [
        (lambda w, a=a: f"/console/api/vm/{w.vm}/action", {"action": a}, 404)
        for a in ("start", "stop", "suspend", "resume", "reboot")
    ],
    ("post", "/console/api/vm/<vmid>/console"): [
        (lambda w: f"/console/api/vm/{w.vm}/console", {}, 404),
        (lambda w: f"/console/api/vm/{w.vm}/console", {"serial": True}, 404),
    ],
    ("get", "/console/login"): "the login form: no one's object",
    ("post", "/console/login"): "logs in with the caller's own name and token "
    "(tests/test_web_sessions.py)",
    ("post", "/console/logout"): "ends the caller's own session, found by its cookie "
    "(tests/test_web_sessions.py)",
    # The token rides in the URL's fragment: the console proxy, not this page, redeems it, and
    # it names no VM in its path (ucloud.console.proxy).
    ("get", "/console/vnc"): "a viewer page; its console token is in the fragment",
    ("get", "/console/serial"): "a viewer page; its console token is in the fragment",
    ("get", "/console/assets/<package>/<path:path>"): "noVNC and xterm.js, the same for all",
    ("get", "/console/static/<path:filename>"): "the page's scripts, the same for all",
}


def page_routes(app) -> set[tuple[str, str]]:
    return {
        (method.lower(), rule.rule)
        for rule in app.url_map.iter_rules()
        if rule.endpoint.startswith("web.")
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }


def test_the_console_page_has_no_route_this_test_does_not_call(app):
    routes = page_routes(app)
    unknown = routes - PAGE_PROBES.keys()
    assert not unknown, f"new page routes: add them to PAGE_PROBES in {__file__}: {unknown}"
    assert not PAGE_PROBES.keys() - routes, "PAGE_PROBES names routes the page no longer has"


def test_the_console_page_lets_an_intruder_see_or_reach_none_of_alices_vms(
    app, store, world, alice, intruder
):
    logged_in(app, alice)  # alice's session is hers: the intruder's calls leave it as it is
    browser, _, csrf = logged_in(app, intruder)
    before = snapshot(store)
    for (method, _), probes in PAGE_PROBES.items():
        if isinstance(probes, str):
            continue
        for path_of, body, expected in probes:
            path = path_of(world)
            headers = {"X-CSRF-Token": csrf}
            r = getattr(browser, method)(path, json=body, headers=headers)
            what = f"{intruder.realm}/{intruder.name}: {method.upper()} {path} {body}"
            assert r.status_code == expected, f"{what}: {r.status_code} {r.text}"
            for secret in world.secrets(intruder):
                assert secret in path or secret not in r.text, f"{what} reveals {secret}"
            if r.status_code < 400:
                continue
            twin = path.replace(world.vm, world.missing[world.vm])
            m = getattr(browser, method)(twin, json=body, headers=headers)
            unmasked = m.json["error"].replace(world.missing[world.vm], world.vm)
            assert (r.status_code, r.json["error"]) == (m.status_code, unmasked), what
    assert snapshot(store) == before
