"""The multi-host test bed itself: agents in their namespaces reach etcd and Ceph on the
switch's address, and run VMs in their own namespaces' libvirtds."""

from __future__ import annotations

from tests.bed import Bed, BedCluster
from tests.servers import wait_for
from ucloud.models import VM, Alive, Status

SPECS = {"cpu": 1, "ram": 0.125, "ssd": 1}


def test_each_bed_host_runs_a_vm_on_ceph_through_the_switch(bed: Bed, bed_cluster: BedCluster):
    c = bed_cluster
    wait_for(
        lambda: len(c.store.list(Alive)[0]) == len(bed.hosts), 60, "every bed host to be alive"
    )
    uuids = []
    for i in range(len(bed.hosts)):
        body = c.users["alice"].creds(vm_name=f"vm{i}", specs=SPECS, image=c.image)
        r = c.client.post("/vm/create", json=body)
        assert r.status_code == 202, r.json
        uuids.append(r.json["uuid"])

    def running() -> list[VM] | None:
        vms = [c.store.get(VM, u).value for u in uuids]
        return vms if all(v.status == Status.RUNNING for v in vms) else None

    vms = wait_for(running, 120, "both VMs to run")
    # Spread: one on each host, each in its own host's libvirtd inside its namespace.
    assert {v.hostname for v in vms} == {h.name for h in bed.hosts}
    for h in bed.hosts:
        mine = [v.uuid for v in vms if v.hostname == h.name]
        assert h.libvirtd.virsh("list", "--name").split() == [f"ucloud-{u}" for u in mine]
