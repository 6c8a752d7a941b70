"""The etcd layer on a real etcd: lists beyond one gRPC message, compare-and-swap."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from ucloud.models import VM, Specs
from ucloud.store import LIST_PAGE, Store


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
    first = store.create(vm)
    vm.name = "y"
    second = store.swap(vm, first)
    assert second is not None
    vm.name = "z"
    assert store.swap(vm, first) is None  # someone wrote since
    assert store.get(VM, vm.uuid).value.name == "y"
