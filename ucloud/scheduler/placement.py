"""Placement as Nova does it, smaller: filters drop hosts that cannot take a VM, weighers rank
the rest. Each filter and weigher is a small pure function over in-memory state.

Host filters depend only on the host and run when hosts change (the scheduler keeps the
result, a Candidates pool, between passes); fit filters depend on the VM too and run for each
VM. In a large cluster a VM is not weighed against every host: as Kubernetes' scheduler does
(percentageOfNodesToScore), the search stops once it has found a number of fitting hosts that
grows with the cluster but slower than it, and the next search starts where this one stopped,
so that every host is looked at in turn. A VM that fits nowhere has been tried on every host.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ucloud.config import SchedulerSettings
from ucloud.models import VM, AdminState, Host, HostStatus, Specs
from ucloud.store import Versioned


@dataclass
class HostState:
    host: Host
    alive: bool
    limit: Specs  # capacity x allocation ratios
    used: Specs = field(default_factory=lambda: Specs(cpu=0, ram=0))
    # The host record's mod_revision as read: a placement from this view compares it, so a
    # placement decided from a record that changed meanwhile (a maintenance, DEAD) fails.
    revision: int = 0

    @classmethod
    def of(
        cls, host: Host, alive: bool, settings: SchedulerSettings, revision: int = 0
    ) -> HostState:
        c = host.capacity
        return cls(
            host=host,
            alive=alive,
            revision=revision,
            limit=Specs.model_construct(
                cpu=int(c.cpu * settings.cpu_allocation_ratio),
                ram=c.ram * settings.ram_allocation_ratio,
                hdd=c.hdd * settings.disk_allocation_ratio,
                ssd=c.ssd * settings.disk_allocation_ratio,
            ),
        )

    @property
    def name(self) -> str:
        return self.host.name

    @property
    def as_read(self) -> Versioned[Host]:
        """The host record this state was made from, for a compare-and-swap to compare."""
        return Versioned(self.host, self.revision)


HostFilter = Callable[[HostState], bool]
FitFilter = Callable[[HostState, VM], bool]
Weigher = Callable[[HostState, VM], float]


def is_up(h: HostState) -> bool:
    return h.alive and h.host.status == HostStatus.UP


def not_in_maintenance(h: HostState) -> bool:
    return h.host.admin_state == AdminState.UP


def enough_cpu(h: HostState, vm: VM) -> bool:
    return h.used.cpu + vm.specs.cpu <= h.limit.cpu


def enough_ram(h: HostState, vm: VM) -> bool:
    return h.used.ram + vm.specs.ram <= h.limit.ram


def enough_disk(h: HostState, vm: VM) -> bool:
    # Disks live in Ceph: a host that declares no disk capacity does not limit disk.
    ssd_ok = h.limit.ssd == 0 or h.used.ssd + vm.specs.ssd <= h.limit.ssd
    hdd_ok = h.limit.hdd == 0 or h.used.hdd + vm.specs.hdd <= h.limit.hdd
    return ssd_ok and hdd_ok


def free_ram(h: HostState, vm: VM) -> float:
    return (h.limit.ram - h.used.ram - vm.specs.ram) / h.limit.ram if h.limit.ram else 0.0


def free_cpu(h: HostState, vm: VM) -> float:
    return (h.limit.cpu - h.used.cpu - vm.specs.cpu) / h.limit.cpu if h.limit.cpu else 0.0


# (why a host is rejected, filter)
HOST_FILTERS: list[tuple[str, HostFilter]] = [
    ("down", is_up),
    ("in maintenance", not_in_maintenance),
]
FIT_FILTERS: list[tuple[str, FitFilter]] = [
    ("short of CPU", enough_cpu),
    ("short of RAM", enough_ram),
    ("short of disk", enough_disk),
]
# (multiplier, weigher): positive multipliers spread VMs over hosts, negative ones pack them.
WEIGHERS: list[tuple[float, Weigher]] = [(1.0, free_ram), (0.5, free_cpu)]


# Kubernetes' minFeasibleNodesToFind and adaptive percentageOfNodesToScore.
MIN_FEASIBLE = 100
MIN_PERCENT = 5


def feasible_to_find(hosts: int) -> int:
    """How many fitting hosts to weigh for one VM: every host of a cluster of up to 100, else
    50 % less 1 % per 125 hosts, at least 5 % and at least 100 (5,000 hosts: 500)."""
    if hosts <= MIN_FEASIBLE:
        return hosts
    percent = max(50 - hosts // 125, MIN_PERCENT)
    return max(hosts * percent // 100, MIN_FEASIBLE)


@dataclass
class Candidates:
    """The hosts that passed the host filters, and how many each filter rejected; ``start``
    is where the next search begins."""

    hosts: list[HostState]
    rejected: Counter[str]
    start: int = 0
    to_find: int = 0

    def __post_init__(self) -> None:
        self.to_find = feasible_to_find(len(self.hosts))


def candidates(hosts: Iterable[HostState]) -> Candidates:
    passed: list[HostState] = []
    rejected: Counter[str] = Counter()
    for h in hosts:
        for why, keep in HOST_FILTERS:
            if not keep(h):
                rejected[why] += 1
                break
        else:
            passed.append(h)
    return Candidates(passed, rejected)


def choose(vm: VM, pool: Candidates, pack: bool = False) -> tuple[HostState | None, str]:
    """The best host for ``vm`` among the first ``pool.to_find`` that fit, looking from
    ``pool.start`` on (and moving it past the hosts looked at); or None and a reason a user can
    read, after looking at every host."""
    best: HostState | None = None
    best_score = 0.0
    rejected: Counter[str] = Counter()
    sign = -1.0 if pack else 1.0
    hosts = pool.hosts
    count = len(hosts)
    i = pool.start if pool.start < count else 0
    found = looked = 0
    while looked < count:
        h = hosts[i]
        i = i + 1 if i + 1 < count else 0
        looked += 1
        for why, fits in FIT_FILTERS:
            if not fits(h, vm):
                rejected[why] += 1
                break
        else:
            score = 0.0
            for m, weigh in WEIGHERS:
                score += m * weigh(h, vm)
            score *= sign
            if best is None or score > best_score:
                best, best_score = h, score
            found += 1
            if found >= pool.to_find:
                break
    pool.start = i
    if best is not None:
        return best, ""
    rejected = Counter(pool.rejected) + rejected
    if not rejected:
        return None, "no hosts are registered"
    details = ", ".join(f"{n} {why}" for why, n in rejected.most_common())
    return None, f"no host fits {describe(vm.specs)}: {details}"


def describe(specs: Specs) -> str:
    return f"{specs.cpu} CPU, {specs.ram:g} GiB RAM, {specs.ssd + specs.hdd:g} GiB disk"
