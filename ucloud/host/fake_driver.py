"""An in-process hypervisor for scale simulations: domains are entries in a dict."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from ucloud.host.hypervisor import (
    Domain,
    DomainSpec,
    DomainStats,
    HypervisorError,
    MigrationDone,
    MigrationLimits,
    MigrationTarget,
    Nic,
    Power,
    Unreachable,
    stats_from_record,
)


class FakeHypervisor:
    def __init__(self) -> None:
        self._domains: dict[str, Domain] = {}
        self._started: dict[str, tuple[float, DomainSpec]] = {}  # for stats()
        self._lock = threading.Lock()
        self._on_change: Callable[[str], None] = lambda vm: None

    def connect(self, on_change: Callable[[str], None]) -> None:
        self._on_change = on_change

    def close(self) -> None:
        pass

    def domains(self) -> dict[str, Domain]:
        with self._lock:
            return dict(self._domains)

    def domain(self, vm: str) -> Domain | None:
        return self._domains.get(vm)

    def _set(self, vm: str, power: Power | None) -> None:
        with self._lock:
            if power is None:
                self._domains.pop(vm, None)
            else:
                self._domains[vm] = Domain(vm, power)
        self._on_change(vm)

    def start(self, spec: DomainSpec) -> None:
        current = self._domains.get(spec.vm)
        if current is None or current.power == Power.SHUTOFF:
            self._started[spec.vm] = (time.monotonic(), spec)
            self._set(spec.vm, Power.RUNNING)

    def suspend(self, vm: str) -> None:
        self._set(vm, Power.PAUSED)

    def resume(self, vm: str) -> None:
        self._set(vm, Power.RUNNING)

    def shutdown(self, vm: str) -> None:
        if vm in self._domains:
            self._set(vm, Power.SHUTOFF)

    def destroy(self, vm: str) -> None:
        if vm in self._domains:
            self._set(vm, Power.SHUTOFF)

    def reboot(self, vm: str) -> None:
        self._on_change(vm)

    def undefine(self, vm: str) -> None:
        if vm in self._domains:
            self._set(vm, None)

    def set_nics(self, vm: str, nics: list[Nic]) -> bool:
        return False

    def ensure_secret(self, usage: str, value: str) -> None:
        pass

    def stats(self) -> dict[str, DomainStats]:
        """Made-up figures (a guest busy 10 % of one CPU) in libvirt's record shape, read by
        the same code as libvirt's: a simulation costs the agent what a real host's scrape
        does, but for libvirtd's own answer."""
        now = time.monotonic()
        out = {}
        for vm, dom in self.domains().items():
            started = self._started.get(vm)
            if dom.power == Power.SHUTOFF or started is None:
                continue
            up, spec = now - started[0], started[1]
            record = {
                "cpu.time": int(up * 0.1e9),
                "vcpu.current": spec.cpu,
                "balloon.current": spec.ram_mib * 1024,
                "balloon.maximum": spec.ram_mib * 1024,
                "balloon.rss": spec.ram_mib * 512,
                "block.count": 1,
                "block.0.rd.bytes": int(up * 4096),
                "block.0.wr.bytes": int(up * 1024),
                "block.0.rd.reqs": int(up),
                "block.0.wr.reqs": int(up / 4),
                "block.0.allocation": 1 << 26,
                "net.count": 1,
                "net.0.rx.bytes": int(up * 100),
                "net.0.tx.bytes": int(up * 50),
            }
            out[vm] = stats_from_record(record)
        return out

    def migrate(self, vm: str, target: MigrationTarget, limits: MigrationLimits) -> None:
        raise HypervisorError("the fake hypervisor does not migrate")

    def migration_progress(self, vm: str) -> float | None:
        return None

    def abort_migration(self, vm: str) -> None:
        pass

    def peer_domain(self, uri: str, vm: str) -> Domain | None:
        raise Unreachable("the fake hypervisor has no peers")

    def migration_done(self, vm: str, uri: str = "") -> MigrationDone | None:
        return None
