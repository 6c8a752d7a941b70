"""Metrics: what being scraped costs a host agent with 1,000 VMs, and the scheduler with
10,000 VMs on 1,000 hosts.

Agent: etcd and one ucloud-host agent as processes; the agent has 1,000 VMs (1 vCPU, 128 MiB each),
written to etcd as the scheduler leaves them (SCHEDULED on its host) and started by the agent
itself. They run on the **fake hypervisor**: 1,000 QEMU guests do not fit on this machine
(2 cores, TCG). The fake answers the bulk domain statistics with records of the shape libvirt
gives, read by the same code as libvirt's (``stats_from_record``), so what is measured is the
agent's whole scrape but for libvirtd's own work in ``virConnectGetAllDomainStats``.

Scheduler: on a fresh etcd, 1,000 hosts (records and alive keys, as bench.scheduling makes
them) and 10,000 VMs RUNNING on them (written as their agents would leave them; no agent
runs), mirrored by a ucloud-scheduler process: a cluster at rest. Its scrape holds a series for
every VM and a few for every host.

Each daemon's CPU is measured (from /proc) over the same length of time twice in one run:
idle (nothing scrapes it: its reference) and scraped every 5 s as Prometheus does (an HTTP GET
of /metrics, as text, gzipped, as Prometheus asks for it); each scrape's duration, size (as
sent) and series are recorded.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
import urllib.request

from bench.common import (
    Window,
    bench_settings,
    daemon,
    etcd_server,
    free_port,
    log,
    pct,
    record,
    running,
    table,
    wait_for,
    workdir,
)
from bench.scheduling import add_hosts
from tests.conftest import register_image
from ucloud.models import VM, Specs, Status
from ucloud.storage.file import FileStorage
from ucloud.store import Store


def scrape(url: str, gzip: bool = True) -> bytes:
    """One scrape as Prometheus makes it (2.42 asks for the text format, gzipped)."""
    headers = {"Accept": "text/plain;version=0.0.4;q=1,*/*;q=0.1"}
    if gzip:
        headers["Accept-Encoding"] = "gzip"
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=30) as reply:
        return reply.read()


def sample_value(text: str, prefix: str) -> float:
    """The value of the first sample line that starts with ``prefix`` (0 if none)."""
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def measure(what: str, pid: int, url: str, args: argparse.Namespace) -> list[list[object]]:
    """Two rows: idle, then scraped every ``args.interval`` s, each ``args.seconds`` long."""
    first = scrape(url, gzip=False)  # warm-up, and a look
    time.sleep(args.interval)
    log(f"{what}: idle for {args.seconds:g} s")
    idle = Window({what: pid})
    time.sleep(args.seconds)
    idle.close()

    log(f"{what}: scraped every {args.interval:g} s for {args.seconds:g} s")
    durations: list[float] = []
    sizes: list[int] = []
    scraped = Window({what: pid})
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline:
        started = time.monotonic()
        body = scrape(url)
        durations.append(time.monotonic() - started)
        sizes.append(len(body))
        time.sleep(max(0.0, args.interval - (time.monotonic() - started)))
    scraped.close()

    series = sum(1 for line in first.decode().splitlines() if not line.startswith("#"))
    extra_ms = 1000 * (scraped.cpu[what] - idle.cpu[what] * scraped.seconds / idle.seconds)
    return [
        [f"{what}, idle (not scraped): reference", f"{idle.percent(what):.2f} %", "-", "-", "-"],
        [
            f"{what}, scraped every {args.interval:g} s ({len(durations)} scrapes)",
            f"{scraped.percent(what):.2f} %",
            f"{extra_ms / max(1, len(durations)):.0f} ms",
            f"{1000 * pct(durations, 50):.0f} / {1000 * max(durations):.0f} ms",
            f"{series:,} series, {len(first) >> 10} KiB ({pct(sizes, 50) / 1024:.0f} gzipped)",
        ],
    ]


def bench_agent(args: argparse.Namespace) -> list[list[object]]:
    with workdir("metrics-agent", args.keep) as wd, etcd_server(wd) as etcd:
        port = free_port()
        settings = bench_settings(etcd)
        agent_settings = settings.model_copy(
            update={
                "hostname": "bench-host",
                "hypervisor": "fake",
                "storage": "file",
                "host_cpu": 1024,
                "host_ram": args.vms * 0.125 + 1,
                "state_dir": str(wd / "agent"),
                "image_dir": str(wd / "images"),
                "vnc_dir": tempfile.mkdtemp(prefix="ucvnc-"),
                "host_metrics_port": port,
                "metrics_address": "127.0.0.1",
            }
        )
        store = Store(settings)
        source = wd / "tiny.raw"
        source.write_bytes(b"\0" * (1 << 20))
        image = register_image(
            store, FileStorage(agent_settings), str(source), "tiny", "root", "ucloud-admin"
        )
        log(f"writing {args.vms} VMs placed on bench-host")
        for n in range(args.vms):
            vm = VM(
                name=f"vm{n}",
                owner="alice",
                owner_realm="users",
                specs=Specs(cpu=1, ram=0.125, ssd=1),
                image=image.uuid,
                hostname="bench-host",
                status=Status.SCHEDULED,
            )
            store.create(vm)
        url = f"http://127.0.0.1:{port}/metrics"
        with running(daemon("ucloud.host.main", agent_settings, wd / "agent.log")) as agent:

            def all_running() -> bool:
                vms, _ = store.list(VM)
                n = sum(1 for v in vms.values() if v.value.status == Status.RUNNING)
                log(f"{n} of {args.vms} VMs RUNNING")
                return n == args.vms

            wait_for(all_running, 1800, "every VM to run", interval=10)
            text = scrape(url, gzip=False).decode()
            per_vm = text.count("\nucloud_vm_cpu_seconds_total{")
            assert per_vm == args.vms, f"{per_vm} VMs in the scrape, not {args.vms}"
            rows = measure(f"agent, {args.vms:,} VMs", agent.pid, url, args)
        store.close()
    return rows


def bench_scheduler(args: argparse.Namespace) -> list[list[object]]:
    with workdir("metrics-scheduler", args.keep) as wd, etcd_server(wd) as etcd:
        port = free_port()
        settings = bench_settings(
            etcd,
            scheduler_metrics_port=port,
            metrics_address="127.0.0.1",
            scheduled_deadline=3600.0,  # no agent takes them up
        )
        store = Store(settings)
        keepalive = store.hold_lease(60, lambda: None)
        add_hosts(store, args.hosts, keepalive.lease)
        log(f"writing {args.scheduler_vms} VMs RUNNING on the hosts")
        for n in range(args.scheduler_vms):
            store.create(
                VM(
                    name=f"vm{n}",
                    owner="alice",
                    owner_realm="users",
                    specs=Specs(cpu=1, ram=1, ssd=10),
                    image="bench-image",
                    hostname=f"h{n % args.hosts:05d}",  # as bench.scheduling names hosts
                    status=Status.RUNNING,
                )
            )
        url = f"http://127.0.0.1:{port}/metrics"
        what = f"scheduler, {args.scheduler_vms:,} VMs on {args.hosts:,} hosts"
        with running(daemon("ucloud.scheduler.main", settings, wd / "scheduler.log")) as sched:

            def all_seen() -> bool:
                try:
                    text = scrape(url, gzip=False).decode()
                except OSError:  # not listening yet
                    return False
                n = sample_value(text, 'ucloud_vms{desired="running",status="RUNNING"}')
                log(f"the scheduler exports {n:.0f} of {args.scheduler_vms} VMs RUNNING")
                return n == args.scheduler_vms

            wait_for(all_seen, 1800, "the scheduler to export every VM", interval=5)
            rows = measure(what, sched.pid, url, args)
        keepalive.stop(revoke=True)
        store.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.metrics", description=__doc__.splitlines()[0])
    parser.add_argument("--vms", type=int, default=1000, help="on the host agent")
    parser.add_argument("--scheduler-vms", type=int, default=10000)
    parser.add_argument("--hosts", type=int, default=1000, help="the scheduler's")
    parser.add_argument("--only", default="agent,scheduler")
    parser.add_argument("--seconds", type=float, default=120.0, help="of each window")
    parser.add_argument("--interval", type=float, default=5.0, help="between scrapes")
    parser.add_argument("--quick", action="store_true", help="30 s windows")
    parser.add_argument("--record", action="store_true")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds = 30.0
    parts = args.only.split(",")
    rows: list[list[object]] = []
    if "agent" in parts:
        rows += bench_agent(args)
    if "scheduler" in parts:
        rows += bench_scheduler(args)
    text = f"Windows of {args.seconds:g} s; the agent's VMs on the fake hypervisor\n\n" + table(
        ["daemon", "CPU (of one core)", "CPU a scrape (over idle)", "scrape p50 / max", "a scrape"],
        rows,
    )
    print(text)
    if args.record:
        record("metrics", text)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(main())
