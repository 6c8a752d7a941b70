"""The etcd layer on a real etcd: lists beyond one gRPC message, compare-and-swap."""

from __future__ import annotations

import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.servers import Etcd
from ucloud.models import VM, Specs, placement_folder
from ucloud.retry import Backoff, until_done
from ucloud.store import LIST_PAGE, Compacted, Store, Unavailable


def test_list_larger_than_one_grpc_message_is_complete(store: Store):
    # 1,400 VMs with full event logs: about 6 MiB, over gRPC's 4 MiB answer limit.
    def make(i: int) -> str:
        vm = VM(name=f"vm{i}", owner="a", owner_realm="r", specs=Specs(cpu=1, ram=1), image="i")
        for n in range(20):
            vm.record("test", f"event {n} " + "x" * 150)
        store.create(vm)
        return vm.uuid

    with ThreadPoolExecutor(8) as pool:
        made = set(pool.map(make, range(1400)))
    assert len(made) > 2 * LIST_PAGE
    items, revision = store.list(VM)
    assert set(items) == made
    assert all(v.mod_revision <= revision for v in items.values())


def test_swap_refuses_a_stale_revision(store: Store):
    vm = VM(name="x", owner="a", owner_realm="r", specs=Specs(cpu=1, ram=1), image="i")
    store.create(vm)
    first = store.get(VM, vm.uuid)
    assert store.swap(vm.model_copy(update={"name": "y"}), first) is not None
    assert store.swap(vm.model_copy(update={"name": "z"}), first) is None  # someone wrote since
    assert store.get(VM, vm.uuid).value.name == "y"


def test_reads_at_a_revision_and_index_lists(store: Store):
    vm = VM(name="x", owner="a", owner_realm="r", specs=Specs(cpu=1, ram=1), image="i")
    created = store.create(vm)
    first = store.get(VM, vm.uuid)
    placed = store.swap(vm.model_copy(update={"hostname": "h1"}), first)
    assert placed is not None
    then, now, absent = store.read(VM, [(vm.uuid, created), (vm.uuid, placed), ("nope", placed)])
    assert (then.value.hostname, then.mod_revision) == ("", created)
    assert (now.value.hostname, now.mod_revision) == ("h1", placed)
    assert absent is None
    entries, revision = store.list_index(placement_folder("h1"))
    assert entries == {vm.uuid: placed}
    assert revision >= placed
    store.client.compact(placed)
    with pytest.raises(Compacted):
        store.read(VM, [(vm.uuid, created)])


@pytest.mark.slow
def test_a_request_right_after_etcd_returns_succeeds(tmp_path, settings):
    # etcd away for 20 s while a daemon keeps trying, as they all do: gRPC's own reconnect
    # back-off would have grown to several seconds by then (1 s, 1.6 times more after each
    # failed attempt), and every call would fail until the channel's next attempt.
    own = Etcd(tmp_path / "etcd")
    own.start()
    store = Store(settings.model_copy(update={"etcd_endpoints": own.endpoint}))
    vm = VM(name="x", owner="a", owner_realm="r", specs=Specs(cpu=1, ram=1), image="i")
    try:
        store.create(vm)
        own.stop(signal.SIGKILL)
        for _ in range(40):  # 20 s
            with pytest.raises(Unavailable):
                store.get(VM, vm.uuid)
            time.sleep(0.5)
        own.start()  # returns once a new client gets an answer
        attempts = 0

        def read() -> None:
            nonlocal attempts
            attempts += 1
            assert store.get(VM, vm.uuid) is not None

        assert until_done(threading.Event(), "read", read, Backoff.of(settings), (Unavailable,))
        # The daemons' retry policy (0.5 s, then 1 s): within it, not after many of its turns.
        assert attempts <= 3
    finally:
        store.close()
        own.stop()
