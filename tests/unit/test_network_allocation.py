"""Allocation of VXLAN ids, prefixes, MACs and addresses (pure parts of ucloud.network)."""

from __future__ import annotations

import ipaddress

import pytest

from ucloud.network import allocate
from ucloud.network.allocate import AllocationError

pytestmark = pytest.mark.unit


def test_vni_range_is_checked_against_vxlans_24_bits():
    assert allocate.vni_range("1000-2000") == (1000, 2000)
    assert allocate.vni_range("7") == (7, 7)
    for bad in ("0-10", "5-4", "1-16777216", "a-b", ""):
        with pytest.raises(AllocationError):
            allocate.vni_range(bad)


def test_the_lowest_free_vni_is_taken_and_an_exhausted_range_says_so():
    assert allocate.first_free([], 10, 12) == 10
    assert allocate.first_free([10, 12], 10, 12) == 11
    with pytest.raises(AllocationError, match="every VXLAN id of 10-12 is in use"):
        allocate.first_free([10, 11, 12], 10, 12)


def test_prefixes_are_the_pools_64s_in_order_skipping_taken_ones():
    pool = "fd00:1:2::/62"
    assert str(allocate.free_prefix(pool, [])) == "fd00:1:2::/64"
    assert str(allocate.free_prefix(pool, ["fd00:1:2::", "fd00:1:2:1::"])) == "fd00:1:2:2::/64"
    taken = [str(n.network_address) for n in ipaddress.IPv6Network(pool).subnets(new_prefix=64)]
    with pytest.raises(AllocationError, match="every /64"):
        allocate.free_prefix(pool, taken)
    with pytest.raises(AllocationError, match="smaller than a /64"):
        allocate.free_prefix("fd00::/80", [])


def test_ipv4_addresses_skip_the_gateway_and_taken_ones_and_run_out():
    assert allocate.free_ipv4("10.0.0.0/29", []) == "10.0.0.2"  # .1 is the router's
    assert allocate.free_ipv4("10.0.0.0/29", ["10.0.0.2", "10.0.0.4"]) == "10.0.0.3"
    with pytest.raises(AllocationError, match="every address"):
        allocate.free_ipv4("10.0.0.0/29", [f"10.0.0.{i}" for i in range(2, 7)])


def test_ipv4_subnets_are_checked():
    assert str(allocate.ipv4_subnet("192.168.5.0/24")) == "192.168.5.0/24"
    for bad in ("10.0.0.1/24", "10.0.0.0/30", "10.0.0.0/8", "fd00::/64", "x"):
        with pytest.raises(AllocationError):
            allocate.ipv4_subnet(bad)


def test_macs_are_random_under_qemus_oui():
    macs = {allocate.new_mac() for _ in range(100)}
    assert len(macs) == 100
    assert all(m.startswith("52:54:00:") and len(m) == 17 for m in macs)


def test_the_ipv6_address_is_the_slaac_one_a_guest_forms_from_its_mac():
    # RFC 4291 appendix A: flip the universal/local bit, insert ff:fe.
    assert allocate.eui64("fd00:1::/64", "52:54:00:12:34:56") == "fd00:1::5054:ff:fe12:3456"


def test_the_port_security_and_peer_rules():
    from ucloud.host.netfilter import PortGuard, ruleset, tap_name

    assert tap_name("52:54:00:AA:bb:cc") == "uct525400aabbcc"
    guard = PortGuard("52:54:00:aa:bb:cc", "fd00::1", "10.0.0.2")
    text = ruleset([guard], {7: ["10.1.1.2", "10.1.1.3"], 9: ["10.1.1.2"]}, 4789)
    assert 'iifname "uct525400aabbcc" ether saddr != 52:54:00:aa:bb:cc drop' in text
    assert 'iifname "uct*" iifname != { "uct525400aabbcc" } drop' in text
    assert 'iifname "uct*" drop' in ruleset([], None, 4789)
    assert "ip saddr != { 0.0.0.0, 10.0.0.2 } drop" in text
    assert "ip6 saddr != { ::, fe80::5054:ff:feaa:bbcc, fd00::1 } drop" in text
    # Each peer only for the networks (VNIs) it holds with us.
    assert "elements = { 10.1.1.2 . 7, 10.1.1.2 . 9, 10.1.1.3 . 7 }" in text
    rule = "udp dport 4789 ip saddr . @th,96,24 != @vxlan_peers counter drop"
    assert rule in text
    assert "ip6 saddr . @th,96,24" in ruleset([], {7: ["fd00:f::2"]}, 4789, six=True)
    # No peers: every VXLAN packet is dropped; no VXLAN here: no such table.
    assert "elements" not in ruleset([], {7: []}, 4789) and rule in ruleset([], {}, 4789)
    assert "inet ucloud" not in ruleset([], None, 4789)


def test_the_router_config_advertises_the_prefix_and_serves_reserved_addresses_only(tmp_path):
    from ucloud.host.gateway import Routed, config, gateway_addresses

    assert gateway_addresses("fd00:1::/64", "10.0.0.0/24") == ("fd00:1::1/64", "10.0.0.1/24")
    assert gateway_addresses("fd00:1::/64", "") == ("fd00:1::1/64",)
    r = Routed(7, "ucbr7", "fd00:1::/64", "10.0.0.0/24", 1400, (("52:54:00:00:00:01", "10.0.0.2"),))
    text = config(r, tmp_path).splitlines()
    assert "interface=ucbr7" in text and "port=0" in text
    assert "dhcp-range=::,constructor:ucbr7,ra-only,64,1h" in text
    assert "ra-param=ucbr7,mtu:1400,10" in text
    assert "dhcp-range=10.0.0.0,static,255.255.255.0,1h" in text
