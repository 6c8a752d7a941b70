"""Failover: a host agent SIGKILLed with N VMs running on its host, on the real stack.

Two hosts (two ucloud-host agents, each with its own private libvirtd), one scheduler (with
the hosts' Ceph settings: it fences through Ceph), etcd and a one-node Ceph. N VMs of the
boot-sector guest (1 vCPU, 128 MiB) run on one host; its agent is SIGKILLed and its QEMUs go
on running, as on a host whose agent crashed. Timed from the kill, by watchers in this
process (etcd's watch, Ceph's block-list polled every 0.1 s, /proc):

    alive key gone -> host DEAD -> each disk's old client block-listed -> each VM placed on
    the other host -> CREATING -> its new QEMU started -> RUNNING there

and checked: every old QEMU's Ceph client is block-listed before the VM's new QEMU starts.
Beside the figures, the floor the settings set in the same run (the lease TTL: the alive key
goes between ttl*2/3 and ttl after the kill, as the agent renews every ttl/3; plus
dead_host_grace) and a reference measured in the same run: N such domains (the same XML,
each on its own clone) defined and started on the receiving host's libvirtd directly with
libvirt-python, as many at once as the agent has workers: the cost of starting them that
ucloud cannot avoid.

Run 1 moves the VMs from node-a to node-b; the killed agent is then started again (it
destroys its fenced QEMUs) and run 2 moves them back, and so on. The settings are ucloud's
defaults (ucloud/config.py) unless given as flags.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import configparser
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import libvirt
import rados
import rbd
from etcd3.etcdrpc import kv_pb2

import ucloud
from bench.common import (
    Ceph,
    Daemon,
    bench_settings,
    ceph_cluster,
    daemon,
    etcd_server,
    log,
    machine,
    pct,
    record,
    table,
    wait_for,
    with_ceph,
    workdir,
)
from tests.stack import (
    GUEST_DIR,
    SCRIPTS,
    Libvirtd,
    host_settings,
    run_script,
    start_libvirtd,
    stop_libvirtd,
)
from ucloud.config import Settings, settings_env
from ucloud.models import VM, Alive, Host, Specs
from ucloud.storage.rbd import RBDStorage
from ucloud.store import Store, WatchStream

try:
    from tests.conftest import register_image
except ImportError:  # code from before cace2a0 (a before/after run from an older worktree)
    from ucloud.images import register_image  # type: ignore[no-redef]

HOSTS = ("node-a", "node-b")
SPECS = Specs(cpu=1, ram=0.125, ssd=1)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
BOOT = time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)


def default(name: str) -> Any:
    """A setting's default in ucloud/config.py (of the code under test)."""
    return Settings.model_fields[name].default


# --- processes ----------------------------------------------------------------------------------


def qemu_pids(vm: str) -> list[int]:
    """Every QEMU process of ``vm`` (on any host of this machine), found as an operator would."""
    needle = f"guest=ucloud-{vm}".encode()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError), open(f"/proc/{entry}/cmdline", "rb") as f:
            if needle in f.read():
                pids.append(int(entry))
    return pids


def process_start(pid: int) -> float | None:
    """Wall-clock start of ``pid``, to a clock tick; None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
    except OSError:
        return None
    return BOOT + ticks / CLOCK_TICKS


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def machine_busy() -> float:
    """CPU seconds the whole machine has spent busy (all cores) since boot."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / CLOCK_TICKS


def code_under_test(env: dict[str, str]) -> str:
    """Where this process and a daemon (started as Daemon starts them) import ucloud from,
    with the git commit of that tree. They must be the same tree."""
    mine = Path(ucloud.__file__).resolve()
    out = subprocess.run(
        [sys.executable, "-c", "import ucloud; print(ucloud.__file__)"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    theirs = Path(out).resolve()
    if theirs != mine:
        raise RuntimeError(f"the daemons would import {theirs}, this process {mine}")
    tree = mine.parent.parent
    git = ["git", "-C", str(tree)]
    commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run([*git, "status", "--porcelain", "--", "ucloud"], capture_output=True)
    state = "ucloud/ as committed" if not dirty.stdout.strip() else "ucloud/ with local changes"
    return f"{tree} (commit {commit.stdout.strip() or '?'}, {state})"


# --- Ceph -----------------------------------------------------------------------------------------


class CephAdmin:
    """client.admin through librados: the disks' watchers, the block-list, clones for the
    reference. Cheap enough (a mon round trip, no CLI start-up) to poll."""

    def __init__(self, ceph: Ceph) -> None:
        self.ceph = ceph
        self.cluster = rados.Rados(
            conffile=str(ceph.conf),
            name="client.admin",
            conf={"keyring": str(ceph.dir / "ceph.client.admin.keyring")},
        )
        self.cluster.connect(timeout=30)
        self.ioctx = self.cluster.open_ioctx(ceph.pool)
        self.lock = threading.Lock()
        out = self._mon({"prefix": "config get", "who": "mon", "key": _EXPIRE})
        self.expire = float(out.strip() or 3600)

    def close(self) -> None:
        self.ioctx.close()
        self.cluster.shutdown()

    def _mon(self, command: dict[str, Any]) -> str:
        with self.lock:
            ret, out, err = self.cluster.mon_command(json.dumps(command), b"", timeout=30)
        if ret != 0:
            raise RuntimeError(f"ceph {command['prefix']}: {err} ({ret})")
        return out.decode()

    def watchers(self, disk: str) -> list[str]:
        with rbd.Image(self.ioctx, disk, read_only=True) as image:
            return [_addr(w["addr"]) for w in image.watchers_list()]

    def blocklist(self) -> dict[str, float]:
        """Block-listed client -> until (epoch seconds)."""
        out = self._mon({"prefix": "osd blocklist ls", "format": "json"})
        # Two JSON lists: the entries, then the ranges (none here).
        entries, _ = json.JSONDecoder().raw_decode(out) if out.strip() else ([], 0)
        return {_addr(e["addr"]): _epoch(e["until"]) for e in entries}

    def clone(self, image: str, name: str) -> None:
        with rbd.Image(self.ioctx, image, read_only=True) as parent:
            snap = next(s["name"] for s in parent.list_snaps())
        rbd.RBD().clone(self.ioctx, image, snap, self.ioctx, name)

    def remove(self, name: str) -> None:
        for _ in range(100):  # a destroyed QEMU's watch may linger a moment
            try:
                rbd.RBD().remove(self.ioctx, name)
                return
            except rbd.ImageNotFound:
                return
            except rbd.ImageBusy:
                time.sleep(0.2)
        log(f"could not remove {name}: still busy")


_EXPIRE = "mon_osd_blocklist_default_expire"


def _addr(addr: str) -> str:
    """A client address as the block-list prints it (``127.0.0.1:0/123``)."""
    for prefix in ("v1:", "v2:", "any:"):
        if addr.startswith(prefix):
            return addr[len(prefix) :]
    return addr


def _epoch(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()


class BlocklistWatcher:
    """Polls Ceph's block-list; the time each entry was added: ``until`` less its expiry
    (Ceph's default, or ``expiries``: what the code under test asks for), on the monitor's
    clock, when that agrees with when it was first seen; else when it was first seen (then
    up to one poll late)."""

    def __init__(self, admin: CephAdmin, expiries: tuple[float, ...], interval: float = 0.1):
        self.admin = admin
        self.expiries = (admin.expire, *expiries)
        self.interval = interval
        self.before = set(admin.blocklist())
        self.first_seen: dict[str, float] = {}
        self.until: dict[str, float] = {}
        self.since = time.time()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                entries = self.admin.blocklist()
            except Exception as e:  # keep polling
                log(f"block-list poll failed: {e}")
                continue
            now = time.time()
            for addr, until in entries.items():
                if addr not in self.before and addr not in self.first_seen:
                    self.first_seen[addr] = now
                    self.until[addr] = until

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def added(self, addr: str) -> float | None:
        seen = self.first_seen.get(addr)
        if seen is None:
            return None
        for expire in self.expiries:
            by_expiry = self.until[addr] - expire
            if self.since - 1 <= by_expiry <= seen + 0.05:
                return by_expiry
        return seen


# --- etcd -----------------------------------------------------------------------------------------


@dataclass
class VMTrace:
    old_pid: int
    old_clients: list[str]
    seen: dict[str, float] = field(default_factory=dict)  # "STATUS@host" -> first seen
    new_pid: int | None = None
    new_start: float | None = None
    running: float | None = None  # first seen RUNNING on the receiving host
    fenced_message: str = ""
    fenced_logged: float | None = None  # the event log's time of its "fenced" entry


class Timeline:
    """Watches the whole prefix from ``revision``: the alive key's deletion, the host record
    going DEAD, and every VM's statuses and host, each with when it was first seen here."""

    def __init__(self, store: Store, revision: int, src: str, dst: str, vms: dict[str, VMTrace]):
        self.store, self.src, self.dst, self.vms = store, src, dst, vms
        self.alive_gone: float | None = None
        self.dead: float | None = None
        self.cond = threading.Condition()
        self.folders = {
            "alive": store.key(Alive, src),
            "host": store.key(Host, src),
            "vm": store.folder(VM),
        }
        self._call = WatchStream(store, store.prefix + "/", revision, prefix=True)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with contextlib.suppress(Exception):
            for response in self._call:
                now = time.time()
                for event in response.events:
                    self._event(event, now)
                with self.cond:
                    self.cond.notify_all()

    def _event(self, event: Any, now: float) -> None:
        key = event.kv.key.decode()
        deleted = event.type == kv_pb2.Event.DELETE
        if key == self.folders["alive"]:
            if deleted and self.alive_gone is None:
                self.alive_gone = now
        elif key == self.folders["host"]:
            if not deleted and self.dead is None and json.loads(event.kv.value)["status"] == "DEAD":
                self.dead = now
        elif key.startswith(self.folders["vm"]) and not deleted:
            id = key[len(self.folders["vm"]) :]
            trace = self.vms.get(id)
            if trace is None:
                return
            vm = json.loads(event.kv.value)
            trace.seen.setdefault(f"{vm['status']}@{vm.get('hostname', '')}", now)
            for e in vm.get("log", []):
                if "fenced" in e["message"] and not trace.fenced_message:
                    trace.fenced_message, trace.fenced_logged = e["message"], e["time"]
            if vm["status"] == "RUNNING" and vm.get("hostname") == self.dst and not trace.running:
                trace.running = now
                new = [p for p in qemu_pids(id) if p != trace.old_pid]
                if new:
                    trace.new_pid = new[0]
                    trace.new_start = process_start(new[0])

    def stop(self) -> None:
        self._call.cancel()


# --- the reference: plain libvirt ---------------------------------------------------------------


def plain_starts(
    src: Libvirtd, dst: Libvirtd, vms: list[str], admin: CephAdmin, image: str, workers: int
) -> float:
    """Seconds to define and start on ``dst`` one domain for each of ``vms``, with the XML its
    domain has on ``src`` (name, uuid, disk, console and VNC paths changed; each on a fresh
    clone of the image), ``workers`` at once: what starting them costs without ucloud."""
    src_conn, dst_conn = libvirt.open(src.uri), libvirt.open(dst.uri)
    scratch = Path(tempfile.mkdtemp(prefix="ucref-"))  # short: a VNC socket path <= 107 bytes
    names = [f"bench-ref-{i}" for i in range(len(vms))]
    xmls = []
    try:
        for vm, name in zip(vms, names, strict=True):
            xml = src_conn.lookupByName(f"ucloud-{vm}").XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
            admin.clone(image, name)
            xmls.append(_reference_xml(xml, name, admin.ceph.pool, scratch))
        _ensure_secret(dst_conn, xmls[0], admin.ceph)

        def start(xml: str) -> None:
            dst_conn.defineXML(xml).create()

        began = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            list(pool.map(start, xmls))
        seconds = time.perf_counter() - began
    finally:
        for name in names:
            with contextlib.suppress(libvirt.libvirtError):
                dom = dst_conn.lookupByName(name)
                if dom.isActive():
                    dom.destroy()
                dom.undefine()
        for name in names:
            admin.remove(name)
        src_conn.close()
        dst_conn.close()
        shutil.rmtree(scratch, ignore_errors=True)
    return seconds


def _reference_xml(xml: str, name: str, pool: str, scratch: Path) -> str:
    root = ET.fromstring(xml)
    root.find("name").text = name  # type: ignore[union-attr]
    root.find("uuid").text = str(uuid.uuid4())  # type: ignore[union-attr]
    devices = root.find("devices")
    assert devices is not None
    for source in devices.iter("source"):
        if source.get("protocol") == "rbd":
            source.set("name", f"{pool}/{name}")
        if source.get("path", "").endswith(".log"):
            source.set("path", str(scratch / f"{name}.log"))
    for graphics in devices.iter("graphics"):
        if graphics.get("socket"):
            graphics.set("socket", str(scratch / f"{name}.vnc"))
        for listen in graphics.iter("listen"):
            if listen.get("socket"):
                listen.set("socket", str(scratch / f"{name}.vnc"))
    return ET.tostring(root, encoding="unicode")


def _ensure_secret(conn: libvirt.virConnect, xml: str, ceph: Ceph) -> None:
    """The Ceph secret the domains refer to, as the agent defines it (it may not have yet)."""
    secret = ET.fromstring(xml).find(".//auth/secret")
    if secret is None:
        return
    usage = secret.get("usage", "")
    keyring = configparser.ConfigParser()
    keyring.read(ceph.keyring)
    key = next(keyring.get(s, "key") for s in keyring.sections() if keyring.has_option(s, "key"))
    try:
        found = conn.secretLookupByUsage(libvirt.VIR_SECRET_USAGE_TYPE_CEPH, usage)
    except libvirt.libvirtError:
        found = conn.secretDefineXML(
            "<secret ephemeral='no' private='yes'>"
            f"<usage type='ceph'><name>{usage}</name></usage></secret>"
        )
    found.setValue(base64.b64decode(key))


# --- one run --------------------------------------------------------------------------------------


@dataclass
class Run:
    number: int
    src: str
    dst: str
    vms: dict[str, VMTrace]
    killed: float
    timeline: Timeline
    blocklist: BlocklistWatcher
    reference: float
    busy_percent: float = 0.0
    old_alive: int = 0

    def after(self, t: float | None) -> float | None:
        return None if t is None else t - self.killed

    def fenced(self, trace: VMTrace) -> float | None:
        """When the last of the VM's old clients was block-listed (None: one never was)."""
        times = [self.blocklist.added(c) for c in trace.old_clients]
        if not times or None in times:
            return None
        return max(t for t in times if t is not None)

    def violations(self) -> int:
        """VMs whose new QEMU started (or, unknown, ran) before all its old clients were
        block-listed."""
        bad = 0
        for trace in self.vms.values():
            started = trace.new_start if trace.new_start is not None else trace.running
            if started is None:
                continue
            fenced = self.fenced(trace)
            if fenced is None or fenced > started:
                bad += 1
        return bad


def failover(
    number: int,
    src: str,
    dst: str,
    store: Store,
    agents: dict[str, Daemon],
    scheduler: Daemon,
    lvs: dict[str, Libvirtd],
    admin: CephAdmin,
    image: str,
    workers: int,
    timeout: float,
) -> Run:
    vms, _ = store.list(VM)
    ids = sorted(vms)
    log(f"run {number}: reference, {len(ids)} plain libvirt starts on {dst}")
    reference = plain_starts(lvs[src], lvs[dst], ids, admin, image, workers)
    log(f"run {number}: reference {reference:.2f} s")

    traces = {}
    for id, found in vms.items():
        vm = found.value
        assert vm.hostname == src and vm.status == "RUNNING", (id, vm.hostname, vm.status)
        (old_pid,) = qemu_pids(id)
        traces[id] = VMTrace(old_pid, admin.watchers(vm.disk or vm.uuid))
    _, revision = store.list(Host)
    timeline = Timeline(store, revision + 1, src, dst, traces)
    # fence_expiry: the block-list entries' lifetime, in code that sets one.
    expiry = getattr(store.settings, "fence_expiry", None)
    blocklist = BlocklistWatcher(admin, (expiry,) if expiry else ())
    busy0 = machine_busy()
    log(f"run {number}: SIGKILL the agent of {src} (pid {agents[src].pid}), {len(ids)} VMs on it")
    killed = time.time()
    agents[src].stop(signal.SIGKILL)
    run = Run(number, src, dst, traces, killed, timeline, blocklist, reference)
    deadline = time.monotonic() + timeout
    with timeline.cond:
        while not all(t.running for t in traces.values()):
            for what, d in (("the scheduler", scheduler), (f"the agent of {dst}", agents[dst])):
                if not d.alive():
                    tail = "\n".join(d.output().splitlines()[-15:])
                    raise RuntimeError(f"{what} died ({d.log}):\n{tail}")
            if time.monotonic() > deadline:
                log(f"run {number}: timed out after {timeout:g} s")
                break
            timeline.cond.wait(0.5)
    run.busy_percent = (machine_busy() - busy0) / (time.time() - killed) * 100
    run.old_alive = sum(alive(t.old_pid) for t in traces.values())
    time.sleep(0.3)  # one more block-list poll
    blocklist.stop()
    timeline.stop()
    done = sum(1 for t in traces.values() if t.running)
    log(f"run {number}: {done}/{len(ids)} VMs RUNNING on {dst} after {time.time() - killed:.1f} s")
    return run


# --- report ---------------------------------------------------------------------------------------


def _spread(values: list[float]) -> tuple[float, float, float]:
    if not values:
        return float("nan"), float("nan"), float("nan")
    return min(values), statistics.median(values), max(values)


def _phase(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else b - a


def report(runs: list[Run], n: int, settings: Settings, workers: int, code: str) -> str:
    ttl, grace = settings.host_lease_ttl, settings.dead_host_grace
    floor_lease = f"{ttl * 2 / 3:.1f}-{ttl:.1f}"
    floor_grace = f"{ttl * 2 / 3 + grace:.1f}-{ttl + grace:.1f}"
    rows = []
    summary: dict[str, list[float]] = {}
    for r in runs:
        fenced = [f - r.killed for t in r.vms.values() if (f := r.fenced(t)) is not None]
        ran = [t.running - r.killed for t in r.vms.values() if t.running is not None]
        row = {
            "alive": r.after(r.timeline.alive_gone),
            "dead": r.after(r.timeline.dead),
            **dict(zip(("f0", "f50", "f100"), _spread(fenced), strict=True)),
            **dict(zip(("r0", "r50", "r100"), _spread(ran), strict=True)),
            "ref": r.reference,
        }
        for k, v in row.items():
            if v is not None and v == v:
                summary.setdefault(k, []).append(v)
        rows.append(
            [
                str(r.number),
                f"{r.src} -> {r.dst}",
                f"{len(fenced)}/{n}",
                f"{len(ran)}/{n}",
                *(row[k] if row[k] is not None else float("nan") for k in row if k != "ref"),
                r.violations() + sum(1 for t in r.vms.values() if t.running is None),
                floor_lease,
                floor_grace,
                row["ref"],
            ]
        )
    if len(runs) > 1:
        med = {k: statistics.median(v) for k, v in summary.items()}
        keys = ("alive", "dead", "f0", "f50", "f100", "r0", "r50", "r100")
        rows.append(
            [
                "median",
                "",
                "",
                "",
                *(med.get(k, float("nan")) for k in keys),
                sum(r.violations() for r in runs),
                floor_lease,
                floor_grace,
                med.get("ref", float("nan")),
            ]
        )
    headers = [
        "run",
        "hosts",
        "block-listed",
        "ran again",
        "alive key gone s",
        "host DEAD s",
        "block-listed first s",
        "median s",
        "last s",
        "RUNNING again first s",
        "median s",
        "last s",
        "started before block-listed",
        "floor: lease s",
        "floor: lease + grace s",
        f"ref: plain libvirt, {n} starts s",
    ]
    text = table(headers, rows)

    # Where the time goes, every VM of every run.
    phases: dict[str, list[float]] = {}
    what = {
        "kill -> alive key gone": "lease expiry in etcd",
        "alive key gone -> host DEAD": "scheduler's watch",
        "host DEAD -> block-listed": "grace, then fencing",
        "block-listed -> placed": "KILLED, placed again",
        "placed -> CREATING": "receiving agent's pick-up",
        "CREATING -> QEMU started": "domain defined, QEMU exec'd",
        "QEMU started -> RUNNING": "domain start",
    }
    for r in runs:
        tl = r.timeline
        for name, a, b in (
            ("kill -> alive key gone", r.killed, tl.alive_gone),
            ("alive key gone -> host DEAD", tl.alive_gone, tl.dead),
        ):
            d = _phase(a, b)
            if d is not None:
                phases.setdefault(name, []).append(d)
        for t in r.vms.values():
            fenced = r.fenced(t)
            placed = t.seen.get(f"SCHEDULED@{r.dst}")
            creating = t.seen.get(f"CREATING@{r.dst}")
            for name, a, b in (
                ("host DEAD -> block-listed", tl.dead, fenced),
                ("block-listed -> placed", fenced, placed),
                ("placed -> CREATING", placed, creating),
                ("CREATING -> QEMU started", creating, t.new_start),
                ("QEMU started -> RUNNING", t.new_start, t.running),
            ):
                d = _phase(a, b)
                if d is not None:
                    phases.setdefault(name, []).append(d)
    prows = []
    for name, why in what.items():
        v = [x for x in phases.get(name, []) if x == x]
        prows.append([name, why, len(v), pct(v, 50), max(v) if v else float("nan")])
    ptext = table(["phase", "what", "samples", "p50 s", "max s"], prows)

    sample = next((t.fenced_message for r in runs for t in r.vms.values() if t.fenced_message), "")
    busy = ", ".join(f"{r.busy_percent:.0f} %" for r in runs)
    notes = (
        f"- {n} VMs ({SPECS.cpu} vCPU, {int(SPECS.ram * 1024)} MiB, an RBD clone of the "
        "boot-sector image each) on one host; its agent SIGKILLed (its QEMUs go on running: "
        f"{', '.join(f'{r.old_alive}/{n}' for r in runs)} old QEMUs still alive when the last "
        "VM ran again); seconds from the kill, seen by watchers in the benchmark's process "
        "(etcd watch; Ceph's block-list polled every 0.1 s, an entry's time from its expiry; "
        "QEMU start from /proc).\n"
        f"- Settings (ucloud/config.py's defaults unless given): host_lease_ttl {ttl} s, "
        f"dead_host_grace {grace:g} s, scheduler_resync {settings.scheduler_resync:g} s, "
        f"host_workers {settings.host_workers}, host_resync {settings.host_resync:g} s, "
        f"scheduler_lease_ttl {settings.scheduler_lease_ttl} s. Floor: the alive key goes "
        "ttl*2/3 to ttl after the kill (renewed every ttl/3), then dead_host_grace.\n"
        f"- ref: the same domains (each on its own clone) defined and started with "
        f"libvirt-python on the receiving host's libvirtd, {workers} at once (as many as the "
        "agent's workers), measured in the same run just before the kill.\n"
        "- started before block-listed: VMs whose new QEMU started before every client that had "
        "its disk open on the dead host was block-listed, plus VMs that never ran again (must "
        "be 0).\n"
        f"- Machine busy from the kill to the last VM running (2 cores = 200 %): {busy}.\n"
        f"- Code under test: {code}.\n"
    )
    if sample:
        notes += f"- Event log entry of a fenced VM: `{sample}`.\n"
    return f"{text}\n\n{ptext}\n\n{notes}"


# --- main -----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.failover", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=None, help="failovers (3; --quick 1)")
    parser.add_argument("--vms", type=int, default=16, help="VMs on the killed host (16)")
    parser.add_argument(
        "--lease-ttl",
        type=int,
        default=default("host_lease_ttl"),
        help="host_lease_ttl, s (default: ucloud's, %(default)s)",
    )
    parser.add_argument(
        "--grace",
        type=float,
        default=default("dead_host_grace"),
        help="dead_host_grace, s (default: ucloud's, %(default)s)",
    )
    parser.add_argument(
        "--scheduler-resync",
        type=float,
        default=default("scheduler_resync"),
        help="scheduler_resync, s (default: ucloud's, %(default)s)",
    )
    parser.add_argument("--timeout", type=float, default=180, help="s a run may take")
    parser.add_argument("--quick", action="store_true", help="one run")
    parser.add_argument("--record", action="store_true", help="write the table to RESULTS.md")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    runs = args.runs or (1 if args.quick else 3)
    n = args.vms
    log(f"machine: {machine()}")

    log("guests")
    run_script(str(SCRIPTS / "build-guests.sh"), str(GUEST_DIR), timeout=900)
    results: list[Run] = []
    with contextlib.ExitStack() as stack:
        wd = stack.enter_context(workdir("failover", keep=args.keep))
        etcd = stack.enter_context(etcd_server(wd))
        log("Ceph")
        ceph = stack.enter_context(ceph_cluster(wd, osd_size="20G"))
        log("libvirtds")
        lvs: dict[str, Libvirtd] = {}
        for name in HOSTS:
            lvs[name] = start_libvirtd(wd / f"lv-{name}")
            stack.callback(stop_libvirtd, lvs[name])
        settings = with_ceph(
            bench_settings(
                etcd,
                host_lease_ttl=args.lease_ttl,
                dead_host_grace=args.grace,
                scheduler_resync=args.scheduler_resync,
            ),
            ceph,
        )
        hosts = {
            name: host_settings(
                settings,
                ceph,
                lvs[name],
                name,
                wd / name,
                # host_settings shortens these for the tests: ucloud's defaults here.
                host_resync=default("host_resync"),
                shutdown_timeout=default("shutdown_timeout"),
                # Room for every VM on either host (4 vCPUs a CPU: cpu_allocation_ratio).
                host_cpu=max(8, n // 4 + 1),
                host_ram=max(8.0, 2 * n * SPECS.ram),
            )
            for name in HOSTS
        }
        code = code_under_test(settings_env(settings))
        log(f"code under test: {code}")
        store = Store(settings)
        stack.callback(store.close)
        admin = CephAdmin(ceph)
        stack.callback(admin.close)
        image = register_image(
            store, RBDStorage(hosts[HOSTS[0]]), str(GUEST_DIR / "bootsector.raw"), "boot", "root",
            "ucloud-admin",
        ).uuid  # fmt: skip

        agents: dict[str, Daemon] = {}
        stack.callback(lambda: [a.stop() for a in agents.values()])
        # The scheduler fences through Ceph: the hosts' Ceph settings.
        scheduler = daemon("ucloud.scheduler.main", hosts[HOSTS[0]], wd / "scheduler.log")
        stack.callback(scheduler.stop)
        src, dst = HOSTS
        log(f"{n} VMs on {src} (the agent of {dst} not started yet)")
        agents[src] = daemon("ucloud.host.main", hosts[src], wd / f"{src}-1.log")
        _wait_host_up(store, src)
        for i in range(n):
            vm = VM(name=f"f{i}", owner="alice", owner_realm="users", specs=SPECS, image=image)
            vm.record("api", "created by users/alice")
            store.create(vm)
        _wait_all(store, n, src, agents[src], scheduler, timeout=300)
        agents[dst] = daemon("ucloud.host.main", hosts[dst], wd / f"{dst}-1.log")
        _wait_host_up(store, dst)

        for number in range(1, runs + 1):
            run = failover(
                number, src, dst, store, agents, scheduler, lvs, admin, image,
                settings.host_workers, args.timeout,
            )  # fmt: skip
            results.append(run)
            if any(t.running is None for t in run.vms.values()) or number == runs:
                break
            # The killed agent comes back: it destroys its fenced QEMUs (placed elsewhere now).
            log(f"run {number}: the agent of {src} starts again")
            agents[src] = daemon("ucloud.host.main", hosts[src], wd / f"{src}-{number + 1}.log")
            _wait_host_up(store, src)
            old = [t.old_pid for t in run.vms.values()]
            try:
                wait_for(lambda o=old: not any(map(alive, o)), 90, "the old QEMUs destroyed")
            except AssertionError:
                log(f"the agent of {src} left {sum(map(alive, old))} old QEMUs: destroying them")
                _destroy_all(lvs[src])
            src, dst = dst, src

    out = report(results, n, hosts[HOSTS[0]], settings.host_workers, code)
    print(out)
    if args.record:
        record("failover", out)
    return 0


def _wait_host_up(store: Store, name: str) -> None:
    wait_for(
        lambda: (h := store.get(Host, name)) and h.value.status == "UP" and store.get(Alive, name),
        90,
        f"{name} UP",
    )


def _wait_all(store: Store, n: int, host: str, *daemons: Daemon, timeout: float) -> None:
    def done() -> bool:
        for d in daemons:
            if not d.alive():
                raise RuntimeError(f"a daemon died ({d.log}):\n{d.output()[-2000:]}")
        vms, _ = store.list(VM)
        return len(vms) == n and all(
            v.value.status == "RUNNING" and v.value.hostname == host for v in vms.values()
        )

    wait_for(done, timeout, f"{n} VMs RUNNING on {host}", interval=0.5)


def _destroy_all(lv: Libvirtd) -> None:
    conn = libvirt.open(lv.uri)
    try:
        for dom in conn.listAllDomains():
            with contextlib.suppress(libvirt.libvirtError):
                if dom.isActive():
                    dom.destroy()
                dom.undefine()
    finally:
        conn.close()


if __name__ == "__main__":
    sys.exit(main())
