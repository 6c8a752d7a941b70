"""Networks through the real API and etcd: allocation by compare-and-swap, ports with
stable MACs and addresses, visibility, attach/detach and delete rules."""

from __future__ import annotations

import ipaddress
from concurrent.futures import ThreadPoolExecutor

from tests.conftest import Account
from ucloud import quota
from ucloud.models import VM, Host, Network, Specs
from ucloud.network import ports
from ucloud.store import Store

SPECS = {"cpu": 1, "ram": 0.125, "ssd": 1}


def make_network(client, user: Account, name: str = "net", **more: object) -> dict:
    r = client.post("/network/create", json=user.creds(network_name=name, **more))
    assert r.status_code == 201, r.json
    return r.json["network"]


def make_vm(client, user: Account, image, *networks: str, name: str = "vm") -> dict:
    body = user.creds(vm_name=name, specs=SPECS, image=image.uuid, networks=list(networks))
    r = client.post("/vm/create", json=body)
    assert r.status_code == 202, r.json
    return r.json["vm"]


def test_networks_get_distinct_vnis_and_64s_from_the_configured_pool(client, alice, settings):
    a = make_network(client, alice, "a", ipv4="10.9.0.0/24")
    b = make_network(client, alice, "b")
    lo, hi = (int(x) for x in settings.network_vni_range.split("-"))
    assert lo <= a["vni"] < b["vni"] <= hi
    pool = ipaddress.IPv6Network(settings.network_ipv6_pool)
    nets = [ipaddress.IPv6Network(n["ipv6_prefix"]) for n in (a, b)]
    assert all(n.prefixlen == 64 and n.subnet_of(pool) for n in nets)
    assert nets[0] != nets[1]
    assert a["ipv4_subnet"] == "10.9.0.0/24" and b["ipv4_subnet"] == ""
    assert a["mtu"] == settings.network_mtu


def test_concurrent_creations_never_share_a_vni_or_prefix(settings, store: Store):
    def create(i: int) -> Network:
        s = Store(settings)
        try:
            made: list[Network] = []

            def plan() -> quota.Plan:  # as /network/create: a fresh choice on every retry
                made[:] = [ports.new_network(s, settings, name="n", owner=f"u{i}", owner_realm="r")]
                return quota.Plan(
                    [(made[0], None)], quota.of_network(made[0]), absent=made[0].index_keys()
                )

            quota.charge(s, settings, ("r", f"u{i}"), plan)
            return made[0]
        finally:
            s.close()

    with ThreadPoolExecutor(8) as pool:
        made = list(pool.map(create, range(16)))
    assert len({n.vni for n in made}) == 16
    assert len({n.ipv6_prefix for n in made}) == 16
    listed, _ = store.list(Network)
    assert len(listed) == 16


def test_bad_network_requests_get_a_clear_400_and_change_nothing(client, alice, store):
    for body, words in [
        ({"network_name": "x", "ipv4": "10.0.0.1/24"}, "host bits set"),
        ({"network_name": "x", "ipv4": "10.0.0.0/8"}, "/16 to a /29"),
        ({"network_name": "x", "mtu": 100}, "mtu"),
        ({"network_name": "bad/name"}, "network_name"),
    ]:
        r = client.post("/network/create", json=alice.creds(**body))
        assert r.status_code == 400, r.json
        assert words in r.json["error"]
    r = client.post("/network/create", json=alice.creds(network_name="x", shared=True))
    assert r.status_code == 403
    assert store.list(Network)[0] == {}


def test_ports_have_stable_macs_and_unique_addresses(client, alice, image, store):
    net = make_network(client, alice, ipv4="10.1.0.0/29")
    vms = [make_vm(client, alice, image, net["uuid"], name=f"v{i}") for i in range(5)]
    ports_ = [v["ports"][0] for v in vms]
    assert [p["ipv4"] for p in ports_] == [f"10.1.0.{i}" for i in range(2, 7)]
    assert len({p["mac"] for p in ports_}) == 5
    for p in ports_:
        assert ipaddress.IPv6Address(p["ipv6"]) in ipaddress.IPv6Network(net["ipv6_prefix"])
    # The subnet is full: the next VM is refused, and nothing was made.
    body = alice.creds(vm_name="late", specs=SPECS, image=image.uuid, networks=[net["name"]])
    r = client.post("/vm/create", json=body)
    assert r.status_code == 409 and "every address of 10.1.0.0/29" in r.json["error"]
    assert len(store.list(VM)[0]) == 5
    # Status and list show the ports; the record keeps them.
    r = client.get("/vm/status", json=alice.creds(vmid=vms[0]["uuid"]))
    assert r.json["ports"] == [ports_[0]]
    listed = client.get("/vm/list", json=alice.creds()).json["vms"]
    assert {v["ports"][0]["mac"] for v in listed} == {p["mac"] for p in ports_}
    # Detach frees the address; the next port gets it (and never one in use).
    r = client.post(
        "/vm/network/detach", json=alice.creds(vmid=vms[1]["uuid"], network=net["uuid"])
    )
    assert r.status_code == 202, r.json
    assert r.json["vm"]["ports"] == []
    again = make_vm(client, alice, image, net["uuid"], name="again")
    assert again["ports"][0]["ipv4"] == "10.1.0.3"


def test_attach_detach_and_delete_rules(client, alice, image, store):
    net = make_network(client, alice)
    vm = make_vm(client, alice, image)
    attach = {"vmid": vm["uuid"], "network": "net"}
    r = client.post("/vm/network/attach", json=alice.creds(**attach))
    assert r.status_code == 202, r.json
    mac = r.json["vm"]["ports"][0]["mac"]
    r = client.post("/vm/network/attach", json=alice.creds(**attach))
    assert r.status_code == 409 and "already attached" in r.json["error"]
    # Delete while attached: 409 naming the VM, nothing changed.
    r = client.post("/network/delete", json=alice.creds(network=net["uuid"]))
    assert r.status_code == 409 and vm["uuid"] in r.json["error"]
    found = store.get(Network, net["uuid"])
    assert found is not None and not found.value.deleting
    assert store.get(VM, vm["uuid"]).value.ports[0].mac == mac
    # Attach to another network of the same VM keeps the first port as it was.
    other = make_network(client, alice, "other")
    r = client.post("/vm/network/attach", json=alice.creds(vmid=vm["uuid"], network="other"))
    assert [p["network"] for p in r.json["vm"]["ports"]] == [net["uuid"], other["uuid"]]
    assert r.json["vm"]["ports"][0]["mac"] == mac
    for n in (net, other):
        r = client.post("/vm/network/detach", json=alice.creds(vmid=vm["uuid"], network=n["uuid"]))
        assert r.status_code == 202, r.json
    r = client.post("/vm/network/detach", json=alice.creds(**attach))
    assert r.status_code == 409 and "not attached" in r.json["error"]
    r = client.post("/network/delete", json=alice.creds(network=net["uuid"]))
    assert r.status_code == 200, r.json
    assert store.get(Network, net["uuid"]) is None
    # Its VXLAN id and prefix are free again.
    assert make_network(client, alice, "next")["vni"] == net["vni"]


def test_another_users_network_is_a_404_and_a_shared_one_is_usable(
    client, alice, bob, admin, image
):
    private = make_network(client, alice, "private")
    bob_vm = make_vm(client, bob, image)
    for path, body in [
        ("/network/delete", {"network": private["uuid"]}),
        ("/vm/network/attach", {"vmid": bob_vm["uuid"], "network": private["uuid"]}),
        ("/vm/network/attach", {"vmid": bob_vm["uuid"], "network": "private"}),
    ]:
        r = client.post(path, json=bob.creds(**body))
        assert r.status_code == 404, (path, r.json)
    body = bob.creds(vm_name="x", specs=SPECS, image=image.uuid, networks=[private["uuid"]])
    assert client.post("/vm/create", json=body).status_code == 404
    assert client.get("/network/list", json=bob.creds()).json["networks"] == []

    shared = make_network(client, admin, "public", shared=True)
    names = [n["name"] for n in client.get("/network/list", json=bob.creds()).json["networks"]]
    assert names == ["public"]
    r = client.post("/vm/network/attach", json=bob.creds(vmid=bob_vm["uuid"], network="public"))
    assert r.status_code == 202, r.json
    # Bob may use it, not delete it.
    r = client.post("/network/delete", json=bob.creds(network=shared["uuid"]))
    assert r.status_code == 404
    listed = client.get("/network/list", json=admin.creds()).json["networks"]
    assert {n["name"] for n in listed} == {"private", "public"}
    assert next(n for n in listed if n["name"] == "public")["attached"] == [bob_vm["uuid"]]

    # Sharing a network shares none of its VMs: each user sees their own attached, its owner
    # (the administrator) all of them.
    alice_vm = make_vm(client, alice, image, "public", name="alices")

    def attached(user: Account) -> list[str]:
        listed = client.get("/network/list", json=user.creds()).json["networks"]
        return next(n for n in listed if n["name"] == "public")["attached"]

    assert attached(bob) == [bob_vm["uuid"]]
    assert attached(alice) == [alice_vm["uuid"]]
    assert attached(admin) == sorted([bob_vm["uuid"], alice_vm["uuid"]])


def test_a_vm_names_each_network_once(client, alice, image):
    net = make_network(client, alice)
    body = alice.creds(
        vm_name="x", specs=SPECS, image=image.uuid, networks=[net["uuid"], net["name"]]
    )
    r = client.post("/vm/create", json=body)
    assert r.status_code == 400 and "named twice" in r.json["error"]


def test_an_administrator_names_a_networks_router_and_bad_names_change_nothing(
    client, alice, admin, store
):
    store.create(Host(name="r1", capacity=Specs(cpu=1, ram=1), router=True, status="UP"))
    store.create(Host(name="r2", capacity=Specs(cpu=1, ram=1), router=True, status="UP"))
    store.create(Host(name="plain", capacity=Specs(cpu=1, ram=1), status="UP"))
    store.create(Host(name="away", capacity=Specs(cpu=1, ram=1), router=True, status="UP"))
    store.update(Host, "away", lambda h: setattr(h, "admin_state", "MAINTENANCE"))
    r = client.post("/network/create", json=alice.creds(network_name="x", router="r1"))
    assert r.status_code == 403 and "administrators" in r.json["error"]
    for router, code, words in [
        ("nosuch", 400, "no host nosuch"),
        ("plain", 409, "host plain may not route networks: it does not offer to"),
        ("away", 409, "host away may not route networks: it is in maintenance"),
    ]:
        r = client.post("/network/create", json=admin.creds(network_name="x", router=router))
        assert (r.status_code, words in r.json["error"]) == (code, True), r.json
    assert store.list(Network)[0] == {}

    net = make_network(client, admin, "lan", router="r1")
    assert (net["router"], net["router_reason"]) == ("r1", "")
    assert store.get(Network, net["uuid"]).value.router == "r1"

    # Another router for an existing network: administrators only, a host that may route.
    r = client.post("/network/router", json=alice.creds(network=net["uuid"], router="r2"))
    assert r.status_code == 403
    for body, code, words in [
        ({"network": "nosuch", "router": "r2"}, 404, "no network nosuch"),
        ({"network": net["uuid"], "router": "nosuch"}, 400, "no host nosuch"),
        ({"network": net["uuid"], "router": "plain"}, 409, "does not offer to"),
        ({"network": net["uuid"], "router": "bad/name"}, 400, "router"),
    ]:
        r = client.post("/network/router", json=admin.creds(**body))
        assert (r.status_code, words in r.json["error"]) == (code, True), r.json
    assert store.get(Network, net["uuid"]).value.router == "r1"
    r = client.post("/network/router", json=admin.creds(network="lan", router="r2"))
    assert r.status_code == 200, r.json
    assert r.json["network"]["router"] == "r2"
    assert store.get(Network, net["uuid"]).value.router == "r2"
    # Users see who routes their networks.
    own = make_network(client, alice, "own")
    assert own["router"] == ""
    listed = client.get("/network/list", json=admin.creds()).json["networks"]
    assert {n["name"]: n["router"] for n in listed} == {"lan": "r2", "own": ""}


def test_a_deletion_racing_a_router_change_is_retried_not_refused(client, alice, store):
    net = make_network(client, alice, "lan")
    stale = store.get(Network, net["uuid"])
    # The scheduler writes the network meanwhile (its router, or why it has none).
    store.update(Network, net["uuid"], lambda n: setattr(n, "router_reason", "no host"))
    marked = ports.lock_for_deletion(store, stale)
    assert marked.value.deleting and marked.value.router_reason == "no host"
    assert store.get(Network, net["uuid"]).mod_revision == marked.mod_revision
