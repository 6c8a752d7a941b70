"""A host in maintenance drained by live migration, on the multi-host bed with real guests
(busybox Linux, TCG): its running VMs end up running on the other host without a reboot; one
with nowhere to go is reported and keeps running, and goes once there is room."""

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
from tests.servers import wait_for
from ucloud.models import VM, Host, Specs, Status

SPECS = {"cpu": 1, "ram": 0.25, "ssd": 1}


def set_capacity(c: BedCluster, host: str, ram: float) -> None:
    """An administrator's capacity for the host (kept over what its agent offers)."""

    def change(h: Host) -> None:
        h.capacity = Specs(cpu=8, ram=ram)
        h.capacity_by = "admin"

    assert c.store.update(Host, host, change) is not None


@pytest.mark.slow
def test_a_host_in_maintenance_is_drained_live_and_a_vm_with_no_room_keeps_running(
    bed: Bed, bed_cluster: BedCluster
):
    c = bed_cluster
    source, target = (h.name for h in bed.hosts)
    # All three guests on the source: the target takes none while in maintenance.
    maintenance(c, target, True)
    ids = []
    for i in range(3):
        body = c.users["alice"].creds(vm_name=f"g{i}", specs=SPECS, image=c.linux_image)
        r = c.client.post("/vm/create", json=body)
        assert r.status_code == 202, r.json
        ids.append(r.json["uuid"])

    def booted() -> bool:
        vms = [vm_now(c, id) for id in ids]
        assert not [v.reason for v in vms if v.status == Status.ERROR]
        return all(v.status == Status.RUNNING and heartbeats(console_all(c, v.uuid)) for v in vms)

    wait_for(booted, 300, "three guests to run and beat", interval=1)
    assert {vm_now(c, id).hostname for id in ids} == {source}

    # The target has room for two of them only.
    set_capacity(c, target, ram=0.6)
    maintenance(c, target, False)
    maintenance(c, source, True)

    def two_moved() -> list[VM] | None:
        vms = [vm_now(c, id) for id in ids]
        moved = [v for v in vms if v.hostname == target and v.migration is None]
        return vms if len(moved) == 2 else None

    vms = wait_for(two_moved, 400, "two guests to migrate", interval=1)
    (stuck,) = [v for v in vms if v.hostname == source]
    # Reported, not stopped: it runs on, in its domain on the source.
    assert stuck.status == Status.RUNNING and stuck.migration is None
    messages = [e.message for e in stuck.log]
    assert any(m.startswith("drain: no host has room: no host fits 1 CPU") for m in messages), (
        messages
    )
    wait_for(
        lambda: drain_shown(c, source) == "blocked: 1 VM has nowhere to go",
        60,
        "host list to show the blocked drain",
    )
    h = next(h for h in bed.hosts if h.name == source)
    assert h.libvirtd.virsh("domstate", f"ucloud-{stuck.uuid}").strip() == "running"
    beat = max(heartbeats(console_all(c, stuck.uuid)))
    wait_for(
        lambda: max(heartbeats(console_all(c, stuck.uuid))) > beat, 60, "the stuck one to beat"
    )

    # Room appears (the administrator gives the target more): the last one goes too.
    set_capacity(c, target, ram=8)

    def drained() -> bool:
        vms = [vm_now(c, id) for id in ids]
        return all(v.hostname == target and v.migration is None for v in vms)

    wait_for(drained, 400, "every guest to leave the source", interval=1)
    wait_for(lambda: drain_shown(c, source) == "drained", 60, "host list to show drained")
    for id in ids:
        vm = vm_now(c, id)
        assert vm.status == Status.RUNNING
        asked = f"drain: live migration requested (host {source} is in maintenance)"
        assert asked in [e.message for e in vm.log]
        # One boot on its console, and it beats on after the move, on the target.
        after = max(heartbeats(console_all(c, id)))
        wait_for(
            lambda id=id, after=after: max(heartbeats(console_all(c, id))) > after,
            60,
            f"{id} to beat on its target",
        )
        text = console_all(c, id)
        assert text.count(BOOTED) == 1, text
        beats = heartbeats(text)
        assert beats == sorted(beats)  # its uptime never went back: no reboot
        assert f"ucloud-{id}" not in h.libvirtd.virsh("list", "--all", "--name")

    # Leaving maintenance takes nothing back.
    maintenance(c, source, False)
    wait_for(lambda: drain_shown(c, source) == "-", 60, "the drain record to go")
    assert {vm_now(c, id).hostname for id in ids} == {target}
