"""Live migration: downtime and total time of ucloud's migrations, against plain
``virsh migrate --live --p2p`` of the same guest between the same libvirtds in the same run;
and the time to drain a host of 10 VMs.

Two hosts (two ucloud-host agents, each with its own private libvirtd; QEMU's migration
stream on 127.0.0.1), one scheduler, etcd and a one-node Ceph. Cases:

- idle: the busybox Linux guest (1 vCPU, 256 MiB) doing nothing but its heartbeat;
- dirty: the same guest rewriting 32 MiB of its RAM in a loop (its user-data);

each migrated ``--runs`` times back and forth by ucloud (the migration written into the VM's
record as ``/vm/migrate`` writes it; the scheduler and the agents do the rest), then a copy of
the same domain (same XML, its own clone of the image, a copy of the seed) migrated back and
forth with ``virsh migrate --live --p2p --persistent --undefinesource`` by hand. Downtime and
total time are libvirt's own job statistics of the completed migration, read on the target
(``virDomainGetJobStats(VIR_DOMAIN_JOB_STATS_COMPLETED)``; the source sends them in the
migration cookie). "request to record" is ucloud's whole path: from the write of the request
until the VM's record names the target (the scheduler's choice, the target's preparation,
the migration, the final compare-and-swap).

- drain: 10 boot-sector guests (1 vCPU, 128 MiB) on one host put in maintenance: seconds
  until the host's drain record says "drained" (every VM running on the other host), against
  the same 10 domains' copies migrated by plain virsh, ``drain_parallel`` at a time.

Anchors: QEMU's default maximum downtime is 300 ms (ucloud's ``migration_max_downtime``
default); Nova's default target (``live_migration_downtime``) is 500 ms.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import shutil
import statistics
import subprocess
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import libvirt

from bench.common import (
    bench_settings,
    ceph_cluster,
    daemon,
    etcd_server,
    log,
    machine,
    record,
    table,
    wait_for,
    with_ceph,
    workdir,
)
from bench.failover import CephAdmin, _ensure_secret, _reference_xml, _wait_host_up
from tests.conftest import register_image
from tests.stack import (
    GUEST_DIR,
    SCRIPTS,
    Libvirtd,
    host_settings,
    run_script,
    start_libvirtd,
    stop_libvirtd,
)
from ucloud.models import VM, AdminState, FirstBoot, Host, Migration, Specs
from ucloud.storage.rbd import RBDStorage
from ucloud.store import Store

HOSTS = ("node-a", "node-b")
LINUX = Specs(cpu=1, ram=0.25, ssd=1)
BOOTSECTOR = Specs(cpu=1, ram=0.125, ssd=1)
DIRTY = """#!/bin/sh
dd if=/dev/urandom of=/tmp/src bs=1M count=32 2>/dev/null
cp /tmp/src /tmp/dst
echo UCLOUD-DIRTY-READY
while true; do dd if=/tmp/src of=/tmp/dst bs=1M conv=notrunc 2>/dev/null; done
"""
READY = {"idle": "UCLOUD-HEARTBEAT", "dirty": "UCLOUD-DIRTY-READY"}


@dataclass
class Stats:
    """One completed migration, as libvirt counted it (ms; MiB)."""

    total: float
    downtime: float
    memory: float  # MiB of memory sent
    iterations: int
    throttle: int  # auto-converge's last CPU throttle, percent
    wall: float = 0.0  # s: ucloud's request to record, or virsh's run

    @classmethod
    def of(cls, stats: dict[str, Any], wall: float) -> Stats:
        return cls(
            total=float(stats.get("time_elapsed", 0)),
            downtime=float(stats.get("downtime", 0)),
            memory=stats.get("memory_processed", 0) / 2**20,
            iterations=int(stats.get("memory_iteration", 0)),
            throttle=int(stats.get("auto_converge_throttle", 0)),
            wall=wall,
        )


def completed(lv: Libvirtd, name: str) -> dict[str, Any]:
    conn = libvirt.open(lv.uri)
    try:
        return dict(conn.lookupByName(name).jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED))
    finally:
        conn.close()


class Cluster:
    def __init__(self, store: Store, lvs: dict[str, Libvirtd], hosts: dict[str, Any]) -> None:
        self.store = store
        self.lvs = lvs
        self.hosts = hosts

    def vm(self, id: str) -> VM:
        found = self.store.get(VM, id)
        assert found is not None
        return found.value

    def create(self, name: str, image: str, specs: Specs, user_data: str = "") -> str:
        first = FirstBoot(hostname=name, user_data=user_data) if user_data else None
        vm = VM(
            name=name, owner="alice", owner_realm="users", specs=specs, image=image,
            first_boot=first,
        )  # fmt: skip
        vm.record("api", "created by users/alice")
        self.store.create(vm)
        return vm.uuid

    def console(self, id: str) -> str:
        host = self.vm(id).hostname
        path = Path(self.hosts[host].state_dir) / "console" / f"{id}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def admin_state(self, host: str, state: AdminState) -> None:
        self.store.update(Host, host, lambda h: setattr(h, "admin_state", state))

    def migrate(self, id: str, to: str, timeout: float) -> Stats:
        """As /vm/migrate writes it; then until the record names ``to``."""
        began = time.perf_counter()
        source = self.vm(id).hostname

        def ask(vm: VM) -> None:
            vm.migration = Migration(source=source, target=to, by="admin bench")

        self.store.update(VM, id, ask)
        vm = wait_for(
            lambda: (v := self.vm(id)).migration is None and v, timeout, f"{id}'s migration"
        )
        wall = time.perf_counter() - began
        if vm.hostname != to:
            raise RuntimeError(f"VM {id} did not migrate: {vm.log[-1].message}")
        return Stats.of(completed(self.lvs[to], f"ucloud-{id}"), wall)


class Reference:
    """A copy of a ucloud VM's domain, outside ucloud (its own name, uuid and clone of the
    image, a copy of its seed), migrated with plain virsh."""

    def __init__(self, c: Cluster, admin: CephAdmin, image: str, id: str, name: str) -> None:
        self.c, self.admin, self.name = c, admin, name
        self.host = c.vm(id).hostname
        self.scratch = Path(tempfile.mkdtemp(prefix="ucmig-"))  # short: socket paths
        conn = libvirt.open(c.lvs[self.host].uri)
        try:
            xml = conn.lookupByName(f"ucloud-{id}").XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
            admin.clone(image, name)
            xml = _reference_xml(xml, name, admin.ceph.pool, self.scratch)
            root = ET.fromstring(xml)
            for source in root.iterfind("./devices/disk[@device='cdrom']/source"):
                seed = self.scratch / f"{name}.iso"
                shutil.copy(source.get("file", ""), seed)
                source.set("file", str(seed))
            for serial in root.iterfind("./devices/serial"):
                for el in serial.iter():
                    if el.tag == "log":
                        el.set("file", str(self.scratch / f"{name}.console"))
                    elif el.get("path", "").endswith(".tty"):
                        el.set("path", str(self.scratch / f"{name}.tty"))
            xml = ET.tostring(root, encoding="unicode")
            for lv in c.lvs.values():
                other = libvirt.open(lv.uri)
                _ensure_secret(other, xml, admin.ceph)
                other.close()
            conn.defineXML(xml).create()
        finally:
            conn.close()

    def console(self) -> str:
        path = self.scratch / f"{self.name}.console"
        return path.read_text(errors="replace") if path.exists() else ""

    def migrate(self, to: str) -> Stats:
        argv = [
            "virsh", "-c", self.c.lvs[self.host].uri, "migrate", "--live", "--p2p",
            "--persistent", "--undefinesource", self.name, self.c.lvs[to].uri,
            "--migrateuri", "tcp://127.0.0.1",
        ]  # fmt: skip
        began = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True, timeout=900)
        wall = time.perf_counter() - began
        self.host = to
        return Stats.of(completed(self.c.lvs[to], self.name), wall)

    def remove(self) -> None:
        conn = libvirt.open(self.c.lvs[self.host].uri)
        with contextlib.suppress(libvirt.libvirtError):
            dom = conn.lookupByName(self.name)
            if dom.isActive():
                dom.destroy()
            dom.undefine()
        conn.close()
        self.admin.remove(self.name)
        shutil.rmtree(self.scratch, ignore_errors=True)


def one_case(
    c: Cluster, admin: CephAdmin, image: str, case: str, runs: int, timeout: float
) -> tuple[list[Stats], list[Stats]]:
    a, b = HOSTS
    id = c.create(f"mig-{case}", image, LINUX, DIRTY if case == "dirty" else "")
    wait_for(
        lambda: c.vm(id).status == "RUNNING" and READY[case] in c.console(id),
        300,
        f"the {case} guest",
    )
    ref = Reference(c, admin, image, id, f"bench-ref-{case}")
    try:
        wait_for(lambda: READY[case] in ref.console(), 300, f"the {case} reference guest")
        ours, plain = [], []
        for run in range(runs):
            to = b if c.vm(id).hostname == a else a
            log(f"{case} {run + 1}/{runs}: ucloud to {to}")
            ours.append(c.migrate(id, to, timeout))
            log(f"{case} {run + 1}/{runs}: virsh to {to}")
            plain.append(ref.migrate(to))
    finally:
        ref.remove()
        c.store.update(VM, id, lambda vm: setattr(vm, "desired", "deleted"))
    return ours, plain


def drain_case(
    c: Cluster, admin: CephAdmin, image: str, n: int, parallel: int, timeout: float
) -> tuple[float, list[float], float, list[float]]:
    a, b = HOSTS
    c.admin_state(b, AdminState.MAINTENANCE)  # all on a
    ids = [c.create(f"d{i}", image, BOOTSECTOR) for i in range(n)]
    wait_for(
        lambda: all((v := c.vm(id)).status == "RUNNING" and v.hostname == a for id in ids),
        300,
        f"{n} VMs on {a}",
    )
    refs = [Reference(c, admin, image, id, f"bench-drain-{i}") for i, id in enumerate(ids)]
    try:
        c.admin_state(b, AdminState.UP)
        log(f"drain of {a}: {n} VMs")
        began = time.perf_counter()
        c.admin_state(a, AdminState.MAINTENANCE)

        def drained() -> bool:
            h = c.store.get(Host, a)
            return bool(h and h.value.drain and h.value.drain.remaining == 0)

        wait_for(drained, timeout, f"{a} drained", interval=0.2)
        ours = time.perf_counter() - began
        downtimes = [completed(c.lvs[b], f"ucloud-{id}").get("downtime", 0) for id in ids]
        log(f"plain: {n} copies by virsh, {parallel} at a time")
        began = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
            stats = list(pool.map(lambda r: r.migrate(b), refs))
        plain = time.perf_counter() - began
    finally:
        for r in refs:
            r.remove()
        c.admin_state(a, AdminState.UP)
        for id in ids:
            c.store.update(VM, id, lambda vm: setattr(vm, "desired", "deleted"))
    return ours, downtimes, plain, [s.downtime for s in stats]


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def spread(values: list[float]) -> str:
    return f"{med(values):.0f} ({max(values):.0f})" if values else "-"


def report(cases: dict[str, tuple[list[Stats], list[Stats]]], drain: Any, n: int, p: int) -> str:
    rows = []
    for case, (ours, plain) in cases.items():
        for who, runs in (("ucloud", ours), ("plain virsh", plain)):
            rows.append(
                (
                    case,
                    who,
                    len(runs),
                    spread([s.downtime for s in runs]),
                    f"{med([s.total for s in runs]) / 1000:.2f}",
                    f"{med([s.wall for s in runs]):.2f}",
                    f"{med([s.memory for s in runs]):.0f}",
                    f"{med([float(s.iterations) for s in runs]):.0f}",
                    f"{max(s.throttle for s in runs)}",
                )
            )
    out = table(
        (
            "guest",
            "migrated by",
            "runs",
            "downtime ms, median (max)",
            "libvirt total s",
            "request to record s (virsh: its run)",
            "MiB sent",
            "passes",
            "throttle %",
        ),
        rows,
    )
    out += "\n\nAnchors: QEMU's default maximum downtime 300 ms; Nova's default target 500 ms.\n"
    if drain is not None:
        ours, downtimes, plain, plain_downtimes = drain
        out += "\n" + table(
            ("drain of a host", "VMs", "at once", "seconds", "downtime ms, median (max)"),
            [
                ("ucloud (maintenance to drained)", n, p, f"{ours:.1f}",
                 spread(downtimes)),
                ("plain virsh, same guests", n, p, f"{plain:.1f}",
                 spread(plain_downtimes)),
            ],
        )  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.migration", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=None, help="migrations a case (4; quick 2)")
    parser.add_argument("--drain-vms", type=int, default=10, help="VMs of the drain (10)")
    parser.add_argument("--cases", default="idle,dirty,drain", help="idle,dirty,drain")
    parser.add_argument("--timeout", type=float, default=600, help="s a migration may take")
    parser.add_argument("--quick", action="store_true", help="two runs a case")
    parser.add_argument("--record", action="store_true", help="write the table to RESULTS.md")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    runs = args.runs or (2 if args.quick else 4)
    wanted = args.cases.split(",")
    log(f"machine: {machine()}")
    run_script(str(SCRIPTS / "build-guests.sh"), str(GUEST_DIR), timeout=900)
    with contextlib.ExitStack() as stack:
        wd = stack.enter_context(workdir("migration", keep=args.keep))
        etcd = stack.enter_context(etcd_server(wd))
        log("Ceph")
        ceph = stack.enter_context(ceph_cluster(wd, osd_size="20G"))
        log("libvirtds")
        lvs: dict[str, Libvirtd] = {}
        for name in HOSTS:
            lvs[name] = start_libvirtd(wd / f"lv-{name}")
            stack.callback(stop_libvirtd, lvs[name])
        settings = with_ceph(bench_settings(etcd), ceph)
        hosts = {
            name: host_settings(
                settings, ceph, lvs[name], name, wd / name,
                host_cpu=16, host_ram=16.0,
                migration_peer_uri=lvs[name].uri, migration_address="127.0.0.1",
            )
            for name in HOSTS
        }  # fmt: skip
        store = Store(settings)
        stack.callback(store.close)
        admin = CephAdmin(ceph)
        stack.callback(admin.close)
        storage = RBDStorage(hosts[HOSTS[0]])
        linux = register_image(
            store, storage, str(GUEST_DIR / "linux.raw"), "linux", "root", "ucloud-admin"
        ).uuid
        boot = register_image(
            store, storage, str(GUEST_DIR / "bootsector.raw"), "boot", "root", "ucloud-admin"
        ).uuid
        scheduler = daemon("ucloud.scheduler.main", hosts[HOSTS[0]], wd / "scheduler.log")
        stack.callback(scheduler.stop)
        agents = [daemon("ucloud.host.main", hosts[n], wd / f"{n}.log") for n in HOSTS]
        stack.callback(lambda: [a.stop() for a in agents])
        for name in HOSTS:
            _wait_host_up(store, name)
        c = Cluster(store, lvs, hosts)
        cases: dict[str, tuple[list[Stats], list[Stats]]] = {}
        for case in ("idle", "dirty"):
            if case in wanted:
                cases[case] = one_case(c, admin, linux, case, runs, args.timeout)
        drain = None
        parallel = settings.drain_parallel
        if "drain" in wanted:
            wait_for(lambda: not store.list(VM)[0], 120, "the cases' VMs to be deleted")
            drain = drain_case(c, admin, boot, args.drain_vms, parallel, args.timeout)
        wait_for(lambda: not store.list(VM)[0], 120, "every VM to be deleted")
    out = report(cases, drain, args.drain_vms, parallel)
    print(out)
    if args.record:
        record("migration", out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
