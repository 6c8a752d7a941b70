"""The NoCloud seed (ucloud/seed.py): its files, its names on the ISO, and the same bytes for the
same VM whenever and wherever it is built."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import pytest
import yaml

from tests.seedfiles import read_seed
from ucloud import seed
from ucloud.models import VM, Specs

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIH7Bgg2uo5UsMIADZYKJP6eAbQv2aG0GMm6O3Uo/7wgx me@x"


def make_vm(user_data: str = "", keys: tuple[str, ...] = (KEY,), name: str = "Web_1") -> VM:
    vm = VM(
        name=name,
        owner="alice",
        owner_realm="users",
        specs=Specs(cpu=1, ram=1),
        image="i",
        created=1_700_000_000.75,
    )
    vm.first_boot = seed.first_boot(seed.hostname_for(name, vm.uuid), list(keys), user_data)
    return vm


def test_the_seed_is_a_cidata_volume_with_meta_data_and_user_data_in_every_name_space():
    vm = make_vm()
    label, spaces = read_seed(seed.iso(vm))
    assert label == "cidata"
    expected = seed.files(vm)
    assert spaces["rr_path"] == expected
    assert spaces["joliet_path"] == expected
    assert spaces["iso_path"] == {
        "METADATA.;1": expected["meta-data"],
        "USERDATA.;1": expected["user-data"],
    }


def test_meta_data_names_the_instance_the_hostname_and_the_keys():
    vm = make_vm()
    meta = yaml.safe_load(seed.files(vm)["meta-data"])
    assert meta == {"instance-id": vm.uuid, "local-hostname": "web-1", "public-keys": [KEY]}
    user = seed.files(vm)["user-data"].decode()
    assert user.startswith("#cloud-config\n")
    assert yaml.safe_load(user) == {"ssh_authorized_keys": [KEY]}


def test_the_users_user_data_goes_as_given():
    script = "#!/bin/sh\necho 'héllo: {world}'\n"
    vm = make_vm(script, keys=())
    files = seed.files(vm)
    assert files["user-data"] == script.encode()
    assert yaml.safe_load(files["meta-data"]) == {"instance-id": vm.uuid, "local-hostname": "web-1"}
    assert vm.first_boot is not None
    assert vm.first_boot.user_data_size == len(script.encode())
    assert vm.first_boot.user_data_sha256 == hashlib.sha256(script.encode()).hexdigest()


def test_a_vm_from_before_seeds_gets_none():
    vm = make_vm()
    vm.first_boot = None
    assert seed.files(vm) == {}


def test_same_vm_same_bytes_later_and_in_another_time_zone():
    vm = make_vm("#!/bin/sh\necho hi\n")
    here = seed.iso(vm)
    assert seed.iso(vm) == here
    # Another process (another host), in a time zone far away.
    program = (
        "import sys; from ucloud import seed; from ucloud.models import VM; "
        "sys.stdout.buffer.write(seed.iso(VM.model_validate_json(sys.stdin.read())))"
    )
    there = subprocess.run(
        [sys.executable, "-c", program],
        input=vm.model_dump_json().encode(),
        capture_output=True,
        check=True,
        env={**os.environ, "TZ": "Asia/Kathmandu"},
    ).stdout
    assert there == here
    other = make_vm("#!/bin/sh\necho hi\n")
    assert seed.iso(other) != here  # another instance-id


@pytest.mark.parametrize(
    ("name", "hostname"),
    [
        ("web", "web"),
        ("My_VM.2", "my-vm-2"),
        ("--x--", "x"),
        ("a" * 80, "a" * 63),
        ("ü", "u"),
        ("Ünïcode-Ö", "unicode-o"),
        ("日本", None),
    ],
)
def test_default_hostnames_are_dns_labels(name, hostname):
    made = seed.hostname_for(name, "0123abcd-0000-0000-0000-000000000000")
    assert made == (hostname or "vm-0123abcd")
    assert seed.check_hostname(made) == made


@pytest.mark.parametrize("bad", ["", "-a", "a-", "a.b", "a_b", "a" * 64, "ä"])
def test_hostnames_asked_for_must_be_dns_labels(bad):
    with pytest.raises(ValueError, match="one DNS label"):
        seed.check_hostname(bad)
