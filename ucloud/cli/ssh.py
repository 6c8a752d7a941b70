"""``ucloud vm ssh``: log into a VM over its network address, with the ssh client.

The VM's addresses are its ports' (kept in etcd: the IPv6 one derived from a generated MAC),
so nobody knows them by heart; this looks them up and execs ``ssh``, as ``virtctl ssh`` does.
Host keys are trusted on first use and remembered under ``ucloud-<the VM's uuid>``
(``HostKeyAlias``) in the user's own known_hosts: a VM keeps its host keys wherever it runs,
and another VM given the same address later is not taken for it.
"""

from __future__ import annotations

import argparse
import os
import shutil
from typing import Any

from ucloud.cli.errors import CLIError, ExitCode
from ucloud.cli.session import Session
from ucloud.cli.vms import resolve


def split_target(target: str) -> tuple[str, str]:
    """``USER@VM`` or ``VM``: (user or '', VM)."""
    user, at, vm = target.rpartition("@")
    return (user, vm) if at else ("", target)


def address(vm: dict[str, Any], ipv4: bool = False) -> str:
    """The address to reach ``vm`` at: its first port's IPv6 (or first IPv4 with ``ipv4``)."""
    ports = vm.get("ports") or []
    if not ports:
        raise CLIError(
            f"VM {vm['name']} has no network, so no address to reach it at",
            f"attach one: ucloud vm network attach {vm['name']} NETWORK",
        )
    if not ipv4:
        return str(ports[0]["ipv6"])
    found = next((p["ipv4"] for p in ports if p.get("ipv4")), "")
    if not found:
        raise CLIError(
            f"VM {vm['name']} has no IPv4 address (its networks are IPv6 only)",
            "leave out -4 to use its IPv6 address",
        )
    return str(found)


def ssh_argv(
    vm: dict[str, Any],
    *,
    user: str = "",
    identity: str = "",
    options: list[str] | None = None,
    ipv4: bool = False,
    command: list[str] | None = None,
) -> list[str]:
    """The ssh command line that logs into ``vm``. The user's ``-o`` options come first:
    ssh keeps the first value it is given for an option, so they win over ours."""
    argv = ["ssh"]
    for option in options or []:
        argv += ["-o", option]
    argv += ["-o", f"HostKeyAlias=ucloud-{vm['uuid']}", "-o", "StrictHostKeyChecking=accept-new"]
    if identity:
        argv += ["-i", identity]
    if user:
        argv += ["-l", user]
    return [*argv, "--", address(vm, ipv4), *(command or [])]


def ssh(s: Session, args: argparse.Namespace) -> int:
    user, ref = split_target(args.vm)
    vm = s.api.get("/vm/status", vmid=resolve(s.api, ref))
    if vm["status"] != "RUNNING":
        raise CLIError(
            f"VM {vm['name']} is {vm['status']}, not RUNNING",
            f"start it: ucloud vm start {vm['name']} --wait",
        )
    argv = ssh_argv(
        vm,
        user=args.login or user,
        identity=args.identity or "",
        options=args.option,
        ipv4=args.ipv4,
        command=args.command,
    )
    if shutil.which("ssh") is None:
        raise CLIError("the ssh client is not installed", "apt-get install openssh-client")
    s.out.progress(f"ssh {vm['name']} at {argv[argv.index('--') + 1]}")
    os.execvp("ssh", argv)
    return ExitCode.OK  # not reached: exec replaces this process
