"""Consoles on the real stack: two hypervisors (each a libvirtd, a host agent and a console
relay), a scheduler, the API with its console page under gunicorn, and ucloud-console; a
boot-sector VM (draws on its screen) and a Linux VM (a shell on its serial port) of alice's.
Session-scoped: the guests boot once for all the console tests (API, CLI, browser)."""

from __future__ import annotations

import secrets
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Account, make_account, register_image
from tests.servers import Daemon, Etcd, free_port, wait_for
from tests.stack import Ceph, Libvirtd, host_settings, running_libvirtds
from ucloud.config import Settings, load_settings, settings_env
from ucloud.consoles import ConsoleRelay
from ucloud.models import VM, Image, Status
from ucloud.storage.rbd import RBDStorage
from ucloud.store import Store

NODES = ("node1", "node2")
BOOT = "UCLOUD-BOOT-OK"
SPECS = {"cpu": 1, "ram": 0.125, "ssd": 1}
LINUX_SPECS = {"cpu": 1, "ram": 0.25, "ssd": 1}


@dataclass
class ConsoleStack:
    settings: Settings
    store: Store
    hosts: dict[str, Settings]
    libvirtds: dict[str, Libvirtd]
    alice: Account
    bob: Account
    images: dict[str, Image]
    tmp: Path
    daemons: dict[str, Daemon] = field(default_factory=dict)
    vms: dict[str, str] = field(default_factory=dict)  # name -> uuid

    @property
    def api_url(self) -> str:
        return self.settings.console_url

    @property
    def websocket(self) -> str:
        return self.settings.console_websocket_url

    def post(self, path: str, account: Account, **fields: Any) -> requests.Response:
        return requests.post(f"{self.api_url}{path}", json=account.creds(**fields), timeout=30)

    def create(self, name: str, image: str, specs: dict[str, float]) -> str:
        r = self.post("/vm/create", self.alice, vm_name=name, specs=specs, image=image)
        assert r.status_code == 202, r.text
        return r.json()["uuid"]

    def vm(self, vmid: str) -> VM:
        found = self.store.get(VM, vmid)
        assert found is not None
        return found.value

    def wait(self, vmid: str, status: Status, timeout: float = 90) -> VM:
        return wait_for(
            lambda: (v := self.vm(vmid)).status == status and v,
            timeout,
            f"VM {vmid} to be {status}",
        )

    def console_log(self, vmid: str) -> str:
        vm = self.vm(vmid)
        path = Path(self.hosts[vm.hostname].state_dir) / "console" / f"{vmid}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def booted(self, vm: str = "boot") -> None:
        """Until the boot-sector guest has drawn its line (a dot follows a second later):
        before that, its screen shows the BIOS."""
        vmid = self.vms[vm]
        try:
            wait_for(lambda: "." in self.console_log(vmid).partition(BOOT)[2], 60, "its line")
        except AssertionError as e:
            raise AssertionError(f"{e}; its console: {self.console_log(vmid)[-300:]!r}") from None

    def relay_log(self, host: str) -> str:
        return self.daemons[f"relay-{host}"].output()

    def metrics(self, port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        """One scrape of a /metrics on loopback: (name, labels) -> value."""
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        return {
            (s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    def start(self, name: str, settings: Settings, *module: str) -> Daemon:
        """``python -m *module`` with ``settings``, logging to ``<tmp>/<name>.log``."""
        env = {**settings_env(settings), "UCLOUD_ENV_FILE": "/dev/null"}
        d = Daemon([sys.executable, "-m", *module], env, self.tmp / f"{name}.log")
        self.daemons[name] = d
        return d


# Fixtures, named for the tests that use them: import both into a test module.
@pytest.fixture(scope="session", name="console_libvirtds")
def console_libvirtds_fixture(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, Libvirtd]]:
    yield from running_libvirtds(tmp_path_factory.mktemp("console-lv"), NODES)


@pytest.fixture(scope="session", name="stack")
def stack_fixture(
    etcd: Etcd,
    ceph: Ceph,
    guests,
    console_libvirtds: dict[str, Libvirtd],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ConsoleStack]:
    tmp = tmp_path_factory.mktemp("consoles")
    api_port, proxy_port = free_port(), free_port()
    settings = load_settings(
        etcd_endpoints=f"127.0.0.1:{etcd.port}",
        etcd_prefix=f"/test-{uuid.uuid4().hex[:8]}/v1",
        dead_host_grace=0.5,
        scheduler_lease_ttl=2,
        host_lease_ttl=2,
        host_start_margin=1,
        scheduler_resync=2,
        api_bind=f"127.0.0.1:{api_port}",
        api_workers=1,
        console_url=f"http://127.0.0.1:{api_port}",
        console_websocket_url=f"ws://127.0.0.1:{proxy_port}/",
        console_proxy_bind=f"127.0.0.1:{proxy_port}",
        console_relay_secret=secrets.token_hex(32),
        console_metrics_port=free_port(),
        web_secret_key=secrets.token_hex(32),
        web_cookie_secure=False,
    )
    store = Store(settings)
    hosts = {
        n: host_settings(
            settings,
            ceph,
            console_libvirtds[n],
            n,
            tmp / n,
            console_relay_bind=f"127.0.0.1:{free_port()}",
            console_relay_metrics_port=free_port(),
            # Live migrations between the two: the target's libvirtd at its socket, QEMU's
            # migration stream on loopback (both libvirtds share the root network namespace).
            migration_peer_uri=console_libvirtds[n].uri,
            migration_address="127.0.0.1",
        )
        for n in NODES
    }
    storage = RBDStorage(hosts["node1"])
    images = {
        "boot": register_image(
            store, storage, str(guests.bootsector), "boot", "root", "ucloud-admin"
        ),
        "linux": register_image(store, storage, str(guests.linux), "linux", "root", "ucloud-admin"),
    }
    s = ConsoleStack(
        settings,
        store,
        hosts,
        console_libvirtds,
        make_account(store, "alice"),
        make_account(store, "bob"),
        images,
        tmp,
    )
    try:
        s.start("scheduler", hosts["node1"], "ucloud.scheduler.main")
        for n in NODES:
            s.start(f"agent-{n}", hosts[n], "ucloud.host.main")
            s.start(f"relay-{n}", hosts[n], "ucloud.console.main", "relay")
        s.start("api", settings, "ucloud.api.main")
        s.start("proxy", settings, "ucloud.console.main")
        wait_for(lambda: _answers(settings.console_url), 30, "the API to answer")
        for n in NODES:
            wait_for(lambda n=n: store.get(ConsoleRelay, n), 30, f"{n}'s relay")
        s.vms["boot"] = s.create("boot", images["boot"].uuid, SPECS)
        s.vms["linux"] = s.create("linux", images["linux"].uuid, LINUX_SPECS)
        for vmid in s.vms.values():
            s.wait(vmid, Status.RUNNING)
        yield s
    finally:
        try:
            for vmid in store.list(VM)[0]:
                store.update(VM, vmid, lambda vm: setattr(vm, "desired", "deleted"))
            wait_for(lambda: not store.list(VM)[0], 90, "the console tests' VMs to be deleted")
        finally:  # stopped even if the clean-up failed: nothing of them may run on
            for d in s.daemons.values():
                d.stop()
        for image in images.values():
            storage.delete_image(image.uuid)
        store.close()


def _answers(url: str) -> bool:
    try:
        return requests.get(f"{url}/openapi.json", timeout=2).status_code == 200
    except requests.RequestException:
        return False
