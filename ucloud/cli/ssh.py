"""``ucloud vm ssh``: log into a VM over its network address, with the ssh client.

The VM's addresses are its ports' (kept in etcd: the IPv6 one derived from a generated MAC),
so nobody knows them by heart; this looks them up and execs ``ssh``, as ``virtctl ssh`` does.
The VM's host keys are the ones its host agent recorded from the guest's serial console at first
boot (``host_keys``, what cloud-init printed there, as EC2 users check get-console-output): they
are written to a known_hosts file of ucloud's own for that VM, under the name
``ucloud-<the VM's uuid>`` (``HostKeyAlias``: a VM keeps its host keys wherever it runs, and
another VM given the same address later is not taken for it), and ssh checks them strictly.
Without recorded keys it refuses, unless told to trust the first answer
(``--trust-on-first-use``, remembered in the user's own known_hosts).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ucloud import sshkeys
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
    known_hosts: str = "",
) -> list[str]:
    """The ssh command line that logs into ``vm``: checking its host key against the file
    ``known_hosts`` only (see known_hosts_lines), or with none, trusting the first answer.
    The user's ``-o`` options come first: ssh keeps the first value it is given for an
    option, so they win over ours."""
    argv = ["ssh"]
    for option in options or []:
        argv += ["-o", option]
    argv += ["-o", f"HostKeyAlias={alias(vm)}"]
    if known_hosts:
        argv += ["-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known_hosts}"]
        argv += ["-o", "GlobalKnownHostsFile=/dev/null"]
    else:
        argv += ["-o", "StrictHostKeyChecking=accept-new"]
    if identity:
        argv += ["-i", identity]
    if user:
        argv += ["-l", user]
    return [*argv, "--", address(vm, ipv4), *(command or [])]


def alias(vm: dict[str, Any]) -> str:
    return f"ucloud-{vm['uuid']}"


def known_hosts_lines(vm: dict[str, Any]) -> list[str]:
    """The VM's recorded host keys as known_hosts lines (its alias, type, key: no comment).
    Each is checked again, so that nothing but a key ever lands in the file."""
    lines = []
    for text in vm.get("host_keys") or []:
        try:
            key = sshkeys.parse(text)
        except sshkeys.InvalidKey:
            continue
        lines.append(f"{alias(vm)} {key.type} {key.line.split()[1]}")
    return lines


def state_dir(environ: dict[str, str] | None = None) -> Path:
    """Where the CLI keeps what it learns: ``$XDG_STATE_HOME/ucloud`` (``~/.local/state``)."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "ucloud"


def write_known_hosts(vm: dict[str, Any], directory: Path) -> Path | None:
    """The VM's own known_hosts file in ``directory``, written afresh from its recorded keys
    (replaced whole, so it never holds a key the record no longer has); None if it has none."""
    lines = known_hosts_lines(vm)
    if not lines:
        return None
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / f"{vm['uuid']}"
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".known_hosts.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write("".join(line + "\n" for line in lines))
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path


def ssh(s: Session, args: argparse.Namespace) -> int:
    user, ref = split_target(args.vm)
    vm = s.api.get("/vm/status", vmid=resolve(s.api, ref))
    if vm["status"] != "RUNNING":
        raise CLIError(
            f"VM {vm['name']} is {vm['status']}, not RUNNING",
            f"start it: ucloud vm start {vm['name']} --wait",
        )
    known = write_known_hosts(vm, state_dir() / "known_hosts")
    if known is None and not args.trust_on_first_use:
        raise CLIError(
            f"VM {vm['name']} has no recorded SSH host keys yet, so its identity cannot be "
            "checked (ucloud records them from its console when cloud-init prints them at "
            "first boot: it may not have got that far, or its image does not print them)",
            f"wait and try again (ucloud vm status {vm['name']} lists them once recorded), or "
            "accept the first host key it shows: ucloud vm ssh --trust-on-first-use ...",
        )
    argv = ssh_argv(
        vm,
        known_hosts=str(known or ""),
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
