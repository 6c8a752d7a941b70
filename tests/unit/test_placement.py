"""Placement's filters and weighers, on hosts made in memory (ucloud/scheduler/placement.py)."""

from __future__ import annotations

import pytest

from ucloud.config import Settings
from ucloud.models import VM, AdminState, Host, HostStatus, Specs
from ucloud.scheduler import placement
from ucloud.scheduler.placement import HostState, candidates, choose


def host(
    name: str = "node1",
    cpu: int = 8,
    ram: float = 16,
    ssd: float = 0,
    hdd: float = 0,
    *,
    used: Specs | None = None,
    alive: bool = True,
    status: HostStatus = HostStatus.UP,
    admin: AdminState = AdminState.UP,
) -> HostState:
    """A host whose limit is its capacity (allocation ratios of 1)."""
    capacity = Specs(cpu=cpu, ram=ram, ssd=ssd, hdd=hdd)
    h = Host(name=name, capacity=capacity, status=status, admin_state=admin)
    return HostState(h, alive, limit=capacity, used=used or Specs(cpu=0, ram=0))


def vm(cpu: int = 1, ram: float = 1, ssd: float = 0, hdd: float = 0) -> VM:
    return VM(
        name="web",
        owner="alice",
        owner_realm="users",
        specs=Specs(cpu=cpu, ram=ram, ssd=ssd, hdd=hdd),
        image="debian",
    )


# --- host filters -----------------------------------------------------------------------------


def test_a_host_is_up_only_when_alive_and_marked_up():
    assert placement.is_up(host())
    assert not placement.is_up(host(alive=False))  # its alive key is gone
    assert not placement.is_up(host(status=HostStatus.DEAD))  # not yet seen alive again


def test_a_host_in_maintenance_takes_no_new_vms():
    assert placement.not_in_maintenance(host())
    assert not placement.not_in_maintenance(host(admin=AdminState.MAINTENANCE))


def test_candidates_keep_fitting_hosts_and_count_the_others_by_reason():
    pool = candidates(
        [
            host("a"),
            host("b", alive=False),
            host("c", status=HostStatus.DEAD),
            host("d", admin=AdminState.MAINTENANCE),
            # Down and in maintenance: counted once, for the first filter it fails.
            host("e", alive=False, admin=AdminState.MAINTENANCE),
        ]
    )
    assert [h.name for h in pool.hosts] == ["a"]
    assert pool.rejected == {"down": 3, "in maintenance": 1}


# --- fit filters ------------------------------------------------------------------------------


def test_cpu_fits_up_to_the_limit_exactly():
    h = host(cpu=4, used=Specs(cpu=3, ram=0))
    assert placement.enough_cpu(h, vm(cpu=1))
    assert not placement.enough_cpu(h, vm(cpu=2))


def test_ram_fits_up_to_the_limit_exactly():
    h = host(ram=4, used=Specs(cpu=0, ram=3.5))
    assert placement.enough_ram(h, vm(ram=0.5))
    assert not placement.enough_ram(h, vm(ram=0.75))


def test_a_host_that_declares_no_disk_does_not_limit_disk():
    assert placement.enough_disk(host(ssd=0, hdd=0), vm(ssd=10_000, hdd=10_000))


def test_ssd_and_hdd_are_limited_separately_when_declared():
    h = host(ssd=100, hdd=0, used=Specs(cpu=0, ram=0, ssd=90))
    assert placement.enough_disk(h, vm(ssd=10, hdd=500))  # hdd: not declared, not limited
    assert not placement.enough_disk(h, vm(ssd=11))
    h = host(ssd=0, hdd=50)
    assert placement.enough_disk(h, vm(ssd=1000, hdd=50))
    assert not placement.enough_disk(h, vm(hdd=51))


def test_allocation_ratios_scale_the_limit():
    settings = Settings(cpu_allocation_ratio=4.0, ram_allocation_ratio=1.5, disk_allocation_ratio=1)
    h = Host(name="n", capacity=Specs(cpu=2, ram=8, ssd=100), status=HostStatus.UP)
    state = HostState.of(h, alive=True, settings=settings)
    assert (state.limit.cpu, state.limit.ram, state.limit.ssd) == (8, 12.0, 100.0)
    assert placement.enough_cpu(state, vm(cpu=8))
    assert not placement.enough_cpu(state, vm(cpu=9))


# --- weighers ---------------------------------------------------------------------------------


def test_weighers_give_the_share_left_free_after_the_vm():
    h = host(cpu=4, ram=8, used=Specs(cpu=1, ram=2))
    assert placement.free_ram(h, vm(ram=2)) == pytest.approx(0.5)
    assert placement.free_cpu(h, vm(cpu=1)) == pytest.approx(0.5)


def test_weighers_of_a_host_without_capacity_are_zero():
    h = host(cpu=0, ram=0)
    assert placement.free_ram(h, vm()) == 0.0
    assert placement.free_cpu(h, vm()) == 0.0


# --- choosing ---------------------------------------------------------------------------------


def test_spread_picks_the_host_with_the_most_room():
    busy = host("busy", used=Specs(cpu=6, ram=12))
    idle = host("idle")
    chosen, why = choose(vm(), candidates([busy, idle]))
    assert (chosen.name if chosen else None, why) == ("idle", "")


def test_pack_picks_the_fullest_host_that_fits():
    busy = host("busy", used=Specs(cpu=6, ram=12))
    idle = host("idle")
    chosen, _ = choose(vm(), candidates([busy, idle]), pack=True)
    assert chosen is not None and chosen.name == "busy"


def test_no_hosts_at_all_is_said_plainly():
    assert choose(vm(), candidates([])) == (None, "no hosts are registered")


def test_the_reason_a_user_reads_when_no_host_has_the_ram():
    # The example of docs/design-decisions.md.
    small = host("small", cpu=8, ram=2)
    chosen, why = choose(vm(cpu=2, ram=4), candidates([small]))
    assert chosen is None
    assert why == "no host fits 2 CPU, 4 GiB RAM, 0 GiB disk: 1 short of RAM"


def test_the_reason_counts_every_host_once_most_common_first():
    hosts = [
        host("tiny1", cpu=1),
        host("tiny2", cpu=1),
        host("lowmem", cpu=8, ram=1),
        host("full", ssd=10, used=Specs(cpu=0, ram=0, ssd=10)),
        host("gone", alive=False),
        host("maint", admin=AdminState.MAINTENANCE),
    ]
    chosen, why = choose(vm(cpu=2, ram=4, ssd=1.5), candidates(hosts))
    assert chosen is None
    assert why == (
        "no host fits 2 CPU, 4 GiB RAM, 1.5 GiB disk: "
        "2 short of CPU, 1 down, 1 in maintenance, 1 short of RAM, 1 short of disk"
    )


def test_how_many_fitting_hosts_are_weighed_grows_slower_than_the_cluster():
    assert placement.feasible_to_find(7) == 7
    assert placement.feasible_to_find(100) == 100
    assert placement.feasible_to_find(1000) == 420  # 42 %
    assert placement.feasible_to_find(5000) == 500  # 10 %
    assert placement.feasible_to_find(100_000) == 5000  # never below 5 %


def test_in_a_large_cluster_each_search_starts_where_the_last_one_stopped():
    hosts = [host(f"n{i:03}") for i in range(300)]
    pool = candidates(hosts)
    assert pool.to_find == 144  # 48 % of 300
    first, _ = choose(vm(), pool)
    assert pool.start == 144
    second, _ = choose(vm(), pool)
    assert pool.start == 288
    assert first is not None and second is not None
    assert hosts.index(first) < 144 <= hosts.index(second) < 288
