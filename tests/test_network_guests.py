"""Real guests on the multi-host bed: two VMs on two hosts on one network reach each other
over IPv6 and IPv4, a VM of another user on another network (with the same IPv4 subnet)
reaches neither, the guests learn the network's MTU and a full-size packet crosses hosts, a
VM whose host agent is killed runs again on the other host, reachable, while its old copy
reaches no one; the network's router gives them their addresses (RA, DHCP), and when its
host dies the scheduler's next router does. The guests report on their serial consoles
through #! user-data (the busybox Linux guest runs it at first boot)."""

from __future__ import annotations

import ipaddress
import json
import re
import signal
import time
from pathlib import Path

import pytest

from tests.bed import Bed, BedCluster, BedHost, bed_host, link, make_guest, make_network
from tests.servers import wait_for
from ucloud.models import VM, Host, HostStatus, Network, Status

# Configure eth0 from what the guest knows: its MAC gives its IPv6 address (EUI-64, as the
# port's), IPv4 is given; then ping each TARGET (address:tries) and say whether it answered;
# then the optional parts: {full} (full-size packets), {watch} (pings for ever).
USER_DATA = """#!/bin/sh
{again}PREFIX={prefix}
set -- $(tr ':' ' ' < /sys/class/net/eth0/address)
IID=$(printf '%x:%x:%x:%x' $(( (0x$1 ^ 2) * 256 + 0x$2 )) $(( 0x$3 * 256 + 0xff )) \\
  $(( 0xfe * 256 + 0x$4 )) $(( 0x$5 * 256 + 0x$6 )))
ip link set eth0 up
ip -6 addr add $PREFIX:$IID/64 dev eth0
ip -4 addr add {ipv4}/24 dev eth0
echo "UCLOUD-NET-UP mtu=$(cat /sys/class/net/eth0/mtu) ipv6=$PREFIX:$IID"
sleep 2
for t in {targets}; do
  addr=${{t%:*}}; tries=${{t##*:}}; ok=no; i=0
  case $addr in *-*) addr=$(echo $addr | tr - :);; esac
  while [ $i -lt $tries ]; do
    if ping -c 1 -W 1 $addr >/dev/null 2>&1; then ok=yes; break; fi
    i=$((i+1))
  done
  echo "UCLOUD-PING $addr $ok"
done
{full}{watch}"""

# Every boot is a first boot: the mark of the first boot goes from the VM's disk, so a copy
# of this VM started on another host runs this script again (and configures its addresses).
AGAIN = """mkdir -p /mnt
(sleep 3; mount -t vfat /dev/vda1 /mnt && rm -f /mnt/INSTANCE.ID; umount /mnt; sync) &
"""

# Full-size packets with "don't fragment" (Linux sets DF on an IPv4 packet that fits the path
# MTU; IPv6 is never fragmented on its way), then one byte more than the NIC takes.
FULL = """M=$(cat /sys/class/net/eth0/mtu)
full() {{ if ping -c 3 -W 2 "$@" >/dev/null 2>&1; then echo yes; else echo no; fi; }}
echo "UCLOUD-FULL ipv4=$(full -s $((M - 28)) {peer4}) ipv6=$(full -s $((M - 48)) {peer6})"
if ip link set eth0 mtu $((M + 1)) 2>/dev/null; then
  echo "UCLOUD-ONE-MORE $(full -s $((M - 27)) {peer4})"; ip link set eth0 mtu $M
else
  echo "UCLOUD-MTU-MAX $M"
fi
"""

# Pings PEER for ever, about once a second; says when it stops or starts answering, with the
# number of pings lost meanwhile.
WATCH_PEER = """lost=0; state=x
while true; do
  if ping -c 1 -W 1 {peer} >/dev/null 2>&1; then
    [ $state != yes ] && echo "UCLOUD-REACH yes lost=$lost"
    state=yes; lost=0; sleep 1
  else
    [ $state = yes ] && echo "UCLOUD-REACH no"
    state=no; lost=$((lost + 1))
  fi
done
"""


def user_data(
    network: dict,
    ipv4: str,
    targets: list[tuple[str, int]],
    full: tuple[str, str] | None = None,
    watch: str = "",
    every_boot: bool = False,
) -> str:
    """The script above; ``full``: (IPv4, IPv6) of the peer for full-size packets; ``watch``:
    the address to ping for ever; ``every_boot``: run again in a copy started elsewhere."""
    prefix = ipaddress.IPv6Network(network["ipv6_prefix"]).network_address.exploded[:19]
    # ':' separates address and tries: IPv6 addresses travel with '-' instead.
    items = " ".join(f"{a.replace(':', '-')}:{n}" for a, n in targets)
    return USER_DATA.format(
        again=AGAIN if every_boot else "",
        prefix=prefix,
        ipv4=ipv4,
        targets=items or "",
        full=FULL.format(peer4=full[0], peer6=full[1]) if full else "",
        watch=WATCH_PEER.format(peer=watch) if watch else "",
    )


def ping_results(text: str) -> dict[str, str]:
    return dict(re.findall(r"UCLOUD-PING (\S+) (yes|no)", text))


def rx_packets(host: BedHost, device: str) -> int:
    (found,) = json.loads(host.run("ip", "-s", "-j", "link", "show", "dev", device))
    return int(found["stats64"]["rx"]["packets"])


def vxlan_drops(host: BedHost) -> int:
    """What the host's VXLAN peer filter dropped since its rules were last written."""
    rules = host.run("nft", "list", "chain", "inet", "ucloud", "input")
    found = re.search(r"@vxlan_peers counter packets (\d+)", rules)
    assert found is not None, rules
    return int(found.group(1))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_guests_on_two_hosts_reach_each_other_and_no_one_else(bed: Bed, bed_cluster: BedCluster):

    c = bed_cluster
    lan = make_network(c, "alice", "lan", ipv4="10.30.0.0/24")
    bobnet = make_network(c, "bob", "bobnet", ipv4="10.30.0.0/24")
    # b answers and pings a (10.30.0.3) for ever; a (created next: the lowest free
    # addresses) pings b over IPv6 and IPv4, sends full-size packets, then pings b for ever.
    b = make_guest(c, "alice", "b", lan, user_data(lan, "10.30.0.2", [], watch="10.30.0.3"))
    assert b.ports[0].ipv4 == "10.30.0.2"
    b6 = b.ports[0].ipv6
    script = user_data(
        lan,
        "10.30.0.3",
        [(b6, 90), ("10.30.0.2", 30)],
        full=("10.30.0.2", b6),
        watch="10.30.0.2",
        every_boot=True,
    )
    a = make_guest(c, "alice", "a", lan, script)
    assert a.ports[0].ipv4 == "10.30.0.3"
    # Bob's VM on his network, the same subnet: it pings alice's VMs, which must not answer.
    bob_vm = make_guest(c, "bob", "c", bobnet, user_data(bobnet, "10.30.0.2", [("10.30.0.3", 8)]))

    def running() -> list[VM] | None:
        vms = [c.store.get(VM, v.uuid).value for v in (a, b, bob_vm)]
        assert not [v.reason for v in vms if v.status == Status.ERROR]
        return vms if all(v.status == Status.RUNNING for v in vms) else None

    a, b, bob_vm = wait_for(running, 180, "the three guests to run")
    assert a.hostname != b.hostname  # spread over the two hosts: traffic crosses VXLAN

    done = wait_for(
        lambda: "UCLOUD-FULL" in (t := c.console(a)) and "UCLOUD-REACH" in t and t,
        240,
        f"guest a to report its pings (console: {c.console(a)[-2000:]})",
        interval=1,
    )
    assert ping_results(done) == {b6: "yes", "10.30.0.2": "yes"}, done
    # The guest learned the network's MTU from its NIC; full-size packets cross hosts, and
    # the NIC takes nothing bigger (or, if it did, one byte more would not cross).
    mtu = c.store.get(Network, lan["uuid"]).value.mtu
    up = re.search(r"UCLOUD-NET-UP mtu=(\d+) ipv6=(\S+)", done)
    assert up is not None, done
    assert int(up.group(1)) == mtu
    assert ipaddress.IPv6Address(up.group(2)) == ipaddress.IPv6Address(a.ports[0].ipv6)
    assert "UCLOUD-FULL ipv4=yes ipv6=yes" in done, done
    assert f"UCLOUD-MTU-MAX {mtu}" in done or "UCLOUD-ONE-MORE no" in done, done
    # Bob's VM, on the same hosts with the same subnet, reached none of alice's.
    other = wait_for(
        lambda: len(ping_results(t := c.console(bob_vm))) == 1 and t,
        240,
        "bob's guest to report",
        interval=1,
    )
    assert ping_results(other) == {"10.30.0.3": "no"}, other

    # a's host agent SIGKILLed, its QEMU going on: a runs again on b's host, with the same
    # MAC and addresses, and b reaches it again; the old copy (pinging b for ever) reaches
    # no one.
    old, new = bed_host(bed, a.hostname), bed_host(bed, b.hostname)
    wait_for(lambda: "UCLOUD-REACH yes" in c.console(b), 120, "b to reach a", interval=1)
    before = len(c.console(b))
    c.agents[old.name].stop(signal.SIGKILL)
    dead = lambda: c.store.get(Host, old.name).value.status == HostStatus.DEAD  # noqa: E731
    wait_for(dead, 60, f"{old.name} to be DEAD")

    def moved() -> VM | None:
        vm = c.store.get(VM, a.uuid).value
        return vm if vm.hostname == new.name and vm.status == Status.RUNNING else None

    again = wait_for(moved, 120, f"a to run on {new.name}")
    assert again.ports == a.ports  # the same MAC and addresses
    assert f"ucloud-{a.uuid}" in old.libvirtd.virsh("list", "--name")  # the old copy runs
    wait_for(
        lambda: "UCLOUD-REACH yes" in c.console(again),
        240,
        f"the new copy of a to reach b (console: {c.console(again)[-1500:]})",
        interval=1,
    )
    back = wait_for(
        lambda: re.findall(r"UCLOUD-REACH yes lost=(\d+)", c.console(b)[before:]),
        120,
        f"b to reach a again (console: {c.console(b)[-1500:]})",
        interval=1,
    )
    print(f"b's pings of a lost while a moved: {max(map(int, back))} (each outage: {back})")
    wait_for(running, 180, "every guest to run again")  # bob's, if it was on the dead host
    # The old copy still sends (to b: its MAC learned behind the VXLAN device of its host);
    # b's host drops all of it: its VXLAN device receives nothing, its peer filter counts.
    vni = lan["vni"]
    received = rx_packets(new, f"ucvx{vni}")
    time.sleep(10)
    assert rx_packets(new, f"ucvx{vni}") == received
    dropped = vxlan_drops(new)
    print(f"VXLAN packets from the dead host dropped on {new.name}: {dropped}")
    assert dropped > 0

    # The agent back: it destroys the old copy (and any other of its VMs moved meanwhile).
    c.start_agent(old)
    wait_for(
        lambda: f"ucloud-{a.uuid}" not in old.libvirtd.virsh("list", "--name"),
        60,
        "the old copy to be destroyed",
    )


# Keeps every NIC configured (IPv6 from its MAC) and says when its NICs or its reach of PEER
# change: a NIC hot-plugged or unplugged shows up here.
WATCH = """#!/bin/sh
PREFIX={prefix}
PEER={peer}
iid() {{
  set -- $(tr ':' ' ' < /sys/class/net/$1/address)
  printf '%x:%x:%x:%x' $(( (0x$1 ^ 2) * 256 + 0x$2 )) $(( 0x$3 * 256 + 0xff )) \\
    $(( 0xfe * 256 + 0x$4 )) $(( 0x$5 * 256 + 0x$6 ))
}}
last=x; reach=x
while true; do
  nics=$(ls /sys/class/net | grep -v '^lo$' | tr '\\n' ' ')
  for n in $nics; do
    ip -6 addr show dev $n | grep -q "$PREFIX:" || {{
      ip link set $n up; ip -6 addr add $PREFIX:$(iid $n)/64 dev $n; }}
  done
  [ "$nics" != "$last" ] && echo "UCLOUD-NICS [$nics]" && last=$nics
  if ping -c 1 -W 1 $PEER >/dev/null 2>&1; then r=yes; else r=no; fi
  [ "$r" != "$reach" ] && echo "UCLOUD-REACH $r" && reach=$r
  sleep 1
done
"""


def short_prefix(network: dict) -> str:
    """The /64's four groups as ``ip`` prints them (no leading zeros)."""
    groups = ipaddress.IPv6Network(network["ipv6_prefix"]).network_address.exploded.split(":")
    return ":".join(f"{int(g, 16):x}" for g in groups[:4])


@pytest.mark.slow
def test_detach_and_attach_on_a_running_guest(bed: Bed, bed_cluster: BedCluster):
    c = bed_cluster
    lan = make_network(c, "alice", "lan")
    b = make_guest(c, "alice", "b", lan, user_data(lan, "10.0.0.2", []))
    script = WATCH.format(prefix=short_prefix(lan), peer=b.ports[0].ipv6)
    a = make_guest(c, "alice", "a", lan, script)

    def running() -> list[VM] | None:
        vms = [c.store.get(VM, v.uuid).value for v in (a, b)]
        return vms if all(v.status == Status.RUNNING for v in vms) else None

    a, b = wait_for(running, 180, "the guests to run")
    assert a.hostname != b.hostname
    console = lambda: c.console(a)  # noqa: E731
    wait_for(lambda: "UCLOUD-REACH yes" in console(), 240, "a to reach b", interval=1)
    host_a = bed_host(bed, a.hostname)
    vni = lan["vni"]

    creds = c.users["alice"].creds
    r = c.client.post("/vm/network/detach", json=creds(vmid=a.uuid, network=lan["uuid"]))
    assert r.status_code == 202, r.json
    wait_for(lambda: "UCLOUD-NICS []" in console(), 60, "the guest to lose its NIC", interval=1)
    # Nothing is left on a's host: it had the network's only VM there.
    wait_for(lambda: link(host_a, f"ucbr{vni}") is None, 30, "a's host to drop the bridge")
    assert link(host_a, f"ucvx{vni}") is None
    assert "<interface" not in host_a.libvirtd.virsh("dumpxml", f"ucloud-{a.uuid}")

    r = c.client.post("/vm/network/attach", json=creds(vmid=a.uuid, network=lan["uuid"]))
    assert r.status_code == 202, r.json
    wait_for(
        lambda: console().count("UCLOUD-REACH yes") == 2,
        120,
        f"connectivity to return (console: {console()[-1500:]})",
        interval=1,
    )

    # Alice deleted with all she owns: her VMs go from their hosts, then the network they were
    # on (the scheduler deletes it after its last VM), and its bridges with them.
    body = c.users["root"].creds(user="alice", user_realm="users", delete_owned=True)
    r = c.client.post("/user/delete", json=body)
    assert r.status_code == 202, r.json
    assert (r.json["deleting"]["vms"], r.json["deleting"]["networks"]) == (2, 1)
    gone = lambda: all(c.store.get(VM, v.uuid) is None for v in (a, b))  # noqa: E731
    wait_for(gone, 120, "alice's VMs to be deleted")
    wait_for(lambda: c.store.get(Network, lan["uuid"]) is None, 30, "her network to be deleted")
    for name in (a.hostname, b.hostname):
        host = bed_host(bed, name)
        wait_for(lambda h=host: link(h, f"ucbr{vni}") is None, 30, f"{name} to drop the bridge")


# Sends from its own addresses, then from ones that are not its own: report each.
SPOOF = """#!/bin/sh
PREFIX={prefix}
set -- $(tr ':' ' ' < /sys/class/net/eth0/address)
IID=$(printf '%x:%x:%x:%x' $(( (0x$1 ^ 2) * 256 + 0x$2 )) $(( 0x$3 * 256 + 0xff )) \\
  $(( 0xfe * 256 + 0x$4 )) $(( 0x$5 * 256 + 0x$6 )))
ip link set eth0 up
ip -6 addr add $PREFIX:$IID/64 dev eth0
ip -4 addr add {ipv4}/24 dev eth0
try() {{  # NAME, then ping's arguments
  name=$1; shift; ok=no; i=0
  while [ $i -lt $TRIES ]; do
    if ping -c 1 -W 1 "$@" >/dev/null 2>&1; then ok=yes; break; fi
    i=$((i+1))
  done
  echo "UCLOUD-SEND $name $ok"
}}
sleep 2
TRIES=90; try own6 {peer6}; try own4 {peer4}
TRIES=5
ip -6 addr add $PREFIX::bad/64 dev eth0 nodad 2>/dev/null || ip -6 addr add $PREFIX::bad/64 dev eth0
sleep 2
try other6 -I $PREFIX::bad {peer6}
ip -4 addr add {other4}/24 dev eth0
try other4 -I {other4} {peer4}
ip -4 addr del {ipv4}/24 dev eth0
ip link set eth0 down; ip link set eth0 address 52:54:00:de:ad:01; ip link set eth0 up
ip -4 addr add {ipv4}/24 dev eth0
sleep 2
try othermac {peer4}
echo "UCLOUD-SPOOF-DONE"
"""


@pytest.mark.slow
def test_a_vm_on_a_shared_network_cannot_send_from_another_address(
    bed: Bed, bed_cluster: BedCluster
):
    c = bed_cluster
    public = make_network(c, "root", "public", ipv4="10.50.0.0/24", shared=True)
    b = make_guest(c, "bob", "b", public, user_data(public, "10.50.0.2", []))
    assert b.ports[0].ipv4 == "10.50.0.2"
    script = SPOOF.format(
        prefix=short_prefix(public),
        ipv4="10.50.0.3",
        other4="10.50.0.99",
        peer4="10.50.0.2",
        peer6=b.ports[0].ipv6,
    )
    a = make_guest(c, "alice", "a", public, script)
    assert a.ports[0].ipv4 == "10.50.0.3"

    def running() -> list[VM] | None:
        vms = [c.store.get(VM, v.uuid).value for v in (a, b)]
        return vms if all(v.status == Status.RUNNING for v in vms) else None

    a, b = wait_for(running, 180, "the guests to run")
    text = wait_for(
        lambda: "UCLOUD-SPOOF-DONE" in (t := c.console(a)) and t,
        300,
        f"the guest to report (console: {c.console(a)[-1500:]})",
        interval=1,
    )
    sent = dict(re.findall(r"UCLOUD-SEND (\S+) (yes|no)", text))
    assert sent == {
        "own6": "yes",
        "own4": "yes",
        "other6": "no",
        "other4": "no",
        "othermac": "no",
    }, text


# Asks the network for its addresses: DHCPv4 (udhcpc) and SLAAC from router advertisements;
# then, every 3 s, asks for a lease again, pings both gateways and lists its IPv6 default
# routes (each via the link-local address of a router that advertised itself), on one line.
AUTOCONF = """#!/bin/sh
cat > /tmp/dhcp.sh <<'EOS'
#!/bin/sh
[ "$1" = bound ] && ip addr add $ip/$mask dev $interface && \
  echo "UCLOUD-DHCP $ip mtu=$mtu" > /dev/console
exit 0
EOS
cat > /tmp/lease.sh <<'EOS'
#!/bin/sh
[ "$1" = bound ] && echo $ip > /tmp/lease
exit 0
EOS
chmod +x /tmp/dhcp.sh /tmp/lease.sh
ip link set eth0 up
udhcpc -i eth0 -s /tmp/dhcp.sh -q -n -t 30 -T 2 -O mtu >/dev/null 2>&1 || echo "UCLOUD-DHCP none"
i=0
while [ $i -lt 60 ]; do
  a=$(ip -6 addr show dev eth0 scope global | sed -n 's/.*inet6 \\([^/]*\\).*/\\1/p' | head -n 1)
  [ -n "$a" ] && break
  sleep 1; i=$((i+1))
done
echo "UCLOUD-SLAAC ${{a:-none}} ra-mtu=$(cat /proc/sys/net/ipv6/conf/eth0/mtu)"
for t in {gw6} {gw4}; do
  ok=no; i=0
  while [ $i -lt 20 ]; do
    if ping -c 1 -W 1 $t >/dev/null 2>&1; then ok=yes; break; fi
    i=$((i+1))
  done
  echo "UCLOUD-GW $t $ok"
done
n=0
while true; do
  sleep 3; n=$((n+1)); rm -f /tmp/lease
  udhcpc -i eth0 -s /tmp/lease.sh -q -n -t 2 -T 1 >/dev/null 2>&1
  g6=no; ping -c 1 -W 1 {gw6} >/dev/null 2>&1 && g6=yes
  g4=no; ping -c 1 -W 1 {gw4} >/dev/null 2>&1 && g4=yes
  ra=$(ip -6 route | sed -n 's/^default via \\([^ ]*\\).*/\\1/p' | tr '\\n' ,)
  echo "UCLOUD-ROUND $n lease=$(cat /tmp/lease 2>/dev/null || echo none) gw6=$g6 gw4=$g4 ra=$ra"
done
"""


def rounds(text: str) -> list[dict[str, str]]:
    """The guest's whole round lines (AUTOCONF), each as its fields."""
    found = re.findall(r"UCLOUD-ROUND \d+ (lease=\S+ gw6=\S+ gw4=\S+ ra=\S*)\r?\n", text)
    return [dict(f.split("=", 1) for f in line.split()) for line in found]


def link_local(host: BedHost, device: str) -> str:
    """The device's IPv6 link-local address in the host's namespace ("" if none)."""
    found = json.loads(host.run("ip", "-j", "-6", "addr", "show", "dev", device, "scope", "link"))
    addrs = [a["local"] for d in found for a in d.get("addr_info", []) if "local" in a]
    return addrs[0] if addrs else ""


@pytest.mark.slow
@pytest.mark.host_settings(network_router=True)  # both may route: the scheduler chooses one
def test_the_router_gives_addresses_by_ra_and_dhcp_and_another_takes_over_when_it_dies(
    bed: Bed, bed_cluster: BedCluster
):
    c = bed_cluster
    offering = lambda: all(c.store.get(Host, h.name).value.router for h in bed.hosts)  # noqa: E731
    wait_for(offering, 60, "both hosts to offer to route")
    lan = make_network(c, "alice", "lan", ipv4="10.60.0.0/24", mtu=1400)
    routed = lambda: c.store.get(Network, lan["uuid"]).value.router  # noqa: E731
    router = wait_for(routed, 30, "the scheduler to choose the network's router")
    gw6 = str(ipaddress.IPv6Network(lan["ipv6_prefix"]).network_address + 1)
    script = AUTOCONF.format(gw6=gw6, gw4="10.60.0.1")
    vms = [make_guest(c, "alice", name, lan, script) for name in ("a", "b")]

    def running() -> list[VM] | None:
        found = [c.store.get(VM, v.uuid).value for v in vms]
        return found if all(v.status == Status.RUNNING for v in found) else None

    vms = wait_for(running, 180, "the guests to run")
    assert {v.hostname for v in vms} == {"h1", "h2"}  # one behind VXLAN from its router
    for vm in vms:
        text = wait_for(
            lambda vm=vm: (t := c.console(vm)).count("UCLOUD-GW ") == 2 and t,
            240,
            f"guest {vm.name} to report (console: {c.console(vm)[-1500:]})",
            interval=1,
        )
        port = vm.ports[0]
        assert f"UCLOUD-DHCP {port.ipv4} mtu=1400" in text, text
        slaac = re.search(r"UCLOUD-SLAAC (\S+) ra-mtu=(\d+)", text)
        assert slaac is not None, text
        assert ipaddress.IPv6Address(slaac.group(1)) == ipaddress.IPv6Address(port.ipv6)
        assert slaac.group(2) == "1400"
        assert f"UCLOUD-GW {gw6} yes" in text and "UCLOUD-GW 10.60.0.1 yes" in text, text

    # The router's agent is SIGKILLed: its dnsmasq, addresses and devices stay, cut off once
    # the host is DEAD; the other host becomes the router, and its guest (the one not on the
    # dead host) gets its lease and router advertisements from it and reaches the gateways.
    dead = bed_host(bed, router)
    other = next(h for h in bed.hosts if h is not dead)
    guest = next(v for v in vms if v.hostname == other.name)
    vni = lan["vni"]
    c.agents[dead.name].stop(signal.SIGKILL)
    wait_for(lambda: routed() == other.name, 60, f"{other.name} to become the router")
    assert c.store.get(Host, dead.name).value.status == HostStatus.DEAD
    assert list((Path(c.hosts[dead.name].state_dir) / "gateway").glob("*/dnsmasq.pid"))

    def cut_off() -> bool:
        # Both go in one pass of the agent's network thread, one after the other.
        fdb = json.loads(other.run("bridge", "-j", "fdb", "show", "dev", f"ucvx{vni}"))
        rules = other.run("nft", "list", "table", "inet", "ucloud")
        return not [e for e in fdb if e.get("dst") == dead.underlay] and dead.underlay not in rules

    wait_for(cut_off, 30, f"{other.name} to stop sending to and taking from {dead.name}")
    seen = len(c.console(guest))  # from here on, only the new router can answer

    def served_again() -> dict[str, str] | None:
        new_router = link_local(other, f"ucbr{vni}")
        for r in rounds(c.console(guest)[seen:]):
            if (r["lease"], r["gw6"], r["gw4"]) == (guest.ports[0].ipv4, "yes", "yes") and (
                new_router and new_router in r["ra"].split(",")
            ):
                return r
        return None

    wait_for(
        served_again,
        180,
        f"the guest to be served by {other.name} (console: {c.console(guest)[-1500:]})",
        interval=1,
    )

    # The dead host's agent back: it routes nothing any more, so its dnsmasq stops, and its
    # bridge (no VM of the network is left there: it runs on the other host now) goes.
    c.start_agent(dead)
    wait_for(
        lambda: not (Path(c.hosts[dead.name].state_dir) / "gateway" / str(vni)).exists(),
        60,
        f"{dead.name} to stop its dnsmasq",
    )
    wait_for(lambda: link(dead, f"ucbr{vni}") is None, 60, f"{dead.name} to drop the bridge")
    assert routed() == other.name
