"""An in-process hypervisor for scale simulations: domains are entries in a dict."""

from __future__ import annotations

import threading
from collections.abc import Callable

from ucloud.host.hypervisor import Domain, DomainSpec, Nic, Power


class FakeHypervisor:
    def __init__(self) -> None:
        self._domains: dict[str, Domain] = {}
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
