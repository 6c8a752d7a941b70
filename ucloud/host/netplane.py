"""The data plane of tenant networks on one host: per network a Linux bridge and a VXLAN
device in it, made through netlink (pyroute2).

- The bridge ``ucbr<vni>`` holds the VMs' tap devices (libvirt puts them there) and the VXLAN
  device ``ucvx<vni>``; multicast snooping is off (so IPv6 neighbour discovery and router
  advertisements, which are multicast, reach every port without MLD state) and it has no IP
  address of its own (IPv6 disabled on it): the host is not on its tenants' networks.
- The VXLAN device is unicast: no multicast group on the underlay. Broadcast, unknown unicast
  and multicast frames go to every other host of the network by head-end replication (an
  all-zero forwarding entry per peer); known MACs are learned from the frames received.
  Its destination port is given explicitly (Linux's default, 8472, is not IANA's 4789).
- MTU: the network's (the underlay's less the 50 bytes VXLAN adds over IPv4), on the bridge
  and the VXLAN device; libvirt gives the tap devices and the guests the same.

``apply`` makes the host's devices what it is given, and is idempotent: an agent restart
finds the devices as they are and changes nothing that is right. Only devices named with the
prefixes above are touched.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from ucloud import proc
from ucloud.config import Settings
from ucloud.host import netfilter
from ucloud.host.netfilter import PortGuard

log = logging.getLogger(__name__)

BRIDGE_PREFIX = "ucbr"
VXLAN_PREFIX = "ucvx"
ZERO_MAC = "00:00:00:00:00:00"


def bridge_name(vni: int) -> str:
    return f"{BRIDGE_PREFIX}{vni}"


def vxlan_name(vni: int) -> str:
    return f"{VXLAN_PREFIX}{vni}"


@dataclass(frozen=True)
class Segment:
    """What one network needs on this host."""

    vni: int
    mtu: int
    peers: frozenset[str] = field(default_factory=frozenset)  # other hosts' underlay addresses
    gateways: tuple[str, ...] = ()  # the router's addresses on it (CIDR), on a router host


class NetPlaneError(RuntimeError):
    pass


class NetPlane(Protocol):
    def apply(self, segments: dict[int, Segment], guards: list[PortGuard]) -> set[int]:
        """Make the host's networks exactly ``segments`` (by VXLAN id), with port security
        for ``guards`` (the ports of the VMs here); the ids built."""
        ...


class NoNetPlane:
    """For simulations with the fake hypervisor: nothing is built."""

    def apply(self, segments: dict[int, Segment], guards: list[PortGuard]) -> set[int]:
        return set(segments)


def open_netplane(settings: Settings) -> NetPlane:
    if settings.network_dataplane == "linux":
        return LinuxNetPlane(settings.network_underlay, settings.network_vxlan_port)
    if settings.network_dataplane == "none":
        return NoNetPlane()
    raise ValueError(f"unknown network_dataplane {settings.network_dataplane!r}")


class LinuxNetPlane:
    def __init__(self, underlay: str, port: int) -> None:
        self.underlay = underlay
        self.port = port
        # The rules last applied: a pass that would write the same ones skips nft (a process
        # and a rewrite of every rule: most of a pass's cost with many ports).
        self.rules: str | None = None

    def apply(self, segments: dict[int, Segment], guards: list[PortGuard]) -> set[int]:
        built: set[int] = set()
        try:
            with IPRoute() as ipr:
                links = {link.get("IFLA_IFNAME"): link for link in ipr.get_links()}
                for segment in segments.values():
                    self._ensure(ipr, links, segment)
                    built.add(segment.vni)
                self._remove_unwanted(ipr, links, set(segments))
        except NetlinkError as e:
            raise NetPlaneError(f"netlink: {e}") from e
        peers = {s.vni: s.peers for s in segments.values()} if self.underlay else None
        six = ":" in self.underlay
        # A host without networks has no rules of ours at all (nor tables).
        rules = netfilter.ruleset(guards, peers, self.port, six) if segments or guards else ""
        if rules != self.rules:
            try:
                netfilter.apply(rules) if rules else netfilter.remove()
            except proc.CommandError as e:
                raise NetPlaneError(f"nftables: {e}") from e
            self.rules = rules
        return built

    # --- one network -----------------------------------------------------------------------

    def _ensure(self, ipr: IPRoute, links: dict[str, Any], segment: Segment) -> None:
        br_name, vx_name = bridge_name(segment.vni), vxlan_name(segment.vni)
        br = links.get(br_name)
        if br is None:
            ipr.link("add", ifname=br_name, kind="bridge", br_mcast_snooping=0, mtu=segment.mtu)
            log.info("network %d: made bridge %s", segment.vni, br_name)
        elif br.get("IFLA_MTU") != segment.mtu:
            ipr.link("set", index=br["index"], mtu=segment.mtu)
        br_index = ipr.link_lookup(ifname=br_name)[0]
        # Only a router has addresses on its tenants' networks.
        _set_ipv6(br_name, bool(segment.gateways))
        ipr.link("set", index=br_index, state="up")
        self._ensure_addresses(ipr, br_index, br_name, segment.gateways)
        if not self.underlay:
            return  # this host's networks stay on it
        vx = links.get(vx_name)
        if vx is not None and not self._vxlan_is_right(vx, segment):
            ipr.link("del", index=vx["index"])  # made with other settings: made again
            vx = None
        if vx is None:
            ipr.link(
                "add",
                ifname=vx_name,
                kind="vxlan",
                vxlan_id=segment.vni,
                vxlan_local=self.underlay,
                vxlan_port=self.port,
                vxlan_learning=1,
                mtu=segment.mtu,
            )
            log.info("network %d: made VXLAN device %s", segment.vni, vx_name)
        vx_index = ipr.link_lookup(ifname=vx_name)[0]
        ipr.link("set", index=vx_index, master=br_index, mtu=segment.mtu, state="up")
        self._sync_peers(ipr, vx_index, segment)

    def _ensure_addresses(
        self, ipr: IPRoute, index: int, name: str, gateways: tuple[str, ...]
    ) -> None:
        """The bridge's addresses are exactly ``gateways`` (none: not the router here, or no
        longer), besides IPv6's link-local one."""
        have = {
            (a.get("IFA_ADDRESS"), a["prefixlen"])
            for a in ipr.get_addr(index=index)
            if a.get("IFA_ADDRESS") and not a.get("IFA_ADDRESS").startswith("fe80:")
        }
        wanted = set()
        for cidr in gateways:
            address, _, length = cidr.partition("/")
            wanted.add((address, int(length)))
            if (address, int(length)) not in have:
                # nodad: the router's address is known to be its own (IFA_F_NODAD).
                ipr.addr("add", index=index, address=address, prefixlen=int(length), flags=0x02)
        for address, length in sorted(have - wanted):
            with contextlib.suppress(NetlinkError):  # gone meanwhile (IPv6 was just turned off)
                ipr.addr("del", index=index, address=address, prefixlen=length)
            log.info("%s: removed address %s/%d (not its router here)", name, address, length)

    def _vxlan_is_right(self, link: Any, segment: Segment) -> bool:
        data = ("IFLA_LINKINFO", "IFLA_INFO_DATA")
        return (
            link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") == "vxlan"
            and link.get_nested(*data, "IFLA_VXLAN_ID") == segment.vni
            and link.get_nested(*data, "IFLA_VXLAN_LOCAL") == self.underlay
            and link.get_nested(*data, "IFLA_VXLAN_PORT") == self.port
        )

    def _sync_peers(self, ipr: IPRoute, vx_index: int, segment: Segment) -> None:
        """One all-zero forwarding entry per peer (head-end replication), none for others.
        Entries learned for a peer that left go when they age out or the device goes."""
        have = {
            e.get("NDA_DST")
            for e in ipr.fdb("dump", ifindex=vx_index)
            if e.get("NDA_LLADDR") == ZERO_MAC and e.get("NDA_DST")
        }
        for peer in sorted(segment.peers - have):
            ipr.fdb("append", ifindex=vx_index, lladdr=ZERO_MAC, dst=peer)
            log.info("network %d: floods to %s", segment.vni, peer)
        for peer in sorted(have - segment.peers):
            ipr.fdb("del", ifindex=vx_index, lladdr=ZERO_MAC, dst=peer)
            self._forget_learned(ipr, vx_index, peer)
            log.info("network %d: no longer sends to %s", segment.vni, peer)

    def _forget_learned(self, ipr: IPRoute, vx_index: int, peer: str) -> None:
        for e in ipr.fdb("dump", ifindex=vx_index):
            if e.get("NDA_DST") == peer and e.get("NDA_LLADDR") != ZERO_MAC:
                with contextlib.suppress(NetlinkError):  # it may have aged out meanwhile
                    ipr.fdb("del", ifindex=vx_index, lladdr=e.get("NDA_LLADDR"), dst=peer)

    # --- networks that left ----------------------------------------------------------------

    def _remove_unwanted(self, ipr: IPRoute, links: dict[str, Any], wanted: set[int]) -> None:
        masters: dict[int, list[str]] = {}
        for name, link in links.items():
            if link.get("IFLA_MASTER"):
                masters.setdefault(link.get("IFLA_MASTER"), []).append(name)
        for name, link in links.items():
            vni = _vni_of(name, BRIDGE_PREFIX)
            if vni is None or vni in wanted:
                continue
            others = [p for p in masters.get(link["index"], []) if p != vxlan_name(vni)]
            if others:
                # A VM's tap is still on it (its domain is being torn down): next pass. It is
                # no router's any more: its gateway addresses go now.
                log.info("network %d: bridge %s still holds %s", vni, name, others)
                _set_ipv6(name, False)
                self._ensure_addresses(ipr, link["index"], name, ())
                continue
            if vxlan_name(vni) in links:
                ipr.link("del", index=links[vxlan_name(vni)]["index"])
            ipr.link("del", index=link["index"])
            log.info("network %d: removed its bridge and VXLAN device", vni)
        for name, link in links.items():
            vni = _vni_of(name, VXLAN_PREFIX)
            if vni is not None and vni not in wanted and bridge_name(vni) not in links:
                ipr.link("del", index=link["index"])  # a VXLAN device left alone


def _vni_of(name: str, prefix: str) -> int | None:
    rest = name[len(prefix) :] if name.startswith(prefix) else ""
    return int(rest) if rest.isdigit() else None


def _set_ipv6(ifname: str, enabled: bool) -> None:
    # In the agent's own network namespace (/proc/sys/net is per namespace). A router's bridge
    # takes no address from router advertisements (its own dnsmasq's among them): its
    # addresses are the gateway's alone.
    conf = Path(f"/proc/sys/net/ipv6/conf/{ifname}")
    wanted = [("accept_ra", "0"), ("autoconf", "0"), ("disable_ipv6", "0" if enabled else "1")]
    try:
        for name, want in wanted:
            path = conf / name
            if path.read_text().strip() != want:
                path.write_text(want)
    except OSError as e:
        log.warning("could not set IPv6 on %s: %s", ifname, e)
