"""The hypervisor behind one small interface: ``libvirt`` (the real one) and ``fake``
(in-process, for scale simulations only; never used to claim a feature works)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from ucloud.config import Settings


class HypervisorError(RuntimeError):
    pass


class Unreachable(HypervisorError):
    """The hypervisor's daemon does not answer; try again later."""


class Power(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    SHUTOFF = "shutoff"  # defined, not running (it stopped, crashed or was killed)


@dataclass(frozen=True)
class Domain:
    vm: str  # the VM's uuid
    power: Power
    # Paused by a live migration under way (libvirt's reason "migration"): an incoming domain
    # not yet handed over, or a source in its last copy. A suspended VM's domain that arrived
    # is paused too, but not for this reason.
    migrating: bool = False


@dataclass(frozen=True)
class DomainStats:
    """What a running domain has used, as the hypervisor counts it (counters since its start)."""

    cpu_seconds: float = 0.0
    vcpus: int = 0
    memory_bytes: float = 0.0  # what the guest has (balloon current, else its maximum)
    memory_rss_bytes: float = 0.0  # what its QEMU process holds of the host's RAM
    disk_read_bytes: float = 0.0
    disk_write_bytes: float = 0.0
    disk_reads: float = 0.0
    disk_writes: float = 0.0
    disk_allocation_bytes: float = 0.0  # written extent of its disks (0 if unknown)
    net_rx_bytes: float = 0.0
    net_tx_bytes: float = 0.0


@dataclass(frozen=True)
class Nic:
    """A VM's NIC: its tap device goes on ``bridge``."""

    mac: str
    bridge: str
    mtu: int
    tap: str = ""  # its tap device's name ("": libvirt's choice)


@dataclass(frozen=True)
class DomainSpec:
    vm: str
    cpu: int
    ram_mib: int
    disk_xml: str
    console_log: str
    vnc_socket: str
    serial_socket: str  # the serial port, interactive; console_log keeps what it printed
    nics: tuple[Nic, ...] = ()
    seed_iso: str = ""  # the NoCloud seed, attached as a read-only CD-ROM; "": none


@dataclass(frozen=True)
class MigrationTarget:
    """Where a live migration goes, and the paths the VM's files have on that host."""

    uri: str  # the target's libvirtd, as the source's libvirtd reaches it
    address: str  # QEMU's migration stream goes to tcp://<address> ("": libvirt's choice)
    console_log: str
    vnc_socket: str
    serial_socket: str
    seed_iso: str  # "": the VM has none


@dataclass(frozen=True)
class MigrationDone:
    """libvirt's statistics of a completed migration."""

    total_ms: int  # from its start to the target running the VM
    downtime_ms: int  # the VM paused (the last copy and the switch-over)


@dataclass(frozen=True)
class MigrationLimits:
    max_downtime_ms: int
    auto_converge: bool
    bandwidth_mib: int = 0  # MiB/s at most; 0: no limit


class Hypervisor(Protocol):
    def connect(self, on_change: Callable[[str], None]) -> None:
        """Connect; afterwards call ``on_change(vm_uuid)`` whenever a domain changes state."""
        ...

    def close(self) -> None: ...

    def domains(self) -> dict[str, Domain]:
        """Every domain this agent manages, by VM uuid."""
        ...

    def domain(self, vm: str) -> Domain | None: ...

    def start(self, spec: DomainSpec) -> None:
        """Define the domain (replacing an older definition) and start it; if it already
        runs, leave it running."""
        ...

    def suspend(self, vm: str) -> None: ...

    def resume(self, vm: str) -> None: ...

    def shutdown(self, vm: str) -> None:
        """Ask the guest to power off (ACPI); returns at once."""
        ...

    def destroy(self, vm: str) -> None:
        """Stop at once (pull the plug); nothing happens if it does not run."""
        ...

    def reboot(self, vm: str) -> None: ...

    def undefine(self, vm: str) -> None:
        """Forget the domain (stopping it first); nothing happens if it is unknown."""
        ...

    def set_nics(self, vm: str, nics: list[Nic]) -> bool:
        """Hot-plug the NICs a running domain lacks and unplug those it should not have
        (by MAC; its definition follows); whether anything changed."""
        ...

    def ensure_secret(self, usage: str, value: str) -> None:
        """Hold the secret (base64 ``value``) that disks refer to by ``usage``."""
        ...

    def stats(self) -> dict[str, DomainStats]:
        """What each running domain has used, by VM uuid, in one call that does not wait for
        a busy domain (one being migrated): its figures may then be missing, never late."""
        ...

    def migrate(self, vm: str, target: MigrationTarget, limits: MigrationLimits) -> None:
        """Live-migrate the domain to ``target`` (peer to peer, persistent there, undefined
        here; a paused domain stays paused there), blocking until it is over; HypervisorError
        if it failed or was aborted (the domain then is here still, as it was, unless the
        error says otherwise)."""
        ...

    def migration_progress(self, vm: str) -> float | None:
        """Percent of the domain's memory sent by its migration under way; None: none."""
        ...

    def abort_migration(self, vm: str) -> None:
        """Abort the domain's migration under way, if any."""
        ...

    def peer_domain(self, uri: str, vm: str) -> Domain | None:
        """The domain as another host's libvirtd (at ``uri``) has it; Unreachable if that
        libvirtd does not answer."""
        ...

    def migration_done(self, vm: str, uri: str = "") -> MigrationDone | None:
        """What the domain's last completed incoming migration took, as the libvirtd that
        received it (this one, or the one at ``uri``) counted it; None if it does not know."""
        ...


def stats_from_record(record: dict[str, Any]) -> DomainStats:
    """libvirt's typed-parameter record (``cpu.time`` ns, ``balloon.*`` KiB, ``block.<i>.*``,
    ``net.<i>.*``) as DomainStats; a figure the record lacks counts 0."""

    def total(group: str, field: str) -> float:
        count = record.get(f"{group}.count", 0)
        return float(sum(record.get(f"{group}.{i}.{field}", 0) for i in range(count)))

    return DomainStats(
        cpu_seconds=record.get("cpu.time", 0) / 1e9,
        vcpus=int(record.get("vcpu.current", 0)),
        memory_bytes=record.get("balloon.current", record.get("balloon.maximum", 0)) * 1024.0,
        memory_rss_bytes=record.get("balloon.rss", 0) * 1024.0,
        disk_read_bytes=total("block", "rd.bytes"),
        disk_write_bytes=total("block", "wr.bytes"),
        disk_reads=total("block", "rd.reqs"),
        disk_writes=total("block", "wr.reqs"),
        disk_allocation_bytes=total("block", "allocation"),
        net_rx_bytes=total("net", "rx.bytes"),
        net_tx_bytes=total("net", "tx.bytes"),
    )


def open_hypervisor(settings: Settings) -> Hypervisor:
    if settings.hypervisor == "libvirt":
        from ucloud.host.libvirt_driver import LibvirtHypervisor

        return LibvirtHypervisor(settings)
    if settings.hypervisor == "fake":
        from ucloud.host.fake_driver import FakeHypervisor

        return FakeHypervisor()
    raise ValueError(f"unknown hypervisor {settings.hypervisor!r}: use 'libvirt' or 'fake'")
