"""Pure allocation: which VXLAN id, /64, MAC and addresses are free. No etcd here; the
claims are made by ucloud.network.ports in compare-and-swap transactions."""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Iterable

VNI_MAX = (1 << 24) - 1
# QEMU's OUI, as libvirt uses for the MACs it makes up.
MAC_OUI = "52:54:00"


class AllocationError(ValueError):
    """Bad input or nothing left; the message says which."""


def vni_range(text: str) -> tuple[int, int]:
    """``"1000-999999"`` as (1000, 999999), checked to be within VXLAN's 24 bits."""
    first, sep, last = text.partition("-")
    try:
        lo, hi = int(first), int(last if sep else first)
    except ValueError:
        raise AllocationError(f"VXLAN id range {text!r} is not FIRST-LAST") from None
    if not 1 <= lo <= hi <= VNI_MAX:
        raise AllocationError(f"VXLAN id range {text!r} must lie within 1-{VNI_MAX}")
    return lo, hi


def first_free(taken: Iterable[int], lo: int, hi: int) -> int:
    """The lowest number of ``lo..hi`` not in ``taken``."""
    used = set(taken)
    for n in range(lo, hi + 1):
        if n not in used:
            return n
    raise AllocationError(f"every VXLAN id of {lo}-{hi} is in use")


def free_prefix(pool: str, taken: Iterable[str]) -> ipaddress.IPv6Network:
    """The first /64 of ``pool`` whose network address is not in ``taken``."""
    try:
        net = ipaddress.IPv6Network(pool)
    except ValueError as e:
        raise AllocationError(f"IPv6 pool {pool!r}: {e}") from None
    if net.prefixlen > 64:
        raise AllocationError(f"IPv6 pool {pool!r} is smaller than a /64")
    used = {ipaddress.IPv6Address(t) for t in taken}
    for sub in net.subnets(new_prefix=64):
        if sub.network_address not in used:
            return sub
    raise AllocationError(f"every /64 of {pool} is in use")


def ipv4_subnet(text: str) -> ipaddress.IPv4Network:
    """A user's IPv4 subnet, checked: a network address with room for a gateway and VMs."""
    try:
        net = ipaddress.IPv4Network(text)
    except ValueError as e:
        raise AllocationError(f"IPv4 subnet {text!r}: {e}") from None
    if not 16 <= net.prefixlen <= 29:
        raise AllocationError(f"IPv4 subnet {text!r} must be a /16 to a /29")
    return net


def ipv4_gateway(subnet: ipaddress.IPv4Network) -> ipaddress.IPv4Address:
    """The first host address: kept for the network's router."""
    return subnet.network_address + 1


def free_ipv4(subnet: str, taken: Iterable[str]) -> str:
    """The lowest host address of ``subnet`` that is neither the gateway nor taken."""
    net = ipaddress.IPv4Network(subnet)
    used = {ipaddress.IPv4Address(t) for t in taken} | {ipv4_gateway(net)}
    for address in net.hosts():
        if address not in used:
            return str(address)
    raise AllocationError(f"every address of {subnet} is in use")


def new_mac() -> str:
    """A random MAC under QEMU's OUI (claimed per network, so a clash is retried)."""
    return MAC_OUI + "".join(f":{b:02x}" for b in secrets.token_bytes(3))


def eui64(prefix: str, mac: str) -> str:
    """The SLAAC address a guest forms from its MAC in ``prefix`` (RFC 4291, appendix A):
    the address router advertisements lead it to, so it is known before it boots."""
    octets = [int(x, 16) for x in mac.split(":")]
    if len(octets) != 6:
        raise AllocationError(f"{mac!r} is not a MAC address")
    octets[0] ^= 0x02
    interface = bytes([*octets[:3], 0xFF, 0xFE, *octets[3:]])
    net = ipaddress.IPv6Network(prefix)
    return str(net.network_address + int.from_bytes(interface, "big"))
