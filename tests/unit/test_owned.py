"""What a user owns, as /user/list counts it and /user/delete checks it (ucloud.api.accounts)."""

from __future__ import annotations

import pytest

from ucloud.api import errors
from ucloud.api.accounts import Owned
from ucloud.models import VM, Desired, Network, Port, Specs, SSHKey
from ucloud.store import Versioned

ALICE = ("users", "alice")


def vm(owner: str, *networks: str, desired: Desired = Desired.RUNNING) -> VM:
    ports = [Port(network=n, mac="52:54:00:00:00:01", ipv6="fd::1") for n in networks]
    specs = Specs(cpu=1, ram=1)
    return VM(
        name="v",
        owner=owner,
        owner_realm="users",
        specs=specs,
        image="i",
        ports=ports,
        desired=desired,
    )


def owned(vms: list[VM], networks: list[Network], keys: tuple[SSHKey, ...] = ()) -> Owned:
    def by_id(objects):
        return {o.id: Versioned(o, 1) for o in objects}

    return Owned(by_id(vms), {}, {}, by_id(keys), by_id(networks))


def net(name: str, **more: object) -> Network:
    return Network(
        name=name,
        owner="alice",
        owner_realm="users",
        vni=1,
        ipv6_prefix="fd::/64",
        mtu=1450,
        **more,
    )


def test_keys_and_networks_are_counted_but_not_networks_already_deleted():
    key = SSHKey(
        name="k",
        owner="alice",
        owner_realm="users",
        public_key="ssh-ed25519 AAAA x",
        type="ssh-ed25519",
        bits=256,
        fingerprint="SHA256:x",
    )
    found = owned([vm("bob")], [net("a"), net("b", deleting=True, deleted=True)], (key,))
    assert found.counts(ALICE) == {"vms": 0, "images": 0, "files": 0, "keys": 1, "networks": 1}


def test_another_users_vm_on_the_users_network_is_named():
    shared = net("s", shared=True)
    on_it = vm("bob", shared.uuid)
    found = owned([on_it, vm("alice", shared.uuid)], [shared])
    with pytest.raises(errors.Conflict, match=on_it.uuid):
        found.check_networks_unused_by_others(ALICE)
    # Bob's VM being deleted lets go of it when it goes: no reason to refuse.
    leaving = owned([vm("bob", shared.uuid, desired=Desired.DELETED)], [shared])
    leaving.check_networks_unused_by_others(ALICE)
