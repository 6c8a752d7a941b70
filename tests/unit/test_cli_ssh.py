"""``ucloud vm ssh``: the ssh command line it runs for a VM, from the VM's record as the API
returns it (the end-to-end path, up.sh's demo VM answering it, is run by scripts/up.sh)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest

from ucloud.cli import ssh as ssh_module
from ucloud.cli.errors import CLIError
from ucloud.cli.main import build_parser, main
from ucloud.cli.session import Session
from ucloud.cli.ssh import split_target, ssh_argv

VM = {
    "uuid": "0b6c3f5e-1111-4222-8333-944455556666",
    "name": "web",
    "status": "RUNNING",
    "ports": [
        {"network": "n1", "mac": "52:54:00:aa:bb:cc", "ipv6": "fd75:636c:6f75:1::2", "ipv4": ""},
        {"network": "n2", "mac": "52:54:00:aa:bb:cd", "ipv6": "fd75::5", "ipv4": "10.0.0.7"},
    ],
}


def test_the_first_ports_ipv6_address_with_the_vms_own_host_key_name():
    argv = ssh_argv(VM, user="debian", identity="/k/id", command=["uname", "-a"])
    assert argv == [
        "ssh",
        "-o", "HostKeyAlias=ucloud-0b6c3f5e-1111-4222-8333-944455556666",
        "-o", "StrictHostKeyChecking=accept-new",
        "-i", "/k/id",
        "-l", "debian",
        "--", "fd75:636c:6f75:1::2", "uname", "-a",
    ]  # fmt: skip


def test_the_users_options_come_first_so_they_win():
    argv = ssh_argv(VM, options=["StrictHostKeyChecking=yes"], ipv4=True)
    assert argv[:3] == ["ssh", "-o", "StrictHostKeyChecking=yes"]
    assert argv[-1] == "10.0.0.7"  # the first port with IPv4
    assert "-l" not in argv and "-i" not in argv  # ssh's own defaults then


def test_a_vm_without_the_address_asked_for_is_a_clear_error():
    with pytest.raises(CLIError, match="no network") as e:
        ssh_argv({**VM, "ports": []})
    assert "ucloud vm network attach web" in e.value.hint
    with pytest.raises(CLIError, match="no IPv4"):
        ssh_argv({**VM, "ports": VM["ports"][:1]}, ipv4=True)


def test_the_command_line(monkeypatch, tmp_path):
    assert split_target("debian@web") == ("debian", "web")
    assert split_target("web") == ("", "web")
    seen = {}
    monkeypatch.setattr(ssh_module, "ssh", lambda s, args: seen.setdefault("args", args) and 0)
    monkeypatch.setenv("UCLOUD_USER", "alice")
    monkeypatch.setenv("UCLOUD_REALM", "users")
    monkeypatch.setenv("UCLOUD_SEED", "JBSWY3DPEHPK3PXP")
    (tmp_path / "client.env").write_text("")
    monkeypatch.setenv("UCLOUD_CLIENT_CONFIG", str(tmp_path / "client.env"))
    assert main(["vm", "ssh", "debian@web", "-i", "key", "-o", "A=b", "--", "ls", "-l"]) == 0
    args = seen.pop("args")
    assert (args.vm, args.identity, args.option, args.command) == (
        "debian@web",
        "key",
        ["A=b"],
        ["ls", "-l"],
    )
    args = build_parser().parse_args(["vm", "ssh", "web", "-l", "root", "-4"])
    assert (args.login, args.ipv4, args.command) == ("root", True, [])
    # Only vm ssh takes a command.
    assert main(["vm", "list", "--", "ls"]) == 2


# --- host keys: the ones recorded from the VM's console, checked strictly ----------------------

ED25519 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAOKlk3KGX3IALRbaXZNFl13XKiK5cNsHnTMupz14OyL"
KEYED = {**VM, "host_keys": [f"{ED25519} root@web", "ssh-dss AAAAB3NzaC1kc3M= root@web"]}


def test_the_recorded_keys_become_a_known_hosts_file_of_the_vms_own(tmp_path):
    # Only well-formed keys, under the VM's alias, without their comments.
    assert ssh_module.known_hosts_lines(KEYED) == [f"ucloud-{VM['uuid']} {ED25519}"]
    path = ssh_module.write_known_hosts(KEYED, tmp_path / "known_hosts")
    assert path == tmp_path / "known_hosts" / VM["uuid"]
    assert path.read_text() == f"ucloud-{VM['uuid']} {ED25519}\n"
    assert ssh_module.write_known_hosts(VM, tmp_path / "known_hosts") is None  # none recorded
    assert sorted(p.name for p in (tmp_path / "known_hosts").iterdir()) == [VM["uuid"]]


def test_with_known_hosts_ssh_checks_strictly_against_that_file_only():
    argv = ssh_argv(KEYED, user="debian", known_hosts="/s/kh", options=["A=b"])
    assert argv == [
        "ssh",
        "-o", "A=b",
        "-o", "HostKeyAlias=ucloud-0b6c3f5e-1111-4222-8333-944455556666",
        "-o", "StrictHostKeyChecking=yes",
        "-o", "UserKnownHostsFile=/s/kh",
        "-o", "GlobalKnownHostsFile=/dev/null",
        "-l", "debian",
        "--", "fd75:636c:6f75:1::2",
    ]  # fmt: skip


def test_the_state_dir_follows_xdg():
    assert ssh_module.state_dir({"XDG_STATE_HOME": "/x"}) == Path("/x/ucloud")
    assert ssh_module.state_dir({}).parts[-3:] == (".local", "state", "ucloud")


class FakeAPI:
    def __init__(self, vm: dict) -> None:
        self.vm = vm

    def get(self, path: str, **body: object) -> dict:
        assert path == "/vm/status" and body == {"vmid": VM["uuid"]}
        return self.vm


def run_ssh(monkeypatch, tmp_path, vm: dict, *flags: str) -> list[str]:
    """What ``ucloud vm ssh`` would exec for ``vm`` (the API's answer)."""
    execs: list[list[str]] = []
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    monkeypatch.setattr(ssh_module.os, "execvp", lambda file, argv: execs.append(argv))
    session = SimpleNamespace(api=FakeAPI(vm), out=SimpleNamespace(progress=lambda line: None))
    args = build_parser().parse_args(["vm", "ssh", f"debian@{VM['uuid']}", *flags])
    ssh_module.ssh(cast(Session, session), args)
    return execs[0]


def test_vm_ssh_uses_the_recorded_keys(monkeypatch, tmp_path):
    argv = run_ssh(monkeypatch, tmp_path, KEYED)
    known = tmp_path / "ucloud" / "known_hosts" / VM["uuid"]
    assert f"UserKnownHostsFile={known}" in argv and "StrictHostKeyChecking=yes" in argv
    assert known.read_text() == f"ucloud-{VM['uuid']} {ED25519}\n"


def test_vm_ssh_without_recorded_keys_refuses_unless_told_to_trust_the_first(monkeypatch, tmp_path):
    with pytest.raises(CLIError, match="no recorded SSH host keys") as e:
        run_ssh(monkeypatch, tmp_path, VM)
    assert "--trust-on-first-use" in e.value.hint
    argv = run_ssh(monkeypatch, tmp_path, VM, "--trust-on-first-use")
    assert "StrictHostKeyChecking=accept-new" in argv
    assert not any(a.startswith("UserKnownHostsFile") for a in argv)


def test_vm_status_lists_the_recorded_host_keys_fingerprints():
    # The fingerprint as ssh-keygen -l prints it for ED25519.
    from ucloud.cli.vms import describe
    from ucloud.models import VM as Record
    from ucloud.models import Specs

    vm = Record(name="web", owner="a", owner_realm="r", image="i", specs=Specs(cpu=1, ram=1))
    answer = vm.model_dump(mode="json")
    assert "host keys: - (not seen on its console yet)" in describe(answer)
    text = describe({**answer, "host_keys": [ED25519, "ssh-rsa garbage"]})
    assert "host keys: SHA256:b+K1/Rhdqlecki/4GFTbVJjA6Px8m5o/8W3Ncg9iK64 (ssh-ed25519)\n" in text
