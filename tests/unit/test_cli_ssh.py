"""``ucloud vm ssh``: the ssh command line it runs for a VM, from the VM's record as the API
returns it (the end-to-end path, up.sh's demo VM answering it, is run by scripts/up.sh)."""

from __future__ import annotations

import pytest

from ucloud.cli import ssh as ssh_module
from ucloud.cli.errors import CLIError
from ucloud.cli.main import build_parser, main
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
