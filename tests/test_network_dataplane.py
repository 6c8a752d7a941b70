"""The data plane on the multi-host bed: bridges and unicast VXLAN devices that the host
agents make for the networks of their VMs, the VMs' NICs on them, traffic between hosts and
isolation between networks, and removal with the last VM.

Traffic is checked between stand-in endpoints: a namespace per endpoint, made by the test,
with a veth whose other end is put on the bridge the agent made (the Linux guests' own test,
with user-data, is in test_network_guests.py)."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator

import pytest

from tests.bed import Bed, BedCluster, BedHost, StandIns, bed_host, ip_json, link, make_network
from tests.servers import wait_for
from ucloud.models import VM, Host, HostStatus, Status

SPECS = {"cpu": 1, "ram": 0.125, "ssd": 1}


@pytest.fixture
def stand_ins() -> Iterator[StandIns]:
    s = StandIns()
    yield s
    s.remove_all()


def make_vm(c: BedCluster, user: str, name: str, *networks: str) -> str:
    body = c.users[user].creds(vm_name=name, specs=SPECS, image=c.image, networks=list(networks))
    r = c.client.post("/vm/create", json=body)
    assert r.status_code == 202, r.json
    return r.json["uuid"]


def wait_running(c: BedCluster, *uuids: str) -> list[VM]:
    def running() -> list[VM] | None:
        vms = [c.store.get(VM, u).value for u in uuids]
        assert not [v for v in vms if v.status == Status.ERROR], [v.reason for v in vms]
        return vms if all(v.status == Status.RUNNING for v in vms) else None

    return wait_for(running, 120, f"VMs {uuids} to run")


def test_two_hosts_one_network_then_isolation_and_teardown(
    bed: Bed, bed_cluster: BedCluster, stand_ins: StandIns
):
    c = bed_cluster
    net = make_network(c, "alice", "lan", ipv4="10.20.0.0/24")
    other = make_network(c, "bob", "other", ipv4="10.20.0.0/24")  # the same subnet: isolated
    vni, mtu = net["vni"], net["mtu"]
    vms = wait_running(c, make_vm(c, "alice", "a", "lan"), make_vm(c, "alice", "b", "lan"))
    assert {v.hostname for v in vms} == {"h1", "h2"}  # spread: one VM on each host
    h1, h2 = bed_host(bed, "h1"), bed_host(bed, "h2")
    for vm in vms:
        me = bed_host(bed, vm.hostname)
        peer = h2 if me is h1 else h1
        br, vx = link(me, f"ucbr{vni}"), link(me, f"ucvx{vni}")
        assert br is not None and vx is not None, me.run("ip", "-br", "link")
        assert br["mtu"] == mtu and vx["mtu"] == mtu
        assert br["linkinfo"]["info_data"]["mcast_snooping"] == 0
        data = vx["linkinfo"]["info_data"]
        assert (data["id"], data["local"], data["port"]) == (vni, me.underlay, 4789)
        assert vx["master"] == f"ucbr{vni}"
        fdb = json.loads(me.run("bridge", "-j", "fdb", "show", "dev", f"ucvx{vni}"))
        flood = {e.get("dst") for e in fdb if e["mac"] == "00:00:00:00:00:00"}
        assert flood == {peer.underlay}
        # The VM's NIC: its MAC in the domain, its tap on the bridge, with the MTU.
        xml = me.libvirtd.virsh("dumpxml", f"ucloud-{vm.uuid}")
        assert vm.ports[0].mac in xml
        taps = [x for x in ip_json(me, "link", "show", "master", f"ucbr{vni}")]
        tap = next(x for x in taps if x["ifname"] != f"ucvx{vni}")
        assert tap["mtu"] == mtu
        # The host has no address on its tenants' network.
        assert not [a for a in ip_json(me, "addr", "show", "dev", f"ucbr{vni}")[0]["addr_info"]]
        # Each host publishes what it holds.
        host = c.store.get(Host, me.name).value
        assert host.underlay == me.underlay and host.networks == [net["uuid"]]

    prefix = net["ipv6_prefix"].split("/")[0]
    s1 = stand_ins.add(h1, f"ucbr{vni}", f"{prefix}a1/64", mtu)
    s2 = stand_ins.add(h2, f"ucbr{vni}", f"{prefix}a2/64", mtu)
    stand_ins.add(h1, f"ucbr{vni}", "10.20.0.201/24", mtu)
    s4 = stand_ins.add(h2, f"ucbr{vni}", "10.20.0.202/24", mtu)
    assert wait_for(lambda: s1.ping(s2.address), 20, "IPv6 across hosts over VXLAN")
    assert stand_ins.made[2].ping(s4.address), "IPv4 across hosts"
    # A full-size packet with "don't fragment" crosses: the MTU fits the underlay.
    assert s1.ping(s2.address, size=mtu - 48, df=True)

    # Another network (bob's, the same IPv4 subnet) on the same hosts reaches nothing here.
    o = wait_running(c, make_vm(c, "bob", "o", "other"))[0]
    ovni = other["vni"]
    oh = bed_host(bed, o.hostname)
    so = stand_ins.add(oh, f"ucbr{ovni}", "10.20.0.203/24", other["mtu"])
    assert not so.ping(s4.address, count=2)
    assert not so.ping("10.20.0.201", count=2)

    # Deleting a network with VMs: 409 naming them, nothing changed.
    r = c.client.post("/network/delete", json=c.users["alice"].creds(network=net["uuid"]))
    assert r.status_code == 409 and all(v.uuid in r.json["error"] for v in vms)
    assert link(h1, f"ucbr{vni}") is not None

    # The last VM of a network leaving a host removes its bridge and VXLAN device there.
    stand_ins.remove_all()
    gone = next(v for v in vms if v.hostname == o.hostname)
    r = c.client.post("/vm/delete", json=c.users["alice"].creds(vmid=gone.uuid))
    assert r.status_code == 202
    wait_for(lambda: link(oh, f"ucbr{vni}") is None, 30, "the bridge to go with the last VM")
    assert link(oh, f"ucvx{vni}") is None
    assert link(oh, f"ucbr{ovni}") is not None  # bob's network stays
    # The other host stops sending there.
    stay = h2 if oh is h1 else h1

    def flood_targets() -> set[str]:
        fdb = json.loads(stay.run("bridge", "-j", "fdb", "show", "dev", f"ucvx{vni}"))
        return {e.get("dst") for e in fdb if e["mac"] == "00:00:00:00:00:00"}

    wait_for(lambda: flood_targets() == set(), 30, "the peer's forwarding entry to go")


# A restart must never pass for a death here: an agent that takes longer than the bed's 6 s
# lease to start again on a loaded machine would have its host fenced, and the ping cut.
@pytest.mark.host_settings(host_lease_ttl=30)
def test_an_agent_restart_changes_nothing_that_works(
    bed: Bed, bed_cluster: BedCluster, stand_ins: StandIns
):
    c = bed_cluster
    net = make_network(c, "alice", "lan")
    vni, mtu = net["vni"], net["mtu"]
    wait_running(c, make_vm(c, "alice", "a", "lan"), make_vm(c, "alice", "b", "lan"))
    h1, h2 = bed.hosts
    prefix = net["ipv6_prefix"].split("/")[0]
    s1 = stand_ins.add(h1, f"ucbr{vni}", f"{prefix}b1/64", mtu)
    s2 = stand_ins.add(h2, f"ucbr{vni}", f"{prefix}b2/64", mtu)
    assert wait_for(lambda: s1.ping(s2.address), 20, "IPv6 across hosts")
    before = {
        h.name: (link(h, f"ucbr{vni}")["ifindex"], link(h, f"ucvx{vni}")["ifindex"])
        for h in bed.hosts
    }
    since = c.store.get(Host, "h1").value.status_since
    # A ping runs through the restart of h1's agent; count the lost replies.
    ping = subprocess.Popen(
        ["ip", "netns", "exec", s1.ns, "ping", "-c", "40", "-i", "0.2", s2.address],
        stdout=subprocess.PIPE,
        text=True,
    )
    c.agents["h1"].stop()
    c.start_agent(h1)
    out, _ = ping.communicate(timeout=60)
    assert " 0% packet loss" in out, out
    wait_for(lambda: "is up" in c.agent_log("h1").read_text(), 30, "the agent to be back")
    after = {
        h.name: (link(h, f"ucbr{vni}")["ifindex"], link(h, f"ucvx{vni}")["ifindex"])
        for h in bed.hosts
    }
    assert after == before  # the same devices: nothing was made again
    assert c.store.get(Host, "h1").value.status_since == since  # never taken for dead


def test_a_dead_host_is_cut_off_from_its_networks(
    bed: Bed, bed_cluster: BedCluster, stand_ins: StandIns
):
    """Its agent SIGKILLed, a host's QEMUs and devices stay; once it is DEAD no other host
    sends it the network's frames or accepts its VXLAN packets, so the old copy of a VM that
    runs again elsewhere (same MAC, same addresses) reaches no one."""
    c = bed_cluster
    net = make_network(c, "alice", "lan")
    vni, mtu = net["vni"], net["mtu"]
    vms = wait_running(c, make_vm(c, "alice", "a", "lan"), make_vm(c, "alice", "b", "lan"))
    h1, h2 = bed.hosts
    on_h1 = next(v for v in vms if v.hostname == "h1")
    prefix = net["ipv6_prefix"].split("/")[0]
    s1 = stand_ins.add(h1, f"ucbr{vni}", f"{prefix}c1/64", mtu)
    s2 = stand_ins.add(h2, f"ucbr{vni}", f"{prefix}c2/64", mtu)
    assert wait_for(lambda: s1.ping(s2.address), 20, "IPv6 across hosts")

    c.agents["h1"].stop(signal.SIGKILL)
    wait_for(lambda: c.store.get(Host, "h1").value.status == HostStatus.DEAD, 30, "h1 to be DEAD")

    def moved_to_h2() -> VM | None:
        vm = c.store.get(VM, on_h1.uuid).value
        return vm if vm.hostname == "h2" and vm.status == Status.RUNNING else None

    moved = wait_for(moved_to_h2, 90, "the VM to run on h2")
    assert moved.ports == on_h1.ports  # the same MAC and addresses
    assert f"ucloud-{on_h1.uuid}" in h1.libvirtd.virsh("list", "--name")  # the old copy runs

    def cut_off() -> bool:
        fdb = json.loads(h2.run("bridge", "-j", "fdb", "show", "dev", f"ucvx{vni}"))
        return not [e for e in fdb if e.get("dst") == h1.underlay]

    wait_for(cut_off, 30, "h2 to forget h1")
    assert not s1.ping(s2.address, count=3)
    assert not s2.ping(s1.address, count=3)
    # h2 drops what h1 sends: its VXLAN peer filter counts it.
    rules = h2.run("nft", "list", "table", "inet", "ucloud")
    assert h1.underlay not in rules

    # The agent back: it removes the old copy, and publishes that it holds no network.
    c.start_agent(h1)
    wait_for(
        lambda: f"ucloud-{on_h1.uuid}" not in h1.libvirtd.virsh("list", "--name"),
        60,
        "the old copy to be destroyed",
    )
    wait_for(lambda: c.store.get(Host, "h1").value.status == HostStatus.UP, 30, "h1 UP")
    assert c.store.get(Host, "h1").value.networks == []


def vxlan_rx(host: BedHost, device: str) -> int:
    (found,) = json.loads(host.run("ip", "-s", "-j", "link", "show", "dev", device))
    return int(found["stats64"]["rx"]["packets"])


def test_a_peer_of_one_network_cannot_send_into_another(
    bed: Bed, bed_cluster: BedCluster, stand_ins: StandIns
):
    """A host that holds network X with us (a peer for X) makes a VXLAN device of its own with
    network Y's id toward us: nothing it sends reaches Y here, while its X traffic passes;
    once it holds Y too (a VM of Y placed there), its Y traffic passes as well."""
    c = bed_cluster
    x = make_network(c, "alice", "x")
    y = make_network(c, "bob", "y")
    wait_running(c, make_vm(c, "alice", "x1", "x"), make_vm(c, "alice", "x2", "x"))
    (y1,) = wait_running(c, make_vm(c, "bob", "y1", "y"))
    victim = bed_host(bed, y1.hostname)  # holds X and Y
    peer = next(h for h in bed.hosts if h is not victim)  # holds X only
    xp = x["ipv6_prefix"].split("/")[0]
    sx1 = stand_ins.add(victim, f"ucbr{x['vni']}", f"{xp}d1/64", x["mtu"])
    sx2 = stand_ins.add(peer, f"ucbr{x['vni']}", f"{xp}d2/64", x["mtu"])
    assert wait_for(lambda: sx1.ping(sx2.address), 20, "X across hosts")
    stand_ins.add(victim, f"ucbr{y['vni']}", "10.77.0.1/24", y["mtu"])

    # The forged device: Y's id, from the peer's underlay address, toward the victim.
    forged = f"ucfx{stand_ins.id}"
    peer.run(
        "ip", "link", "add", forged, "mtu", str(y["mtu"]), "type", "vxlan", "id", str(y["vni"]),
        "local", peer.underlay, "remote", victim.underlay, "dstport", "4789",
    )  # fmt: skip
    try:
        peer.run("ip", "addr", "add", "10.77.0.2/24", "dev", forged)
        peer.run("ip", "link", "set", forged, "up")
        received = vxlan_rx(victim, f"ucvx{y['vni']}")
        dropped_before = _dropped(victim)
        peer.run("ping", "-c", "3", "-W", "1", "10.77.0.1", check=False)
        assert vxlan_rx(victim, f"ucvx{y['vni']}") == received  # nothing reached Y's device
        assert _dropped(victim) > dropped_before  # the peer filter dropped what was sent
        assert sx2.ping(sx1.address)  # X from the same peer still passes
    finally:
        peer.run("ip", "link", "del", forged)

    # Y placed on the peer too: it is a peer of Y now, and Y's traffic passes.
    (y2,) = wait_running(c, make_vm(c, "bob", "y2", "y"))
    assert y2.hostname == peer.name
    sy2 = stand_ins.add(peer, f"ucbr{y['vni']}", "10.77.0.2/24", y["mtu"])
    assert wait_for(lambda: sy2.ping("10.77.0.1"), 30, "Y across hosts, from a peer of Y")


def _dropped(host: BedHost) -> int:
    rules = host.run("nft", "list", "chain", "inet", "ucloud", "input")
    return int(rules.split("@vxlan_peers counter packets ")[1].split()[0])
