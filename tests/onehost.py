"""The real stack on one host: a scheduler and one host agent as processes (on real etcd, Ceph,
libvirtd and QEMU), the API in-process, and the boot-sector image: the ``cluster`` fixture
(tests/conftest.py offers it to every test)."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.servers import Daemon, wait_for
from tests.stack import Ceph, Libvirtd, daemon, host_settings
from ucloud.config import Settings
from ucloud.models import VM, Image, Status
from ucloud.storage.rbd import RBDStorage
from ucloud.store import Store

if TYPE_CHECKING:  # (conftest imports this module)
    from tests.conftest import Account

SPECS = {"cpu": 1, "ram": 0.125, "ssd": 1}


@dataclass
class Cluster:
    """A scheduler and one host agent, as processes, and the API in-process."""

    settings: Settings
    host: Settings
    store: Store
    client: object
    user: Account
    image: Image
    agent: Daemon
    scheduler: Daemon
    tmp: Path

    @property
    def state(self) -> Path:
        return Path(self.host.state_dir)

    def create(self, name: str = "vm", **specs: object) -> str:
        body = self.user.creds(vm_name=name, specs={**SPECS, **specs}, image=self.image.uuid)
        r = self.client.post("/vm/create", json=body)
        assert r.status_code == 202, r.json
        return r.json["uuid"]

    def act(self, vmid: str, action: str) -> None:
        if action == "delete":
            r = self.client.post("/vm/delete", json=self.user.creds(vmid=vmid))
        else:
            r = self.client.post("/vm/action", json=self.user.creds(vmid=vmid, action=action))
        assert r.status_code == 202, r.json

    def vm(self, vmid: str) -> VM:
        found = self.store.get(VM, vmid)
        assert found is not None, f"VM {vmid} is gone"
        return found.value

    def wait(self, vmid: str, status: Status, timeout: float = 60) -> VM:
        def reached() -> VM | None:
            vm = self.vm(vmid)
            assert vm.status != Status.ERROR or status == Status.ERROR, vm.reason
            return vm if vm.status == status else None

        return wait_for(reached, timeout, f"VM {vmid} to be {status} (agent log: {self.agent.log})")

    def restart_agent(self, sig: int = signal.SIGTERM) -> None:
        self.agent.stop(sig)
        self.agent = daemon("ucloud.host.main", self.host, self.tmp / "agent.log")


@pytest.fixture
def cluster(
    settings, store, client, alice, ceph: Ceph, libvirtd: Libvirtd, guests, tmp_path
) -> Iterator[Cluster]:
    from tests.conftest import register_image  # (conftest imports this module)

    notify = f"sh -c 'echo \"$0 $1\" > {tmp_path}/notified'"
    host = host_settings(
        settings, ceph, libvirtd, "node1", tmp_path / "node1", notify_command=notify
    )
    storage = RBDStorage(host)
    image = register_image(
        store, storage, str(guests.bootsector), "bootsector", "root", "ucloud-admin"
    )
    scheduler = daemon("ucloud.scheduler.main", settings, tmp_path / "scheduler.log")
    agent = daemon("ucloud.host.main", host, tmp_path / "agent.log")
    c = Cluster(settings, host, store, client, alice, image, agent, scheduler, tmp_path)
    try:
        yield c
    finally:
        # Delete what the test left, through the system itself, then stop the daemons: those
        # too if the deletion fails, or the agent would go on destroying, in the session's
        # libvirtd, the domains of the tests after it (not placed on its host).
        try:
            for vmid, v in store.list(VM)[0].items():
                if v.value.status != Status.DELETING:
                    store.update(VM, vmid, lambda vm: setattr(vm, "desired", "deleted"))
            wait_for(lambda: not store.list(VM)[0], 60, "the test's VMs to be deleted")
        finally:
            c.agent.stop()
            scheduler.stop()
        storage.delete_image(image.uuid)
