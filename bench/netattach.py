"""Reaching a VM over a tenant network across two hosts of the test bed (tests/bed.py): the
time from `vm network attach` on a running guest, and from `vm create`, to the first ping
reply from an endpoint on the other host; beside the reference, the same bridge, VXLAN device
and forwarding entry made by hand with ``ip`` and ``bridge`` in the same run.

How it is measured: a boot-sector VM on the network holds it on one host (P), and a stand-in
endpoint there (a namespace with a veth on the network's bridge, as in the bed tests) pings
the guest's IPv6 address every 20 ms (iputils ``ping -D``: the first reply's own time stamp;
its neighbour solicitations every 20 ms too, not every second).
The guest (busybox Linux, TCG) runs on the other host (Q), so every reply crosses VXLAN.
- attach: the guest runs without NICs and configures any NIC that appears (its address from
  its MAC, no duplicate address detection) within 0.2 s. From the API call to the first
  reply: the port written, Q's agent making the network's bridge and VXLAN device (the guest
  is its only VM of it there), both hosts' peer lists, the NIC hot-plugged, the guest's
  kernel and script. Then detach, and wait until Q has removed the bridge again.
- create: the same with a new guest that has the network from the start: the figure is
  mostly the boot under TCG (15-25 s unloaded).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time

from bench.common import log, machine, record, table, workdir
from bench.netplane import hand_times
from tests.bed import (
    BedCluster,
    BedHost,
    StandIn,
    StandIns,
    bed_up,
    ceph_on,
    cluster_on,
    etcd_on,
    link,
)
from tests.servers import wait_for
from tests.stack import GUEST_DIR, SCRIPTS, Guests, run_script
from ucloud.models import VM, Status

# Configures every NIC that appears (IPv6 from its MAC, EUI-64 as the port's) and says so.
HOTPLUG = """#!/bin/sh
echo 0 > /proc/sys/net/ipv6/conf/default/accept_dad
PREFIX={prefix}
iid() {{
  set -- $(tr ':' ' ' < /sys/class/net/$1/address)
  printf '%x:%x:%x:%x' $(( (0x$1 ^ 2) * 256 + 0x$2 )) $(( 0x$3 * 256 + 0xff )) \\
    $(( 0xfe * 256 + 0x$4 )) $(( 0x$5 * 256 + 0x$6 ))
}}
echo UCLOUD-HOTPLUG-READY
while true; do
  for n in $(ls /sys/class/net | grep -v '^lo$'); do
    ip -6 addr show dev $n | grep -q "$PREFIX:" || {{
      echo 0 > /proc/sys/net/ipv6/conf/$n/accept_dad
      ip link set $n up; ip -6 addr add $PREFIX:$(iid $n)/64 dev $n
      echo "UCLOUD-NIC $n $PREFIX:$(iid $n)"; }}
  done
  sleep 0.2
done
"""


def p95(values: list[float]) -> float:
    return sorted(values)[max(0, round(0.95 * len(values)) - 1)]


def short_prefix(network: dict) -> str:
    import ipaddress

    groups = ipaddress.IPv6Network(network["ipv6_prefix"]).network_address.exploded.split(":")
    return ":".join(f"{int(g, 16):x}" for g in groups[:4])


def first_reply(pinger: StandIn, address: str, since: float, timeout: float) -> float:
    """Seconds from ``since`` (time.time()) to the first reply of ``address``."""
    # No -w: with a deadline, ping gives up at its first error (address unreachable while
    # the guest has no address yet); a timer stops it instead.
    argv = ["ip", "netns", "exec", pinger.ns, "ping", "-D", "-n", "-i", "0.02", address]
    ping = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    timer = threading.Timer(timeout, ping.kill)
    timer.start()
    try:
        assert ping.stdout is not None
        for line in ping.stdout:
            if " bytes from " in line:
                return float(line[1 : line.index("]")]) - since
        raise RuntimeError(f"no reply from {address} within {timeout} s")
    finally:
        timer.cancel()
        ping.kill()
        ping.wait()


def post(c: BedCluster, path: str, **body: object) -> dict:
    r = c.client.post(path, json=c.users["alice"].creds(**body))
    assert r.status_code in (200, 201, 202), (path, r.json)
    return r.json


def running(c: BedCluster, uuid: str, timeout: float = 300) -> VM:
    def check() -> VM | None:
        vm = c.store.get(VM, uuid).value
        assert vm.status != Status.ERROR, vm.reason
        return vm if vm.status == Status.RUNNING else None

    return wait_for(check, timeout, f"VM {uuid} to run", interval=0.2)


def gone(c: BedCluster, uuid: str) -> None:
    post(c, "/vm/delete", vmid=uuid)
    wait_for(lambda: c.store.get(VM, uuid) is None, 120, f"VM {uuid} to go", interval=0.5)


def measure(c: BedCluster, hosts: list[BedHost], attaches: int, creates: int) -> dict:
    lan = post(c, "/network/create", network_name="lan")["network"]
    vni, mtu = lan["vni"], lan["mtu"]
    specs = {"cpu": 1, "ram": 0.125, "ssd": 1}
    anchor = post(
        c, "/vm/create", vm_name="anchor", specs=specs, image=c.image, networks=[lan["uuid"]]
    )["uuid"]
    p_name = running(c, anchor).hostname
    p = next(h for h in hosts if h.name == p_name)
    q = next(h for h in hosts if h.name != p_name)
    stand_ins = StandIns()
    try:
        prefix = lan["ipv6_prefix"].split("/")[0]
        pinger = stand_ins.add(p, f"ucbr{vni}", f"{prefix}e1/64", mtu)
        # Neighbour solicitations every 20 ms, not every second: the figure is not rounded
        # up to the kernel's retransmission timer.
        sysctl = "net.ipv6.neigh.eth0.retrans_time_ms=20"
        subprocess.run(["ip", "netns", "exec", pinger.ns, "sysctl", "-qw", sysctl], check=True)
        script = HOTPLUG.format(prefix=short_prefix(lan))
        linux = {"cpu": 1, "ram": 0.25, "ssd": 1}

        def guest(name: str, networks: list[str]) -> dict:
            return post(
                c,
                "/vm/create",
                vm_name=name,
                specs=linux,
                image=c.linux_image,
                networks=networks,
                user_data=script,
            )

        g = running(c, guest("g", [])["uuid"])
        assert g.hostname == q.name, f"the guest went to {g.hostname}, not {q.name}"
        wait_for(
            lambda: "UCLOUD-HOTPLUG-READY" in c.console(g), 300, "the guest's script", interval=1
        )
        attach: list[float] = []
        for i in range(attaches):
            since = time.time()
            vm = post(c, "/vm/network/attach", vmid=g.uuid, network=lan["uuid"])["vm"]
            address = vm["ports"][0]["ipv6"]
            attach.append(first_reply(pinger, address, since, 120))
            log(f"attach {i + 1}/{attaches}: {attach[-1]:.2f} s")
            post(c, "/vm/network/detach", vmid=g.uuid, network=lan["uuid"])
            wait_for(lambda: link(q, f"ucbr{vni}") is None, 60, "Q to drop the bridge")
        gone(c, g.uuid)
        create: list[float] = []
        for i in range(creates):
            since = time.time()
            vm = guest(f"c{i}", [lan["uuid"]])
            address = vm["vm"]["ports"][0]["ipv6"]
            create.append(first_reply(pinger, address, since, 400))
            log(f"create {i + 1}/{creates}: {create[-1]:.2f} s")
            placed = c.store.get(VM, vm["uuid"]).value.hostname
            assert placed == q.name, f"created on {placed}, not {q.name}"
            gone(c, vm["uuid"])
    finally:
        stand_ins.remove_all()
    return {"attach": attach, "create": create}


def run(attaches: int, creates: int) -> str:
    run_script(str(SCRIPTS / "build-guests.sh"), str(GUEST_DIR), timeout=900)
    guests = Guests(GUEST_DIR / "bootsector.raw", GUEST_DIR / "linux.raw")
    with workdir("netattach") as d:
        for sub in ("bed", "etcd", "ceph", "cluster"):
            (d / sub).mkdir()
        with (
            bed_up(d / "bed") as bed,
            etcd_on(bed, d / "etcd") as etcd,
            ceph_on(bed, d / "ceph") as ceph,
            cluster_on(bed, etcd, ceph, guests, d / "cluster") as c,
        ):
            log("bed up: measuring")
            hand = hand_times(max(attaches, creates, 10))
            figures = measure(c, bed.hosts, attaches, creates)
    return report(figures, hand, attaches, creates)


def report(figures: dict, hand: list[float], attaches: int, creates: int) -> str:
    def s(values: list[float]) -> str:
        return f"{statistics.median(values):.2f} / {p95(values):.2f}"

    ref = f"{1000 * statistics.median(hand):.0f} ms / {1000 * p95(hand):.0f} ms"
    rows = [
        [f"`vm network attach` to first reply ({attaches} runs)", s(figures["attach"]), ref],
        [f"`vm create` to first reply ({creates} runs)", s(figures["create"]), ref],
    ]
    text = table(
        ["from", "ucloud s p50 / p95", "ref: bridge + VXLAN + fdb entry by hand, p50 / p95"], rows
    )
    raw = json.dumps({k: [round(v, 2) for v in vs] for k, vs in figures.items()})
    return text + f"\n\n- Each run, seconds: {raw}."


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.netattach", description=__doc__.splitlines()[0])
    parser.add_argument("--attaches", type=int, default=None, help="attach runs (8; quick 3)")
    parser.add_argument("--creates", type=int, default=None, help="create runs (3; quick 1)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--record", action="store_true", help="write the table to RESULTS.md")
    args = parser.parse_args(argv)
    attaches = args.attaches or (3 if args.quick else 8)
    creates = args.creates or (1 if args.quick else 3)
    log(f"machine: {machine()}")
    out = run(attaches, creates)
    print(out)
    if args.record:
        record("netattach", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
