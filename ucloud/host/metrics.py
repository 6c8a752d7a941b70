"""The host agent's metrics: each running VM's use of CPU, memory, disk and network (libvirt's
bulk domain statistics, read at scrape time with a deadline), the host's measured usage, and
its VMs' crashes and restarts.

Per-VM series come from the domains running now, so a deleted VM's series are gone at the
next scrape. The measured usage is also written to etcd (``HostUsage``, bound to the host's
lease) for ``ucloud host list``, at most every ``host_usage_interval`` and only when it changed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from ucloud.config import Settings
from ucloud.host.hypervisor import DomainStats
from ucloud.metrics import Sampler, StateCollector, counter_family, gauge
from ucloud.models import HostUsage
from ucloud.store import StoreError

if TYPE_CHECKING:
    from ucloud.host.agent import HostAgent

log = logging.getLogger(__name__)

GIB = float(1 << 30)

CRASHES = Counter(
    "ucloud_vm_crashes_total",
    "QEMU deaths of VMs that should run on this host (each counted once, when KILLED is written)",
)
RESTARTS = Counter("ucloud_vm_restarts_total", "VMs restarted on this host after their QEMU died")
MIGRATIONS = Counter(
    "ucloud_migrations_total",
    "Live migrations this host's agent ended: the VM moved to the target (result=done) or "
    "stayed on its source (result=failed, aborts included)",
    ["result"],
)

# (name, help, DomainStats field, counter?) of the per-VM series
VM_SERIES: tuple[tuple[str, str, str, bool], ...] = (
    ("ucloud_vm_cpu_seconds", "CPU time the VM's vCPUs and QEMU used", "cpu_seconds", True),
    ("ucloud_vm_vcpus", "vCPUs of the VM", "vcpus", False),
    ("ucloud_vm_memory_bytes", "RAM the guest has (balloon)", "memory_bytes", False),
    ("ucloud_vm_memory_rss_bytes", "Host RAM the VM's QEMU holds", "memory_rss_bytes", False),
    ("ucloud_vm_disk_read_bytes", "Bytes the VM read from its disks", "disk_read_bytes", True),
    (
        "ucloud_vm_disk_written_bytes",
        "Bytes the VM wrote to its disks",
        "disk_write_bytes",
        True,
    ),
    ("ucloud_vm_disk_reads", "Read requests to the VM's disks", "disk_reads", True),
    ("ucloud_vm_disk_writes", "Write requests to the VM's disks", "disk_writes", True),
    (
        "ucloud_vm_network_receive_bytes",
        "Bytes the VM's NICs received",
        "net_rx_bytes",
        True,
    ),
    (
        "ucloud_vm_network_transmit_bytes",
        "Bytes the VM's NICs sent",
        "net_tx_bytes",
        True,
    ),
)


@dataclass(frozen=True)
class Usage:
    cpu: float  # CPUs busy on average over the interval measured
    ram_bytes: float
    disk_bytes: float
    vms: int


class UsageMeter:
    """CPUs busy between two samples, from each domain's CPU time (domains in both only: one
    that started or stopped between them would count its whole life or a negative one)."""

    def __init__(self) -> None:
        self._last: tuple[float, dict[str, float]] | None = None

    def measure(self, stats: dict[str, DomainStats], now: float) -> Usage:
        cpu_times = {vm: s.cpu_seconds for vm, s in stats.items()}
        busy = 0.0
        if self._last is not None and now > self._last[0]:
            then, before = self._last
            used = sum(max(0.0, t - before[vm]) for vm, t in cpu_times.items() if vm in before)
            busy = used / (now - then)
        self._last = (now, cpu_times)
        ram = sum(s.memory_rss_bytes or s.memory_bytes for s in stats.values())
        disk = sum(s.disk_allocation_bytes for s in stats.values())
        return Usage(busy, ram, disk, len(stats))


class HostMetrics:
    def __init__(self, agent: HostAgent, settings: Settings) -> None:
        self.agent = agent
        self.settings = settings
        self.host = settings.hostname
        self.sampler = Sampler(agent.hv.stats, settings.host_stats_timeout)
        self.meter = UsageMeter()
        self.usage: Usage | None = None  # the last measurement
        self._written: tuple[int, HostUsage] | None = None  # (lease id, record) last written
        self.collector = StateCollector("host", self.families)

    # --- scrape --------------------------------------------------------------------------------

    def families(self) -> Iterable[Metric]:
        stats: dict[str, DomainStats] = self.sampler.get() or {}
        host = self.host
        out: list[Metric] = []
        for name, doc, field, is_counter in VM_SERIES:
            family: CounterMetricFamily | GaugeMetricFamily = (
                counter_family(name, doc, ["vm", "host"])
                if is_counter
                else gauge(name, doc, ["vm", "host"])
            )
            for vm, s in stats.items():
                family.add_metric([vm, host], float(getattr(s, field)))
            out.append(family)

        crashes = gauge(
            "ucloud_vm_recent_crashes",
            "QEMU deaths within crash_window of each VM placed on this host "
            "(past crash_limit: ERROR)",
            ["vm", "host"],
        )
        window = self.settings.crash_window
        now = time.monotonic()
        # The agent remembers deaths for crash_window whatever became of the VM; a VM stopped
        # or moved since is no longer this host's to report (nor to alert on as crash-looping).
        with self.agent.lock:
            placed = {id for id, v in self.agent.vms.items.items() if v.value.hostname == host}
        for vm, times in dict(self.agent.crashes).items():
            recent = sum(1 for t in list(times) if now - t < window)
            if recent and vm in placed:
                crashes.add_metric([vm, host], float(recent))
        out.append(crashes)

        age = gauge(
            "ucloud_host_stats_age_seconds",
            "Age of the domain statistics this scrape got (large: libvirtd is slow to answer)",
            ["host"],
        )
        if self.sampler.taken_at:
            age.add_metric([host], now - self.sampler.taken_at)
        lease = gauge(
            "ucloud_host_lease_remaining_seconds",
            "Seconds the host's etcd lease surely lasts (0: lost; its VMs are stopped)",
            ["host"],
        )
        lease.add_metric([host], self.agent.lease_left())
        out += [age, lease]

        usage = self.usage
        if usage is not None:
            for name, doc, value in (
                ("ucloud_host_used_cpus", "CPUs the host's VMs kept busy", usage.cpu),
                ("ucloud_host_used_memory_bytes", "RAM the VMs' QEMUs hold", usage.ram_bytes),
                ("ucloud_host_used_disk_bytes", "Disk the VMs have written", usage.disk_bytes),
            ):
                family = gauge(name, f"{doc} (measured every host_usage_interval)", ["host"])
                family.add_metric([host], value)
                out.append(family)
        return out

    # --- measured usage, to etcd ---------------------------------------------------------------

    def report_usage(self, stop: threading.Event) -> None:
        """Measure every ``host_usage_interval`` (the first CPU figure needs two samples)."""
        self.measure()
        while not stop.wait(self.settings.host_usage_interval):
            self.measure()
            self.publish()

    def measure(self) -> None:
        stats = self.sampler.get()
        if stats is not None:
            self.usage = self.meter.measure(stats, time.monotonic())

    def publish(self) -> None:
        usage, keepalive = self.usage, self.agent.keepalive
        if usage is None or keepalive is None or self.agent.lease_left() <= 0:
            return
        record = HostUsage(
            name=self.host,
            cpu=round(usage.cpu, 1),
            ram=round(usage.ram_bytes / GIB, 2),
            disk=round(usage.disk_bytes / GIB, 1),
            vms=usage.vms,
        )
        lease_id = keepalive.lease.id
        if self._written is not None:
            was_lease, was = self._written
            if was_lease == lease_id and was.model_dump(exclude={"measured"}) == record.model_dump(
                exclude={"measured"}
            ):
                return  # unchanged: no write (a cluster of hosts must not stream to etcd)
        try:
            self.agent.store.put_owned(record, keepalive.lease)
        except StoreError as e:
            log.warning("could not record the host's usage: %s", e)
            return
        self._written = (lease_id, record)
