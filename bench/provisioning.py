"""VM provisioning latency on the real stack: etcd, Ceph RBD, a private libvirtd, QEMU (TCG),
the boot-sector test guest; ucloud-api (gunicorn), the scheduler and one host agent as
processes. N VMs are created through the API 100 ms apart (as KubeVirt's performance job
does), and each one's way from the request to RUNNING is taken apart with its event log:

    request sent -> created (API)   -> SCHEDULED (scheduler)   -> CREATING (agent claims it)
    -> QEMU process started (disk clone, domain defined)       -> RUNNING (agent sees it run)

The QEMU start is read from /proc (the process's start time). To keep 2 cores usable, at most
--max-live VMs are kept: beyond that the oldest running ones are deleted through the API as
the run goes (their deletion is part of the load).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from etcd3.etcdrpc import kv_pb2

from bench.common import (
    Window,
    bench_settings,
    ceph_cluster,
    daemon,
    etcd_server,
    free_port,
    log,
    machine,
    pct,
    record,
    running,
    single_txn_rate,
    table,
    wait_for,
    with_ceph,
    workdir,
)
from tests.conftest import make_account, register_image
from tests.stack import (
    GUEST_DIR,
    SCRIPTS,
    host_settings,
    qemu_pid,
    run_script,
    start_libvirtd,
    stop_libvirtd,
)
from ucloud import auth
from ucloud.models import VM
from ucloud.storage.rbd import RBDStorage
from ucloud.store import Store, WatchStream

SPECS = {"cpu": 1, "ram": 0.125, "ssd": 1}
SLO_P99 = 5.0  # Kubernetes' pod start-up objective, seconds
AIM_P95 = 2.0


def machine_busy() -> float:
    """CPU seconds the whole machine has spent busy (all cores) since boot."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def boot_time() -> float:
    """Wall-clock time of the machine's boot, to a clock tick."""
    return time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)


def process_start(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
    except OSError:
        return None
    return BOOT + ticks / os.sysconf("SC_CLK_TCK")


BOOT = boot_time()


class Tracker:
    """Watches the VMs: keeps each one's value when it is first seen RUNNING (or ERROR), and
    the start time of its QEMU process."""

    def __init__(self, store: Store, revision: int) -> None:
        self.store = store
        self.running: dict[str, dict[str, Any]] = {}
        self.qemu_start: dict[str, float] = {}
        self.failed: dict[str, str] = {}
        self.gone: set[str] = set()
        self.cond = threading.Condition()
        # Made here, not in the thread, so that stop() always finds it.
        self._call = WatchStream(store, store.folder(VM), revision, prefix=True)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        prefix = self.store.folder(VM).encode()
        with contextlib.suppress(Exception):
            for response in self._call:
                for event in response.events:
                    id = event.kv.key[len(prefix) :].decode()
                    if event.type == kv_pb2.Event.DELETE:
                        with self.cond:
                            self.gone.add(id)
                            self.cond.notify_all()
                        continue
                    value = event.kv.value
                    if b'"status":"RUNNING"' in value and id not in self.running:
                        pid = qemu_pid(id)
                        started = process_start(pid) if pid else None
                        with self.cond:
                            self.running[id] = json.loads(value)
                            if started is not None:
                                self.qemu_start[id] = started
                            self.cond.notify_all()
                    elif b'"status":"ERROR"' in value:
                        with self.cond:
                            self.failed[id] = json.loads(value)["reason"]
                            self.cond.notify_all()

    def stop(self) -> None:
        self._call.cancel()


class Client:
    def __init__(self, url: str, account: Any) -> None:
        self.url, self.account = url, account

    def post(self, path: str, **fields: Any) -> dict[str, Any]:
        body = {
            "name": self.account.name,
            "realm": self.account.realm,
            "token": auth.current_token(self.account.secret),
            **fields,
        }
        request = urllib.request.Request(
            self.url + path,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=60) as r:
            return json.loads(r.read())


def event_time(vm: dict[str, Any], prefix: str) -> float | None:
    times = [e["time"] for e in vm["log"] if e["message"].startswith(prefix)]
    return times[-1] if times else None


def reference_clone(storage: RBDStorage, image: str, n: int = 5) -> float:
    """create_disk alone, median of ``n``: what the disk clone costs without the agent."""
    times = []
    for i in range(n):
        start = time.perf_counter()
        storage.create_disk(f"bench-ref-{i}", image, SPECS["ssd"])
        times.append(time.perf_counter() - start)
        storage.delete_disk(f"bench-ref-{i}")
    return statistics.median(times)


def reference_boot(disk: Path) -> float:
    """Plain QEMU (TCG), started by hand, to the guest's boot marker (scripts' own check)."""
    out = subprocess.run(
        ["bash", str(SCRIPTS / "guest-boot-check.sh"), str(disk), "UCLOUD-BOOT-OK", "30"],
        env={**os.environ, "GUEST_ACCEL": "tcg", "GUEST_MEM": "128"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    m = re.search(r"after ([0-9.]+) ?s", out)
    return float(m.group(1)) if m else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.provisioning", description=__doc__.splitlines()[0])
    parser.add_argument("--vms", type=int, default=None, help="VMs to create (100)")
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between creations")
    parser.add_argument("--max-live", type=int, default=20, help="VMs kept at once (see above)")
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--host-workers", type=int, default=4, help="the agent's (default 4)")
    parser.add_argument(
        "--host-resync",
        type=float,
        default=3600.0,
        help="the agent's periodic resync, s (default 3600: with its default, 30, the agent"
        " dies when a domain vanishes while it lists them, see RESULTS.md)",
    )
    parser.add_argument("--quick", action="store_true", help="20 VMs")
    parser.add_argument("--record", action="store_true", help="write the table to RESULTS.md")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    n = args.vms or (20 if args.quick else 100)
    log(f"machine: {machine()}")

    log("guests")
    run_script(str(SCRIPTS / "build-guests.sh"), str(GUEST_DIR), timeout=900)
    bootsector = GUEST_DIR / "bootsector.raw"
    with contextlib.ExitStack() as stack:
        wd = stack.enter_context(workdir("provisioning", keep=args.keep))
        etcd = stack.enter_context(etcd_server(wd))
        log("Ceph")
        ceph = stack.enter_context(ceph_cluster(wd))
        log("libvirtd")
        lv = start_libvirtd(wd / "lv")
        stack.callback(stop_libvirtd, lv)
        settings = with_ceph(bench_settings(etcd, api_bind=f"127.0.0.1:{free_port()}"), ceph)
        host = host_settings(
            settings,
            ceph,
            lv,
            "node1",
            wd / "node1",
            # Room for all: no VM waits for room (4 vCPUs a CPU: cpu_allocation_ratio).
            host_cpu=max(8, (n + 2) // 4 + 1),
            host_ram=max(8.0, (n + 2) * SPECS["ram"]),
            host_resync=args.host_resync,
            host_workers=args.host_workers,
        )
        store = Store(settings)
        storage = RBDStorage(host)
        image = register_image(
            store, storage, str(bootsector), "bootsector", "root", "ucloud-admin"
        )
        alice = make_account(store, "alice")
        log("references")
        raw = single_txn_rate(store, 2.0)
        clone_ref = reference_clone(storage, image.uuid)
        boot_ref = reference_boot(bootsector)

        api = stack.enter_context(running(daemon("ucloud.api.main", settings, wd / "api.log")))
        scheduler = stack.enter_context(
            running(daemon("ucloud.scheduler.main", settings, wd / "scheduler.log"))
        )
        agent = stack.enter_context(running(daemon("ucloud.host.main", host, wd / "agent.log")))
        url = f"http://{settings.api_bind}"
        client = Client(url, alice)
        wait_for(lambda: _answers(url), 30, "the API")
        _wait_host(store)

        # Warm up: one VM through the whole chain (first libvirt connection, imports...).
        log("warm-up VM")
        _, revision = store.list(VM)
        tracker = Tracker(store, revision + 1)
        first = client.post("/vm/create", vm_name="warmup", specs=SPECS, image=image.uuid)["uuid"]
        _wait(tracker, lambda: first in tracker.running or first in tracker.failed, 120, agent)
        client.post("/vm/delete", vmid=first)
        _wait(tracker, lambda: first in tracker.gone, 60, agent)

        pids = {
            "ucloud-api": api.pid,
            "scheduler": scheduler.pid,
            "host agent": agent.pid,
            "etcd": etcd.proc.pid,
            "libvirtd": int((lv.dir / "libvirtd.pid").read_text().strip()),
            "ceph-osd": int((ceph.dir / "run" / "osd.0.pid").read_text().strip()),
            "ceph-mon": int((ceph.dir / "run" / "mon.a.pid").read_text().strip()),
        }
        log(f"{n} VMs, {args.interval:g} s apart, at most {args.max_live} kept")
        window = Window(pids)
        busy0 = machine_busy()
        sent: dict[str, tuple[float, float]] = {}  # id -> (request sent, answered)
        deleted: list[str] = []
        stop_deleter = threading.Event()

        def deleter() -> None:
            while not stop_deleter.is_set():
                with tracker.cond:
                    tracker.cond.wait(0.2)
                    live = [i for i in tracker.running if i in sent and i not in deleted]
                for vmid in live[: max(0, len(live) - args.max_live)]:
                    deleted.append(vmid)
                    try:
                        client.post("/vm/delete", vmid=vmid)
                    except OSError as e:
                        log(f"could not delete VM {vmid}: {e}")

        reaper = threading.Thread(target=deleter, daemon=True)
        reaper.start()
        next_at = time.monotonic()
        for i in range(n):
            time.sleep(max(0.0, next_at - time.monotonic()))
            next_at += args.interval
            t0 = time.time()
            vmid = client.post("/vm/create", vm_name=f"p{i}", specs=SPECS, image=image.uuid)["uuid"]
            sent[vmid] = (t0, time.time())
        _wait(
            tracker,
            lambda: all(v in tracker.running or v in tracker.failed for v in sent),
            args.timeout,
            agent,
            scheduler,
        )
        window.close()
        busy = (machine_busy() - busy0) / window.seconds * 100
        stop_deleter.set()
        reaper.join()
        log("cleaning up")
        for vmid in sent:
            if vmid not in deleted:
                client.post("/vm/delete", vmid=vmid)
        _wait(tracker, lambda: all(v in tracker.gone for v in sent), args.timeout, agent)
        tracker.stop()

    phases: dict[str, list[float]] = {
        k: []
        for k in (
            "total",
            "api",
            "scheduling",
            "agent pick-up",
            "disk + define",
            "domain start",
        )
    }
    for vmid, (t0, t1) in sent.items():
        vm = tracker.running.get(vmid)
        if vm is None:
            continue
        created = vm["created"]
        scheduled = event_time(vm, "PENDING -> SCHEDULED")
        creating = event_time(vm, "SCHEDULED -> CREATING")
        run = event_time(vm, "CREATING -> RUNNING")
        qemu = tracker.qemu_start.get(vmid)
        if None in (scheduled, creating, run):
            continue
        phases["total"].append(run - t0)
        phases["api"].append(t1 - t0)
        phases["scheduling"].append(scheduled - created)
        phases["agent pick-up"].append(creating - scheduled)
        if qemu is not None:
            phases["disk + define"].append(qemu - creating)
            phases["domain start"].append(run - qemu)

    refs = {
        "total": f"SLO p99 {SLO_P99:g} s; aim p95 {AIM_P95:g} s",
        "api": "-",
        "scheduling": f"one etcd txn {1000 / raw:.1f} ms",
        "agent pick-up": f"one etcd txn {1000 / raw:.1f} ms",
        "disk + define": f"create_disk alone {1000 * clone_ref:.0f} ms",
        "domain start": f"plain QEMU to boot marker {1000 * boot_ref:.0f} ms",
    }
    what = {
        "total": "request sent -> RUNNING",
        "api": "request sent -> answered (202)",
        "scheduling": "created -> SCHEDULED",
        "agent pick-up": "SCHEDULED -> CREATING",
        "disk + define": "CREATING -> QEMU process started",
        "domain start": "QEMU started -> RUNNING",
    }
    rows = [
        [
            name,
            what[name],
            len(v),
            1000 * pct(v, 50),
            1000 * pct(v, 95),
            1000 * pct(v, 99),
            refs[name],
        ]
        for name, v in phases.items()
    ]
    text = table(["phase", "from -> to", "VMs", "p50 ms", "p95 ms", "p99 ms", "reference"], rows)
    cpu = ", ".join(f"{k} {window.percent(k):.0f} %" for k in pids)
    cpu += f"; the whole machine (QEMUs too) {busy:.0f} %"
    cpu += f", {busy / 100 * window.seconds / n:.2f} CPU-seconds a VM over {window.seconds:.0f} s"
    notes = (
        f"- {n} VMs ({SPECS['cpu']} vCPU, {SPECS['ram']:g} GiB RAM, {SPECS['ssd']} GiB RBD "
        f"clone of the boot-sector image), created through ucloud-api {args.interval:g} s "
        f"apart; at most {args.max_live} kept running (older ones deleted through the API "
        f"during the run: {len(deleted)} deleted). TCG (`accel=qemu`), host_workers "
        f"{host.host_workers}, host_resync {host.host_resync:g} s. "
        f"{len(tracker.failed)} went to ERROR.\n"
        f"- CPU during the run (% of one core; 2 cores = 200 %): {cpu}.\n"
        "- References measured in this run: a single etcd transaction (1 client), "
        "RBDStorage.create_disk called directly, plain QEMU booting the same disk "
        "(scripts/guest-boot-check.sh)."
    )
    out = f"{text}\n\n{notes}"
    print(out)
    if args.record:
        record("provisioning", out)
    return 0


def _wait(tracker: Tracker, done, timeout: float, *daemons: Any) -> None:
    deadline = time.monotonic() + timeout
    with tracker.cond:
        while not done():
            for d in daemons:
                if not d.alive():
                    tail = "\n".join(d.output().splitlines()[-15:])
                    raise RuntimeError(f"a daemon died ({d.log}):\n{tail}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out after {timeout} s")
            tracker.cond.wait(min(left, 0.5))


def _wait_host(store: Store) -> None:
    from ucloud.models import Host, HostStatus

    wait_for(
        lambda: (h := store.get(Host, "node1")) and h.value.status == HostStatus.UP,
        60,
        "the host agent",
    )


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url + "/openapi.json", timeout=2).read()
        return True
    except OSError:
        return False


if __name__ == "__main__":
    sys.exit(main())
