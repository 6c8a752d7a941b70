"""The metrics' pure parts: what the scheduler's collector makes of its mirrors, libvirt's
stats records, the host's measured usage, and the sampler's deadline. (Prometheus itself
scraping the real daemons: tests/test_metrics.py.)"""

from __future__ import annotations

import threading
import time

import pytest
from flask import Flask
from prometheus_client import REGISTRY

from tests.servers import free_port
from tests.unit.agentbed import Storage
from tests.unit.memstore import MemStore
from tests.unit.scrape import scrape
from ucloud.api import metrics as api_metrics
from ucloud.config import load_settings
from ucloud.host.hypervisor import DomainStats, stats_from_record
from ucloud.host.metrics import UsageMeter
from ucloud.metrics import Sampler
from ucloud.models import VM, Alive, Host, HostStatus, Specs
from ucloud.scheduler.daemon import Scheduler
from ucloud.scheduler.metrics import SchedulerCollector
from ucloud.store import Store, Unavailable

GIB = 1 << 30


def test_scheduler_exports_vms_hosts_and_capacity_from_its_mirrors():
    store = MemStore()
    store.create(Host(name="h1", capacity=Specs(cpu=4, ram=8), status=HostStatus.UP))
    store.create(Alive(name="h1"))
    small = VM(name="a", owner="alice", owner_realm="users", specs=Specs(cpu=1, ram=2), image="i")
    huge = VM(name="b", owner="bob", owner_realm="users", specs=Specs(cpu=1, ram=64), image="i")
    store.create(small)
    store.create(huge)
    settings = load_settings(cpu_allocation_ratio=4.0, ram_allocation_ratio=1.0)
    scheduler = Scheduler(store, settings, storage=Storage())  # type: ignore[arg-type]
    collector = SchedulerCollector()
    assert scrape(collector) == {}  # not leading: nothing to say
    collector.scheduler = scheduler
    assert scrape(collector) == {}  # leading, but etcd not listed yet: not "no VMs"

    scheduler.start()
    scheduler.drain(0.1)
    scheduler.step()  # places the small VM; the huge one fits nowhere
    store.flush()
    scheduler.drain(0.1)
    collector.scheduler = scheduler
    got = scrape(collector)

    def value(metric: str, **labels: str) -> float | None:
        return got.get((metric, tuple(sorted(labels.items()))))

    assert value("ucloud_vms", status="SCHEDULED", desired="running") == 1
    assert value("ucloud_vms", status="PENDING", desired="running") == 1
    assert value("ucloud_vms", status="RUNNING", desired="running") == 0
    assert value("ucloud_vms_pending", reason="no_host_fits") == 1
    assert value("ucloud_vms_pending", reason="not_tried_yet") == 0
    status = {"vm": small.uuid, "status": "SCHEDULED", "desired": "running", "host": "h1"}
    assert value("ucloud_vm_status", **status, name="a", owner="users/alice") == 1
    status = {"vm": huge.uuid, "status": "PENDING", "desired": "running", "host": ""}
    assert value("ucloud_vm_status", **status, name="b", owner="users/bob") == 1
    pending = value("ucloud_vm_status_since_timestamp_seconds", vm=huge.uuid, status="PENDING")
    assert pending == store.get(VM, huge.uuid).value.status_since
    since = value("ucloud_vm_status_since_timestamp_seconds", vm=small.uuid, status="SCHEDULED")
    assert since == store.get(VM, small.uuid).value.status_since
    assert value("ucloud_host_status", host="h1", status="UP") == 1
    assert value("ucloud_host_alive", host="h1") == 1
    assert value("ucloud_hosts", status="UP", admin_state="UP") == 1
    assert value("ucloud_host_capacity_cpus", host="h1") == 4
    assert value("ucloud_host_allocatable_cpus", host="h1") == 16
    assert value("ucloud_host_allocated_cpus", host="h1") == 1
    assert value("ucloud_host_allocated_memory_bytes", host="h1") == 2 * GIB
    assert value("ucloud_host_capacity_memory_bytes", host="h1") == 8 * GIB

    # A deleted VM's series are gone at the next scrape.
    store.delete(store.get(VM, huge.uuid))
    store.flush()
    scheduler.drain(0.1)
    assert not [key for key in scrape(collector) if ("vm", huge.uuid) in key[1]]
    assert value("ucloud_vms", status="PENDING", desired="running") == 1  # the old scrape's
    assert scrape(collector)[("ucloud_vms", (("desired", "running"), ("status", "PENDING")))] == 0
    scheduler.stop()


def test_libvirt_records_become_domain_stats():
    record = {
        "cpu.time": 2_500_000_000,
        "vcpu.current": 2,
        "balloon.current": 131072,
        "balloon.rss": 65536,
        "block.count": 2,
        "block.0.rd.bytes": 100,
        "block.1.rd.bytes": 50,
        "block.0.wr.reqs": 3,
        "block.0.allocation": 1 << 20,
        "net.count": 1,
        "net.0.rx.bytes": 7,
        "net.0.tx.bytes": 9,
    }
    stats = stats_from_record(record)
    assert stats.cpu_seconds == 2.5
    assert stats.vcpus == 2
    assert stats.memory_bytes == 128 << 20
    assert stats.memory_rss_bytes == 64 << 20
    assert stats.disk_read_bytes == 150
    assert stats.disk_writes == 3
    assert stats.disk_allocation_bytes == 1 << 20
    assert (stats.net_rx_bytes, stats.net_tx_bytes) == (7, 9)
    # A busy domain (NOWAIT) may answer only part of a record: the rest counts 0.
    assert stats_from_record({"cpu.time": 10**9}) == DomainStats(cpu_seconds=1.0)


def test_used_cpu_counts_only_domains_seen_in_both_samples():
    meter = UsageMeter()
    first = meter.measure({"a": DomainStats(cpu_seconds=10.0)}, now=100.0)
    assert first.cpu == 0  # one sample says nothing of a rate
    later = meter.measure(
        {
            "a": DomainStats(cpu_seconds=25.0, memory_rss_bytes=GIB),  # 15 s of CPU in 10 s
            "b": DomainStats(cpu_seconds=500.0, memory_bytes=GIB / 2),  # new: not counted
        },
        now=110.0,
    )
    assert later.cpu == 1.5
    assert later.ram_bytes == 1.5 * GIB  # rss where known, else what the guest has
    assert later.vms == 2


def test_a_slow_source_does_not_hold_a_scrape_past_the_deadline():
    release = threading.Event()
    calls = []

    def take() -> int:
        calls.append(1)
        if len(calls) > 1:
            release.wait(10)
        return len(calls)

    sampler = Sampler(take, timeout=0.05)
    assert sampler.get() == 1
    started = time.monotonic()
    assert sampler.get() == 1  # the second call hangs: the last sample, at the deadline
    assert sampler.get() == 1  # ... and no second call in flight
    assert time.monotonic() - started < 5
    assert len(calls) == 2
    release.set()
    assert sampler.get() in (2, 3)


def test_api_request_labels_are_routes_never_what_a_client_sent():
    app = Flask(__name__)
    api_metrics.install(app)

    @app.get("/vm/<vmid>")
    def vm(vmid: str) -> str:
        return "ok"

    @app.get("/boom")
    def boom() -> str:
        raise RuntimeError("a bug")

    client = app.test_client()
    secret = "s3cret-of-alice"
    assert client.get(f"/vm/{secret}?token={secret}").status_code == 200
    assert client.get(f"/{secret}/x").status_code == 404
    assert client.get("/boom").status_code == 500  # a failure is counted too

    samples = [
        s
        for family in REGISTRY.collect()
        if family.name.startswith("ucloud_api_")
        for s in family.samples
    ]
    assert not [s for s in samples if any(secret in v for v in s.labels.values())]
    endpoints = {
        (s.labels["endpoint"], s.labels["status"])
        for s in samples
        if s.name == "ucloud_api_requests_total"
    }
    assert {("/vm/<vmid>", "200"), ("unmatched", "404"), ("/boom", "500")} <= endpoints


def test_etcd_requests_that_fail_are_counted_and_timed_by_operation():
    # Nothing listens there: every request fails at once (UcloudEtcdUnreachable compares
    # these failures with all requests).
    store = Store(load_settings(etcd_endpoints=f"127.0.0.1:{free_port()}", etcd_timeout=1))

    def counted(name: str) -> float:
        return REGISTRY.get_sample_value(name, {"operation": "get"}) or 0.0

    errors = counted("ucloud_etcd_request_errors_total")
    requests = counted("ucloud_etcd_request_duration_seconds_count")
    with pytest.raises(Unavailable):
        store.get(VM, "any")
    store.close()
    assert counted("ucloud_etcd_request_errors_total") == errors + 1
    assert counted("ucloud_etcd_request_duration_seconds_count") == requests + 1
