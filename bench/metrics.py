"""Metrics: what being scraped costs a host agent with 1,000 VMs.

etcd and one ucloud-host agent as processes; the agent has 1,000 VMs (1 vCPU, 128 MiB each),
written to etcd as the scheduler leaves them (SCHEDULED on its host) and started by the agent
itself. They run on the **fake hypervisor**: 1,000 QEMU guests do not fit on this machine
(2 cores, TCG). The fake answers the bulk domain statistics with records of the shape libvirt
gives, read by the same code as libvirt's (``stats_from_record``), so what is measured is the
agent's whole scrape but for libvirtd's own work in ``virConnectGetAllDomainStats``.

The agent's CPU is measured (from /proc) over the same length of time twice in one run:
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
    with urllib.request.urlopen(request, timeout=10) as reply:
        return reply.read()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.metrics", description=__doc__.splitlines()[0])
    parser.add_argument("--vms", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=120.0, help="of each window")
    parser.add_argument("--interval", type=float, default=5.0, help="between scrapes")
    parser.add_argument("--quick", action="store_true", help="30 s windows")
    parser.add_argument("--record", action="store_true")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds = 30.0

    with workdir("metrics", args.keep) as wd, etcd_server(wd) as etcd:
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

        with running(daemon("ucloud.host.main", agent_settings, wd / "agent.log")) as agent:

            def all_running() -> bool:
                vms, _ = store.list(VM)
                n = sum(1 for v in vms.values() if v.value.status == Status.RUNNING)
                log(f"{n} of {args.vms} VMs RUNNING")
                return n == args.vms

            wait_for(all_running, 1800, "every VM to run", interval=10)
            url = f"http://127.0.0.1:{port}/metrics"
            first = scrape(url, gzip=False)  # warm-up, and a look
            time.sleep(args.interval)

            log(f"idle for {args.seconds:g} s")
            idle = Window({"agent": agent.pid})
            time.sleep(args.seconds)
            idle.close()

            log(f"scraped every {args.interval:g} s for {args.seconds:g} s")
            durations: list[float] = []
            sizes: list[int] = []
            scraped = Window({"agent": agent.pid})
            deadline = time.monotonic() + args.seconds
            while time.monotonic() < deadline:
                started = time.monotonic()
                body = scrape(url)
                durations.append(time.monotonic() - started)
                sizes.append(len(body))
                time.sleep(max(0.0, args.interval - (time.monotonic() - started)))
            scraped.close()

        series = sum(1 for line in first.decode().splitlines() if not line.startswith("#"))
        per_vm = sum(
            1 for line in first.decode().splitlines() if line.startswith("ucloud_vm_cpu_seconds")
        )
        assert per_vm == args.vms, f"{per_vm} VMs in the scrape, not {args.vms}"
        extra_ms = 1000 * (
            scraped.cpu["agent"] - idle.cpu["agent"] * scraped.seconds / idle.seconds
        )
        rows = [
            ["idle (not scraped): reference", f"{idle.percent('agent'):.2f} %", "-", "-", "-"],
            [
                f"scraped every {args.interval:g} s ({len(durations)} scrapes)",
                f"{scraped.percent('agent'):.2f} %",
                f"{extra_ms / max(1, len(durations)):.0f} ms",
                f"{1000 * pct(durations, 50):.0f} / {1000 * max(durations):.0f} ms",
                f"{series:,} series, {len(first) >> 10} KiB ({pct(sizes, 50) / 1024:.0f} gzipped)",
            ],
        ]
        text = (
            f"{args.vms} VMs on one host agent (fake hypervisor), windows of {args.seconds:g} s\n\n"
            + table(
                [
                    "agent",
                    "CPU (of one core)",
                    "CPU a scrape (over idle)",
                    "scrape p50 / max",
                    "a scrape",
                ],
                rows,
            )
        )
        print(text)
        if args.record:
            record("metrics", text)
        store.close()
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(main())
