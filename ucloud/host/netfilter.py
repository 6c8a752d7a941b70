"""nftables rules of the host's tenant networks: port security and the VXLAN peer filter.

- Port security (table ``bridge ucloud``): a frame a VM sends through its tap device
  (``uct<its MAC's hex>``, named so in its domain; a tap of no port here sends nothing) must
  carry the port's MAC, and its ARP, IPv4 and IPv6 packets the port's addresses (IPv6: the
  port's, its link-local one, or the unspecified address of duplicate address detection;
  IPv4: the port's, or 0.0.0.0 of a DHCP client), so no tenant takes another's address on a
  shared network.
- VXLAN from peers only, per network (table ``inet ucloud``): a VXLAN packet is accepted only
  if its source is the underlay address of a current peer of the network whose VXLAN id
  (VNI) it carries: a set of (address . VNI) pairs, matched against the source address and
  the VNI field of the VXLAN header (bits 96-119 after the UDP header's start: 8 bytes of UDP
  header, then flags and 3 reserved bytes; checked with real packets). So a peer of one
  network cannot inject frames into another that it does not hold. A host marked DEAD stops
  being a peer, so the frames of VMs still running there (their disks are fenced, their NICs
  would not be) reach no one, until its agent is back and publishes its networks anew. The
  drop rule counts what it drops (``nft list table inet ucloud``; the count starts again
  when the rules change).

The two tables are replaced as a whole in one ``nft -f`` transaction: atomic and idempotent,
and nothing outside them is touched.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ucloud import proc
from ucloud.network.allocate import eui64

TAP_PREFIX = "uct"


def tap_name(mac: str) -> str:
    """The tap device of the NIC with ``mac`` (15 bytes: the kernel's limit)."""
    return TAP_PREFIX + mac.replace(":", "").lower()


@dataclass(frozen=True)
class PortGuard:
    mac: str
    ipv6: str
    ipv4: str = ""


def ruleset(
    guards: Iterable[PortGuard],
    peers: Mapping[int, Iterable[str]] | None,
    vxlan_port: int,
    six: bool = False,
) -> str:
    """The nft script for ``guards`` and (unless None: no VXLAN here) the VXLAN ``peers`` of
    each network here, by VNI; ``six``: the underlay is IPv6."""
    lines = ["table bridge ucloud", "delete table bridge ucloud", "table bridge ucloud {"]
    lines += ["  chain forward {", "    type filter hook forward priority 0; policy accept;"]
    for g in sorted(guards, key=lambda g: g.mac):
        tap = f'iifname "{tap_name(g.mac)}"'
        lines.append(f"    {tap} ether saddr != {g.mac} drop")
        lines.append(f"    {tap} arp saddr ether != {g.mac} drop")
        v4 = g.ipv4 or "0.0.0.0"
        lines.append(f"    {tap} arp saddr ip != {{ 0.0.0.0, {v4} }} drop")
        lines.append(f"    {tap} ip saddr != {{ 0.0.0.0, {v4} }} drop")
        local = eui64("fe80::/64", g.mac)
        lines.append(f"    {tap} ip6 saddr != {{ ::, {local}, {g.ipv6} }} drop")
    # A tap of no port here (a NIC being unplugged after its port was detached, and its
    # addresses perhaps given to another VM already) sends nothing.
    known = ", ".join(f'"{tap_name(g.mac)}"' for g in sorted(guards, key=lambda g: g.mac))
    unknown = f" iifname != {{ {known} }}" if known else ""
    lines.append(f'    iifname "{TAP_PREFIX}*"{unknown} drop')
    lines += ["  }", "}"]
    if peers is not None:
        pairs = sorted({(a, vni) for vni, addresses in peers.items() for a in addresses})
        family = "ip6" if six else "ip"
        # A VNI is 24 bits from bit 96 of the transport header (UDP's 8 bytes, then the VXLAN
        # header's flags and reserved bytes).
        key = f"{family} saddr . @th,96,24"
        listed = ", ".join(f"{a} . {vni}" for a, vni in pairs)
        elements = f" elements = {{ {listed} }};" if pairs else ""
        lines += ["table inet ucloud", "delete table inet ucloud", "table inet ucloud {"]
        lines += [f"  set vxlan_peers {{ typeof {key};{elements} }}"]
        lines += ["  chain input {", "    type filter hook input priority 0; policy accept;"]
        lines += [f"    udp dport {vxlan_port} {key} != @vxlan_peers counter drop", "  }", "}"]
    return "\n".join(lines) + "\n"


TABLES = ("bridge ucloud", "inet ucloud")


def apply(script: str) -> None:
    proc.run(["nft", "-f", "-"], input=script.encode(), timeout=30)


def remove() -> None:
    """Delete our tables, if there are any (the host's last network left)."""
    listed = proc.run(["nft", "list", "tables"], timeout=30).stdout.decode().splitlines()
    for table in TABLES:
        if f"table {table}" in (line.strip() for line in listed):
            proc.run(["nft", "delete", "table", *table.split()], timeout=30)
