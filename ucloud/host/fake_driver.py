"""An in-process hypervisor for scale simulations: domains are entries in a dict."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from ucloud.host.hypervisor import Domain, DomainSpec, DomainStats, Power


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

    def ensure_secret(self, usage: str, value: str) -> None:
        pass

    def stats(self) -> dict[str, DomainStats]:
        """Made-up figures of the shape libvirt gives (a guest busy 10 % of one CPU), so a
        simulation costs the agent what a real host's scrape does past libvirt."""
        now = time.monotonic()
        out = {}
        for vm, dom in self.domains().items():
            started = self._started.get(vm)
            if dom.power == Power.SHUTOFF or started is None:
                continue
            up = now - started[0]
            spec = started[1]
            out[vm] = DomainStats(
                cpu_seconds=up * 0.1,
                vcpus=spec.cpu,
                memory_bytes=spec.ram_mib * 1048576.0,
                memory_rss_bytes=spec.ram_mib * 524288.0,
                disk_read_bytes=up * 4096,
                disk_write_bytes=up * 1024,
                disk_reads=up,
                disk_writes=up / 4,
                net_rx_bytes=up * 100,
                net_tx_bytes=up * 50,
            )
        return out
