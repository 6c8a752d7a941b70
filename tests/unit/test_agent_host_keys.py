# ruff: noqa: F811  (the fixtures imported from agentbed are parameters here)
"""The host agent records a VM's SSH host keys from its console log (HostAgent.learn_host_keys):
once, when the guest has printed cloud-init's block, and never replaced for the same instance.
The agent runs as in test_agent.py (tests/unit/agentbed.py); the console log is a real file
the tests append to, as libvirt does; the keys are ssh-keygen's."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.unit.agentbed import (  # noqa: F401  (fixtures)
    agent,
    clock,
    hv,
    place,
    running,
    storage,
    store,
    vm_in,
)
from ucloud.host.agent import HostAgent
from ucloud.models import VM, Status


def host_key_lines(folder: Path, name: str, types: tuple[str, ...] = ("ed25519", "ecdsa")) -> str:
    """Public host keys ssh-keygen made, one a line (a guest's /etc/ssh/ssh_host_*_key.pub)."""
    lines = []
    for t in types:
        path = folder / f"{name}_{t}"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", t, "-N", "", "-C", "root@web", "-f", str(path)],
            check=True,
            capture_output=True,
        )
        lines.append(path.with_suffix(".pub").read_text().strip())
    return "\n".join(lines)


def printed(keys: str) -> str:
    """The console lines cloud-init's keys_to_console prints, with boot noise around them."""
    return (
        "[   12.3] systemd[1]: Starting cloud-final.service\r\n"
        "-----BEGIN SSH HOST KEY KEYS-----\r\n"
        + keys.replace("\n", "\r\n")
        + "\r\n-----END SSH HOST KEY KEYS-----\r\n"
        "web login: \r\n"
    )


def console(agent: HostAgent, id: str, text: str) -> None:
    """What the guest prints on its serial port, as libvirt appends it to the log."""
    agent.console_dir.mkdir(exist_ok=True)  # made by run(), which these tests do not call
    with agent.console_log(id).open("a") as f:
        f.write(text)


@pytest.fixture
def keys_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not shutil.which("ssh-keygen"):
        pytest.skip("needs ssh-keygen")
    return tmp_path_factory.mktemp("hostkeys")


def test_host_keys_are_recorded_once_when_the_guest_prints_them(store, agent, running, keys_dir):
    agent.reconcile(running)
    assert vm_in(store, running).host_keys == []  # no console log yet
    console(agent, running, "[    0.0] Linux version 6.1\r\n-----BEGIN SSH HOST KEY KEYS-----\r\n")
    agent.reconcile(running)
    assert vm_in(store, running).host_keys == []  # not a whole block yet
    keys = host_key_lines(keys_dir, "first")
    console(agent, running, printed(keys).split("\r\n", 2)[2])  # the rest of the block
    before = len(store.writes_of(VM, running))
    agent.reconcile(running)
    vm = vm_in(store, running)
    assert vm.host_keys == keys.splitlines()
    assert len(store.writes_of(VM, running)) == before + 1
    assert "host keys from its console: ssh-ed25519 SHA256:" in vm.log[-1].message
    agent.reconcile(running)
    assert len(store.writes_of(VM, running)) == before + 1  # once


def test_the_same_instance_keeps_its_keys_whatever_a_later_boot_prints(
    store, hv, agent, running, clock, keys_dir
):
    first = host_key_lines(keys_dir, "first")
    console(agent, running, printed(first))
    agent.reconcile(running)
    assert vm_in(store, running).host_keys == first.splitlines()
    # Its QEMU dies and it is restarted; this boot prints other keys (and the log is new: as
    # on another host): the record keeps the first ones.
    hv.crash(running)
    agent.reconcile(running)
    clock.advance(2)
    agent.reconcile(running)
    assert vm_in(store, running).status == Status.RUNNING
    agent.console_log(running).write_text(printed(host_key_lines(keys_dir, "other")))
    agent.reconcile(running)
    assert vm_in(store, running).host_keys == first.splitlines()


def test_a_new_vm_is_a_new_instance_with_its_own_keys(store, agent, running, keys_dir):
    first = host_key_lines(keys_dir, "first")
    console(agent, running, printed(first))
    agent.reconcile(running)
    other = place(store)
    agent.reconcile(other)
    second = host_key_lines(keys_dir, "second")
    console(agent, other, printed(second))
    agent.reconcile(other)
    assert vm_in(store, other).host_keys == second.splitlines() != first.splitlines()
    assert vm_in(store, running).host_keys == first.splitlines()


def test_a_block_of_too_many_keys_records_nothing(store, agent, running, keys_dir):
    many = "\n".join(host_key_lines(keys_dir, f"k{i}", ("ed25519",)) for i in range(9))
    console(agent, running, printed(many))
    agent.reconcile(running)
    assert vm_in(store, running).host_keys == []
