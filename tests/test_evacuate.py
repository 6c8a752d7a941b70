"""`host evacuate` on the real stack (tests/failover_stack.py): an administrator who knows a
host is gone for good skips the dead host grace; the VMs are fenced first, as after the grace,
and a host that is still alive is refused."""

from __future__ import annotations

import signal
import time

from tests.failover_stack import (  # noqa: F401  (the fixtures libvirtds and pair)
    BOOT,
    NODES,
    DiskWatch,
    Pair,
    alive,
    block_list,
    disk_clients,
    libvirtds_fixture,
    pair_fixture,
)
from tests.servers import wait_for
from tests.stack import daemon, qemu_pid, wait_console
from ucloud.models import Host, HostStatus, Status


def test_evacuate_skips_the_grace_fences_and_refuses_a_live_host(pair: Pair, admin):
    # A grace no test outlasts: without `host evacuate` the VM would stay on its dead host.
    pair.scheduler.stop()
    pair.scheduler = daemon(
        "ucloud.scheduler.main",
        pair.hosts["node-a"],
        pair.tmp / "scheduler-grace.log",
        UCLOUD_DEAD_HOST_GRACE="3600",
    )
    for name in NODES:
        pair.start_agent(name)
        pair.wait_host(name, HostStatus.UP)
    vmid = pair.create()
    vm = wait_for(lambda: (v := pair.vm(vmid)).status == Status.RUNNING and v, 90, "RUNNING")
    gone, other = vm.hostname, next(n for n in NODES if n != vm.hostname)
    wait_console(pair.tmp / gone, vmid, BOOT)

    def evacuate(host: str):
        return pair.client.post("/host/evacuate", json=admin.creds(hostname=host))

    # Alive: refused, saying so, and nothing changes.
    r = evacuate(gone)
    assert r.status_code == 409, r.json
    assert f"host {gone} is alive" in r.json["error"]
    host = pair.store.get(Host, gone)
    assert host is not None and host.value.evacuate_requested == 0
    assert evacuate("no-such-host").status_code == 404
    assert (
        pair.client.post("/host/evacuate", json=pair.user.creds(hostname=gone)).status_code == 403
    )

    old_qemu = qemu_pid(vmid)
    (old_client,) = disk_clients(pair.ceph, vm.disk)
    watch = DiskWatch(pair.ceph)
    watch.disks.add(vm.disk)
    pair.agents[gone].stop(signal.SIGKILL)  # its QEMU runs on, cut off from etcd
    pair.wait_host(gone, HostStatus.DEAD)
    time.sleep(5)  # the scheduler had passes enough to move it, if it did not wait the grace
    still = pair.vm(vmid)
    assert (still.hostname, still.status) == (gone, Status.RUNNING)

    r = evacuate(gone)
    assert r.status_code == 200, r.json
    assert "1 VM(s) are fenced and started elsewhere" in r.json["message"]
    moved = pair.wait_running_on(vmid, other)
    wait_console(pair.tmp / other, vmid, BOOT)
    watch.stop()
    messages = [e.message for e in moved.log]
    assert f"RUNNING -> KILLED: host {gone} died (evacuation asked by an administrator)" in (
        messages
    )
    assert any(m.endswith(f"fenced its disk's clients {old_client}") for m in messages)
    assert old_client in block_list(pair.ceph)  # the old QEMU runs, but cannot write
    assert alive(old_qemu)
    assert watch.violations == [] and watch.samples > 0

    # Evacuated and empty: a second request changes nothing more, and says so.
    r = evacuate(gone)
    assert r.status_code == 200 and "no VM is placed on it" in r.json["message"]
