"""The NoCloud seed's network-config describes a VM's NICs (ucloud/seed.py)."""

from __future__ import annotations

import json

import pytest

from ucloud import seed
from ucloud.models import VM, FirstBoot, Port, Specs

pytestmark = pytest.mark.unit


def test_the_network_config_names_each_port_by_mac_with_its_addresses():
    vm = VM(
        name="web",
        owner="alice",
        owner_realm="users",
        specs=Specs(cpu=1, ram=1),
        image="i",
        first_boot=FirstBoot(hostname="web"),
        ports=[
            Port(network="n1", mac="52:54:00:00:00:01", ipv6="fd00:1::1", ipv4="10.0.0.2"),
            Port(network="n2", mac="52:54:00:00:00:02", ipv6="fd00:2::2"),
        ],
    )
    config = json.loads(seed.files(vm)["network-config"])
    assert config == {
        "version": 2,
        "ethernets": {
            "eth0": {
                "match": {"macaddress": "52:54:00:00:00:01"},
                "set-name": "eth0",
                "addresses": ["fd00:1::1/64"],
                "accept-ra": True,
                "dhcp4": True,
                "dhcp6": False,
            },
            "eth1": {
                "match": {"macaddress": "52:54:00:00:00:02"},
                "set-name": "eth1",
                "addresses": ["fd00:2::2/64"],
                "accept-ra": True,
                "dhcp4": False,
                "dhcp6": False,
            },
        },
    }
    vm.ports = []
    assert "network-config" not in seed.files(vm)
