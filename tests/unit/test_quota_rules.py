"""What counts against a quota, and when a change is refused (ucloud.quota's pure rules)."""

from __future__ import annotations

import pytest

from ucloud import quota
from ucloud.config import load_settings
from ucloud.models import VM, Desired, Image, ImageDesired, Network, Specs
from ucloud.quota import Amounts, Limits, Quota, QuotaExceeded


def vm(desired: Desired, cpu: int = 2, ram: float = 4, ssd: float = 10, hdd: float = 0) -> VM:
    specs = Specs(cpu=cpu, ram=ram, ssd=ssd, hdd=hdd)
    return VM(name="v", owner="alice", owner_realm="users", specs=specs, image="i", desired=desired)


def test_what_a_vm_holds_follows_its_desired_state():
    assert quota.of_vm(vm(Desired.RUNNING, hdd=5)) == Amounts(vms=1, cpu=2, ram=4, disk=15)
    assert quota.of_vm(vm(Desired.SUSPENDED)) == Amounts(vms=1, cpu=2, ram=4, disk=10)
    assert quota.of_vm(vm(Desired.STOPPED)) == Amounts(vms=1, disk=10)  # disk, no CPU or RAM
    assert quota.of_vm(vm(Desired.DELETED)) == Amounts()  # released when asked


def test_count_by_owner():
    image = Image(name="i", owner="alice", owner_realm="users")
    gone = Image(name="j", owner="alice", owner_realm="users", desired=ImageDesired.DELETED)
    bobs = vm(Desired.RUNNING).model_copy(update={"owner": "bob"})
    counted = quota.count([vm(Desired.RUNNING), vm(Desired.STOPPED), bobs], [image, gone])
    assert counted == {
        ("users", "alice"): Amounts(vms=2, cpu=2, ram=4, disk=20, images=1),
        ("users", "bob"): Amounts(vms=1, cpu=2, ram=4, disk=10),
    }


def network(owner: str = "alice", **more: object) -> Network:
    return Network(
        name="n", owner=owner, owner_realm="users", vni=1, ipv6_prefix="fd::/64", mtu=1450, **more
    )


def test_a_network_counts_until_its_deletion_is_accepted():
    assert quota.of_network(network()) == Amounts(networks=1)
    # Marked only while a deletion checks for attached VMs: still held (it may be refused).
    assert quota.of_network(network(deleting=True)) == Amounts(networks=1)
    assert quota.of_network(network(deleting=True, deleted=True)) == Amounts()
    counted = quota.count([], [], [network(), network(), network("bob"), network(deleted=True)])
    assert counted == {
        ("users", "alice"): Amounts(networks=2),
        ("users", "bob"): Amounts(networks=1),
    }


def test_only_what_a_change_increases_is_checked():
    limits = Amounts(vms=2, cpu=4, ram=8, disk=100, networks=0, images=1)
    used = Amounts(vms=2, cpu=6, ram=4, disk=50)  # over: an administrator lowered the limits
    quota.check(used, Amounts(vms=-1, cpu=-2, ram=-4, disk=-10), limits)  # deleting: fine
    quota.check(used, Amounts(disk=50), limits)  # exactly up to the limit: fine
    with pytest.raises(QuotaExceeded, match=r"cpu limit is 4, 6 in use, this needs 1 more"):
        quota.check(used, Amounts(cpu=1), limits)
    with pytest.raises(QuotaExceeded, match=r"ram limit is 8 GiB, 4 GiB in use, this needs 5"):
        quota.check(used, Amounts(ram=5), limits)
    quota.check(used, Amounts(cpu=100), limits.model_copy(update={"cpu": quota.UNLIMITED}))


def test_overrides_win_over_the_defaults():
    settings = load_settings(quota_vms=5, quota_cpu=10)
    assert quota.effective(settings, None).vms == 5
    mine = Quota(name="alice", realm="users", limits=Limits(cpu=-1))
    limits = quota.effective(settings, mine)
    assert (limits.vms, limits.cpu) == (5, -1)
