"""The multi-host test bed: simulated hypervisors as network namespaces on one machine.

Each host is a namespace holding a private libvirtd and, once started, its ``ucloud-host``,
with an underlay address on a veth to a test switch bridge (scripts/testbed-up.sh makes them,
with names unique to the bed, and scripts/testbed-down.sh removes exactly those). The bed's
etcd and Ceph listen on the switch's address in the root namespace, which every namespace
reaches; the scheduler and the API run in the root namespace as usual.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.servers import Daemon, Etcd, wait_for
from tests.stack import (
    SCRIPTS,
    Ceph,
    Guests,
    Libvirtd,
    _free_port_block,
    daemon,
    host_settings,
    run_script,
)
from ucloud.config import Settings, load_settings, settings_env
from ucloud.models import VM, Drain, Host, HostStatus, Status
from ucloud.storage.rbd import RBDStorage
from ucloud.store import Store


@dataclass(frozen=True)
class BedHost:
    name: str
    ns: str  # its network namespace
    underlay: str  # its address on the test switch
    libvirtd: Libvirtd

    def run(self, *argv: str, check: bool = True) -> str:
        """A command inside the host's namespace; its stdout."""
        result = subprocess.run(
            ["ip", "netns", "exec", self.ns, *argv],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"{argv} in {self.ns} failed: {result.stderr}")
        return result.stdout


@dataclass(frozen=True)
class Bed:
    dir: Path
    switch: str
    addr: str  # the switch's address: etcd and Ceph listen on it
    hosts: list[BedHost]


def read_env(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key] = value.strip("'")
    return values


@pytest.fixture(scope="session")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bed]:
    with bed_up(tmp_path_factory.mktemp("bed")) as b:
        yield b


@contextlib.contextmanager
def bed_up(directory: Path) -> Iterator[Bed]:
    """Two bed hosts in ``directory`` (the fixtures' and the benchmarks' way to a bed)."""
    run_script(str(SCRIPTS / "testbed-up.sh"), str(directory), "2", timeout=300)
    try:
        env = read_env(directory / "bed.env")
        hosts = [
            BedHost(
                name=h,
                ns=env[f"BED_NS_{h}"],
                underlay=env[f"BED_UNDERLAY_{h}"],
                libvirtd=Libvirtd(directory / h / "lv", env[f"BED_LIBVIRT_{h}"]),
            )
            for h in env["BED_HOSTS"].split()
        ]
        yield Bed(directory, env["BED_SWITCH"], env["BED_ADDR"], hosts)
    finally:
        run_script(str(SCRIPTS / "testbed-down.sh"), str(directory), timeout=300)


@pytest.fixture(scope="session")
def bed_etcd(bed: Bed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Etcd]:
    with etcd_on(bed, tmp_path_factory.mktemp("bed-etcd")) as server:
        yield server


@contextlib.contextmanager
def etcd_on(bed: Bed, directory: Path) -> Iterator[Etcd]:
    server = Etcd(directory, host=bed.addr)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def bed_ceph(bed: Bed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ceph]:
    with ceph_on(bed, tmp_path_factory.mktemp("bed-ceph")) as cluster:
        yield cluster


@contextlib.contextmanager
def ceph_on(bed: Bed, directory: Path) -> Iterator[Ceph]:
    cluster = directory / "cluster"
    env = {
        "CEPH_PORT_BASE": str(_free_port_block(100)),
        "CEPH_OSD_SIZE": "10G",
        "CEPH_NO_MGR": "1",
        "CEPH_ADDR": bed.addr,
    }
    run_script(str(SCRIPTS / "ceph-up.sh"), str(cluster), env=env, timeout=300)
    try:
        yield Ceph(cluster, cluster / "ceph.conf", cluster / "ceph.client.ucloud.keyring")
    finally:
        run_script(str(SCRIPTS / "ceph-down.sh"), str(cluster), timeout=120)


def agent_in(host: BedHost, settings: Settings, log: Path) -> Daemon:
    """The host's ``ucloud-host`` inside its namespace (stopped by its pid: ``ip netns exec``
    execs the agent, so the pid is the agent's)."""
    env = {**settings_env(settings), "UCLOUD_ENV_FILE": "/dev/null"}
    argv = ["ip", "netns", "exec", host.ns, sys.executable, "-m", "ucloud.host.main"]
    return Daemon(argv, env, log)


@dataclass
class BedCluster:
    """A ucloud on the bed: the scheduler (root namespace), one agent per bed host (in its
    namespace), the API in-process; two users and the boot-sector image."""

    settings: Settings
    store: Store
    client: Any
    users: dict[str, Any]  # tests.conftest.Account, by name
    hosts: dict[str, Settings]  # each agent's settings, by host name
    agents: dict[str, Daemon]
    scheduler: Daemon
    tmp: Path
    image: str = ""  # the boot sector
    linux_image: str = ""  # the busybox Linux guest (runs #! user-data)

    def agent_log(self, host: str) -> Path:
        return self.tmp / f"agent-{host}.log"

    def console(self, vm: VM) -> str:
        """The VM's serial console, as its host wrote it."""
        path = Path(self.hosts[vm.hostname].state_dir) / "console" / f"{vm.uuid}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start_agent(self, bed_host: BedHost) -> None:
        self.agents[bed_host.name] = agent_in(
            bed_host, self.hosts[bed_host.name], self.agent_log(bed_host.name)
        )


@pytest.fixture
def bed_cluster(
    bed: Bed,
    bed_etcd: Etcd,
    bed_ceph: Ceph,
    guests: Guests,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> Iterator[BedCluster]:
    marker = request.node.get_closest_marker("host_settings")
    more = marker.kwargs if marker else {}
    with cluster_on(bed, bed_etcd, bed_ceph, guests, tmp_path, more) as c:
        yield c


@contextlib.contextmanager
def cluster_on(
    bed: Bed,
    bed_etcd: Etcd,
    bed_ceph: Ceph,
    guests: Guests,
    tmp_path: Path,
    more: dict[str, object] | None = None,
) -> Iterator[BedCluster]:
    """A ucloud on the bed; ``more``: settings of every host agent (a test's marker
    ``host_settings``)."""
    from tests.conftest import make_account, register_image
    from ucloud.api import create_app

    settings = load_settings(
        etcd_endpoints=bed_etcd.endpoint,
        etcd_prefix=f"/test-{uuid.uuid4().hex[:8]}/v1",
        dead_host_grace=0.5,
        scheduler_lease_ttl=2,
        # Long enough for an agent restarted under a loaded CI machine to be back before its
        # host is taken for dead (and its networks fenced); short enough for the failover test.
        host_lease_ttl=6,
        host_start_margin=1,
        scheduler_resync=2,
        # The scheduler fences dead hosts' disks in the bed's Ceph.
        ceph_conf=str(bed_ceph.conf),
        ceph_keyring=str(bed_ceph.keyring),
        ceph_pool=bed_ceph.pool,
        image_pool=bed_ceph.pool,
    )
    store = Store(settings)
    hosts = {
        h.name: host_settings(
            settings,
            bed_ceph,
            h.libvirtd,
            h.name,
            tmp_path / h.name,
            **host_network_settings(h),
            **(more or {}),
        )
        for h in bed.hosts
    }
    storage = RBDStorage(next(iter(hosts.values())))
    image = register_image(
        store, storage, str(guests.bootsector), "bootsector", "root", "ucloud-admin"
    )
    linux = register_image(store, storage, str(guests.linux), "linux", "root", "ucloud-admin")
    app = create_app(settings, store)
    users = {name: make_account(store, name) for name in ("alice", "bob")}
    users["root"] = make_account(store, "root", settings.admin_realm)
    scheduler = daemon("ucloud.scheduler.main", settings, tmp_path / "scheduler.log")
    c = BedCluster(settings, store, app.test_client(), users, hosts, {}, scheduler, tmp_path)
    c.image, c.linux_image = image.uuid, linux.uuid
    try:
        for h in bed.hosts:
            c.start_agent(h)

        def all_up() -> bool:
            found = [store.get(Host, h.name) for h in bed.hosts]
            return all(f is not None and f.value.status == HostStatus.UP for f in found)

        wait_for(all_up, 60, "every bed host to be UP")
        yield c
    finally:
        for vmid, v in store.list(VM)[0].items():
            if v.value.status != Status.DELETING:
                store.update(VM, vmid, lambda vm: setattr(vm, "desired", "deleted"))
        try:
            wait_for(lambda: not store.list(VM)[0], 60, "the test's VMs to be deleted")
        finally:
            for agent in c.agents.values():
                agent.stop()
            for host in hosts.values():
                stop_routers(Path(host.state_dir))
            c.scheduler.stop()  # the one running now: a test may have replaced the first
            app.extensions["ucloud"].catalog.stop()
            storage.delete_image(image.uuid)
            storage.delete_image(linux.uuid)
            store.close()


def host_network_settings(host: BedHost) -> dict[str, object]:
    """The settings that give a bed host's agent its data plane and underlay address, and the
    URI its peers' libvirtds reach its libvirtd at for live migrations (its socket: the
    namespaces share the file system; QEMU's migration stream crosses the switch to the
    underlay address)."""
    return {
        "network_dataplane": "linux",
        "network_underlay": host.underlay,
        "migration_peer_uri": host.libvirtd.uri,
    }


def stop_routers(state_dir: Path) -> None:
    """The dnsmasqs a router agent left running (they outlive it, as its VMs do): each by the
    pid in its pid file, checked against its command line."""
    for pidfile in state_dir.glob("gateway/*/dnsmasq.pid"):
        try:
            pid = int(pidfile.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if str(pidfile.parent / "dnsmasq.conf").encode() in cmdline:
            os.kill(pid, signal.SIGTERM)


# --- what tests and benchmarks on the bed share ----------------------------------------------

BOOTED = "UCLOUD-LINUX-BOOT-OK"
HEARTBEAT = re.compile(r"UCLOUD-HEARTBEAT (\d+)")


def vm_now(c: BedCluster, id: str) -> VM:
    found = c.store.get(VM, id)
    assert found is not None
    return found.value


def console_all(c: BedCluster, id: str) -> str:
    """The serial console as every host wrote it (a migrated VM's goes on on its target)."""
    paths = [Path(s.state_dir) / "console" / f"{id}.log" for s in c.hosts.values()]
    return "".join(p.read_text(errors="replace") for p in paths if p.exists())


def heartbeats(text: str) -> list[int]:
    return [int(x) for x in HEARTBEAT.findall(text)]


def drain_shown(c: BedCluster, host: str) -> str:
    """What `ucloud host list` shows in its DRAIN column (the API's host list)."""
    r = c.client.get("/host/list", json=c.users["root"].creds())
    assert r.status_code == 200, r.json
    (h,) = [h for h in r.json["hosts"] if h["name"] == host]
    return Drain.model_validate(h["drain"]).describe() if h["drain"] else "-"


def maintenance(c: BedCluster, host: str, on: bool) -> None:
    body = c.users["root"].creds(hostname=host, maintenance=on)
    r = c.client.post("/host/maintenance", json=body)
    assert r.status_code == 200, r.json


def ip_json(host: BedHost, *args: str) -> list[dict]:
    return json.loads(host.run("ip", "-j", "-d", *args) or "[]")


def link(host: BedHost, name: str) -> dict | None:
    found = [x for x in ip_json(host, "link", "show") if x["ifname"] == name]
    return found[0] if found else None


@dataclass
class StandIn:
    """An endpoint on a network: its own namespace, a veth into a host's bridge."""

    ns: str
    host: BedHost
    port: str  # the veth end on the bridge, in the host's namespace
    address: str

    def ping(self, address: str, count: int = 1, size: int = 56, df: bool = False) -> bool:
        argv = ["ip", "netns", "exec", self.ns, "ping", "-c", str(count), "-W", "2"]
        argv += ["-s", str(size)] + (["-M", "do"] if df else [])
        return subprocess.run([*argv, address], capture_output=True).returncode == 0


class StandIns:
    def __init__(self) -> None:
        self.made: list[StandIn] = []
        self.id = secrets.token_hex(2)

    def add(self, host: BedHost, bridge: str, address: str, mtu: int) -> StandIn:
        n = len(self.made)
        ns, port = f"ucsi{self.id}-{n}", f"ucsi{self.id}p{n}"
        subprocess.run(["ip", "netns", "add", ns], check=True)
        s = StandIn(ns, host, port, address.split("/")[0])
        self.made.append(s)
        host.run("ip", "link", "add", port, "mtu", str(mtu), "type", "veth", "peer", "eth0")
        host.run("ip", "link", "set", "eth0", "netns", ns)
        host.run("ip", "link", "set", port, "master", bridge, "up")
        family = "-6" if ":" in address else "-4"
        for argv in (
            ["ip", "link", "set", "lo", "up"],
            ["ip", "link", "set", "eth0", "up"],
            ["ip", family, "addr", "add", address, "dev", "eth0"]
            + (["nodad"] if family == "-6" else []),
        ):
            subprocess.run(["ip", "netns", "exec", ns, *argv], check=True)
        return s

    def remove(self, s: StandIn) -> None:
        subprocess.run(["ip", "netns", "del", s.ns], check=False)  # its veth goes with it
        self.made.remove(s)

    def remove_all(self) -> None:
        for s in list(self.made):
            self.remove(s)


def bed_host(bed: Bed, name: str) -> BedHost:
    return next(h for h in bed.hosts if h.name == name)


def make_network(c: BedCluster, user: str, name: str, **more: object) -> dict:
    r = c.client.post("/network/create", json=c.users[user].creds(network_name=name, **more))
    assert r.status_code == 201, r.json
    return r.json["network"]


GUEST_SPECS = {"cpu": 1, "ram": 0.25, "ssd": 1}


def make_guest(c: BedCluster, user: str, name: str, network: dict, script: str) -> VM:
    """A busybox Linux guest on ``network`` that runs ``script`` (its user-data) at boot."""
    body = c.users[user].creds(
        vm_name=name,
        specs=GUEST_SPECS,
        image=c.linux_image,
        networks=[network["uuid"]],
        user_data=script,
    )
    r = c.client.post("/vm/create", json=body)
    assert r.status_code == 202, r.json
    return VM.model_validate(r.json["vm"])
