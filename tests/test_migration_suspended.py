"""A suspended VM live-migrates, on the multi-host bed with a real guest (busybox Linux, TCG):
moved by the drain of its host, and by an administrator's `vm migrate`, it stays SUSPENDED,
paused on the host its record names and nowhere else, one Ceph client on its disk; resumed,
it goes on where it was: its heartbeat counter (in guest memory) continues from its last
value, with one boot on its console. One that arrived paused and has not run since is not
moved again (409): on QEMU 7.2 that migration fails and takes its QEMU with it."""

from __future__ import annotations

import pytest

from tests.bed import (
    BOOTED,
    Bed,
    BedCluster,
    console_all,
    drain_shown,
    heartbeats,
    maintenance,
    vm_now,
)
from tests.failover_stack import disk_clients
from tests.servers import wait_for
from tests.stack import Ceph
from ucloud.models import VM, Status


def act(c: BedCluster, id: str, action: str, want: Status) -> VM:
    r = c.client.post("/vm/action", json=c.users["alice"].creds(vmid=id, action=action))
    assert r.status_code == 202, r.json
    return wait_for(
        lambda: (v := vm_now(c, id)).status == want and v, 120, f"{id} {want}", interval=0.5
    )


def moved(c: BedCluster, id: str, to: str) -> VM:
    def over() -> VM | None:
        v = vm_now(c, id)
        return v if v.hostname == to and v.migration is None else None

    return wait_for(over, 240, f"{id} to move to {to}", interval=0.5)


def paused_only_on(bed: Bed, c: BedCluster, ceph: Ceph, id: str, host: str) -> None:
    """SUSPENDED on ``host``: its domain there paused and persistent, none elsewhere, one
    Ceph client (the target's QEMU) on its disk."""
    vm = vm_now(c, id)
    assert (vm.status, vm.hostname, vm.migration) == (Status.SUSPENDED, host, None), vm.log[-3:]
    for h in bed.hosts:
        names = h.libvirtd.virsh("list", "--all", "--name")
        if h.name == host:
            state = h.libvirtd.virsh("domstate", "--reason", f"ucloud-{id}").strip()
            assert state.startswith("paused"), state
            print(f"on {host}: {state}")
            assert "Persistent:     yes" in h.libvirtd.virsh("dominfo", f"ucloud-{id}")
        else:
            assert f"ucloud-{id}" not in names, (h.name, names)
    wait_for(lambda: len(disk_clients(ceph, vm.disk)) == 1, 30, "one client on its disk")


def migrate(c: BedCluster, id: str, to: str) -> tuple[int, dict]:
    r = c.client.post("/vm/migrate", json=c.users["root"].creds(vmid=id, to=to))
    return r.status_code, r.json


def no_reboot(c: BedCluster, id: str) -> list[int]:
    """Its heartbeat counter (in guest memory) went 5, 10, 15 ... once each: never back to 5
    (a reboot), and no beat missing; one boot on its consoles."""
    beats = heartbeats(console_all(c, id))
    assert sorted(beats) == list(range(5, max(beats) + 5, 5)), beats
    assert console_all(c, id).count(BOOTED) == 1
    return beats


@pytest.mark.slow
def test_a_suspended_guest_is_drained_and_migrated_paused_and_resumes_where_it_was(
    bed: Bed, bed_cluster: BedCluster, bed_ceph: Ceph
):
    c = bed_cluster
    body = c.users["alice"].creds(
        vm_name="sleeper", specs={"cpu": 1, "ram": 0.25, "ssd": 1}, image=c.linux_image
    )
    r = c.client.post("/vm/create", json=body)
    assert r.status_code == 202, r.json
    id = r.json["uuid"]
    wait_for(
        lambda: len(heartbeats(console_all(c, id))) >= 2,
        300,
        "the guest to run and beat",
        interval=1,
    )
    first = act(c, id, "suspend", Status.SUSPENDED).hostname
    other = next(h.name for h in bed.hosts if h.name != first)
    last = max(heartbeats(console_all(c, id)))

    # Its host goes into maintenance: the drain moves it, paused, still SUSPENDED.
    maintenance(c, first, True)
    vm = moved(c, id, other)
    assert f"drain: live migration requested (host {first} is in maintenance)" in [
        e.message for e in vm.log
    ]
    assert vm.log[-1].message.startswith(f"migrated from {first} to {other}"), vm.log[-3:]
    paused_only_on(bed, c, bed_ceph, id, other)
    wait_for(lambda: drain_shown(c, first) == "drained", 60, "host list to show drained")
    maintenance(c, first, False)
    print("drained:", vm.log[-1].message)

    # Not again before it has run: QEMU 7.2 would abort it (its disks are inactive there).
    code, reply = migrate(c, id, first)
    assert code == 409 and "has not run since" in reply["error"], reply
    assert vm_now(c, id).migration is None

    # Resumed, it goes on where it was: the next beat is the one after its last.
    act(c, id, "resume", Status.RUNNING)
    wait_for(lambda: max(heartbeats(console_all(c, id))) > last, 60, "a heartbeat after resuming")
    beats = no_reboot(c, id)
    print(f"resumed on {other}: last beat before {last}, now {beats[-3:]}")

    # Suspended again (it has run since), an administrator's migration moves it paused.
    act(c, id, "suspend", Status.SUSPENDED)
    last = max(heartbeats(console_all(c, id)))
    code, reply = migrate(c, id, first)
    assert code == 202, reply
    vm = moved(c, id, first)
    assert vm.log[-1].message.startswith(f"migrated from {other} to {first}"), vm.log[-3:]
    paused_only_on(bed, c, bed_ceph, id, first)
    assert max(heartbeats(console_all(c, id))) == last  # it never ran while suspended
    print("migrated:", vm.log[-1].message)
    act(c, id, "resume", Status.RUNNING)
    wait_for(lambda: max(heartbeats(console_all(c, id))) > last, 60, "a heartbeat after resuming")
    no_reboot(c, id)
