"""The user's figure: from ``vm create`` of the Debian guest on a network to its SSH server
answering the user's key at the VM's address, p50/p95 over a few runs; beside the same
Debian image booted by plain QEMU (``qemu-system-x86_64 -accel tcg``) with the same kind of
NoCloud seed (ucloud/seed.py: hostname, key, network-config), the same NIC (virtio on a tap
on a bridge holding the gateway address, MTU 1450), 1 vCPU and 512 MiB, in the same run.

ucloud's side: a one-host test bed (scripts/testbed-up.sh: the host is a network namespace
with a private libvirtd; etcd and Ceph on the bed's switch address), the host's agent inside
it with ``network_router`` (it holds the network's gateway address and runs its dnsmasq), the
scheduler as a process, the API in this process. The Debian image is imported into RBD once;
each VM gets a clone, as users' VMs do. The reference runs in the same namespace: its own
bridge with a gateway address, a tap, and a qcow2 overlay of the image on local disk.

Both sides are probed the same way, from the host's namespace: ``ssh -o BatchMode=yes``
with the key, every second, until ``true`` runs in the guest. The runs take turns (ucloud,
then plain QEMU), so load from elsewhere spreads over both.
"""

from __future__ import annotations

import argparse
import subprocess
import time
import uuid
from pathlib import Path

from bench.common import log, machine, pct, record, table, workdir
from tests.bed import BedHost, agent_in, read_env
from tests.conftest import make_account, register_image
from tests.servers import Etcd, wait_for
from tests.stack import (
    GUEST_DIR,
    SCRIPTS,
    Ceph,
    Libvirtd,
    _free_port_block,
    daemon,
    host_settings,
    run_script,
)
from ucloud import seed
from ucloud.config import load_settings
from ucloud.models import VM, Host, HostStatus, Port, Specs, Status
from ucloud.network.allocate import eui64, new_mac
from ucloud.storage.rbd import RBDStorage
from ucloud.store import Store

REF_PREFIX = "fd75:636c:6f75:ffff::/64"  # the reference's network, inside the namespace only
REF_BRIDGE = "ucrefbr0"
REF_TAP = "ucreftap0"
MTU = 1450
RAM_MIB = 512


def keygen(folder: Path) -> Path:
    key = folder / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key


def ssh_answers(host: BedHost, key: Path, address: str) -> bool:
    argv = ["ssh", "-F", "/dev/null", "-i", str(key), "-l", "debian", "-o", "BatchMode=yes"]
    argv += ["-o", "ConnectTimeout=3", "-o", "StrictHostKeyChecking=no"]
    argv += ["-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", address, "true"]
    try:
        host.run(*argv)
        return True
    except (RuntimeError, subprocess.TimeoutExpired):
        return False


def wait_ssh(host: BedHost, key: Path, address: str, start: float, timeout: float) -> float:
    """Seconds from ``start`` (monotonic) until the guest's SSH server runs a command."""
    while time.monotonic() - start < timeout:
        if ssh_answers(host, key, address):
            return time.monotonic() - start
        time.sleep(1)
    raise TimeoutError(f"no SSH at {address} within {timeout:.0f} s")


# --- the reference: plain QEMU -----------------------------------------------------------------


def reference_network(host: BedHost) -> None:
    gateway = REF_PREFIX.replace("::/64", "::1/64")
    for argv in (
        ["ip", "link", "add", REF_BRIDGE, "mtu", str(MTU), "type", "bridge", "mcast_snooping", "0"],
        ["ip", "addr", "add", gateway, "dev", REF_BRIDGE, "nodad"],
        ["ip", "link", "set", REF_BRIDGE, "up"],
    ):
        host.run(*argv)


def plain_qemu(
    host: BedHost, work: Path, pub: str, key: Path, timeout: float, rbd: str = ""
) -> float:
    """One boot of the image by plain QEMU: seconds from its start to SSH answering. Its
    disk: a qcow2 overlay of the image file, or with ``rbd`` (QEMU's ``rbd:`` drive string of
    a clone) that clone in Ceph, as ucloud's VMs have."""
    mac = new_mac()
    vm = VM(
        name="ref",
        owner="bench",
        owner_realm="users",
        specs=Specs(cpu=1, ram=RAM_MIB / 1024, ssd=3),
        image="debian",
        ports=[Port(network="ref", mac=mac, ipv6=eui64(REF_PREFIX, mac))],
        first_boot=seed.first_boot("ref-guest", [pub], ""),
    )
    (work / "seed.iso").write_bytes(seed.iso(vm))
    disk = work / "ref.qcow2"
    disk.unlink(missing_ok=True)
    base = str(GUEST_DIR / "debian.raw")
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", base, str(disk), "3G"],
        check=True,
    )
    host.run("ip", "tuntap", "add", REF_TAP, "mode", "tap")
    host.run("ip", "link", "set", REF_TAP, "mtu", str(MTU), "master", REF_BRIDGE, "up")
    argv = ["ip", "netns", "exec", host.ns, "qemu-system-x86_64", "-accel", "tcg"]
    argv += ["-machine", "pc", "-m", str(RAM_MIB), "-smp", "1", "-display", "none"]
    argv += ["-serial", f"file:{work / 'ref-console.log'}", "-monitor", "none"]
    if rbd:
        argv += ["-drive", f"file={rbd},if=virtio,format=raw,cache=writeback,discard=unmap"]
    else:
        argv += ["-drive", f"file={disk},if=virtio,format=qcow2"]
    argv += ["-drive", f"file={work / 'seed.iso'},media=cdrom,readonly=on,format=raw"]
    argv += ["-netdev", f"tap,id=n0,ifname={REF_TAP},script=no,downscript=no"]
    argv += ["-device", f"virtio-net-pci,netdev=n0,mac={mac},host_mtu={MTU}"]
    start = time.monotonic()
    qemu = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        return wait_ssh(host, key, vm.ports[0].ipv6, start, timeout)
    finally:
        qemu.terminate()
        qemu.wait(timeout=30)
        host.run("ip", "link", "del", REF_TAP, check=False)


# --- ucloud --------------------------------------------------------------------------------------


def ucloud_run(c: dict, host: BedHost, key: Path, timeout: float) -> tuple[float, float]:
    """One VM created through the API: seconds from the create to RUNNING, and to SSH."""
    body = c["user"].creds(
        vm_name=f"deb-{uuid.uuid4().hex[:6]}",
        specs={"cpu": 1, "ram": RAM_MIB / 1024, "ssd": 3},
        image=c["image"],
        networks=[c["network"]],
    )
    start = time.monotonic()
    r = c["client"].post("/vm/create", json=body)
    assert r.status_code == 202, r.json
    vmid = r.json["uuid"]
    store: Store = c["store"]

    def running() -> VM | None:
        found = store.get(VM, vmid)
        assert found is not None and found.value.status != Status.ERROR, found
        return found.value if found.value.status == Status.RUNNING else None

    vm = wait_for(running, 300, "the VM to run", interval=0.2)
    to_running = time.monotonic() - start
    try:
        return to_running, wait_ssh(host, key, vm.ports[0].ipv6, start, timeout)
    finally:
        c["client"].post("/vm/delete", json=c["user"].creds(vmid=vmid))
        wait_for(lambda: store.get(VM, vmid) is None, 180, "the VM to be deleted")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="boots of each (default 3)")
    parser.add_argument("--quick", action="store_true", help="one run of each")
    parser.add_argument("--timeout", type=float, default=900, help="seconds a boot may take")
    parser.add_argument("--record", action="store_true", help="write into bench/RESULTS.md")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    runs = 1 if args.quick else args.runs
    run_script(str(SCRIPTS / "guests" / "build-debian-image.sh"), str(GUEST_DIR), timeout=1200)
    at_start = machine()

    with workdir("ssh", args.keep) as work:
        bed_dir = work / "bed"
        run_script(str(SCRIPTS / "testbed-up.sh"), str(bed_dir), "1", timeout=300)
        cleanup: list = []
        try:
            env = read_env(bed_dir / "bed.env")
            name = env["BED_HOSTS"].split()[0]
            host = BedHost(
                name,
                env[f"BED_NS_{name}"],
                env[f"BED_UNDERLAY_{name}"],
                Libvirtd(bed_dir / name / "lv", env[f"BED_LIBVIRT_{name}"]),
            )
            etcd = Etcd(work / "etcd", host=env["BED_ADDR"])
            etcd.start()
            cleanup.append(etcd.stop)
            cluster = work / "ceph"
            ceph_env = {
                "CEPH_PORT_BASE": str(_free_port_block(100)),
                "CEPH_OSD_SIZE": "10G",
                "CEPH_NO_MGR": "1",
                "CEPH_ADDR": env["BED_ADDR"],
            }
            run_script(str(SCRIPTS / "ceph-up.sh"), str(cluster), env=ceph_env, timeout=300)
            cleanup.append(lambda: run_script(str(SCRIPTS / "ceph-down.sh"), str(cluster)))
            ceph = Ceph(cluster, cluster / "ceph.conf", cluster / "ceph.client.ucloud.keyring")
            table_text = measure(work, host, etcd, ceph, runs, args.timeout, cleanup)
        finally:
            for step in reversed(cleanup):
                try:
                    step()
                except Exception as e:  # keep tearing down
                    log(f"cleanup: {e}")
            run_script(str(SCRIPTS / "testbed-down.sh"), str(bed_dir), timeout=300)
    text = f"Machine: {at_start}.\n\n{table_text}"
    print(text)
    if args.record:
        record("ssh_ready", text)


def measure(
    work: Path, host: BedHost, etcd: Etcd, ceph: Ceph, runs: int, timeout: float, cleanup: list
) -> str:
    from ucloud.api import create_app

    settings = load_settings(
        etcd_endpoints=etcd.endpoint,
        etcd_prefix=f"/bench-{uuid.uuid4().hex[:8]}/v1",
        ceph_conf=str(ceph.conf),
        ceph_keyring=str(ceph.keyring),
        ceph_pool=ceph.pool,
        image_pool=ceph.pool,
    )
    store = Store(settings)
    hs = host_settings(
        settings,
        ceph,
        host.libvirtd,
        host.name,
        work / "host",
        network_dataplane="linux",
        network_underlay=host.underlay,
        network_router=True,
        host_ram=4,
    )
    storage = RBDStorage(hs)
    log("importing the Debian image into RBD")
    image = register_image(
        store, storage, str(GUEST_DIR / "debian.raw"), "debian-12", "root", "ucloud-admin"
    )
    cleanup.append(lambda: storage.delete_image(image.uuid))
    scheduler = daemon("ucloud.scheduler.main", settings, work / "scheduler.log")
    cleanup.append(scheduler.stop)
    agent = agent_in(host, hs, work / "agent.log")
    cleanup.append(agent.stop)
    cleanup.append(lambda: stop_dnsmasqs(work / "host"))
    app = create_app(settings, store)
    cleanup.append(app.extensions["ucloud"].catalog.stop)
    client = app.test_client()
    user = make_account(store, "bench")
    key = keygen(work)
    pub = key.with_suffix(".pub").read_text().strip()
    r = client.post("/key/add", json=user.creds(key_name="bench", public_key=pub))
    assert r.status_code == 201, r.json
    r = client.post("/network/create", json=user.creds(network_name="lan"))
    assert r.status_code == 201, r.json
    found = lambda: (h := store.get(Host, host.name)) and h.value.status == HostStatus.UP  # noqa: E731
    wait_for(found, 60, "the host to be UP")
    c = {
        "client": client,
        "user": user,
        "store": store,
        "image": image.uuid,
        "network": r.json["network"]["uuid"],
    }
    reference_network(host)
    ours: list[float] = []
    running: list[float] = []
    plain: list[float] = []
    on_rbd: list[float] = []
    for i in range(runs):
        log(f"run {i + 1}/{runs}: ucloud")
        to_running, to_ssh = ucloud_run(c, host, key, timeout)
        running.append(to_running)
        ours.append(to_ssh)
        log(f"  RUNNING after {to_running:.1f} s, SSH after {to_ssh:.1f} s")
        log(f"run {i + 1}/{runs}: plain QEMU")
        plain.append(plain_qemu(host, work, pub, key, timeout))
        log(f"  SSH after {plain[-1]:.1f} s")
        log(f"run {i + 1}/{runs}: plain QEMU, disk an RBD clone")
        clone = f"bench-ref-{uuid.uuid4().hex[:8]}"
        storage.create_disk(clone, image.uuid, 3)
        try:
            drive = f"rbd:{ceph.pool}/{clone}:id=ucloud:conf={ceph.conf}"
            on_rbd.append(plain_qemu(host, work, pub, key, timeout, rbd=drive))
        finally:
            storage.delete_disk(clone)
        log(f"  SSH after {on_rbd[-1]:.1f} s")
    rows = [
        ("ucloud: vm create -> SSH answers", runs, pct(ours, 50), pct(ours, 95), min(ours)),
        ("  of which vm create -> RUNNING", runs, pct(running, 50), pct(running, 95), min(running)),
        ("ref: plain QEMU start -> SSH answers", runs, pct(plain, 50), pct(plain, 95), min(plain)),
        ("ref: the same, disk an RBD clone", runs, pct(on_rbd, 50), pct(on_rbd, 95), min(on_rbd)),
        ("ucloud - ref (p50)", "", pct(ours, 50) - pct(plain, 50), "", ""),
        ("ucloud - ref on RBD (p50)", "", pct(ours, 50) - pct(on_rbd, 50), "", ""),
    ]
    notes = (
        "\n\n- Debian 12 (cloud-init 22.4, the test image), 1 vCPU, 512 MiB, TCG; SSH probed "
        "with the key every second from the host's namespace (`ssh -o BatchMode=yes ... true`)."
        "\n- ucloud: POST /vm/create (a network with IPv6 only; the host routes it) to the "
        "first command run over SSH at the port's address; the disk an RBD clone."
        "\n- ref: the same seed content (hostname, key, network-config) by ucloud/seed.py, a "
        "qcow2 overlay of the image on local disk, virtio-net on a tap on a bridge with the "
        f"gateway address, host_mtu {MTU}; then the same with the disk a clone in the same "
        "Ceph pool (QEMU's rbd driver, as client.ucloud), as ucloud's VMs have."
    )
    return table(("from -> to", "runs", "p50 s", "p95 s", "min s"), rows) + notes


def stop_dnsmasqs(state: Path) -> None:
    from tests.bed import stop_routers

    stop_routers(state)


if __name__ == "__main__":
    main()
