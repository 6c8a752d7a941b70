"""Metrics on the real stack, as an operator sees them: a real Prometheus scrapes the API
(gunicorn, two workers), the scheduler and a host agent running a QEMU guest through libvirt,
evaluates ucloud's shipped alert rules, and the test asks Prometheus's HTTP API, not the
daemons."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.conftest import Account
from tests.prometheus import RULES, Prometheus, rules_without_waits
from tests.servers import Daemon, free_port, wait_for
from tests.stack import Libvirtd, daemon, host_settings, wait_console
from ucloud.config import Settings
from ucloud.models import VM, File, Image, ImageStatus, Status
from ucloud.store import Store

BOOT = "UCLOUD-BOOT-OK"
GIB = 1 << 30


def test_shipped_alert_rules_are_valid():
    result = subprocess.run(
        ["promtool", "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 10 rules found" in result.stdout


def test_alert_rules_fire_when_they_should():
    # promtool's rule unit tests: made-up series through the shipped rules (each alert, its
    # `for:`, its labels and text, and the cases that must not alert).
    tests = Path(__file__).parent / "prometheus_rules" / "ucloud-alerts.test.yml"
    result = subprocess.run(
        ["promtool", "test", "rules", str(tests)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_shipped_scrape_configuration_is_valid_and_scrapes_every_daemon(tmp_path: Path):
    shipped = RULES.parent / "prometheus.yml"
    config = tmp_path / "prometheus.yml"  # its rule file where this checkout has it
    config.write_text(shipped.read_text().replace("/etc/prometheus/ucloud-alerts.yml", str(RULES)))
    result = subprocess.run(
        ["promtool", "check", "config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # A job for each daemon that has a metrics port (console_relay_metrics_port: the job
    # ucloud-console-relay), named as UcloudDaemonDown and the operator manual expect.
    jobs = set(re.findall(r"(?m)^\s*- job_name: (\S+)", shipped.read_text()))
    daemons = {
        "ucloud-" + name.removesuffix("_metrics_port").replace("_", "-")
        for name in Settings.model_fields
        if name.endswith("_metrics_port")
    }
    assert daemons and daemons <= jobs, daemons - jobs


@dataclass
class Monitored:
    store: Store
    api: str
    user: Account
    admin: Account
    prometheus: Prometheus
    agent: Daemon
    host: Settings
    libvirtd: Libvirtd
    uploads: Path

    def upload_image(self, source: Path, name: str) -> str:
        """An image made as a user makes one: a file uploaded, registered by the file
        scanner, turned into an image through the API, imported by the image scanner."""
        shutil.copyfile(source, self.uploads / self.user.name / f"{name}.raw")

        def registered() -> str | None:
            found = [f.value for f in self.store.list(File)[0].values()]
            return found[0].uuid if found else None

        file = wait_for(registered, 30, "the upload to be registered")
        body = self.user.creds(image_name=name, file_uuid=file)
        r = requests.post(f"{self.api}/image/create", json=body, timeout=10)
        assert r.status_code == 202, r.text
        image = r.json()["uuid"]

        def created() -> bool:
            found = self.store.get(Image, image)
            assert found is not None and found.value.status != ImageStatus.ERROR, found
            return found.value.status == ImageStatus.CREATED

        wait_for(created, 60, "the image to be imported")
        return image

    def create(self, name: str, image: str) -> str:
        body = self.user.creds(vm_name=name, specs={"cpu": 1, "ram": 0.125, "ssd": 1}, image=image)
        r = requests.post(f"{self.api}/vm/create", json=body, timeout=10)
        assert r.status_code == 202, r.text
        return r.json()["uuid"]

    def wait_status(self, vmid: str, status: Status) -> VM:
        def reached() -> VM | None:
            found = self.store.get(VM, vmid)
            return found.value if found and found.value.status == status else None

        return wait_for(reached, 90, f"VM {vmid} to be {status}")


@pytest.fixture
def monitored(
    settings: Settings,
    store: Store,
    alice: Account,
    admin: Account,
    libvirtd: Libvirtd,
    guests,
    tmp_path: Path,
) -> Iterator[Monitored]:
    jobs = ("api", "scheduler", "host", "filescanner", "imagescanner")
    ports = {job: free_port() for job in jobs}
    api_port = free_port()
    uploads = tmp_path / "uploads"
    (uploads / "alice").mkdir(parents=True)
    every = settings.model_copy(  # the settings of one machine's env file
        update={
            "metrics_address": "127.0.0.1",
            **{f"{job}_metrics_port": port for job, port in ports.items()},
            "api_bind": f"127.0.0.1:{api_port}",
            "api_workers": 2,
            "storage": "file",
            "image_dir": str(tmp_path / "images"),
            "upload_root": str(uploads),
            "upload_settle": 0.3,
        }
    )
    host = host_settings(
        every, None, libvirtd, "node1", tmp_path / "node1", host_usage_interval=1.0
    )
    started: list[Daemon] = []
    prometheus = None
    try:
        for name, module, own in (
            ("api", "ucloud.api.main", every),
            ("scheduler", "ucloud.scheduler.main", every),
            ("filescanner", "ucloud.filescanner.main", every),
            ("imagescanner", "ucloud.imagescanner.main", every),
            ("host", "ucloud.host.main", host),
        ):
            started.append(daemon(module, own, tmp_path / f"{name}.log"))
        targets = {job: [f"127.0.0.1:{port}"] for job, port in ports.items()}
        rules = rules_without_waits(tmp_path / "rules.yml")
        prometheus = Prometheus(tmp_path / "prometheus", targets, rules)
        api = f"http://127.0.0.1:{api_port}"
        wait_for(lambda: _answers(api), 30, "the API to answer")
        yield Monitored(store, api, alice, admin, prometheus, started[-1], host, libvirtd, uploads)
    finally:
        if prometheus is not None:
            prometheus.stop()
        for d in started:
            d.stop()


def _answers(url: str) -> bool:
    try:
        return requests.get(f"{url}/openapi.json", timeout=1).status_code == 200
    except requests.RequestException:
        return False


def test_prometheus_sees_vms_hosts_requests_and_a_dead_host(monitored: Monitored, guests):
    m, p = monitored, monitored.prometheus
    for job in ("api", "scheduler", "host", "filescanner", "imagescanner"):
        assert p.wait_value(f'up{{job="{job}"}} == 1') == 1
    assert p.wait_value('ucloud_leader{election="scheduler"} == 1') == 1
    assert p.wait_value('ucloud_leader{election="imagescanner"} == 1') == 1

    image = m.upload_image(guests.bootsector, "boot")
    assert p.wait_value("ucloud_files_registered_total == 1") == 1
    assert p.wait_value('ucloud_image_imports_total{result="created"} == 1') == 1
    assert p.value("ucloud_image_import_duration_seconds_count") == 1

    vmid = m.create("web", image)
    m.wait_status(vmid, Status.RUNNING)
    wait_console(Path(m.host.state_dir), vmid, BOOT)

    # The VM, as the scheduler sees it...
    running = (
        f'ucloud_vm_status{{vm="{vmid}",status="RUNNING",desired="running",host="node1",'
        'name="web",owner="users/alice"}'
    )
    assert p.wait_value(running) == 1
    assert p.wait_value('ucloud_vms{status="RUNNING",desired="running"} == 1') == 1
    assert p.value("ucloud_placements_total") == 1
    assert p.value("ucloud_scheduling_latency_seconds_count") == 1
    # ... its host: capacity, what is placed on it, what its agent measured ...
    assert p.value('ucloud_host_status{host="node1",status="UP"}') == 1
    assert p.value('ucloud_host_capacity_cpus{host="node1"}') == 8
    assert p.value('ucloud_host_allocatable_cpus{host="node1"}') == 8 * 4  # cpu ratio 4
    assert p.value('ucloud_host_allocated_cpus{host="node1"}') == 1
    assert p.value('ucloud_host_allocated_memory_bytes{host="node1"}') == GIB / 8
    assert p.wait_value('ucloud_host_used_memory_bytes{host="node1"} > 0') > 0
    # ... and what libvirt counts for it on its host.
    assert p.wait_value(f'ucloud_vm_vcpus{{vm="{vmid}",host="node1"}}') == 1
    assert p.value(f'ucloud_vm_memory_bytes{{vm="{vmid}"}}') == GIB / 8
    cpu = f'ucloud_vm_cpu_seconds_total{{vm="{vmid}",host="node1"}}'
    first = p.wait_value(cpu)
    assert p.wait_value(f"{cpu} > {first}") > first  # its CPU time grows

    # `ucloud host list` (its API call): allocated and measured usage next to the capacity.
    def node1() -> dict | None:
        r = requests.get(f"{m.api}/host/list", params=m.admin.creds(), timeout=10)
        (host,) = r.json()["hosts"]
        return host if host["used"] and host["used"]["vms"] == 1 else None

    host = wait_for(node1, 30, "node1's measured usage")
    assert host["capacity"]["cpu"] == 8
    assert host["allocated"] == {"cpu": 1, "ram": 0.125, "hdd": 0.0, "ssd": 1.0}
    assert 0 < host["used"]["ram"] < 1  # GiB: the QEMU of a 128 MiB guest

    # Requests through both API workers, summed by gunicorn's master.
    for _ in range(6):
        r = requests.get(f"{m.api}/vm/status", params=m.user.creds(id=vmid), timeout=10)
        assert r.status_code == 200
    assert p.wait_value('ucloud_api_requests_total{endpoint="/vm/status",status="200"} == 6') == 6
    assert p.value('ucloud_api_requests_total{endpoint="/vm/create",status="202"}') == 1
    assert p.value('ucloud_api_requests_total{endpoint="/host/list",status="200"}') >= 1
    assert p.value('ucloud_api_request_duration_seconds_count{endpoint="/vm/status"}') == 6
    assert p.value('sum(ucloud_etcd_request_duration_seconds_count{job="api"}) > 0') > 0

    # A scrape of the agent stays within its timeout while its VM's domain is busy with a job
    # (a memory dump that cannot finish until its pipe is read: libvirt's stand-in for the
    # long job of a migration).
    idle = p.value('scrape_duration_seconds{job="host"}')
    assert idle is not None and idle < 1.0
    print(f"host agent scrape: {idle * 1000:.1f} ms")
    with busy_domain(m.libvirtd, vmid, Path(m.host.state_dir)) as busy:
        t0 = p.value('timestamp(up{job="host"})')
        assert p.wait_value(f'timestamp(up{{job="host"}}) > {t0 + 2}')  # two scrapes later
        assert p.value('up{job="host"}') == 1
        duration = p.value('scrape_duration_seconds{job="host"}')
        assert duration is not None and duration < 1.0  # the scrape timeout: it succeeded
        assert busy.proc.poll() is None, "the dump ended early: the domain was not busy"
        print(f"host agent scrape during a domain job: {duration * 1000:.1f} ms")

    # A deleted VM's series are gone.
    r = requests.post(f"{m.api}/vm/delete", json=m.user.creds(vmid=vmid), timeout=10)
    assert r.status_code == 202, r.text
    wait_for(lambda: m.store.get(VM, vmid) is None, 60, "the VM to be deleted")
    wait_for(lambda: not p.query(f'{{vm="{vmid}"}}'), 30, "the VM's series to be gone")
    assert p.value('ucloud_vms{status="RUNNING",desired="running"}') == 0

    # The host agent dies: its host goes DEAD and the shipped rule fires.
    m.agent.stop(signal.SIGKILL)
    firing = 'ALERTS{alertname="UcloudHostDead",alertstate="firing",host="node1"}'
    assert p.wait_value(firing, timeout=60) == 1
    assert p.value('up{job="host"}') == 0


class busy_domain:
    """A job on the domain that lasts until the block ends: ``virsh dump`` into a FIFO that
    nobody reads (libvirtd blocks opening or writing it, holding the domain's job meanwhile:
    even ``virsh domjobinfo`` of the domain waits)."""

    def __init__(self, libvirtd: Libvirtd, vmid: str, scratch: Path) -> None:
        self.fifo = scratch / "dump.fifo"
        self.argv = ["virsh", "-c", libvirtd.uri, "dump", "--memory-only", f"ucloud-{vmid}"]
        self.libvirtd, self.vmid = libvirtd, vmid

    def __enter__(self) -> busy_domain:
        os.mkfifo(self.fifo)
        self.proc = subprocess.Popen(
            [*self.argv, str(self.fifo)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )

        return self

    def __exit__(self, *exc: object) -> None:
        # Read the FIFO to its end: the dump finishes, the job ends, the domain runs on.
        reader = threading.Thread(target=lambda: self.fifo.read_bytes(), daemon=True)
        reader.start()
        try:
            self.proc.wait(timeout=60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            reader.join(10)
            self.fifo.unlink(missing_ok=True)
