"""The real hypervisor: QEMU through libvirt (KVM where /dev/kvm exists, TCG otherwise).

Domains are named ``ucloud-<vm uuid>``; the agent manages only those. Lifecycle events reach
the agent within milliseconds through libvirt's event loop; a lost connection to libvirtd is
re-opened on the next call, and every domain is then reported changed so the agent catches up.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import logging
import os
import threading
from collections.abc import Callable
from typing import Any
from xml.etree import ElementTree
from xml.sax.saxutils import escape, quoteattr

import libvirt

from ucloud.config import Settings
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

log = logging.getLogger(__name__)

PREFIX = "ucloud-"

_POWER = {
    libvirt.VIR_DOMAIN_RUNNING: Power.RUNNING,
    libvirt.VIR_DOMAIN_BLOCKED: Power.RUNNING,
    libvirt.VIR_DOMAIN_SHUTDOWN: Power.RUNNING,  # shutting down, still running
    libvirt.VIR_DOMAIN_PAUSED: Power.PAUSED,
    libvirt.VIR_DOMAIN_PMSUSPENDED: Power.PAUSED,
    libvirt.VIR_DOMAIN_SHUTOFF: Power.SHUTOFF,
    libvirt.VIR_DOMAIN_CRASHED: Power.SHUTOFF,
}


def _domain(vm: str, state: list[int]) -> Domain:
    """A domain from libvirt's [state, reason]."""
    power = _POWER.get(state[0], Power.SHUTOFF)
    migrating = state[0] == libvirt.VIR_DOMAIN_PAUSED and state[1] in _MIGRATION_PAUSES
    return Domain(vm, power, migrating)


# Why libvirt pauses a domain for a migration under way: an incoming one until it is handed
# over, a source for its last copy (or its post-copy phase, which ucloud never uses).
_MIGRATION_PAUSES = frozenset(
    {
        libvirt.VIR_DOMAIN_PAUSED_MIGRATION,
        libvirt.VIR_DOMAIN_PAUSED_POSTCOPY,
        libvirt.VIR_DOMAIN_PAUSED_POSTCOPY_FAILED,
    }
)


def detect_accel() -> str:
    """'kvm' if /dev/kvm answers KVM_GET_API_VERSION, else 'qemu' (TCG)."""
    try:
        fd = os.open("/dev/kvm", os.O_RDWR)
    except OSError:
        return "qemu"
    try:
        return "kvm" if fcntl.ioctl(fd, KVM_GET_API_VERSION) == 12 else "qemu"
    except OSError:
        return "qemu"
    finally:
        os.close(fd)


KVM_GET_API_VERSION = 0xAE00

_event_loop_started = False
_event_loop_lock = threading.Lock()


def _start_event_loop() -> None:
    """libvirt delivers events only through an event loop registered before any connection is
    opened; one per process, on its own thread."""
    global _event_loop_started
    with _event_loop_lock:
        if _event_loop_started:
            return
        libvirt.virEventRegisterDefaultImpl()
        # libvirt prints every error to stderr as well as raising it ("Domain not found" on
        # each lookup of a domain that does not exist yet): the raised error is enough.
        libvirt.registerErrorHandler(lambda _ctx, _error: None, None)

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _event_loop_started = True


class LibvirtHypervisor:
    def __init__(self, settings: Settings) -> None:
        self.uri = settings.libvirt_uri
        self.domain_type = settings.accel if settings.accel != "auto" else detect_accel()
        self._conn: libvirt.virConnect | None = None
        self._lock = threading.RLock()
        self._on_change: Callable[[str], None] = lambda vm: None

    # --- connection ----------------------------------------------------------------------------

    def connect(self, on_change: Callable[[str], None]) -> None:
        self._on_change = on_change
        _start_event_loop()
        self._connection()

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()

    def _connection(self) -> libvirt.virConnect:
        _start_event_loop()  # before any connection: a stats() call may open the first one
        with self._lock:
            if self._conn is not None:
                try:
                    if self._conn.isAlive():
                        return self._conn
                except libvirt.libvirtError:
                    pass
                self._conn = None
            try:
                conn = libvirt.open(self.uri)
            except libvirt.libvirtError as e:
                raise Unreachable(f"libvirtd at {self.uri}: {e.get_error_message()}") from e
            conn.setKeepAlive(5, 3)
            conn.registerCloseCallback(self._closed, None)
            conn.domainEventRegisterAny(
                None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._event, None
            )
            reconnected = self._conn is None and hasattr(self, "_was_connected")
            self._conn = conn
            self._was_connected = True
            log.info("connected to libvirtd at %s (domain type %s)", self.uri, self.domain_type)
        if reconnected:
            for vm in self.domains():
                self._on_change(vm)
        return conn

    def _closed(self, conn: Any, reason: int, opaque: Any) -> None:
        log.warning("connection to libvirtd closed (reason %d); will reconnect", reason)
        with self._lock:
            if self._conn is conn:
                self._conn = None

    def _event(self, conn: Any, dom: Any, event: int, detail: int, opaque: Any) -> None:
        name = dom.name()
        if name.startswith(PREFIX):
            self._on_change(name[len(PREFIX) :])

    def _call(self, what: str, action: Callable[[libvirt.virConnect], Any]) -> Any:
        conn = self._connection()
        try:
            return action(conn)
        except libvirt.libvirtError as e:
            alive = False
            with contextlib.suppress(libvirt.libvirtError):
                alive = bool(conn.isAlive())
            if not alive:
                with self._lock:
                    self._conn = None
                raise Unreachable(
                    f"libvirtd went away during {what}: {e.get_error_message()}"
                ) from e
            raise HypervisorError(f"{what}: {e.get_error_message()}") from e

    def _lookup(self, conn: libvirt.virConnect, vm: str) -> libvirt.virDomain | None:
        try:
            return conn.lookupByName(PREFIX + vm)
        except libvirt.libvirtError as e:
            if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise

    # --- queries -------------------------------------------------------------------------------

    def domains(self) -> dict[str, Domain]:
        def list_all(conn: libvirt.virConnect) -> dict[str, Domain]:
            found = {}
            for dom in conn.listAllDomains():
                name = dom.name()
                if not name.startswith(PREFIX):
                    continue
                try:
                    state = dom.state()
                except libvirt.libvirtError as e:
                    if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                        continue  # undefined while we listed
                    raise
                vm = name[len(PREFIX) :]
                found[vm] = _domain(vm, state)
            return found

        return self._call("list domains", list_all)

    def domain(self, vm: str) -> Domain | None:
        def get(conn: libvirt.virConnect) -> Domain | None:
            dom = self._lookup(conn, vm)
            if dom is None:
                return None
            try:
                return _domain(vm, dom.state())
            except libvirt.libvirtError as e:
                if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    return None  # undefined since the lookup (migrated away, deleted)
                raise

        return self._call(f"look up VM {vm}", get)

    def stats(self) -> dict[str, DomainStats]:
        # Bulk stats of the running domains in one call; NOWAIT: a domain whose monitor is
        # busy (a migration, a stuck QEMU) answers what it can at once instead of blocking
        # the whole call until its job ends.
        flags = (
            libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE
            | libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT
        )
        groups = (
            libvirt.VIR_DOMAIN_STATS_CPU_TOTAL
            | libvirt.VIR_DOMAIN_STATS_BALLOON
            | libvirt.VIR_DOMAIN_STATS_VCPU
            | libvirt.VIR_DOMAIN_STATS_INTERFACE
            | libvirt.VIR_DOMAIN_STATS_BLOCK
        )

        def collect(conn: libvirt.virConnect) -> dict[str, DomainStats]:
            found = {}
            for dom, record in conn.getAllDomainStats(groups, flags):
                name = dom.name()
                if name.startswith(PREFIX):
                    found[name[len(PREFIX) :]] = stats_from_record(record)
            return found

        return self._call("read domain statistics", collect)

    # --- actions -------------------------------------------------------------------------------

    def start(self, spec: DomainSpec) -> None:
        def start(conn: libvirt.virConnect) -> None:
            dom = self._lookup(conn, spec.vm)
            if dom is not None and dom.isActive():
                return
            dom = conn.defineXML(self.domain_xml(spec))
            dom.create()

        self._call(f"start VM {spec.vm}", start)

    def _on_domain(self, what: str, vm: str, action: Callable[[libvirt.virDomain], Any]) -> None:
        def act(conn: libvirt.virConnect) -> None:
            dom = self._lookup(conn, vm)
            if dom is not None:
                action(dom)

        self._call(f"{what} VM {vm}", act)

    def suspend(self, vm: str) -> None:
        self._on_domain(
            "suspend",
            vm,
            lambda d: d.suspend() if d.state()[0] != libvirt.VIR_DOMAIN_PAUSED else None,
        )

    def resume(self, vm: str) -> None:
        self._on_domain(
            "resume",
            vm,
            lambda d: d.resume() if d.state()[0] == libvirt.VIR_DOMAIN_PAUSED else None,
        )

    def shutdown(self, vm: str) -> None:
        self._on_domain(
            "shut down",
            vm,
            lambda d: (
                d.shutdownFlags(libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)
                if d.isActive()
                else None
            ),
        )

    def destroy(self, vm: str) -> None:
        self._on_domain("stop", vm, _gone_is_done(lambda d: d.destroy() if d.isActive() else None))

    def reboot(self, vm: str) -> None:
        # A reset works for every guest; an ACPI reboot needs the guest's cooperation.
        self._on_domain("reboot", vm, lambda d: d.reset(0))

    def undefine(self, vm: str) -> None:
        def undefine(dom: libvirt.virDomain) -> None:
            if dom.isActive():
                dom.destroy()
            dom.undefine()

        self._on_domain("undefine", vm, _gone_is_done(undefine))

    def set_nics(self, vm: str, nics: list[Nic]) -> bool:
        wanted = {n.mac: n for n in nics}

        def plug(dom: libvirt.virDomain) -> bool:
            if not dom.isActive():
                return False
            interfaces = domain_interfaces(dom.XMLDesc(0))
            have = set(interfaces)
            flags = libvirt.VIR_DOMAIN_AFFECT_LIVE | libvirt.VIR_DOMAIN_AFFECT_CONFIG
            for mac in sorted(set(wanted) - have):
                dom.attachDeviceFlags(nic_xml(wanted[mac]), flags)
                log.info("VM %s: NIC %s plugged into %s", vm, mac, wanted[mac].bridge)
            for mac in sorted(have - set(wanted)):
                # Removal completes when the guest lets go of the device (ACPI hotplug).
                dom.detachDeviceFlags(interfaces[mac], flags)
                log.info("VM %s: NIC %s unplugged", vm, mac)
            return have != set(wanted)

        def act(conn: libvirt.virConnect) -> bool:
            dom = self._lookup(conn, vm)
            return dom is not None and plug(dom)

        return bool(self._call(f"set the NICs of VM {vm}", act))

    # --- live migration ------------------------------------------------------------------------

    def migrate(self, vm: str, target: MigrationTarget, limits: MigrationLimits) -> None:
        # Peer to peer: this libvirtd drives the whole migration with the target's. Never
        # post-copy: a failure after the switch-over would lose the VM. The disks stay in Ceph
        # (no storage copy); librbd's exclusive lock moves with the VM.
        flags = (
            libvirt.VIR_MIGRATE_LIVE
            | libvirt.VIR_MIGRATE_PEER2PEER
            | libvirt.VIR_MIGRATE_PERSIST_DEST
            | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
        )
        # KVM guests only: under TCG a long throttled migration was seen to land a busy guest
        # with corrupted memory (design-decisions, "Live migration and drains"); without the
        # throttle such a migration is aborted at its timeout and the VM runs on, intact.
        if limits.auto_converge and self.domain_type == "kvm":
            flags |= libvirt.VIR_MIGRATE_AUTO_CONVERGE

        def run(conn: libvirt.virConnect) -> None:
            dom = self._lookup(conn, vm)
            if dom is None:
                raise HypervisorError(f"VM {vm} has no domain here")
            xml = retarget(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_MIGRATABLE), target)
            # A suspended VM's domain is paused: it must stay paused on the target (said
            # outright, not left to libvirt's default), its memory as it was.
            paused = dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED
            how = flags | libvirt.VIR_MIGRATE_PAUSED if paused else flags
            params: dict[str, Any] = {
                libvirt.VIR_MIGRATE_PARAM_DEST_XML: xml,
                libvirt.VIR_MIGRATE_PARAM_PERSIST_XML: xml,
            }
            if limits.bandwidth_mib:
                params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = limits.bandwidth_mib
            if target.address:
                params[libvirt.VIR_MIGRATE_PARAM_URI] = f"tcp://{_host_part(target.address)}"
            with contextlib.suppress(libvirt.libvirtError):
                dom.migrateSetMaxDowntime(limits.max_downtime_ms, 0)
            dom.migrateToURI3(target.uri, params, how)

        self._call(f"migrate VM {vm} to {target.uri}", run)

    def migration_progress(self, vm: str) -> float | None:
        def progress(conn: libvirt.virConnect) -> float | None:
            dom = self._lookup(conn, vm)
            if dom is None:
                return None
            stats = dom.jobStats()
            if stats.get("type", libvirt.VIR_DOMAIN_JOB_NONE) == libvirt.VIR_DOMAIN_JOB_NONE:
                return None
            total = stats.get("memory_total", 0)
            if not total:
                return 0.0
            return min(100.0, 100.0 * stats.get("memory_processed", 0) / total)

        return self._call(f"read the migration progress of VM {vm}", progress)

    def abort_migration(self, vm: str) -> None:
        def abort(dom: libvirt.virDomain) -> None:
            try:
                dom.abortJob()
            except libvirt.libvirtError as e:
                if e.get_error_code() != libvirt.VIR_ERR_OPERATION_INVALID:  # no job
                    raise

        self._on_domain("abort the migration of", vm, abort)

    def migration_done(self, vm: str, uri: str = "") -> MigrationDone | None:
        def read(conn: libvirt.virConnect) -> MigrationDone | None:
            dom = self._lookup(conn, vm)
            if dom is None:
                return None
            stats = dom.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
            if "time_elapsed" not in stats:
                return None
            return MigrationDone(int(stats["time_elapsed"]), int(stats.get("downtime", 0)))

        try:
            if not uri:
                return self._call(f"read the migration statistics of VM {vm}", read)
            conn = libvirt.open(uri)
            try:
                return read(conn)
            finally:
                with contextlib.suppress(libvirt.libvirtError):
                    conn.close()
        except (libvirt.libvirtError, HypervisorError) as e:
            log.info("VM %s: no statistics of its migration: %s", vm, e)
            return None

    def peer_domain(self, uri: str, vm: str) -> Domain | None:
        try:
            conn = libvirt.open(uri)
        except libvirt.libvirtError as e:
            raise Unreachable(f"libvirtd at {uri}: {e.get_error_message()}") from e
        try:
            dom = self._lookup(conn, vm)
            return None if dom is None else _domain(vm, dom.state())
        except libvirt.libvirtError as e:
            if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None  # undefined since the lookup
            raise Unreachable(f"libvirtd at {uri}: {e.get_error_message()}") from e
        finally:
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()

    def ensure_secret(self, usage: str, value: str) -> None:
        def ensure(conn: libvirt.virConnect) -> None:
            try:
                secret = conn.secretLookupByUsage(libvirt.VIR_SECRET_USAGE_TYPE_CEPH, usage)
            except libvirt.libvirtError:
                secret = conn.secretDefineXML(
                    "<secret ephemeral='no' private='yes'>"
                    f"<usage type='ceph'><name>{escape(usage)}</name></usage></secret>"
                )
            secret.setValue(base64.b64decode(value))

        self._call("define the Ceph secret", ensure)

    def domain_xml(self, spec: DomainSpec) -> str:
        # No USB controller: libvirt adds a piix3-uhci to every 'pc' domain otherwise, and
        # SeaBIOS initialises it on every boot (~0.1 CPU-second a start under TCG, more than
        # the rest of the BIOS). No VM uses USB; VNC input goes through the PS/2 keyboard and
        # mouse that the machine has anyway.
        # The serial port is a unix socket that ucloud-console-relay alone connects to (QEMU
        # takes one client at a time and drops output while none is connected); its <log> keeps
        # everything the guest printed, connected or not. VNC listens on a unix socket only:
        # nothing reaches a display without going through the relay.
        return f"""<domain type='{self.domain_type}'>
  <name>{PREFIX}{spec.vm}</name>
  <uuid>{spec.vm}</uuid>
  <memory unit='MiB'>{spec.ram_mib}</memory>
  <vcpu>{spec.cpu}</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <features><acpi/><apic/></features>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    {spec.disk_xml}{_seed_xml(spec.seed_iso)}
    {"".join(nic_xml(n) for n in spec.nics)}
    <serial type='unix'>
      <source mode='bind' path={quoteattr(spec.serial_socket)}/>
      <log file={quoteattr(spec.console_log)} append='on'/><target port='0'/>
    </serial>
    <console type='unix'>
      <source mode='bind' path={quoteattr(spec.serial_socket)}/>
      <log file={quoteattr(spec.console_log)} append='on'/><target type='serial' port='0'/>
    </console>
    <graphics type='vnc' socket={quoteattr(spec.vnc_socket)}/>
    <video><model type='vga'/></video>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>"""


def nic_xml(nic: Nic) -> str:
    # virtio: the guest's driver learns the MTU from the device (libvirt's <mtu>).
    return (
        f"<interface type='bridge'><mac address={quoteattr(nic.mac)}/>"
        f"<source bridge={quoteattr(nic.bridge)}/><model type='virtio'/>"
        f"<mtu size='{nic.mtu}'/>"
        + (f"<target dev={quoteattr(nic.tap)}/>" if nic.tap else "")
        + "</interface>"
    )


def domain_interfaces(xml: str) -> dict[str, str]:
    """A domain's NICs by MAC, each as its XML (what a detach names: libvirt wants the whole
    element, source included)."""
    found = {}
    for interface in ElementTree.fromstring(xml).findall("./devices/interface"):
        mac = interface.find("mac")
        if mac is not None and mac.get("address"):
            found[mac.get("address", "").lower()] = ElementTree.tostring(interface, "unicode")
    return found


def _seed_xml(path: str) -> str:
    """The NoCloud seed as a read-only IDE CD-ROM: the 'pc' machine has an IDE controller, and
    every guest kernel reads one (ata_piix, sr_mod, isofs)."""
    if not path:
        return ""
    return (
        "\n    <disk type='file' device='cdrom'><driver name='qemu' type='raw'/>"
        f"<source file={quoteattr(path)}/><target dev='hdc' bus='ide'/><readonly/></disk>"
    )


def _gone_is_done(
    action: Callable[[libvirt.virDomain], Any],
) -> Callable[[libvirt.virDomain], Any]:
    """``action`` (a stop or an undefine) on a domain that may vanish meanwhile (a migration
    that ended, libvirt's clean-up of a failed one): gone is what it wanted."""

    def act(dom: libvirt.virDomain) -> Any:
        try:
            return action(dom)
        except libvirt.libvirtError as e:
            if e.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                raise
            return None

    return act


def _host_part(address: str) -> str:
    """An address for a tcp:// URI (an IPv6 address in brackets)."""
    return f"[{address}]" if ":" in address and not address.startswith("[") else address


def retarget(xml: str, target: MigrationTarget) -> str:
    """The domain's migratable XML with the paths of the target host: its serial socket and
    log, its VNC socket, its seed. Everything else (devices, their addresses, the disks in
    Ceph) stays as it is: the target's QEMU must be the same machine."""
    root = ElementTree.fromstring(xml)
    for kind in ("serial", "console"):
        for dev in root.findall(f"./devices/{kind}"):
            source = dev.find("source")
            if source is not None and source.get("path"):
                source.set("path", target.serial_socket)
            log_el = dev.find("log")
            if log_el is not None:
                log_el.set("file", target.console_log)
    for graphics in root.findall("./devices/graphics[@type='vnc']"):
        if graphics.get("socket"):
            graphics.set("socket", target.vnc_socket)
        for listen in graphics.findall("listen[@type='socket']"):
            listen.set("socket", target.vnc_socket)
    for cdrom in root.findall("./devices/disk[@device='cdrom']"):
        source = cdrom.find("source")
        if source is not None and target.seed_iso:
            source.set("file", target.seed_iso)
    return ElementTree.tostring(root, "unicode")
