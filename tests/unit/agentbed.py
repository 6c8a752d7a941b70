"""The host agent on doubles, for unit tests of its decisions (tests/unit/test_agent*.py): the
fake hypervisor (ucloud/host/fake_driver.py, recording what it is asked), a storage double, the
store double (tests/unit/memstore.py) and a clock the tests move; the fixtures that put an agent
on them, and helpers that place and change VMs as the scheduler and the API would."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

import pytest

import ucloud.host.agent
from tests.unit.memstore import FakeLease, MemStore
from ucloud.config import Settings
from ucloud.host.agent import HostAgent
from ucloud.host.fake_driver import FakeHypervisor
from ucloud.host.hypervisor import DomainSpec, HypervisorError, Power
from ucloud.models import VM, Action, Image, ImageStatus, Specs, Status
from ucloud.storage import StorageError
from ucloud.store import Store

HERE = "node1"
IMAGE = "image-debian"


class Hypervisor(FakeHypervisor):
    """The fake hypervisor, recording what the agent asks of it. ``acpi = False`` makes a
    guest that ignores the power button; a name in ``fail_once`` makes that call fail once."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, str]] = []
        self.on_start: Callable[[str], None] = lambda vm: None
        self.acpi = True
        self.fail_once: set[str] = set()

    def _call(self, what: str, vm: str) -> None:
        self.calls.append((what, vm))
        if what in self.fail_once:
            self.fail_once.discard(what)
            raise HypervisorError(f"{what} {vm} failed")

    def start(self, spec: DomainSpec) -> None:
        self.started_with = spec
        self._call("start", spec.vm)
        super().start(spec)
        self.on_start(spec.vm)

    def suspend(self, vm: str) -> None:
        self._call("suspend", vm)
        super().suspend(vm)

    def resume(self, vm: str) -> None:
        self._call("resume", vm)
        super().resume(vm)

    def shutdown(self, vm: str) -> None:
        self._call("shutdown", vm)
        if self.acpi:
            super().shutdown(vm)

    def destroy(self, vm: str) -> None:
        self._call("destroy", vm)
        super().destroy(vm)

    def reboot(self, vm: str) -> None:
        self._call("reboot", vm)
        super().reboot(vm)

    def undefine(self, vm: str) -> None:
        self._call("undefine", vm)
        super().undefine(vm)

    def crash(self, vm: str) -> None:
        """The VM's QEMU dies (nobody asked)."""
        FakeHypervisor.destroy(self, vm)

    def power(self, vm: str) -> Power | None:
        dom = self.domain(vm)
        return dom.power if dom else None


class Storage:
    """Disks as names in a set. ``open_elsewhere[disk]``: clients that a fence finds;
    ``create_fails``: the error of the next disk creation."""

    def __init__(self) -> None:
        self.disks: set[str] = set()
        self.calls: list[tuple[str, str]] = []
        self.open_elsewhere: dict[str, list[str]] = {}
        self.create_fails = ""

    def create_disk(self, disk: str, image: str, size_gib: float, *, pool: str = "") -> None:
        self.calls.append(("create_disk", disk))
        if self.create_fails:
            error, self.create_fails = self.create_fails, ""
            raise StorageError(error)
        self.disks.add(disk)

    def create_blank_disk(self, disk: str, size_gib: float, *, pool: str = "") -> None:
        self.calls.append(("create_blank_disk", f"{pool}/{disk}"))
        self.disks.add(disk)

    def delete_disk(self, disk: str, *, pool: str = "") -> None:
        self.calls.append(("delete_disk", disk))
        self.disks.discard(disk)

    def fence_disk(self, disk: str, *, pool: str = "") -> list[str]:
        self.calls.append(("fence_disk", disk))
        return self.open_elsewhere.pop(disk, [])

    def disk_xml(self, disk: str, *, pool: str = "", target: str = "vda") -> str:
        return f"<disk name='{disk}' pool='{pool}' target='{target}'/>"

    def libvirt_secret(self) -> None:
        return None


class Clock:
    """The agent module's ``time``: ``monotonic()`` moves only when the test says; ``time()`` is
    the wall clock (records' ``status_since`` are wall-clock times)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return time.time()

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def store() -> MemStore:
    s = MemStore()
    s.create(
        Image(uuid=IMAGE, name="debian", owner="admin", owner_realm="x", status=ImageStatus.CREATED)
    )
    return s


@pytest.fixture
def hv() -> Hypervisor:
    return Hypervisor()


@pytest.fixture
def storage() -> Storage:
    return Storage()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(ucloud.host.agent, "time", c)
    return c


@pytest.fixture
def agent(
    store: MemStore,
    hv: Hypervisor,
    storage: Storage,
    clock: Clock,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> HostAgent:
    settings = Settings(
        hostname=HERE,
        state_dir=str(tmp_path),
        vnc_dir=str(tmp_path_factory.mktemp("vnc")),  # short: socket paths have 107 bytes
        host_cpu=4,
        host_ram=8,
        host_lease_ttl=10,
        host_start_margin=3,
        crash_limit=3,
        crash_window=600,
        shutdown_timeout=60,
        creating_deadline=300,
        notify_command="",
    )
    a = HostAgent(cast(Store, store), settings, hv, storage)
    a.connect_hypervisor()
    a.register()
    a.take_lease()
    store.follow(VM, a.deliver)
    return a


@pytest.fixture
def lease(store: MemStore, agent: HostAgent) -> FakeLease:
    return store.leases[-1]


def place(store: MemStore, status: Status = Status.SCHEDULED, host: str = HERE, **fields) -> str:
    """A VM in etcd as the scheduler left it, delivered to the agent's watch."""
    fields.setdefault("specs", Specs(cpu=1, ram=1, ssd=10))
    vm = VM(
        name="web",
        owner="alice",
        owner_realm="users",
        image=IMAGE,
        status=status,
        hostname=host,
        **fields,
    )
    store.create(vm)
    store.flush()
    return vm.uuid


def change(store: MemStore, id: str, edit: Callable[[VM], None], deliver: bool = True) -> None:
    """Another daemon's write (compare-and-swap), delivered to the agent unless not ``deliver``."""
    store.update(VM, id, edit)
    if deliver:
        store.flush()


def ask(store: MemStore, id: str, action: Action) -> None:
    """A user's action, as the API writes it."""
    change(store, id, lambda vm: vm.apply(action, "api"))


def vm_in(store: MemStore, id: str) -> VM:
    found = store.get(VM, id)
    assert found is not None
    return found.value


@pytest.fixture
def running(store: MemStore, hv: Hypervisor, storage: Storage, agent: HostAgent) -> str:
    """A VM the agent has started here; the call records start empty."""
    id = place(store)
    agent.reconcile(id)
    assert vm_in(store, id).status == Status.RUNNING
    hv.calls.clear()
    storage.calls.clear()
    return id


# --- starting ----------------------------------------------------------------------------------
