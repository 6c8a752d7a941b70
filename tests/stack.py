"""The real stack for integration tests: test guests, a one-node Ceph cluster, private
libvirtds, and ucloud daemons in their own processes. All started here, stopped by pid."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.servers import Daemon, free_port, wait_for
from ucloud.config import Settings, settings_env

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = REPO / "scripts"
# Built guests are kept between runs: building the Linux guest takes a while.
GUEST_DIR = Path(os.environ.get("UCLOUD_TEST_GUESTS", REPO / ".state" / "guests"))


def run_script(*argv: str, env: dict[str, str] | None = None, timeout: float = 600) -> str:
    result = subprocess.run(
        ["bash", *argv],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} failed ({result.returncode}):\n{result.stderr[-3000:]}"
        )
    return result.stdout


@dataclass(frozen=True)
class Guests:
    bootsector: Path  # raw disk: prints UCLOUD-BOOT-OK at once, a dot a second; no ACPI
    linux: Path  # raw disk: prints UCLOUD-LINUX-BOOT-OK in about 7 s (TCG); powers off on ACPI


# What the Linux test guest prints about its cloud-init NoCloud seed, before
# UCLOUD-LINUX-BOOT-OK (scripts/guests/build-linux-image.sh has the details):
SEED = "UCLOUD-SEED"  # "UCLOUD-SEED label=cidata hostname=H keys=N instance-id=UUID"
NO_SEED = "UCLOUD-NO-SEED"
FIRST_BOOT = "UCLOUD-FIRSTBOOT"  # "... instance-id=UUID": first boot of this instance
FIRST_BOOT_BEFORE = "UCLOUD-FIRSTBOOT-DONE-BEFORE"  # the disk has booted this instance before
USER_DATA_BEGIN = "UCLOUD-USERDATA-BEGIN"  # a "#!" user-data's output follows, then
USER_DATA_END = "UCLOUD-USERDATA-END"  # "UCLOUD-USERDATA-END rc=<exit code>"


def marker_fields(console: str, marker: str) -> dict[str, str]:
    """The ``key=value`` fields of the last ``marker`` line on a console."""
    lines = [line for line in console.splitlines() if line.startswith(marker + " ")]
    assert lines, f"no {marker} line on the console"
    return dict(f.split("=", 1) for f in lines[-1].split()[1:] if "=" in f)


@dataclass(frozen=True)
class Ceph:
    dir: Path
    conf: Path
    keyring: Path
    pool: str = "ucloud"

    def rbd(self, *args: str) -> str:
        argv = [
            "rbd",
            "-c",
            str(self.conf),
            "--id",
            "ucloud",
            "--keyring",
            str(self.keyring),
            *args,
        ]
        return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=60).stdout


@dataclass(frozen=True)
class Libvirtd:
    dir: Path
    uri: str

    def virsh(self, *args: str) -> str:
        argv = ["virsh", "-c", self.uri, *args]
        return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=60).stdout


@pytest.fixture(scope="session")
def guests() -> Guests:
    run_script(str(SCRIPTS / "build-guests.sh"), str(GUEST_DIR), timeout=900)
    return Guests(GUEST_DIR / "bootsector.raw", GUEST_DIR / "linux.raw")


@pytest.fixture(scope="session")
def debian_guest() -> Path:
    """A real Debian 12 disk (cloud-init, openssh-server, serial console): built once by
    scripts/guests/build-debian-image.sh (about 1.5-4 minutes), cached by its script's hash."""
    run_script(str(SCRIPTS / "guests" / "build-debian-image.sh"), str(GUEST_DIR), timeout=1200)
    return GUEST_DIR / "debian.raw"


@pytest.fixture(scope="session")
def ceph(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ceph]:
    directory = tmp_path_factory.mktemp("ceph")
    base = _free_port_block(100)
    env = {"CEPH_PORT_BASE": str(base), "CEPH_OSD_SIZE": "20G", "CEPH_NO_MGR": "1"}
    run_script(str(SCRIPTS / "ceph-up.sh"), str(directory / "cluster"), env=env, timeout=300)
    cluster = directory / "cluster"
    try:
        yield Ceph(cluster, cluster / "ceph.conf", cluster / "ceph.client.ucloud.keyring")
    finally:
        run_script(str(SCRIPTS / "ceph-down.sh"), str(cluster), timeout=120)


def start_libvirtd(directory: Path) -> Libvirtd:
    env = {"LIBVIRTD_CAPS_CACHE": str(REPO / ".state" / "libvirt-caps")}
    run_script(str(SCRIPTS / "libvirtd-up.sh"), str(directory), env=env, timeout=180)
    return Libvirtd(directory, (directory / "uri").read_text().strip())


def stop_libvirtd(lv: Libvirtd) -> None:
    run_script(str(SCRIPTS / "libvirtd-down.sh"), str(lv.dir), timeout=120)


def running_libvirtds(base: Path, names: tuple[str, ...]) -> Iterator[dict[str, Libvirtd]]:
    """A private libvirtd for each of ``names`` (simulated hypervisors), for a fixture to
    yield from; those started are stopped even when a later one fails to start."""
    lvs: dict[str, Libvirtd] = {}
    try:
        for name in names:
            lvs[name] = start_libvirtd(base / name)
        yield lvs
    finally:
        for lv in lvs.values():
            stop_libvirtd(lv)


@pytest.fixture(scope="session")
def libvirtd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Libvirtd]:
    lv = start_libvirtd(tmp_path_factory.mktemp("libvirtd") / "lv")
    yield lv
    stop_libvirtd(lv)


def _free_port_block(size: int) -> int:
    """A base port with ``size`` free ports above it (checked, not reserved)."""
    for _ in range(50):
        base = free_port()
        if base + size < 65000 and all(_port_free(p) for p in range(base, base + size, 7)):
            return base
    raise RuntimeError("no block of free ports")


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def host_settings(
    settings: Settings, ceph: Ceph | None, lv: Libvirtd, name: str, state: Path, **more: object
) -> Settings:
    storage: dict[str, object] = {}
    if ceph is not None:
        storage = {
            "ceph_conf": str(ceph.conf),
            "ceph_keyring": str(ceph.keyring),
            "ceph_pool": ceph.pool,
            "image_pool": ceph.pool,
        }
    return settings.model_copy(
        update={
            **storage,
            "hostname": name,
            "libvirt_uri": lv.uri,
            "state_dir": str(state),
            "vnc_dir": tempfile.mkdtemp(prefix="ucvnc-"),
            # TCG: KVM on these machines runs the boot sector but fails real kernels
            # ("KVM internal error"), and tests must not depend on the machine.
            "accel": os.environ.get("UCLOUD_TEST_ACCEL", "qemu"),
            "host_cpu": 8,
            "host_ram": 8,
            "shutdown_timeout": 3.0,
            "host_resync": 5.0,
            # An agent in the machine's own network namespace must not build or sweep bridges
            # there: it would remove those of a ucloud running beside the tests (up.sh's) or of
            # a test in another process. Only the bed's hosts, each in its own namespace, have
            # networks (tests.bed.host_network_settings).
            "network_dataplane": "none",
            **more,
        }
    )


def daemon(module: str, settings: Settings, log: Path, **env: str) -> Daemon:
    """``module`` in its own process with ``settings``; ``env`` adds variables (failpoints)."""
    env = {**settings_env(settings), "UCLOUD_ENV_FILE": "/dev/null", **env}
    return Daemon([sys.executable, "-m", module], env, log)


def qemu_pid(vm: str) -> int | None:
    """The pid of the QEMU process running ``vm``, found as an operator would (ps)."""
    needle = f"guest=ucloud-{vm}".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if needle in f.read():
                    return int(entry)
        except OSError:
            continue
    return None


def console_text(state: Path, vm: str) -> str:
    path = state / "console" / f"{vm}.log"
    return path.read_text(errors="replace") if path.exists() else ""


def wait_console(
    state: Path, vm: str, marker: str, timeout: float = 60, count: int = 1, whole_line: bool = True
) -> str:
    """The console once ``marker`` is on it ``count`` times.

    The serial log grows in chunks, so by default only whole lines count: a marker
    seen before its line ends would give the caller half of its fields. A prompt,
    which ends no line, needs ``whole_line=False``.
    """

    def text() -> str:
        t = console_text(state, vm)
        return t[: t.rfind("\n") + 1] if whole_line else t

    return wait_for(
        lambda: (t := text()).count(marker) >= count and t,
        timeout,
        f"{marker!r} x{count} on VM {vm}'s console",
        interval=0.1,
    )


def dots_in(state: Path, vm: str, seconds: float) -> int:
    """How many heartbeat dots the boot-sector guest prints in ``seconds``."""
    before = console_text(state, vm).count(".")
    time.sleep(seconds)
    return console_text(state, vm).count(".") - before


# --- the real API, served by gunicorn ---------------------------------------------------------


@dataclass(frozen=True)
class ServedAPI:
    url: str
    pid: int  # gunicorn's master


@pytest.fixture
def api(settings: Settings, tmp_path: Path) -> Iterator[ServedAPI]:
    port = free_port()
    served = settings.model_copy(
        update={"api_bind": f"127.0.0.1:{port}", "api_workers": 2, "api_threads": 8}
    )
    process = daemon("ucloud.api.main", served, tmp_path / "api.log")
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return requests.get(f"{url}/openapi.json", timeout=1).ok
        except requests.RequestException:
            return False

    try:
        wait_for(up, 30, "the API")
        yield ServedAPI(url, process.pid)
    finally:
        process.stop()
