"""The host agent on the real stack: etcd, Ceph RBD, libvirtd and QEMU guests that boot."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.conftest import register_image
from tests.onehost import SPECS, Cluster
from tests.servers import Daemon, wait_for
from tests.stack import (
    Ceph,
    Libvirtd,
    console_text,
    daemon,
    dots_in,
    host_settings,
    qemu_pid,
    start_libvirtd,
    stop_libvirtd,
    wait_console,
)
from ucloud.models import VM, Alive, Host, Status
from ucloud.storage.rbd import RBDStorage

BOOT = "UCLOUD-BOOT-OK"


def test_vm_boots_from_an_rbd_clone_and_is_deleted_without_trace(
    cluster: Cluster, ceph: Ceph, libvirtd: Libvirtd
):
    vmid = cluster.create(ssd=2)
    vm = cluster.wait(vmid, Status.RUNNING)
    assert vm.hostname == "node1"
    wait_console(cluster.state, vmid, BOOT)

    info = json.loads(ceph.rbd("info", "--format=json", f"{ceph.pool}/{vm.disk}"))
    assert info["parent"]["image"] == cluster.image.uuid
    assert info["parent"]["snapshot"] == "base"
    assert info["size"] == 2 << 30
    assert f"ucloud-{vmid}" in libvirtd.virsh("list", "--name")
    assert [e.message for e in vm.log][-3:] == [
        "PENDING -> SCHEDULED: placed on node1",
        "SCHEDULED -> CREATING",
        "CREATING -> RUNNING",
    ]

    cluster.act(vmid, "delete")
    wait_for(lambda: cluster.store.get(VM, vmid) is None, 30, "the VM to be deleted")
    assert f"ucloud-{vmid}" not in libvirtd.virsh("list", "--all", "--name")
    assert vm.disk not in ceph.rbd("ls", ceph.pool).split()
    assert qemu_pid(vmid) is None


def test_suspend_stops_the_guest_and_resume_restarts_it(cluster: Cluster):
    vmid = cluster.create()
    cluster.wait(vmid, Status.RUNNING)
    wait_console(cluster.state, vmid, BOOT)
    assert dots_in(cluster.state, vmid, 2.5) >= 1

    cluster.act(vmid, "suspend")
    cluster.wait(vmid, Status.SUSPENDED)
    assert dots_in(cluster.state, vmid, 3) == 0

    cluster.act(vmid, "resume")
    cluster.wait(vmid, Status.RUNNING)
    assert dots_in(cluster.state, vmid, 3) >= 1


def test_stop_start_and_reboot(cluster: Cluster, libvirtd: Libvirtd):
    vmid = cluster.create()
    cluster.wait(vmid, Status.RUNNING)
    wait_console(cluster.state, vmid, BOOT)

    # The boot-sector guest ignores ACPI: the agent stops it hard after shutdown_timeout.
    cluster.act(vmid, "stop")
    stopped = cluster.wait(vmid, Status.STOPPED, timeout=30)
    assert stopped.hostname == ""
    assert qemu_pid(vmid) is None
    assert f"ucloud-{vmid}" not in libvirtd.virsh("list", "--all", "--name")

    cluster.act(vmid, "start")
    cluster.wait(vmid, Status.RUNNING)
    wait_console(cluster.state, vmid, BOOT, count=2)

    pid = qemu_pid(vmid)
    cluster.act(vmid, "reboot")
    wait_console(cluster.state, vmid, BOOT, count=3)
    vm = cluster.wait(vmid, Status.RUNNING)
    assert vm.reboot_done == vm.reboot_seq == 1
    assert qemu_pid(vmid) == pid  # a guest reboot, not a new QEMU


def test_qemu_killed_is_restarted_logged_and_reported(cluster: Cluster, tmp_path: Path):
    vmid = cluster.create()
    cluster.wait(vmid, Status.RUNNING)
    wait_console(cluster.state, vmid, BOOT)
    pid = qemu_pid(vmid)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)

    wait_for(lambda: (p := qemu_pid(vmid)) is not None and p != pid, 30, "a new QEMU")
    vm = cluster.wait(vmid, Status.RUNNING)
    messages = [e.message for e in vm.log]
    assert "RUNNING -> KILLED: QEMU died; restarting in 1 s" in messages
    assert "KILLED -> CREATING: restarting after its QEMU died" in messages
    wait_console(cluster.state, vmid, BOOT, count=2)
    agent_log = cluster.agent.output()
    assert f"WARNING ucloud.host.agent: VM {vmid} (vm) stopped unexpectedly on node1" in agent_log
    notified = cluster.tmp / "notified"
    assert notified.read_text().split(" ", 1)[0] == vmid


def test_agent_restart_adopts_running_vms(cluster: Cluster):
    # A lease that outlasts the restart: the tests' 2 s is shorter than an agent takes to start
    # on a loaded machine (its imports alone take about 1 s idle), and a host whose lease ran
    # out is fenced and its VM started afresh, which is not what this test is about.
    cluster.host = cluster.host.model_copy(update={"host_lease_ttl": 30})
    cluster.restart_agent()
    vmid = cluster.create()
    cluster.wait(vmid, Status.RUNNING)
    wait_console(cluster.state, vmid, BOOT)
    pid = qemu_pid(vmid)
    revision = cluster.store.get(VM, vmid).mod_revision

    since = cluster.store.get(Host, "node1").value.status_since
    ups = cluster.agent.output().count("host node1 is up")  # one log for every agent here
    cluster.restart_agent(signal.SIGKILL)
    back = lambda: cluster.agent.output().count("host node1 is up") > ups  # noqa: E731
    wait_for(back, 30, "the agent to be back")
    cluster.act(vmid, "suspend")  # the new agent answers...
    cluster.wait(vmid, Status.SUSPENDED)
    assert qemu_pid(vmid) == pid  # ...and the guest is the same QEMU process
    assert cluster.store.get(VM, vmid).mod_revision > revision
    assert cluster.store.get(Host, "node1").value.status_since == since  # never taken for dead
    assert BOOT in console_text(cluster.state, vmid)


def test_two_agents_share_the_load(settings, store, client, alice, ceph, guests, tmp_path):
    second_lv = start_libvirtd(tmp_path / "lv2")
    first_lv_dir = tmp_path / "lv1"
    first_lv = start_libvirtd(first_lv_dir)
    agents: list[Daemon] = []
    scheduler = daemon("ucloud.scheduler.main", settings, tmp_path / "scheduler.log")
    try:
        hosts = {
            name: host_settings(settings, ceph, lv, name, tmp_path / name)
            for name, lv in (("node-a", first_lv), ("node-b", second_lv))
        }
        image = register_image(
            store,
            RBDStorage(hosts["node-a"]),
            str(guests.bootsector),
            "boot",
            "root",
            "ucloud-admin",
        )
        agents = [daemon("ucloud.host.main", h, tmp_path / f"{n}.log") for n, h in hosts.items()]
        for name in hosts:
            wait_for(
                lambda n=name: (h := store.get(Host, n)) and h.value.status == "UP",
                60,
                f"{name} UP",
            )
        ids = []
        for i in range(4):
            body = alice.creds(vm_name=f"vm{i}", specs=SPECS, image=image.uuid)
            ids.append(client.post("/vm/create", json=body).json["uuid"])
        running = [
            wait_for(
                lambda i=i: (v := store.get(VM, i).value).status == Status.RUNNING and v,
                90,
                "RUNNING",
            )
            for i in ids
        ]
        per_host = {n: sorted(v.uuid for v in running if v.hostname == n) for n in hosts}
        assert {n: len(v) for n, v in per_host.items()} == {"node-a": 2, "node-b": 2}
        for name, lv in (("node-a", first_lv), ("node-b", second_lv)):
            listed = sorted(d.removeprefix("ucloud-") for d in lv.virsh("list", "--name").split())
            assert listed == per_host[name]
            for vmid in per_host[name]:
                wait_console(tmp_path / name, vmid, BOOT)
        for vmid in ids:
            client.post("/vm/delete", json=alice.creds(vmid=vmid))
        wait_for(lambda: not store.list(VM)[0], 60, "every VM deleted")
    finally:
        for a in agents:
            a.stop()
        scheduler.stop()
        stop_libvirtd(second_lv)
        stop_libvirtd(first_lv)


def test_capacity_an_administrator_set_is_kept_by_the_agent(
    settings, store, client, admin, libvirtd, tmp_path
):
    r = client.post(
        "/host/create",
        json=admin.creds(hostname="listed", specs={"cpu": 3, "ram": "5 GB", "ssd": "100 GB"}),
    )
    assert r.status_code == 201, r.json
    # The agent offers 8 CPUs and 8 GiB (host_settings): the administrator's figures stand.
    host = host_settings(
        settings,
        None,
        libvirtd,
        "listed",
        tmp_path / "state",
        storage="file",
        image_dir=str(tmp_path / "images"),
    )
    agent = daemon("ucloud.host.main", host, tmp_path / "agent.log")
    try:
        wait_for(lambda: store.get(Alive, "listed"), 30, "the agent to be alive")
        listed = client.get("/host/list", json=admin.creds()).json["hosts"]
        assert [(h["name"], h["capacity"]) for h in listed] == [
            ("listed", {"cpu": 3, "ram": 5.0, "hdd": 0.0, "ssd": 100.0})
        ]
    finally:
        agent.stop()


def test_file_storage_driver_boots_a_vm(settings, store, client, alice, libvirtd, guests, tmp_path):
    from ucloud.storage.file import FileStorage

    host = host_settings(
        settings,
        None,
        libvirtd,
        "filehost",
        tmp_path / "state",
        storage="file",
        image_dir=str(tmp_path / "images"),
    )
    image = register_image(
        store, FileStorage(host), str(guests.bootsector), "boot", "root", "ucloud-admin"
    )
    scheduler = daemon("ucloud.scheduler.main", settings, tmp_path / "scheduler.log")
    agent = daemon("ucloud.host.main", host, tmp_path / "agent.log")
    try:
        body = alice.creds(vm_name="local", specs={**SPECS, "ssd": 3}, image=image.uuid)
        vmid = client.post("/vm/create", json=body).json["uuid"]
        vm = wait_for(
            lambda: (v := store.get(VM, vmid).value).status == Status.RUNNING and v, 60, "RUNNING"
        )
        wait_console(tmp_path / "state", vmid, BOOT)
        disk = tmp_path / "state" / "disks" / f"{vm.disk}.qcow2"
        info = json.loads(
            subprocess.run(
                ["qemu-img", "info", "-U", "--output=json", str(disk)],
                capture_output=True,
                check=True,
            ).stdout
        )
        assert info["backing-filename"] == str(tmp_path / "images" / f"{image.uuid}.qcow2")
        assert info["virtual-size"] == 3 << 30
        client.post("/vm/delete", json=alice.creds(vmid=vmid))
        wait_for(lambda: store.get(VM, vmid) is None, 60, "deleted")
        assert not disk.exists()
    finally:
        agent.stop()
        scheduler.stop()


def test_stop_is_a_clean_acpi_shutdown_for_a_guest_that_supports_it(cluster: Cluster, guests):
    linux = register_image(
        cluster.store, RBDStorage(cluster.host), str(guests.linux), "linux", "root", "ucloud-admin"
    )
    body = cluster.user.creds(
        vm_name="linux", specs={"cpu": 1, "ram": 0.25, "ssd": 1}, image=linux.uuid
    )
    vmid = cluster.client.post("/vm/create", json=body).json["uuid"]
    cluster.wait(vmid, Status.RUNNING)
    wait_console(cluster.state, vmid, "UCLOUD-LINUX-BOOT-OK", timeout=120)
    cluster.act(vmid, "stop")
    cluster.wait(vmid, Status.STOPPED, timeout=60)
    assert "UCLOUD-LINUX-POWEROFF" in console_text(cluster.state, vmid)
    assert "ignored ACPI shutdown" not in cluster.agent.output()


def test_agent_rides_out_a_libvirtd_restart(cluster: Cluster, libvirtd: Libvirtd):
    vmid = cluster.create()
    cluster.wait(vmid, Status.RUNNING)
    wait_console(cluster.state, vmid, BOOT)
    pid = qemu_pid(vmid)

    # libvirtd goes away (its guests keep running, as with a package upgrade)...
    libvirtd_pid = int((libvirtd.dir / "libvirtd.pid").read_text())
    os.kill(libvirtd_pid, signal.SIGTERM)
    wait_for(lambda: not _cmdline(libvirtd_pid), 30, "libvirtd to exit")
    cluster.act(vmid, "suspend")  # ...a request arrives meanwhile...
    assert cluster.vm(vmid).status == Status.RUNNING

    start_libvirtd(libvirtd.dir)  # ...and it comes back: the agent reconnects and catches up.
    cluster.wait(vmid, Status.SUSPENDED, timeout=60)
    assert qemu_pid(vmid) == pid
    assert dots_in(cluster.state, vmid, 2.5) == 0


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()  # empty for a zombie
    except OSError:
        return b""


def test_agent_tells_systemd_it_is_ready_and_alive(settings, libvirtd, tmp_path):
    """The unit's watchdog (WatchdogSec) hears from a working agent every second, and stops
    hearing from one that hangs (here: SIGSTOP), so systemd would restart it."""
    address = str(tmp_path / "notify.sock")
    heard = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    heard.bind(address)
    heard.settimeout(0.5)
    host = host_settings(
        settings,
        None,
        libvirtd,
        "watched",
        tmp_path / "state",
        storage="file",
        image_dir=str(tmp_path / "images"),
    )
    agent = daemon("ucloud.host.main", host, tmp_path / "agent.log", NOTIFY_SOCKET=address)

    def messages(seconds: float) -> list[str]:
        got, deadline = [], time.monotonic() + seconds
        while time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                got.append(heard.recv(256).decode())
        return got

    try:
        assert "READY=1" in wait_for(lambda: messages(1), 30, "a notification")
        assert messages(3).count("WATCHDOG=1") >= 2
        os.kill(agent.pid, signal.SIGSTOP)
        messages(1.5)  # what it sent just before
        assert messages(3) == []
        os.kill(agent.pid, signal.SIGCONT)
        assert "WATCHDOG=1" in messages(3)
    finally:
        agent.stop()
        heard.close()
