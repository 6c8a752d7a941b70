"""First boot on the real stack: the NoCloud seed a host agent builds for a VM, read back and
checked by cloud-init's own schema; our busybox guest and a real Debian guest (cloud-init 22.4)
booting with it under TCG; a VM restarted on another host keeps its instance and does not run
first boot again."""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.bed import Bed, BedCluster, BedHost
from tests.conftest import Account, make_image, register_image
from tests.failover_stack import NODES, libvirtds_fixture, start_scheduler  # noqa: F401
from tests.seedfiles import read_seed
from tests.servers import Daemon, wait_for
from tests.stack import (
    FIRST_BOOT,
    FIRST_BOOT_BEFORE,
    NO_SEED,
    SEED,
    USER_DATA_BEGIN,
    USER_DATA_END,
    Ceph,
    daemon,
    host_settings,
    marker_fields,
    wait_console,
)
from ucloud import seed
from ucloud.cli import ssh as cli_ssh
from ucloud.config import Settings
from ucloud.models import VM, Host, HostStatus, Image, Network, Specs, Status
from ucloud.storage.rbd import RBDStorage
from ucloud.store import Store

SPECS = {"cpu": 1, "ram": 0.125, "ssd": 1}


def keygen(folder: Path, name: str) -> Path:
    path = folder / name
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{name}@laptop", "-f", str(path)],
        check=True,
        capture_output=True,
    )
    return path.with_suffix(".pub")


def cloud_init_schema(path: Path) -> str:
    """cloud-init's own check of a cloud-config (Debian's cloud-init package)."""
    result = subprocess.run(
        ["cloud-init", "schema", "-c", str(path)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def add_key(client, user: Account, pub: Path) -> None:
    r = client.post("/key/add", json=user.creds(key_name=pub.stem, public_key=pub.read_text()))
    assert r.status_code == 201, r.json


def create_vm(client, user: Account, image: Image, **fields: object) -> str:
    body = user.creds(vm_name="vm", specs=SPECS, image=image.uuid)
    r = client.post("/vm/create", json={**body, **fields})
    assert r.status_code == 202, r.json
    return r.json["uuid"]


@dataclass
class Hosts:
    """Two hypervisors (agents and libvirtds), a scheduler, the API in-process."""

    settings: Settings
    store: Store
    client: object
    user: Account
    admin: Account
    hosts: dict[str, Settings]
    agents: dict[str, Daemon]
    tmp: Path

    def add_key(self, pub: Path) -> None:
        add_key(self.client, self.user, pub)

    def create(self, image: Image, **fields: object) -> str:
        return create_vm(self.client, self.user, image, **fields)

    def act(self, vmid: str, action: str) -> None:
        r = self.client.post("/vm/action", json=self.user.creds(vmid=vmid, action=action))
        assert r.status_code == 202, r.json

    def maintenance(self, host: str, on: bool) -> None:
        body = self.admin.creds(hostname=host, maintenance=on)
        assert self.client.post("/host/maintenance", json=body).status_code == 200

    def vm(self, vmid: str) -> VM:
        found = self.store.get(VM, vmid)
        assert found is not None
        return found.value

    def wait(self, vmid: str, status: Status, timeout: float = 120) -> VM:
        def reached() -> VM | None:
            vm = self.vm(vmid)
            assert vm.status != Status.ERROR, vm.reason
            return vm if vm.status == status else None

        return wait_for(reached, timeout, f"VM {vmid} to be {status}")

    def state(self, host: str) -> Path:
        return Path(self.hosts[host].state_dir)

    def seed_file(self, host: str, vmid: str) -> Path:
        return self.state(host) / "seed" / f"{vmid}.iso"


@pytest.fixture
def two_hosts(
    settings, store, client, alice, admin, ceph: Ceph, libvirtds, tmp_path, request
) -> Iterator[Hosts]:
    marker = request.node.get_closest_marker("host_settings")
    more = marker.kwargs if marker else {}
    hosts = {n: host_settings(settings, ceph, libvirtds[n], n, tmp_path / n, **more) for n in NODES}
    scheduler = start_scheduler(hosts, tmp_path)
    agents = {n: daemon("ucloud.host.main", hosts[n], tmp_path / f"{n}.log") for n in NODES}
    h = Hosts(settings, store, client, alice, admin, hosts, agents, tmp_path)
    try:
        for name in NODES:
            wait_for(
                lambda name=name: (x := store.get(Host, name)) and x.value.status == HostStatus.UP,
                60,
                f"{name} UP",
            )
        yield h
    finally:
        try:
            for name in NODES:
                h.maintenance(name, False)
            for vmid in store.list(VM)[0]:
                client.post("/vm/delete", json=alice.creds(vmid=vmid))
            wait_for(lambda: not store.list(VM)[0], 120, "the test's VMs to be deleted")
        finally:  # stopped even if the clean-up failed (the libvirtds are shared)
            for agent in agents.values():
                agent.stop()
            scheduler.stop()


@pytest.fixture
def storage(two_hosts: Hosts) -> RBDStorage:
    return RBDStorage(two_hosts.hosts[NODES[0]])


def test_seeds_hold_what_cloud_init_accepts(client, store, alice, tmp_path):
    """For keys, hostname and user-data as the API records them: the seed's YAML passes
    cloud-init's schema check, and its meta-data names the instance, hostname and keys."""
    image = make_image(store)
    pub = keygen(tmp_path, "laptop")
    add_key(client, alice, pub)
    config = (
        "#cloud-config\nruncmd:\n  - [sh, -c, 'echo made by $(hostname)']\npackage_update: false\n"
    )
    default = create_vm(client, alice, image, hostname="db-1")
    custom = create_vm(client, alice, image, user_data=config)
    for vmid, user_data in ((default, None), (custom, config)):
        found = store.get(VM, vmid)
        assert found is not None
        vm = found.value
        label, spaces = read_seed(seed.iso(vm))
        assert label == "cidata"
        files = spaces["rr_path"]
        assert sorted(files) == ["meta-data", "user-data"]
        assert spaces["joliet_path"] == files
        meta = yaml.safe_load(files["meta-data"])
        assert meta["instance-id"] == vmid
        assert meta["local-hostname"] == ("db-1" if vmid == default else "vm")
        assert meta["public-keys"] == [pub.read_text().strip()]
        if user_data is not None:
            assert files["user-data"].decode() == user_data
        (tmp_path / "user-data").write_bytes(files["user-data"])
        assert "Valid cloud-config" in cloud_init_schema(tmp_path / "user-data")
        if user_data is None:
            assert yaml.safe_load(files["user-data"]) == {
                "ssh_authorized_keys": [pub.read_text().strip()]
            }


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_busybox_guest_boots_with_its_seed_once_per_instance(
    two_hosts: Hosts, storage: RBDStorage, guests, libvirtds, tmp_path
):
    h = two_hosts
    image = register_image(h.store, storage, str(guests.linux), "linux", "root", "ucloud-admin")
    try:
        keys = [keygen(tmp_path, "laptop"), keygen(tmp_path, "desktop")]
        for pub in keys:
            h.add_key(pub)
        # A VM recorded before first-boot seeds existed (no first_boot): it boots as before.
        before = VM(
            name="old", owner=h.user.name, owner_realm=h.user.realm, specs=Specs(**SPECS),
            image=image.uuid,
        )  # fmt: skip
        h.store.create(before)
        script = '#!/bin/sh\necho "hello from $(hostname): $(( 6 * 7 ))"\n'
        vmid = h.create(image, hostname="guest-one", user_data=script)
        first = h.wait(vmid, Status.RUNNING).hostname
        other = next(n for n in NODES if n != first)

        console = wait_console(h.state(first), vmid, USER_DATA_END, timeout=180)
        assert marker_fields(console, SEED) == {
            "label": "cidata",
            "hostname": "guest-one",
            "keys": "2",
            "instance-id": vmid,
        }
        assert marker_fields(console, FIRST_BOOT) == {"instance-id": vmid}
        output = console.split(USER_DATA_BEGIN, 1)[1].split(USER_DATA_END, 1)[0]
        assert output.strip() == "hello from guest-one: 42"
        assert marker_fields(console, USER_DATA_END) == {"rc": "0"}

        # The seed the agent wrote: a volume blkid knows as cidata, with the VM's data.
        iso = h.seed_file(first, vmid)
        blkid = ["blkid", "-o", "value", "-s", "LABEL", str(iso)]
        assert subprocess.run(blkid, capture_output=True, text=True).stdout.strip() == "cidata"
        written = iso.read_bytes()
        files = read_seed(written)[1]["rr_path"]
        assert files["user-data"] == script.encode()
        assert yaml.safe_load(files["meta-data"])["public-keys"] == [
            k.read_text().strip() for k in keys
        ]

        old_host = h.wait(before.uuid, Status.RUNNING).hostname
        old_console = wait_console(h.state(old_host), before.uuid, "UCLOUD-LINUX-BOOT-OK")
        assert NO_SEED in old_console and SEED not in old_console
        assert "cdrom" not in libvirtds[old_host].virsh("dumpxml", f"ucloud-{before.uuid}")
        assert not h.seed_file(old_host, before.uuid).exists()

        # Restarted on the other host: the same seed, the same instance, no first boot again.
        h.act(vmid, "stop")
        h.wait(vmid, Status.STOPPED, timeout=60)
        assert not iso.exists()  # the host it left keeps nothing of it
        h.maintenance(first, True)
        h.act(vmid, "start")  # at once: a placement from a view before the maintenance fails
        moved = h.wait(vmid, Status.RUNNING)
        assert moved.hostname == other
        console = wait_console(h.state(other), vmid, FIRST_BOOT_BEFORE, timeout=180)
        assert marker_fields(console, FIRST_BOOT_BEFORE) == {"instance-id": vmid}
        assert marker_fields(console, SEED)["hostname"] == "guest-one"
        assert f"{FIRST_BOOT} " not in console and USER_DATA_BEGIN not in console
        assert h.seed_file(other, vmid).read_bytes() == written
    finally:
        for vmid in h.store.list(VM)[0]:
            h.client.post("/vm/delete", json=h.user.creds(vmid=vmid))
        wait_for(lambda: not h.store.list(VM)[0], 120, "the VM to be deleted")
        storage.delete_image(image.uuid)


def ci_fingerprint(pub: Path) -> str:
    """A key's fingerprint as cloud-init prints it on the console: sha256, hex pairs."""
    blob = base64.b64decode(pub.read_text().split()[1])
    digest = hashlib.sha256(blob).hexdigest()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def guest_ssh(host: BedHost, key: Path, known_hosts: Path, address: str, command: str) -> str:
    """``command``'s output in the guest, by ssh from ``host``'s namespace (no questions asked:
    the guest's host key is taken the first time, and must be the same afterwards)."""
    argv = ["ssh", "-F", "/dev/null", "-i", str(key), "-l", "debian", "-o", "BatchMode=yes"]
    argv += ["-o", "ConnectTimeout=5", "-o", f"UserKnownHostsFile={known_hosts}"]
    argv += ["-o", "StrictHostKeyChecking=accept-new", address, command]
    return host.run(*argv)


def strict_ssh(host: BedHost, key: Path, vm: dict, state: Path, command: str) -> str:
    """``command``'s output in the guest, by ssh as ``ucloud vm ssh`` runs it: against the
    known_hosts file it writes from the VM's recorded host keys, strictly."""
    known_hosts = cli_ssh.write_known_hosts(vm, state)
    assert known_hosts is not None
    options = ["BatchMode=yes", "ConnectTimeout=10"]
    argv = cli_ssh.ssh_argv(
        vm, user="debian", identity=str(key), options=options, known_hosts=str(known_hosts),
        command=[command],
    )  # fmt: skip
    assert "StrictHostKeyChecking=yes" in argv
    return host.run(*argv).strip()


def wait_guest_ssh(host: BedHost, key: Path, known_hosts: Path, address: str) -> str:
    """The guest's ``hostname`` and ``ip -o addr show dev eth0`` once its SSH server answers."""

    def answer() -> str | None:
        try:
            return guest_ssh(host, key, known_hosts, address, "hostname; ip -o addr show dev eth0")
        except RuntimeError:
            return None

    return wait_for(answer, 180, f"the guest's SSH server at {address}", interval=3)


def eth0_addresses(report: str) -> set[ipaddress.IPv4Interface | ipaddress.IPv6Interface]:
    """The global addresses of ``ip -o addr show dev eth0`` (the report's lines 2...)."""
    found: set[ipaddress.IPv4Interface | ipaddress.IPv6Interface] = set()
    for line in report.splitlines()[1:]:
        fields = line.split()
        if len(fields) > 3 and fields[2] in ("inet", "inet6") and "link" not in fields:
            found.add(ipaddress.ip_interface(fields[3]))
    return found


@pytest.mark.slow
@pytest.mark.timeout(1800)  # on a fresh machine this includes building the image (2-4 min)
# A stop as users get it: the guest shuts down on ACPI's request. 3 s before a hard stop cut
# Debian's shutdown short under TCG, losing what cloud-init wrote last (its per-instance
# semaphores), so it ran those modules again at the next boot. (The image has dbus, so
# systemd-logind turns the power button into a shutdown.) Both hosts may route.
@pytest.mark.host_settings(shutdown_timeout=240.0, network_router=True)
def test_debian_guest_takes_hostname_key_user_data_and_network_once_with_cloud_init(
    bed: Bed, bed_cluster: BedCluster, debian_guest, tmp_path
):
    """A real Debian guest (cloud-init 22.4) on a network with IPv6 and IPv4, on the two-host
    bed: it takes its hostname, key and user-data, and the addresses its
    network-config describes (IPv6 set statically, IPv4 from the router's DHCP); it answers
    SSH with the user's key at its port's address from the router. Restarted on the other
    host, it is the same instance (no first-boot module again), with the same addresses and
    host key, reached across VXLAN."""
    c = bed_cluster
    storage = RBDStorage(c.hosts["h1"])
    image = register_image(c.store, storage, str(debian_guest), "debian-12", "root", "ucloud-admin")
    user, admin = c.users["alice"], c.users["root"]
    try:
        pub = keygen(tmp_path, "laptop")
        add_key(c.client, user, pub)
        r = c.client.post(
            "/network/create", json=user.creds(network_name="lan", ipv4="10.70.0.0/24")
        )
        assert r.status_code == 201, r.json
        lan = r.json["network"]

        def router(not_on: str = "") -> BedHost:
            """The network's router (as the scheduler chose it), once it is not ``not_on``."""
            name = wait_for(
                lambda: (n := c.store.get(Network, lan["uuid"]).value.router) != not_on and n,
                60,
                "the scheduler to choose the network's router",
            )
            return next(h for h in bed.hosts if h.name == name)

        config = (
            "#cloud-config\n"
            "runcmd:\n"
            "  - [sh, -c, 'echo \"UCLOUD-DEBIAN-USERDATA $(hostname) $(id -un debian)\"']\n"
        )
        vmid = create_vm(
            c.client, user, image, hostname="deb-guest", user_data=config,
            specs={"cpu": 1, "ram": 0.5, "ssd": 3}, networks=[lan["uuid"]],
        )  # fmt: skip

        def running() -> VM | None:
            found = c.store.get(VM, vmid)
            assert found is not None and found.value.status != Status.ERROR, found
            return found.value if found.value.status == Status.RUNNING else None

        vm = wait_for(running, 300, "the Debian VM to run")
        host, port = vm.hostname, vm.ports[0]
        state = Path(c.hosts[host].state_dir)
        seed_files = read_seed((state / "seed" / f"{vmid}.iso").read_bytes())[1]["rr_path"]
        (tmp_path / "user-data").write_bytes(seed_files["user-data"])
        cloud_init_schema(tmp_path / "user-data")

        wait_console(state, vmid, "deb-guest login:", timeout=600, whole_line=False)
        console = wait_console(state, vmid, "Cloud-init v. 22.4.2 finished", timeout=300)
        assert "DataSourceNoCloud [seed=/dev/sr0]" in console
        assert "UCLOUD-DEBIAN-USERDATA deb-guest debian" in console
        # cloud-init put the key into the default user's authorized_keys and says so.
        assert "Authorized keys from /home/debian/.ssh/authorized_keys for user debian" in console
        assert ci_fingerprint(pub) in console
        assert "BEGIN SSH HOST KEY FINGERPRINTS" in console  # made on first boot

        # From the router, by SSH with the user's key, at the port's address: the guest has
        # its hostname, and on eth0 exactly the addresses of its network-config.
        key, known = pub.with_suffix(""), tmp_path / "known_hosts"
        want = {
            ipaddress.ip_interface(f"{port.ipv6}/64"),
            ipaddress.ip_interface(f"{port.ipv4}/24"),
        }
        gateway = router()
        report = wait_guest_ssh(gateway, key, known, port.ipv6)
        assert report.splitlines()[0] == "deb-guest", report
        assert eth0_addresses(report) == want, report
        assert guest_ssh(gateway, key, known, port.ipv4, "hostname").strip() == "deb-guest"

        # Its host agent recorded the host keys the guest printed on its console, and they are
        # the very keys its sshd presents: ssh-keyscan from the router finds the same set, and
        # ssh as `ucloud vm ssh` runs it (StrictHostKeyChecking=yes, only those keys) gets in.
        def recorded() -> dict | None:
            r = c.client.get("/vm/status", json=user.creds(vmid=vmid))
            assert r.status_code == 200, r.json
            return r.json if r.json.get("host_keys") else None

        answer = wait_for(recorded, 120, "the VM's host keys to be recorded")
        scanned = gateway.run("ssh-keyscan", "-T", "10", port.ipv6)
        presented = {tuple(line.split()[1:3]) for line in scanned.splitlines() if line[:1] != "#"}
        keys = {tuple(line.split()[:2]) for line in answer["host_keys"]}
        assert keys == presented and len(keys) >= 2, (keys, scanned)
        assert strict_ssh(gateway, key, answer, tmp_path / "ucloud", "hostname") == "deb-guest"

        # Started again on the other host: cloud-init finds the same instance-id, keeps the
        # hostname, and runs no first-boot module again (no user-data, no new host keys); the
        # guest keeps its addresses and answers SSH with the same host key.
        def act(action: str) -> None:
            r = c.client.post("/vm/action", json=user.creds(vmid=vmid, action=action))
            assert r.status_code == 202, r.json

        act("stop")
        wait_for(
            lambda: c.store.get(VM, vmid).value.status == Status.STOPPED, 300, "the VM to stop"
        )
        assert "stopping it hard" not in c.agents[host].output()
        body = admin.creds(hostname=host, maintenance=True)
        assert c.client.post("/host/maintenance", json=body).status_code == 200
        act("start")
        moved = wait_for(running, 300, "the Debian VM to run again")
        other = moved.hostname
        assert other != host and moved.ports == vm.ports
        state = Path(c.hosts[other].state_dir)
        again = wait_console(state, vmid, "Cloud-init v. 22.4.2 finished", timeout=600)
        assert "DataSourceNoCloud [seed=/dev/sr0]" in again
        wait_console(state, vmid, "deb-guest login:", timeout=120, whole_line=False)
        assert "UCLOUD-DEBIAN-USERDATA" not in again
        assert "BEGIN SSH HOST KEY FINGERPRINTS" not in again
        assert "Authorized keys from" not in again
        # From the router, which is not the host in maintenance (the scheduler moved it if it
        # was); known_hosts: the same host key.
        report = wait_guest_ssh(router(not_on=host), key, known, port.ipv6)
        assert report.splitlines()[0] == "deb-guest" and eth0_addresses(report) == want, report
        # The same instance keeps its recorded keys (its console here printed none), and they
        # still let ssh in strictly.
        again_answer = c.client.get("/vm/status", json=user.creds(vmid=vmid)).json
        assert again_answer["host_keys"] == answer["host_keys"]
        gateway = router(not_on=host)
        assert strict_ssh(gateway, key, again_answer, tmp_path / "ucloud", "hostname") == (
            "deb-guest"
        )
    finally:
        for id in c.store.list(VM)[0]:
            c.client.post("/vm/delete", json=user.creds(vmid=id))
        wait_for(lambda: not c.store.list(VM)[0], 120, "the VM to be deleted")
        storage.delete_image(image.uuid)


@pytest.fixture(autouse=True)
def _tools() -> None:
    for tool in ("ssh-keygen", "ssh", "cloud-init", "blkid"):
        if not shutil.which(tool):
            pytest.fail(f"{tool} is missing: run scripts/install-deps.sh")
