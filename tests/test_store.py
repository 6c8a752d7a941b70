"""The etcd layer on a real etcd: lists beyond one gRPC message, compare-and-swap."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from ucloud.models import VM, Specs, placement_folder
from ucloud.store import LIST_PAGE, Compacted, Store


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
