"""The scheduler's metrics: the cluster's VMs and hosts as the leading scheduler sees them
(computed at each scrape from its mirrors and capacity ledger), and its placements and fencing.

Only the leader exports VM and host state (a standby has no mirror): query them without
summing over schedulers. The scrape thread reads the mirrors the scheduler's one thread
writes: it copies each dict first (one C call under the GIL, never half-changed) and reads
objects that are replaced, never changed in place (store.edited).
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric

from ucloud.metrics import StateCollector, gauge
from ucloud.models import VM, AdminState, Desired, HostStatus, Specs, Status
from ucloud.store import Versioned

if TYPE_CHECKING:
    from ucloud.scheduler.daemon import Scheduler

GIB = float(1 << 30)

PLACEMENTS = Counter("ucloud_placements_total", "VMs placed on a host by this scheduler")
SCHEDULING_SECONDS = Histogram(
    "ucloud_scheduling_latency_seconds",
    "From the moment the leading scheduler saw a VM want a host (created, started, or its "
    "QEMU or host died) to its placement",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600),
)
FENCINGS = Counter(
    "ucloud_fencing_total",
    "Disks of VMs taken off dead hosts, fenced (result=done) or not yet (result=failed)",
    ["result"],
)


def placed(waited: Iterable[float]) -> None:
    """Count a committed placement batch: how long each of its VMs waited for a host."""
    for seconds in waited:
        PLACEMENTS.inc()
        SCHEDULING_SECONDS.observe(seconds)


MIGRATIONS = Counter(
    "ucloud_scheduler_migrations_total",
    "Live migrations whose target this scheduler chose (result=scheduled) or that it gave up "
    "before they began (result=failed)",
    ["result"],
)


def migration_counted(result: str) -> None:
    MIGRATIONS.labels(result).inc()


def fenced(done: int, failed: int) -> None:
    if done:
        FENCINGS.labels("done").inc(done)
    if failed:
        FENCINGS.labels("failed").inc(failed)


# Statuses a VM should pass through, not stay in: how long it has been in one is worth a
# series (alerts); for the settled ones (RUNNING, STOPPED, SUSPENDED) it is not worth the
# scrape's time at tens of thousands of VMs.
PASSING = frozenset(
    {
        Status.PENDING,
        Status.SCHEDULED,
        Status.CREATING,
        Status.KILLED,
        Status.ERROR,
        Status.DELETING,
    }
)


def pending_reason(vm: VM) -> str:
    """Why a PENDING VM waits, as a label with few values (the reason itself names specs)."""
    if vm.fencing:
        return "fencing"  # its dead host's disk clients are not block-listed yet
    if vm.reason.startswith("no host fits"):
        return "no_host_fits"
    if vm.reason.startswith("no hosts"):
        return "no_hosts"
    return "not_tried_yet"


class SchedulerCollector(StateCollector):
    """Reads ``scheduler`` (None while this process does not lead), once it has listed etcd."""

    def __init__(self) -> None:
        super().__init__("scheduler", self.families)
        self.scheduler: Scheduler | None = None

    def families(self) -> Iterable[Metric]:
        s = self.scheduler
        if s is None or not (s.vms.loaded and s.hosts.loaded):
            # A scheduler that has just taken the lead has not listed etcd yet: its empty
            # mirrors would say the cluster has no VMs and no hosts.
            return []
        return [*vm_families(list(s.vms.items.values())), *host_families(s)]


def vm_families(found: list[Versioned[VM]]) -> list[Metric]:
    by_state = gauge(
        "ucloud_vms",
        "VMs by status and desired state (every pair, 0 if none)",
        ["status", "desired"],
    )
    pending = gauge("ucloud_vms_pending", "PENDING VMs by why they wait", ["reason"])
    # One series a VM with all it is known by (name and owner too): the scheduler's scrape
    # costs about 7 µs of CPU a series, and a cluster has tens of thousands of VMs.
    status = gauge(
        "ucloud_vm_status",
        "1 for each VM: its status, desired state, host (empty: none), name and owner",
        ["vm", "status", "desired", "host", "name", "owner"],
    )
    since = gauge(
        "ucloud_vm_status_since_timestamp_seconds",
        "When each VM in a status that should not last (PENDING, SCHEDULED, CREATING, KILLED, "
        "ERROR, DELETING) entered it (Unix time)",
        ["vm", "status"],
    )
    counts: Tally[tuple[str, str]] = Tally()
    reasons: Tally[str] = Tally({r: 0 for r in ("fencing", "no_host_fits", "no_hosts")})
    reasons["not_tried_yet"] = 0
    for v in found:
        vm = v.value
        counts[(vm.status.value, vm.desired.value)] += 1
        if vm.status == Status.PENDING:
            reasons[pending_reason(vm)] += 1
        owner = f"{vm.owner_realm}/{vm.owner}"
        status.add_metric(
            [vm.uuid, vm.status.value, vm.desired.value, vm.hostname, vm.name, owner], 1.0
        )
        if vm.status in PASSING:
            since.add_metric([vm.uuid, vm.status.value], vm.status_since)
    for st in Status:
        for de in Desired:
            by_state.add_metric([st.value, de.value], float(counts[(st.value, de.value)]))
    for reason, n in sorted(reasons.items()):
        pending.add_metric([reason], float(n))
    return [by_state, pending, status, since]


Triple = tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]


def _specs(family: str, what: str) -> Triple:
    return (
        gauge(f"ucloud_host_{family}_cpus", f"CPUs: {what}", ["host"]),
        gauge(f"ucloud_host_{family}_memory_bytes", f"RAM: {what}", ["host"]),
        gauge(f"ucloud_host_{family}_disk_bytes", f"Disk: {what}", ["host"]),
    )


def _add(families: Triple, host: str, specs: Specs) -> None:
    cpu, ram, disk = families
    cpu.add_metric([host], float(specs.cpu))
    ram.add_metric([host], specs.ram * GIB)
    disk.add_metric([host], (specs.hdd + specs.ssd) * GIB)


def host_families(s: Scheduler) -> list[Metric]:
    hosts = list(s.hosts.items.values())
    alive = set(s.alive.items)
    states = dict(s.ledger.states)
    unknown = dict(s.ledger.unknown)
    status = gauge("ucloud_host_status", "1 for each host: its status", ["host", "status"])
    admin = gauge("ucloud_host_admin_state", "1 for each host: its admin state", ["host", "state"])
    is_alive = gauge(
        "ucloud_host_alive", "1 while the host's agent holds its lease (alive key)", ["host"]
    )
    by_state = gauge(
        "ucloud_hosts", "Hosts by status and admin state (every pair)", ["status", "admin_state"]
    )
    capacity = _specs("capacity", "what the host offers")
    allocatable = _specs("allocatable", "capacity x the allocation ratio: what may be placed")
    allocated = _specs("allocated", "what the VMs placed on the host are given (their specs)")
    counts: Tally[tuple[str, str]] = Tally()
    for v in hosts:
        host = v.value
        counts[(host.status.value, host.admin_state.value)] += 1
        status.add_metric([host.name, host.status.value], 1.0)
        admin.add_metric([host.name, host.admin_state.value], 1.0)
        is_alive.add_metric([host.name], 1.0 if host.name in alive else 0.0)
        _add(capacity, host.name, host.capacity)
        state = states.get(host.name)
        if state is not None:
            _add(allocatable, host.name, state.limit)
            _add(allocated, host.name, state.used)
        else:  # not yet in the ledger (it refreshes on its next pass)
            _add(allocated, host.name, unknown.get(host.name, Specs(cpu=0, ram=0)))
    for st in HostStatus:
        for ad in AdminState:
            by_state.add_metric([st.value, ad.value], float(counts[(st.value, ad.value)]))
    return [status, admin, is_alive, by_state, *capacity, *allocatable, *allocated]
