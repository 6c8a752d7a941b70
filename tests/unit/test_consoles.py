"""Console tokens and relay tickets (ucloud.consoles): who may open which console, and once."""

from __future__ import annotations

import time

import pytest

from tests.unit.memstore import MemStore
from ucloud import consoles
from ucloud.config import load_settings
from ucloud.console.relay import Relay
from ucloud.consoles import Console, ConsoleRelay, ConsoleToken, Refused
from ucloud.models import VM, Specs, Status

SECRET = "s" * 40


def running_vm(store: MemStore, owner: str = "alice", host: str = "node1") -> VM:
    vm = VM(name="web", owner=owner, owner_realm="users", specs=Specs(cpu=1, ram=1), image="i")
    vm.status, vm.hostname = Status.RUNNING, host
    store.create(vm)
    store.put_owned(ConsoleRelay(host=host, address="10.0.0.1:6090"), store.lease(10))
    return vm


def test_a_token_is_stored_only_as_its_hash_and_leads_to_the_vms_host():
    store = MemStore()
    vm = running_vm(store)
    issued = consoles.issue(store, vm, Console.VNC, ttl=60)
    (stored,) = store.list(ConsoleToken)[0].values()
    assert issued.token not in stored.value.model_dump_json()
    assert stored.value.digest == consoles.digest(issued.token)
    assert stored.value.expires == pytest.approx(time.time() + 60, abs=2)

    target = consoles.resolve(store, consoles.consume(store, issued.token))
    assert target == consoles.Target(vm.uuid, Console.VNC, "node1", "10.0.0.1:6090")


def test_a_token_works_once():
    store = MemStore()
    issued = consoles.issue(store, running_vm(store), Console.SERIAL, ttl=60)
    consoles.consume(store, issued.token)
    with pytest.raises(Refused, match="unknown console token"):
        consoles.consume(store, issued.token)


def test_an_expired_token_is_refused_and_used_up():
    store = MemStore()
    issued = consoles.issue(store, running_vm(store), Console.VNC, ttl=60)
    with pytest.raises(Refused, match="expired"):
        consoles.consume(store, issued.token, at=time.time() + 61)
    assert not store.list(ConsoleToken)[0]


@pytest.mark.parametrize("forged", ["", "short", "x" * 43, "y" * 500])
def test_forged_tokens_are_refused(forged: str):
    store = MemStore()
    consoles.issue(store, running_vm(store), Console.VNC, ttl=60)
    with pytest.raises(Refused):
        consoles.consume(store, forged)
    assert len(store.list(ConsoleToken)[0]) == 1  # the real one is untouched


def test_the_vm_is_resolved_when_the_token_is_used():
    store = MemStore()
    vm = running_vm(store)
    issued = consoles.issue(store, vm, Console.VNC, ttl=60)
    store.put_owned(ConsoleRelay(host="node2", address="10.0.0.2:6090"), store.lease(10))
    store.update(VM, vm.uuid, lambda v: setattr(v, "hostname", "node2"))
    target = consoles.resolve(store, consoles.consume(store, issued.token))
    assert (target.host, target.relay) == ("node2", "10.0.0.2:6090")


def test_a_stopped_vm_or_another_owner_has_no_console():
    store = MemStore()
    vm = running_vm(store)
    token = consoles.consume(store, consoles.issue(store, vm, Console.VNC, ttl=60).token)
    store.update(VM, vm.uuid, lambda v: setattr(v, "status", Status.STOPPED))
    with pytest.raises(Refused, match="STOPPED"):
        consoles.resolve(store, token)
    store.update(VM, vm.uuid, lambda v: setattr(v, "owner", "mallory"))
    with pytest.raises(Refused, match="no longer belongs"):
        consoles.resolve(store, token)


def test_a_ticket_is_checked_for_signature_expiry_and_reuse():
    relay = Relay(load_settings(console_relay_secret=SECRET, console_relay_bind="127.0.0.1:0"))
    try:
        line = consoles.ticket(SECRET, "0b6c1a0e-3d8f-4a57-9a62-2f1c1b0a9d11", Console.VNC)
        assert relay.admit(line).console == Console.VNC
        with pytest.raises(Refused, match="used already"):
            relay.admit(line)
        other = consoles.ticket("t" * 40, "0b6c1a0e-3d8f-4a57-9a62-2f1c1b0a9d11", Console.VNC)
        with pytest.raises(Refused, match="signature"):
            relay.admit(other)
        tampered = consoles.ticket(SECRET, "0b6c1a0e-3d8f-4a57-9a62-2f1c1b0a9d11", Console.VNC)
        with pytest.raises(Refused, match="signature"):
            relay.admit(tampered.replace(b" vnc ", b" serial "))
        old = consoles.ticket(SECRET, "0b6c1a0e-3d8f-4a57-9a62-2f1c1b0a9d11", Console.VNC, at=0)
        with pytest.raises(Refused, match="expired"):
            relay.admit(old)
        with pytest.raises(Refused, match="malformed"):
            relay.admit(b"\xff\xfe\n")
    finally:
        relay.server.server_close()


def test_the_relay_needs_a_long_secret():
    with pytest.raises(ValueError, match="at least 32"):
        Relay(load_settings(console_relay_secret="short", console_relay_bind="127.0.0.1:0"))
