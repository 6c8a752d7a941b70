"""The CLI commands of quotas, resize, accounts, host deletion, uploads and imports, run
in-process against the real API on a loopback port and a real etcd."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from tests.clirun import CLIENT_KEYS, shown
from ucloud import websessions
from ucloud.cli.errors import ExitCode
from ucloud.config import Settings
from ucloud.models import VM, Desired, Host, Image, Specs, Status, User
from ucloud.store import Store

ROOT = str(Path(__file__).resolve().parent.parent)


@pytest.fixture
def settings(settings: Settings, tmp_path: Path) -> Settings:
    root = tmp_path / "uploads"
    root.mkdir()
    return settings.model_copy(update={"upload_root": str(root), "quota_cpu": 2})


def test_quota_shown_and_set(alice_cli, admin_cli, image):
    code, out, err = alice_cli("quota")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "quota of users/alice (cpu and ram: of VMs that should run)"
    assert lines[1].split() == ["RESOURCE", "USED", "LIMIT", "LIMIT", "FROM"]
    assert lines[3].split() == ["cpu", "0", "2", "default"]
    alice_cli.json("vm", "create", "a", "--image", image.name, "--cpu", "2", "--ram", "1")
    code, _, err = alice_cli("vm", "create", "b", "--image", image.name, "--cpu", "1", "--ram", "1")
    assert code == ExitCode.REFUSED
    assert "quota exceeded: cpu limit is 2, 2 in use, this needs 1 more" in err
    assert "see your limits and usage with: ucloud quota" in err
    code, out, err = admin_cli("quota", "set", "alice", "--realm", "users", "--cpu", "none")
    assert code == 0, err
    assert "cpu       2     unlimited  set" in out
    shown = admin_cli.json("quota", "--user", "alice", "--realm", "users")
    assert shown["limits"]["cpu"] == -1 and shown["usage"]["cpu"] == 2
    code, _, err = alice_cli("quota", "set", "alice", "--realm", "users", "--cpu", "9")
    assert code == ExitCode.REFUSED and "only administrators" in err


def test_resize_from_the_cli(alice_cli, image, store: Store):
    vm = alice_cli.json("vm", "create", "a", "--image", image.name, "--cpu", "1", "--ram", "1")
    code, _, err = alice_cli("vm", "resize", "a", "--cpu", "2")
    assert code == ExitCode.REFUSED and "stop it first (ucloud vm stop a --wait)" in err
    store.create(Host(name="h1", capacity=Specs(cpu=8, ram=8)))

    def stopped(v: VM) -> None:
        v.desired, v.status = Desired.STOPPED, Status.STOPPED

    store.update(VM, vm["uuid"], stopped)
    code, out, err = alice_cli("vm", "resize", "a", "--cpu", "2", "--ram", "2G", "--ssd", "20G")
    assert code == 0, err
    assert shown(out, "specs") == "2 CPU, 2G RAM, 20G SSD, 0 HDD"


def test_accounts_and_hosts_from_the_cli(admin_cli, alice_cli, store: Store, image):
    alice_cli.json("vm", "create", "a", "--image", image.name, "--cpu", "1", "--ram", "1")
    alice = store.get(User, "users/alice")
    assert alice is not None
    first, _ = websessions.begin(store, alice.value, 3600, "192.0.2.7", "Firefox")
    websessions.begin(store, alice.value, 3600)
    code, out, err = admin_cli("user", "sessions", "alice", "--realm", "users")
    assert code == 0, err
    rows = out.splitlines()
    assert rows[0].split() == ["SESSION", "SINCE", "UNTIL", "FROM", "BROWSER"] and len(rows) == 3
    shown = websessions.digest(first)[:16]
    assert any(r.split()[0] == shown and "192.0.2.7" in r and "Firefox" in r for r in rows)
    code, out, err = admin_cli(
        "user", "end-sessions", "alice", "--realm", "users", "--session", shown
    )
    assert code == 0 and out.strip() == "1 session(s) of users/alice ended", err
    assert websessions.find(store, first) is None
    assert len(websessions.of_user(store, "users/alice")) == 1
    code, out, _ = admin_cli("user", "list")
    assert code == 0
    rows = [line.split() for line in out.splitlines()]
    assert ["users", "alice", "1", "0", "0", "0", "0"] in rows
    code, _, err = admin_cli("user", "delete", "alice", "--realm", "users")
    assert code == ExitCode.REFUSED and "owns 1 vms" in err
    code, out, err = admin_cli("user", "delete", "alice", "--realm", "users", "--delete-owned")
    assert code == 0, err
    assert out.strip() == "user users/alice deleted; deleting 1 vms"
    assert store.get(User, "users/alice") is None
    assert not websessions.of_user(store, "users/alice")  # her last session ended with her
    code, out, err = admin_cli("user", "reset-totp", "root", "--realm", "ucloud-admin")
    assert code == 0 and "seed:" in out, err

    store.create(Host(name="old", capacity=Specs(cpu=8, ram=8)))
    code, _, err = alice_cli("host", "delete", "old")
    assert code == ExitCode.REFUSED  # alice is gone: her token no longer works


def test_upload_and_import_from_the_cli(alice_cli, settings, store: Store, tmp_path):
    source = tmp_path / "disk.img"
    source.write_bytes(b"x" * 100_000)
    code, out, err = alice_cli("file", "upload", str(source), "--name", "d.img")
    assert code == 0, err
    assert out.startswith("uploaded d.img (97.7K)")
    assert (Path(settings.upload_root) / "alice" / "d.img").read_bytes() == source.read_bytes()
    code, _, err = alice_cli("file", "upload", str(source), "--name", "d.img")
    assert code == ExitCode.REFUSED and "already have a file named d.img" in err
    code, _, err = alice_cli("file", "upload", str(tmp_path / "missing"))
    assert code == ExitCode.USAGE and "cannot read" in err

    image = alice_cli.json("image", "import", "web", "--url", "https://example.org/d.qcow2")
    assert image["url"] == "https://example.org/d.qcow2"
    found = store.get(Image, image["uuid"])
    assert found is not None and found.value.status == "TO_BE_CREATED"


def test_host_delete_from_the_cli(admin_cli, store: Store):
    store.create(Host(name="old", capacity=Specs(cpu=8, ram=8)))
    code, out, err = admin_cli("host", "delete", "old")
    assert code == 0, err
    assert out.strip() == "host old deleted"
    code, _, err = admin_cli("host", "delete", "old")
    assert code == ExitCode.REFUSED and "no host old" in err


def test_alice_is_no_admin(alice_cli):
    code, _, err = alice_cli("user", "list")
    assert code == ExitCode.REFUSED and "administrator's account" in err


def test_upload_shows_a_progress_bar_on_a_terminal(api_url, alice, home, settings):
    """What a user sees on their terminal: the CLI in its own process, its stderr a pty."""
    source = home / "disk.img"
    source.write_bytes(os.urandom(3 << 20))
    env = {
        **os.environ,
        **dict(zip(CLIENT_KEYS, (api_url, alice.name, alice.realm, alice.secret), strict=True)),
        # This checkout's ucloud, whatever the venv has installed.
        "PYTHONPATH": os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH", "")) if p),
    }
    leader, follower = pty.openpty()
    try:
        argv = [
            sys.executable,
            "-c",
            "import sys; from ucloud.cli.main import main; sys.exit(main())",
        ]
        run = subprocess.Popen(
            [*argv, "file", "upload", str(source)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=follower,
            text=True,
        )
        os.close(follower)
        shown = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO: the CLI has exited and closed the terminal
                break
            if not chunk:
                break
            shown += chunk
        out, _ = run.communicate(timeout=60)
    finally:
        os.close(leader)
    assert run.returncode == 0, shown
    assert out.startswith("uploaded disk.img (3.0M)")
    text = shown.decode()
    assert f"hashing   disk.img [{'#' * 30}] 100% 3.0M/3.0M" in text, text
    assert f"uploading disk.img [{'#' * 30}] 100% 3.0M/3.0M" in text, text
    assert (Path(settings.upload_root) / "alice" / "disk.img").read_bytes() == source.read_bytes()
