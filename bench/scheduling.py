"""Scheduling at scale: thousands of hosts, ten thousand VMs, the scheduler in its own process.

Hosts are what the scheduler sees of them: a host record and an alive key bound to a lease (one
lease for all, kept alive by this process); no host agents run for them. VMs are created in
one of three ways, each against a fresh etcd:

- ``direct``: written straight to etcd as the API writes them (a VM object, its first log
  entry, one create transaction), by several processes as fast as etcd takes them, while the
  scheduler runs;
- ``api``: POSTed to /vm/create of ucloud-api (gunicorn, its own settings) by wrk, as fast as
  the API takes them, while the scheduler runs;
- ``backlog``: written first, then the scheduler is started: how fast it drains a queue.

A watcher here records when each VM is first seen SCHEDULED; create-to-placed latency is that
moment less the VM's ``created`` time. etcd's request counters (its /metrics) give the requests
per placement, less those the creators made. Beside it all: the rate of single transactions
etcd takes from one client and from eight, measured in the same run.

One host agent with the fake hypervisor runs too (a host too small for any VM), so that its
CPU and memory under the load can be reported with the other daemons'.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import random
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import etcd3.utils
from etcd3.etcdrpc import kv_pb2

from bench.common import (
    Window,
    bench_settings,
    daemon,
    etcd_requests,
    etcd_server,
    free_port,
    have_wrk,
    log,
    machine,
    memory_mib,
    pct,
    record,
    running,
    single_txn_rate,
    table,
    token_ahead,
    wait_for,
    workdir,
    wrk,
)
from bench.profile import Profile
from tests.conftest import make_account, make_image
from ucloud.config import Settings
from ucloud.models import VM, Alive, Host, HostStatus, Specs
from ucloud.store import Store, WatchStream

FLAVORS = [(1, 1.0), (1, 2.0), (2, 4.0), (4, 8.0)]  # (cpu, ram GiB), round robin
HOST_CLASSES = [(16, 64.0), (32, 128.0), (64, 256.0)]  # (cpu, ram GiB), random
AIM = 500.0  # placements a second at 5,000 hosts


# --- the cluster as the scheduler sees it ---------------------------------------------------------


def add_hosts(store: Store, n: int, lease: Any) -> None:
    """``n`` host records (UP) and their alive keys on ``lease``, in batched transactions."""
    t = store.client.transactions
    rng = random.Random(1)
    ops: list[Any] = []
    for i in range(n):
        cpu, ram = rng.choice(HOST_CLASSES)
        host = Host(name=f"h{i:05d}", capacity=Specs(cpu=cpu, ram=ram), status=HostStatus.UP)
        alive = Alive(name=host.name)
        ops.append(t.put(store.key_of(host), host.model_dump_json()))
        ops.append(t.put(store.key_of(alive), alive.model_dump_json(), lease=lease))
        if len(ops) >= 120:
            store.client.transaction(compare=[], success=ops, failure=[])
            ops = []
    if ops:
        store.client.transaction(compare=[], success=ops, failure=[])


class Watcher:
    """Watches the VM folder from a revision on: counts VMs created, and records when each is
    first seen SCHEDULED (cheaply: no model parsing here, so the watcher keeps up)."""

    def __init__(self, store: Store, revision: int) -> None:
        self.store = store
        self.created = 0
        self.placed: dict[bytes, float] = {}
        self.first_created: float | None = None
        # Made here, not in the thread, so that stop() always finds it.
        self._call = WatchStream(store, store.folder(VM), revision, prefix=True)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with contextlib.suppress(Exception):
            for response in self._call:
                now = time.time()
                for event in response.events:
                    if event.type != kv_pb2.Event.PUT:
                        continue
                    kv = event.kv
                    if kv.version == 1:
                        self.created += 1
                        if self.first_created is None:
                            self.first_created = now
                    elif b'"status":"SCHEDULED"' in kv.value and kv.key not in self.placed:
                        self.placed[kv.key] = now

    def stop(self) -> None:
        self._call.cancel()


# --- creators ---------------------------------------------------------------------------------


def _create_vms(settings_json: str, start: Any, index: int, count: int, threads: int) -> None:
    """One creator process: ``count`` VMs, written as the API writes them."""
    settings = Settings.model_validate_json(settings_json)
    store = Store(settings)
    per = [count // threads + (1 if i < count % threads else 0) for i in range(threads)]

    def work(t: int) -> None:
        for n in range(per[t]):
            cpu, ram = FLAVORS[n % len(FLAVORS)]
            vm = VM(
                name=f"w{index}-{t}-{n}",
                owner="alice",
                owner_realm="users",
                specs=Specs(cpu=cpu, ram=ram, ssd=10),
                image="bench-image",
            )
            vm.record("api", "created by users/alice")
            store.create(vm)

    start.wait()
    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    store.close()


def create_direct(
    settings: Settings, n: int, processes: int, threads: int, on_start: Any = None
) -> None:
    ctx = multiprocessing.get_context("spawn")  # gRPC channels must not cross a fork
    start = ctx.Event()
    per = [n // processes + (1 if i < n % processes else 0) for i in range(processes)]
    procs = [
        ctx.Process(
            target=_create_vms, args=(settings.model_dump_json(), start, i, per[i], threads)
        )
        for i in range(processes)
    ]
    for p in procs:
        p.start()
    time.sleep(1.5)  # let them import and connect before the clock starts
    if on_start is not None:
        on_start()
    start.set()
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise RuntimeError(f"a creator process failed ({p.exitcode})")


def create_through_api(
    url: str, account: Any, image: str, n: int, watcher: Watcher, connections: int
) -> None:
    """POST /vm/create with wrk until ``n`` VMs exist: in runs of at most 30 s, each with a
    fresh token (see token_ahead)."""
    specs = [json.dumps({"cpu": c, "ram": r, "ssd": 10}) for c, r in FLAVORS]
    target = watcher.created + n
    while watcher.created < target:
        fields = {
            "name": account.name,
            "realm": account.realm,
            "token": token_ahead(account.secret),
        }
        # string.format template: wrk thread, counter, specs
        body = json.dumps({**fields, "vm_name": "b%d-%d", "image": image})[:-1] + ', "specs": %s}'
        result = wrk(
            url,
            seconds=30,
            connections=connections,
            method="POST",
            path="/vm/create",
            body=body,
            specs=specs,
            check=True,
            stop_when=lambda: watcher.created >= target,
        )
        if result.errors:
            raise RuntimeError(f"the API refused requests: {result.first_bad}")


# --- one scenario -------------------------------------------------------------------------------


@dataclass
class Outcome:
    hosts: int
    mode: str
    vms: int = 0
    create_rate: float = 0.0
    placed_rate: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    sched_txn: int = 0
    sched_requests: int = 0
    sched_cpu_s: float = 0.0
    raw1: float = 0.0
    raw8: float = 0.0
    startup_s: float = 0.0  # backlog: scheduler start to first placement
    windows: dict[str, Window] = field(default_factory=dict)
    peak_mib: dict[str, float] = field(default_factory=dict)


def scenario(args: argparse.Namespace, hosts: int, mode: str) -> Outcome:
    out = Outcome(hosts, mode)
    n = args.backlog_vms if mode == "backlog" else args.vms
    with workdir(f"sched-{mode}", keep=args.keep) as wd, etcd_server(wd) as etcd:
        settings = bench_settings(
            etcd,
            scheduled_deadline=3600.0,  # no host agent takes these VMs up: keep them SCHEDULED
            api_bind=f"127.0.0.1:{free_port()}",
        )
        store = Store(settings)
        keepalive = store.hold_lease(60, lambda: None)
        add_hosts(store, hosts, keepalive.lease)
        account = make_account(store, "alice")
        image = make_image(store, "bench-image")

        out.raw1 = single_txn_rate(store, args.raw_seconds, threads=1)
        out.raw8 = single_txn_rate(store, args.raw_seconds, threads=8)

        agent_settings = settings.model_copy(
            update={
                "hostname": "bench-agent",
                "hypervisor": "fake",
                "storage": "file",
                "host_cpu": 1,
                "host_ram": 0.01,  # too small for any VM: it only watches
                "state_dir": str(wd / "agent"),
                "image_dir": str(wd / "images"),
                "vnc_dir": tempfile.mkdtemp(prefix="ucvnc-"),
            }
        )
        with contextlib.ExitStack() as stack:
            pids: dict[str, int] = {"etcd": etcd.proc.pid}
            agent = stack.enter_context(
                running(daemon("ucloud.host.main", agent_settings, wd / "agent.log"))
            )
            pids["host agent"] = agent.pid
            if mode == "api":
                api = stack.enter_context(
                    running(daemon("ucloud.api.main", settings, wd / "api.log"))
                )
                pids["api"] = api.pid
                url = f"http://{settings.api_bind}"
                wait_for(lambda: _answers(url), 30, "the API to answer")
            scheduler = None
            if mode != "backlog":
                scheduler = stack.enter_context(
                    running(daemon("ucloud.scheduler.main", settings, wd / "scheduler.log"))
                )
                pids["scheduler"] = scheduler.pid
                _wait_leader(store, settings)
            wait_for(lambda: store.get(Host, "bench-agent"), 30, "the host agent")
            time.sleep(1.0)

            if mode != "backlog":
                out.windows["idle, no VMs"] = _idle(pids, args.idle)
            _, revision = store.list(Alive)
            watcher = Watcher(store, revision + 1)
            before = etcd_requests(etcd)
            load = Window(pids)
            if mode == "direct":

                def restart_clock() -> None:
                    nonlocal load
                    load = Window(pids)

                create_direct(settings, n, args.writers, args.threads, restart_clock)
            elif mode == "api":
                create_through_api(url, account, image.uuid, n, watcher, args.connections)
            else:
                create_direct(settings, n, args.writers, args.threads)
                wait_for(lambda: watcher.created >= n, 60, "the backlog to be written")
                before = etcd_requests(etcd)
                started = time.time()
                scheduler = stack.enter_context(
                    running(daemon("ucloud.scheduler.main", settings, wd / "scheduler.log"))
                )
                pids["scheduler"] = scheduler.pid
                load = Window(pids)
            profile = None
            if args.profile:
                profile = Profile(pids["scheduler"], Path(args.profile) / f"{hosts}-{mode}.txt")
            created = wait_for(lambda: watcher.created >= n and watcher.created, 60, "VMs")
            wait_for(
                lambda: len(watcher.placed) >= created,
                args.timeout,
                f"{created} VMs to be placed (scheduler log: {wd / 'scheduler.log'})",
                interval=0.02,
            )
            out.windows["under load"] = load.close()
            if profile is not None:
                log(f"scheduler profile, {hosts} hosts, {mode}:\n{profile.stop()}")
            after = etcd_requests(etcd)
            for name, pid in pids.items():
                out.peak_mib[name] = memory_mib(pid)[1]
            if mode != "backlog" or args.idle:
                out.windows["idle, VMs placed"] = _idle(pids, args.idle_after)
            watcher.stop()

            created_at = created_times(store)
            placed = watcher.placed
            out.vms = len(placed)
            first_created = min(created_at.values())
            last_created = max(created_at.values())
            last_placed = max(placed.values())
            out.create_rate = len(created_at) / max(last_created - first_created, 1e-9)
            if mode == "backlog":
                first_placed = min(placed.values())
                out.startup_s = first_placed - started
                out.placed_rate = len(placed) / (last_placed - first_placed)
            else:
                out.placed_rate = len(placed) / (last_placed - first_created)
                out.latencies_ms = [1000 * (placed[k] - created_at[k]) for k in placed]
            delta = after - before
            # What the creators sent: a create transaction per VM; through the API also the
            # image's read (the user's record comes from the API's catalog).
            creates = created if mode != "backlog" else 0
            api_reads = created if mode == "api" else 0
            out.sched_txn = delta["Txn"] - creates
            out.sched_requests = (
                delta["Txn"]
                + delta["Range"]
                + delta["Put"]
                + delta["DeleteRange"]
                - creates
                - api_reads
            )
            out.sched_cpu_s = out.windows["under load"].cpu["scheduler"]
        keepalive.stop(revoke=True)
        store.close()
    return out


def created_times(store: Store) -> dict[bytes, float]:
    """Each VM's ``created``, read in pages (one etcd response holds at most 4 MiB: about
    6,000 VMs; see Store.list)."""
    t: dict[bytes, float] = {}
    start = store.folder(VM).encode()
    end = etcd3.utils.prefix_range_end(start)
    while True:
        r = store.client.get_range_response(start, end, limit=1000)
        for kv in r.kvs:
            t[kv.key] = json.loads(kv.value)["created"]
        if not r.more:
            return t
        start = r.kvs[-1].key + b"\0"


def _idle(pids: dict[str, int], seconds: float) -> Window:
    w = Window(pids)
    time.sleep(seconds)
    return w.close()


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url + "/openapi.json", timeout=2).read()
        return True
    except (urllib.error.URLError, OSError):
        return False


def _wait_leader(store: Store, settings: Settings) -> None:
    key = f"{store.prefix}/election/scheduler"
    wait_for(lambda: store.client.get(key)[0] is not None, 30, "the scheduler to lead")


# --- report -------------------------------------------------------------------------------------


def report(outcomes: list[Outcome], args: argparse.Namespace) -> str:
    rows = []
    for o in outcomes:
        lat = o.latencies_ms
        per = o.vms or 1
        rows.append(
            [
                o.hosts,
                o.mode,
                o.vms,
                o.create_rate if o.mode != "backlog" else float("nan"),
                o.placed_rate,
                AIM,
                pct(lat, 50),
                pct(lat, 95),
                pct(lat, 99),
                f"{o.sched_txn / per:.4f}",
                f"{o.sched_requests / per:.4f}",
                1e6 * o.sched_cpu_s / per,
                o.raw1,
                o.raw8,
            ]
        )
    main = table(
        [
            "hosts",
            "VMs created by",
            "VMs",
            "created/s",
            "placed/s",
            "aim /s",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "sched. txns/placement",
            "sched. etcd requests/placement",
            "sched. CPU µs/placement",
            "ref: single txns/s, 1 client",
            "ref: single txns/s, 8 clients",
        ],
        rows,
    )
    notes = [
        "placed/s: VMs placed over the time from the first VM created to the last placed "
        "(backlog: first placed to last placed, the scheduler alone). Latency: created "
        "(the VM's `created`) to first seen SCHEDULED by a watcher.",
        "sched.: the scheduler's share of etcd's request counters (all requests less the "
        "creators'); CPU of the scheduler process while the VMs were placed.",
    ]
    backlog = [o for o in outcomes if o.mode == "backlog"]
    if backlog:
        notes.append(
            "backlog start-up (scheduler process start to first placement, includes listing "
            "all VMs and hosts): "
            + ", ".join(f"{o.hosts} hosts {o.startup_s:.2f} s" for o in backlog)
        )
    res_rows = []
    for o in outcomes:
        if o.hosts != max(x.hosts for x in outcomes):
            continue
        for name in o.peak_mib:
            cells = [o.hosts, o.mode, name]
            for window in ("idle, no VMs", "under load", "idle, VMs placed"):
                w = o.windows.get(window)
                cells.append(w.percent(name) if w and name in w.cpu else float("nan"))
            rss = o.windows["under load"].rss.get(name, float("nan"))
            cells += [rss, o.peak_mib[name]]
            res_rows.append(cells)
    resources = table(
        [
            "hosts",
            "run",
            "daemon",
            "CPU % idle, no VMs",
            "CPU % under load",
            "CPU % idle, VMs placed",
            "RSS MiB after load",
            "peak RSS MiB",
        ],
        res_rows,
    )
    idle_note = (
        f"CPU %: of one core; idle windows {args.idle:g} s before the VMs and "
        f"{args.idle_after:g} s after they are all placed (scheduler_resync is "
        f"30 s). Reference for idle: 0 % (watch-driven daemons)."
    )
    return "\n\n".join(
        [
            main,
            "\n".join(f"- {n}" for n in notes),
            "Daemons (the largest host count):",
            resources,
            f"- {idle_note}",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.scheduling", description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", default=None, help="host counts, comma-separated (1000,5000)")
    parser.add_argument("--vms", type=int, default=None, help="VMs per run (10000)")
    parser.add_argument("--modes", default="direct,api,backlog")
    parser.add_argument(
        "--backlog-vms",
        type=int,
        default=None,
        help="VMs of the backlog run (5000 at most by default: a scheduler cannot start with"
        " more, see RESULTS.md)",
    )
    parser.add_argument("--writers", type=int, default=2, help="creator processes (direct)")
    parser.add_argument("--threads", type=int, default=4, help="threads per creator process")
    parser.add_argument("--connections", type=int, default=8, help="wrk connections (api)")
    parser.add_argument("--idle", type=float, default=None, help="seconds of idle measurement")
    parser.add_argument("--idle-after", type=float, default=None)
    parser.add_argument("--raw-seconds", type=float, default=None)
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait for placement")
    parser.add_argument("--quick", action="store_true", help="2,000 VMs, short idle windows")
    parser.add_argument("--record", action="store_true", help="write the table to RESULTS.md")
    parser.add_argument("--keep", action="store_true", help="keep the work directories")
    parser.add_argument("--profile", metavar="DIR", help="py-spy the scheduler, profiles in DIR")
    args = parser.parse_args(argv)
    args.hosts = args.hosts or "1000,5000"
    args.vms = args.vms or (2000 if args.quick else 10000)
    args.backlog_vms = args.backlog_vms or min(args.vms, 5000)
    args.idle = args.idle if args.idle is not None else (3 if args.quick else 10)
    args.idle_after = args.idle_after if args.idle_after is not None else (3 if args.quick else 35)
    args.raw_seconds = args.raw_seconds or (1.0 if args.quick else 3.0)
    modes = args.modes.split(",")
    if "api" in modes and not have_wrk():
        log("wrk is not installed (apt-get install wrk): skipping the api mode")
        modes.remove("api")

    log(f"machine: {machine()}")
    outcomes = []
    for hosts in (int(h) for h in args.hosts.split(",")):
        for mode in modes:
            log(f"{hosts} hosts, {args.backlog_vms if mode == 'backlog' else args.vms} VMs, {mode}")
            o = scenario(args, hosts, mode)
            log(
                f"  placed {o.vms} at {o.placed_rate:.0f}/s, p95 {pct(o.latencies_ms, 95):.0f} ms,"
                f" scheduler {1e6 * o.sched_cpu_s / max(o.vms, 1):.0f} µs CPU/placement"
            )
            outcomes.append(o)
    text = report(outcomes, args)
    print(text)
    if args.record:
        record("scheduling", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
