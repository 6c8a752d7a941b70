"""The host agent's network data plane: the time to build one network on a host (bridge,
unicast VXLAN device, a peer's forwarding entry, nftables rules) through LinuxNetPlane, against
the same devices made by hand with ``ip`` and ``bridge`` in the same run; and the cost of a
pass over a host with many ports (what every sync of the agent's network thread costs), per
port.

Everything happens in a network namespace the benchmark makes and deletes (the benchmark
re-runs itself inside it), so nothing of the machine is touched.
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import subprocess
import sys
import time

from bench.common import log, machine, record, table
from ucloud.host.netfilter import PortGuard
from ucloud.host.netplane import LinuxNetPlane, Segment
from ucloud.network.allocate import eui64, new_mac

UNDERLAY = "198.18.255.1"  # on a veth inside the namespace
PEER = "198.18.255.2"


def p95(values: list[float]) -> float:
    return sorted(values)[max(0, round(0.95 * len(values)) - 1)]


def by_hand(vni: int) -> None:
    """The reference: the same devices with iproute2, one command each."""
    br, vx = f"hbr{vni}", f"hvx{vni}"
    for argv in (
        ["ip", "link", "add", br, "mtu", "1450", "type", "bridge", "mcast_snooping", "0"],
        ["ip", "link", "set", br, "up"],
        [
            "ip",
            "link",
            "add",
            vx,
            "mtu",
            "1450",
            "type",
            "vxlan",
            "id",
            str(vni),
            "local",
            UNDERLAY,
            "dstport",
            "4789",
        ],
        ["ip", "link", "set", vx, "master", br, "up"],
        ["bridge", "fdb", "append", "00:00:00:00:00:00", "dev", vx, "dst", PEER],
    ):
        subprocess.run(argv, check=True)


def remove_by_hand(vni: int) -> None:
    for name in (f"hvx{vni}", f"hbr{vni}"):
        subprocess.run(["ip", "link", "del", name], check=True)


def underlay() -> None:
    subprocess.run(["ip", "link", "add", "ul0", "type", "veth", "peer", "ul1"], check=True)
    subprocess.run(["ip", "addr", "add", f"{UNDERLAY}/24", "dev", "ul0"], check=True)
    subprocess.run(["ip", "link", "set", "ul0", "up"], check=True)


def hand_times(runs: int) -> list[float]:
    """Seconds to make one network by hand (``by_hand``), ``runs`` times, in a namespace of
    its own: the reference other benchmarks print beside their figures."""
    out = in_namespace(["--hand", f"--runs={runs}"])
    return [float(x) for x in out.split()]


def in_namespace(args: list[str]) -> str:
    """This benchmark run again with ``args`` in a new network namespace; its stdout."""
    ns = f"ucbench{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        argv = [sys.executable, "-m", "bench.netplane", *args]
        return subprocess.run(
            ["ip", "netns", "exec", ns, *argv], check=True, capture_output=True, text=True
        ).stdout
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=True)


def inside(runs: int, ports: int) -> str:
    underlay()
    plane = LinuxNetPlane(UNDERLAY, 4789)
    segment = {2000: Segment(2000, 1450, frozenset({PEER}))}
    plane.apply({}, [])  # warm up: imports, first netlink socket, nft tables
    ours, hand, teardown = [], [], []
    for _ in range(runs):
        start = time.perf_counter()
        plane.apply(segment, [])
        ours.append(time.perf_counter() - start)
        start = time.perf_counter()
        plane.apply({}, [])
        teardown.append(time.perf_counter() - start)
        start = time.perf_counter()
        by_hand(3000)
        hand.append(time.perf_counter() - start)
        remove_by_hand(3000)
    guards = []
    for _ in range(ports):
        mac = new_mac()
        guards.append(PortGuard(mac, eui64("fd00:1::/64", mac), ""))
    idle_0, idle_n = [], []
    plane.apply(segment, [])
    for _ in range(runs):
        start = time.perf_counter()
        plane.apply(segment, [])
        idle_0.append(time.perf_counter() - start)
    plane.apply(segment, guards)
    for _ in range(runs):
        start = time.perf_counter()
        plane.apply(segment, guards)
        idle_n.append(time.perf_counter() - start)
    # A port more or less at every pass: the rules change, so nft rewrites them all.
    changed_0, changed_n = [], []
    for base, times in (([], changed_0), (guards, changed_n)):
        for i in range(runs):
            mac = new_mac()
            extra = [PortGuard(mac, eui64("fd00:1::/64", mac), "")] if i % 2 else []
            start = time.perf_counter()
            plane.apply(segment, base + extra)
            times.append(time.perf_counter() - start)
    plane.apply({}, [])
    per_port = (statistics.median(idle_n) - statistics.median(idle_0)) / ports
    per_port_changed = (statistics.median(changed_n) - statistics.median(changed_0)) / ports
    rows = [
        [
            "build one network (apply)",
            ms(ours),
            ms(hand),
            f"{statistics.median(ours) / statistics.median(hand):.2f}",
        ],
        ["remove it (apply of none)", ms(teardown), "-", "-"],
        ["pass, nothing to change, 0 ports", ms(idle_0), "-", "-"],
        [f"pass, nothing to change, {ports} ports", ms(idle_n), "-", "-"],
        ["pass, a port added or removed, 0 ports", ms(changed_0), "-", "-"],
        [f"pass, a port added or removed, {ports} ports", ms(changed_n), "-", "-"],
    ]
    text = table(
        ["what", "ucloud ms p50 / p95", "ref: by hand with ip ms p50 / p95", "ratio p50"], rows
    )
    notes = [
        f"- {runs} runs each, in a namespace of the benchmark's own (a veth as the underlay "
        "device, one peer). By hand: 5 commands (`ip link add` bridge and VXLAN, `ip link "
        "set` up/master, `bridge fdb append`), each a process.",
        "- The pass is what the agent's network thread does on every change: netlink dumps, "
        "forwarding entries compared, the nftables script made (applied only when it differs "
        f"from the last). Per port: {1000 * per_port:.3f} ms "
        f"(({ports} ports - 0 ports) / {ports}); when a port comes or goes, the rules are "
        f"written again (one `nft -f`): {1000 * per_port_changed:.3f} ms per port.",
    ]
    return text + "\n\n" + "\n".join(notes)


def ms(values: list[float]) -> str:
    return f"{1000 * statistics.median(values):.1f} / {1000 * p95(values):.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.netplane", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=None, help="runs of each (30; quick 10)")
    parser.add_argument("--ports", type=int, default=200, help="ports on the host (200)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--record", action="store_true", help="write the table to RESULTS.md")
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--hand", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    runs = args.runs or (10 if args.quick else 30)
    if args.inside:
        print(inside(runs, args.ports))
        return 0
    if args.hand:
        underlay()
        for i in range(runs):
            start = time.perf_counter()
            by_hand(3000 + i)
            print(time.perf_counter() - start)
            remove_by_hand(3000 + i)
        return 0
    log(f"machine: {machine()}")
    out = in_namespace(["--inside", f"--runs={runs}", f"--ports={args.ports}"])
    print(out)
    if args.record:
        record("netplane", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
