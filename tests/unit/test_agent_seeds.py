# ruff: noqa: F811  (the fixtures imported from agentbed are parameters here)
"""The host agent and first-boot seeds (ucloud/host/seeds.py), on the fake hypervisor and the
store double of tests/unit/agentbed.py: a seed is written before every start, removed when
the VM leaves the host, and a VM recorded before seeds existed gets none."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.seedfiles import read_seed
from tests.unit.agentbed import (  # noqa: F401  (fixtures)
    agent,
    ask,
    clock,
    hv,
    place,
    storage,
    store,
    vm_in,
)
from ucloud import seed
from ucloud.host.hypervisor import DomainSpec
from ucloud.models import VM, Action, Status

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIH7Bgg2uo5UsMIADZYKJP6eAbQv2aG0GMm6O3Uo/7wgx me@x"


@pytest.fixture
def started(hv) -> list[tuple[str, bytes | None]]:
    """Each start: the seed path the domain got, and the file's bytes at that moment."""
    seen: list[tuple[str, bytes | None]] = []
    real_start = hv.start

    def start(spec: DomainSpec) -> None:
        path = Path(spec.seed_iso) if spec.seed_iso else None
        seen.append((spec.seed_iso, path.read_bytes() if path and path.exists() else None))
        real_start(spec)

    hv.start = start
    return seen


def test_a_seed_is_written_before_the_start_and_removed_when_the_vm_stops(
    store,
    agent,
    started,
    tmp_path,
):
    boot = seed.first_boot("web-1", [KEY], "#!/bin/sh\necho hi\n")
    id = place(store, first_boot=boot)
    agent.reconcile(id)
    assert vm_in(store, id).status == Status.RUNNING
    path = tmp_path / "seed" / f"{id}.iso"
    assert started == [(str(path), seed.iso(vm_in(store, id)))]
    assert read_seed(path.read_bytes())[1]["rr_path"]["user-data"] == b"#!/bin/sh\necho hi\n"
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left

    ask(store, id, Action.STOP)
    agent.reconcile(id)  # ACPI shutdown: the fake guest powers off at once
    agent.reconcile(id)
    assert vm_in(store, id).status == Status.STOPPED
    assert not path.exists()


def test_a_vm_recorded_before_seeds_starts_without_one(store, agent, started, tmp_path):
    id = place(store)  # no first_boot, as every record before seeds
    agent.reconcile(id)
    assert vm_in(store, id).status == Status.RUNNING
    assert started == [("", None)]
    assert not (tmp_path / "seed" / f"{id}.iso").exists()


def test_a_deleted_vm_leaves_no_seed(store, agent, tmp_path):
    id = place(store, first_boot=seed.first_boot("web", [], ""))
    agent.reconcile(id)
    path = tmp_path / "seed" / f"{id}.iso"
    assert path.exists()
    ask(store, id, Action.DELETE)
    agent.reconcile(id)
    assert store.get(VM, id) is None
    assert not path.exists()
