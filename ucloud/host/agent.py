"""The host agent's reconcile loop.

It registers its host, keeps the host's alive key on a lease, mirrors the VMs placed on it
(following its folder of the placement index, and each VM it names: never the other hosts'
VMs), and reconciles each VM placed on it (and each local domain) towards the VM's desired
state, one step per pass, in a keyed work queue: a VM is never handled by two workers at once.

Safety rules (docs/design-decisions.md, "No VM runs twice"):
- a domain is started only after a compare-and-swap has moved its VM to CREATING, and that
  same write names the VM's disk: the scheduler cannot have moved the VM elsewhere in
  between, and whoever fences this host later knows which disk to fence;
- a domain is started only while the host's lease surely lasts ``host_start_margin`` more
  seconds, and only after every other storage client that has its disk open was fenced;
- a local domain whose VM is deleted or placed on another host is destroyed;
- an agent whose lease is lost, or may be (it was paused past its expiry), destroys its
  domains before it does anything else: the cluster is about to start them elsewhere.
"""

from __future__ import annotations

import logging
import os
import shlex
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ucloud import consoles, failpoints, proc, retry, sdnotify, sshkeys
from ucloud.config import Settings
from ucloud.host import disks, metrics
from ucloud.host.hypervisor import (
    Domain,
    DomainSpec,
    Hypervisor,
    HypervisorError,
    Power,
    Unreachable,
)
from ucloud.host.migration import Migrations, host_paths, incoming_to
from ucloud.host.netplane import NetPlane, NetPlaneError, NoNetPlane, open_netplane
from ucloud.host.networks import NetworkSync
from ucloud.host.seeds import Seeds
from ucloud.mirror import Mirror
from ucloud.models import (
    VM,
    Alive,
    Desired,
    Host,
    Image,
    Port,
    Specs,
    Status,
    new_id,
    placement_folder,
)
from ucloud.retry import Retry
from ucloud.storage import Storage, StorageError
from ucloud.store import Change, Conflict, KeepAlive, Snapshot, Store, Unavailable, Versioned
from ucloud.workqueue import WorkQueue

log = logging.getLogger(__name__)

# Host keys from the console (see learn_host_keys): how much of a console log is read (cloud-init
# prints them at the end of first boot: on the test bed's Debian guest, at 55 KiB of log), how
# often a running VM's log is looked at, and for how long after it began running
# (a TCG guest can take minutes to reach cloud-init; the resync looks later still).
HOST_KEYS_SCAN = 1 << 20
HOST_KEYS_POLL = 5.0
HOST_KEYS_WATCH = 1800.0


class HostAgent:
    def __init__(
        self,
        store: Store,
        settings: Settings,
        hypervisor: Hypervisor,
        storage: Storage,
        netplane: NetPlane | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.hv = hypervisor
        self.storage = storage
        self.name = settings.hostname
        self.me = f"host {self.name}"
        self.vms: Mirror[VM] = Mirror()
        self.lock = threading.Lock()  # guards vms (the follower writes, workers read)
        self.queue = WorkQueue(retry.Backoff.of(settings))
        self.crashes: dict[str, list[float]] = {}
        self.restart_at: dict[str, float] = {}
        self.stopping_since: dict[str, float] = {}
        self.keepalive: KeepAlive | None = None
        self.lease_lost = threading.Event()
        self.lease_lock = threading.Lock()
        self.domains_stopped = False  # since the lease was lost
        # Domains this agent stopped because its lease was lost: if their VMs are still placed
        # here when it holds a lease again, they are restarted, and that is no crash.
        self.stopped_for_lease: set[str] = set()
        # The size of each VM's console log when it was last read for host keys: read again
        # only once it grew.
        self.console_read: dict[str, int] = {}
        self.host_keys_due: dict[str, float] = {}  # when the next look is queued for
        if netplane is None:
            netplane = open_netplane(settings) if settings.hypervisor == "libvirt" else NoNetPlane()
        self.networks = NetworkSync(store, settings, netplane, self.local_ports)
        self.console_dir = Path(settings.state_dir) / "console"
        self.vnc_dir = Path(settings.vnc_dir)
        self.seeds = Seeds(Path(settings.state_dir) / "seed")
        self.migrations = Migrations(self)
        if len(str(self.vnc_socket(new_id()))) > 107:
            raise ValueError(f"vnc_dir {settings.vnc_dir!r} is too long for a socket path")

    # --- lifecycle -----------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        self.console_dir.mkdir(parents=True, exist_ok=True)
        self.vnc_dir.mkdir(parents=True, exist_ok=True)
        self._retry(stop, "connect to the hypervisor", self.connect_hypervisor)
        self._retry(stop, "register the host", self.register)
        self._retry(stop, "take the host's lease", self.take_lease)
        self.networks.start()
        # The VMs placed here, and the change that takes each elsewhere (see IndexFollower).
        follower = self.store.follow_index(VM, placement_folder(self.name), self.deliver)
        workers = self.queue.run_workers(self.settings.host_workers, self.reconcile_or_retry, "vm")
        log.info("host %s is up", self.name)
        sdnotify.notify("READY=1")
        next_resync = time.monotonic() + self.settings.host_resync
        try:
            while not stop.wait(1.0):
                # The unit's watchdog (WatchdogSec) restarts an agent whose loop stops.
                sdnotify.notify("WATCHDOG=1")
                if self.lease_lost.is_set():
                    self._retry(stop, "take the host's lease again", self.take_lease)
                    self.resync()
                if time.monotonic() >= next_resync:
                    next_resync = time.monotonic() + self.settings.host_resync
                    self.resync()
        finally:
            follower.stop()
            self.networks.stop()
            self.queue.close()
            for w in workers:
                w.join(timeout=self.settings.shutdown_timeout)
            if self.keepalive is not None:
                # The lease is left to expire, not revoked: the VMs keep running while the
                # agent is away, and an agent back within the TTL finds its host still UP.
                self.keepalive.stop()
            self.hv.close()

    def _retry(self, stop: threading.Event, what: str, action: Callable[[], None]) -> None:
        retry.until_done(
            stop,
            what,
            action,
            self.queue.backoff,
            (Unavailable, Unreachable, StorageError),
            waiting=lambda: sdnotify.notify("WATCHDOG=1"),  # waiting is not hanging
        )

    def connect_hypervisor(self) -> None:
        self.hv.connect(self.queue.add)
        secret = self.storage.libvirt_secret()
        if secret is not None:
            self.hv.ensure_secret(*secret)

    def register(self) -> None:
        capacity = detect_capacity(self.settings)
        uri, address = migration_endpoint(self.settings)
        paths = host_paths(self.console_dir, self.vnc_dir, self.seeds.dir)

        def change(host: Host) -> bool:
            # Where other hosts send a VM live-migrating here, and where its files go.
            published = (host.migration_uri, host.migration_address, host.migration_paths)
            changed = published != (uri, address, paths)
            host.migration_uri, host.migration_address, host.migration_paths = uri, address, paths
            if host.capacity_by == "admin":
                log.info("host %s: keeping the capacity an administrator set", self.name)
                return changed
            if host.capacity == capacity:
                return changed
            host.capacity = capacity
            return True

        if self.store.update(Host, self.name, change) is None:
            try:
                self.store.create(
                    Host(
                        name=self.name,
                        capacity=capacity,
                        migration_uri=uri,
                        migration_address=address,
                        migration_paths=paths,
                    )
                )
            except Conflict:
                self.store.update(Host, self.name, change)

    def take_lease(self) -> None:
        keepalive = self.store.hold_lease(self.settings.host_lease_ttl, self.on_lease_lost)
        try:
            self.store.put_owned(Alive(name=self.name, pid=os.getpid()), keepalive.lease)
        except BaseException:
            keepalive.stop()
            raise
        with self.lease_lock:
            self.keepalive = keepalive
            self.domains_stopped = False
            self.lease_lost.clear()

    def lease_left(self) -> float:
        """Seconds this host's lease surely lasts (0: lost, or maybe lost)."""
        return self.keepalive.remaining() if self.keepalive is not None else 0.0

    def on_lease_lost(self) -> None:
        """The cluster now takes this host for dead and will start its VMs elsewhere: stop
        every local domain. Called by the lease's keeper and by every worker that finds the
        lease gone; it does the work until it has succeeded once for this lease."""
        with self.lease_lock:
            if not self.lease_lost.is_set():
                log.error("host %s lost its lease: stopping every local VM", self.name)
                self.lease_lost.set()
            if self.domains_stopped:
                return
            try:
                domains = self.hv.domains()
            except HypervisorError as e:
                log.error("cannot list the VMs to stop (%s); trying again", e)
                return
            failed = False
            for vm in domains:
                try:
                    self.hv.destroy(vm)
                    self.stopped_for_lease.add(vm)
                except HypervisorError as e:
                    log.error("could not stop VM %s: %s", vm, e)
                    failed = True
            self.domains_stopped = not failed

    def deliver(self, update: Snapshot[VM] | Change[VM]) -> None:
        with self.lock:
            diffs = self.vms.apply(update)
        for id, before, after in diffs:
            if (before and self.follows(before.value)) or (after and self.follows(after.value)):
                self.queue.add(id)
        if isinstance(update, Snapshot):
            self.networks.vms_listed()
        else:
            self.networks.poke()
        if isinstance(update, Snapshot):
            self.resync()

    def resync(self) -> None:
        """The safety net: look at every VM placed here and every local domain."""
        with self.lock:
            mine = [id for id, v in self.vms.items.items() if self.follows(v.value)]
        self.queue.add_all(mine)
        try:
            self.queue.add_all(self.hv.domains())
        except Unreachable:
            pass  # the reconnect reports every domain
        except HypervisorError as e:
            log.warning("could not list domains for a resync: %s", e)

    def follows(self, vm: VM) -> bool:
        """Whether this agent looks after ``vm``: placed here, or migrating here."""
        return vm.hostname == self.name or incoming_to(vm, self.name)

    # --- reconcile -----------------------------------------------------------------------------

    def reconcile_or_retry(self, id: str) -> None:
        """reconcile(); an unreachable etcd or libvirtd is a reason to retry, not an error (the
        work queue backs off, and logs anything else with its traceback)."""
        try:
            self.reconcile(id)
        except (Unavailable, Unreachable) as e:
            raise Retry(f"VM {id}: {type(e).__name__}: {e}") from e

    def reconcile(self, id: str) -> None:
        if self.lease_left() <= 0:
            # Lost, or this process was paused past its expiry: nothing here may act for the
            # host until the domains are gone and a new lease is held.
            self.on_lease_lost()
            self.queue.add_after(id, 1.0)
            return
        with self.lock:
            found = self.vms.get(id)
        dom = self.hv.domain(id)
        if found is not None and incoming_to(found.value, self.name):
            self.migrations.incoming(found, dom)  # its incoming domain is not a stray
            return
        if found is None or found.value.hostname != self.name:
            if dom is not None:
                where = (
                    f"placed on {found.value.hostname}"
                    if found and found.value.hostname
                    else "not placed here"
                )
                log.warning("destroying local domain of VM %s: it is %s", id, where)
                self.hv.undefine(id)
                self.networks.poke()
            self.seeds.remove(id)
            self.stopped_for_lease.discard(id)
            self.forget_console(id)
            return
        vm = found.value
        if vm.migration is not None and self.migrations.outgoing(found, dom):
            return  # migrating away: the migration's to settle first
        if vm.desired == Desired.DELETED or vm.status == Status.DELETING:
            self.delete(found)
        elif vm.status == Status.ERROR:
            return
        elif vm.desired == Desired.STOPPED:
            self.stop(found, dom)  # before create: a VM stopped while SCHEDULED never starts
        elif vm.status in (Status.SCHEDULED, Status.CREATING):
            self.create(found, dom)
        elif vm.status == Status.KILLED:
            self.restart_when_due(found)
        elif dom is None or dom.power == Power.SHUTOFF:
            self.crashed(found)
        elif vm.desired == Desired.SUSPENDED:
            self.suspend(found, dom)
        else:
            self.keep_running(found, dom)

    def write(self, found: Versioned[VM], edit: Callable[[VM], object]) -> Versioned[VM] | None:
        """Store.swap_edited, mirrored; None if the VM changed meanwhile (the watch re-queues
        it)."""
        written = self.store.swap_edited(found, edit)
        if written is not None:
            with self.lock:
                self.vms.put_local(written.value.uuid, written.value, written.mod_revision)
        return written

    def record(self, found: Versioned[VM], message: str) -> Versioned[VM] | None:
        """Add an event to the VM's log."""
        return self.write(found, lambda vm: vm.record(self.me, message))

    def transition(
        self, found: Versioned[VM], status: Status, reason: str = "", **fields: object
    ) -> Versioned[VM] | None:
        def edit(vm: VM) -> None:
            for k, v in fields.items():
                setattr(vm, k, v)
            vm.set_status(status, self.me, reason)

        return self.write(found, edit)

    # --- steps ---------------------------------------------------------------------------------

    def claim(self, found: Versioned[VM], reason: str = "") -> Versioned[VM] | None:
        """CREATING, by compare-and-swap, with the disk named in the same write."""
        return self.transition(
            found, Status.CREATING, reason, **disks.claimed(found.value, self.settings)
        )

    def create(self, found: Versioned[VM], dom: Domain | None) -> None:
        vm = found.value
        if vm.status == Status.SCHEDULED:
            claimed = self.claim(found)
            if claimed is None:
                return
            found, vm = claimed, claimed.value
        elif time.time() - vm.status_since > self.settings.creating_deadline:
            self.give_up(
                found, f"not running {self.settings.creating_deadline:g} s after creation began"
            )
            return
        if dom is None or dom.power == Power.SHUTOFF:
            started = self.start_domain(found)
            if started is None:
                return
            found, vm = started, started.value
        now = self.hv.domain(vm.uuid)
        if now is None or now.power != Power.RUNNING:
            self.queue.add_after(vm.uuid, 1.0)
            return
        if self.transition(found, Status.RUNNING, attempts=0) is not None:
            log.info("VM %s runs", vm.uuid)
            self.queue.add(vm.uuid)  # a VM meant to be suspended is suspended next

    def start_domain(self, found: Versioned[VM]) -> Versioned[VM] | None:
        """Make the disk, fence whoever else has it open, start the domain: only while the
        lease surely outlasts the start. The VM as now recorded, or None (retried later)."""
        vm = found.value
        if self.lease_left() < self.settings.host_start_margin:
            log.warning("not starting VM %s yet: the host's lease may run out", vm.uuid)
            self.queue.add_after(vm.uuid, 1.0)
            return None
        try:
            image = self.store.get(Image, vm.image)
            if image is None:
                raise StorageError(f"its image {vm.image} no longer exists")
            self.storage.create_disk(
                vm.disk_name, image.value.uuid, vm.specs.ssd, pool=image.value.pool
            )
            if vm.hdd_disk:
                self.storage.create_blank_disk(vm.hdd_disk, vm.specs.hdd, pool=vm.hdd_pool)
            # Anyone else with these disks open is a leftover (a QEMU of a host that died, or
            # of a crash here): the VM is ours by compare-and-swap.
            fenced = [
                client
                for disk, pool in vm.disks
                for client in self.storage.fence_disk(disk, pool=pool)
            ]
            if fenced:
                log.warning("VM %s: fenced stale clients of its disk: %s", vm.uuid, fenced)
                recorded = self.record(
                    found, f"fenced stale clients of its disk: {', '.join(fenced)}"
                )
                if recorded is None:
                    return None
                found = recorded
            self.networks.ensure(vm)
            self.hv.start(self.domain_spec(vm, seed_iso=self.seeds.write(vm)))
        except (StorageError, HypervisorError, NetPlaneError, OSError) as e:
            if isinstance(e, Unreachable):
                raise
            if self.record(found, f"create failed: {e}") is None:
                return None  # it changed meanwhile: the watch brings it back
            raise Retry(f"creating VM {vm.uuid} failed: {e}") from e
        failpoints.hit("agent-domain-started")
        if self.lease_left() <= 0:
            self.on_lease_lost()  # the start outlasted the lease: it must not run here
            return None
        return found

    def restart_when_due(self, found: Versioned[VM]) -> None:
        due = self.restart_at.get(found.value.uuid, 0)
        if time.monotonic() < due:
            self.queue.add_after(found.value.uuid, due - time.monotonic())
            return
        # Claim the restart first, as for a creation: see the module's safety rules.
        claimed = self.claim(found, "restarting after its QEMU died")
        if claimed is not None:
            metrics.RESTARTS.inc()
            self.create(claimed, None)

    def crashed(self, found: Versioned[VM]) -> None:
        """The VM should run here but its QEMU is gone: report, then restart with back-off.
        A death counts (and is reported) once, when its KILLED is written: a write that loses
        a race is redone when the VM comes back, and must not count the same death again."""
        vm = found.value
        if vm.uuid in self.stopped_for_lease:
            # Stopped by this agent when its lease was lost, and still placed here: no crash,
            # and no wait. Claimed like any start (see the module's safety rules).
            claimed = self.claim(found, "restarting: it was stopped when its host lost its lease")
            if claimed is not None:
                self.stopped_for_lease.discard(vm.uuid)
                self.create(claimed, None)
            return
        now = time.monotonic()
        recent = [t for t in self.crashes.get(vm.uuid, []) if now - t < self.settings.crash_window]
        recent.append(now)
        if len(recent) > self.settings.crash_limit:
            reason = f"its QEMU died {len(recent)} times within {self.settings.crash_window:g} s"
            if self.give_up(found, reason):
                metrics.CRASHES.inc()
                self.crashes.pop(vm.uuid, None)
                self.report(vm)
            return
        delay = min(2.0 ** (len(recent) - 1), 60.0)
        self.restart_at[vm.uuid] = now + delay
        if self.transition(found, Status.KILLED, f"QEMU died; restarting in {delay:g} s") is None:
            return  # it changed meanwhile: the watch brings it back; nothing was counted
        self.crashes[vm.uuid] = recent
        metrics.CRASHES.inc()
        self.report(vm)
        self.queue.add_after(vm.uuid, delay)

    def report(self, vm: VM) -> None:
        message = f"VM {vm.uuid} ({vm.name}) stopped unexpectedly on {self.name}"
        log.warning(message)
        self.notify(vm, message)

    def give_up(self, found: Versioned[VM], reason: str) -> bool:
        """ERROR, and release the host: a user's start places the VM afresh. False if the VM
        changed meanwhile (nothing written)."""
        vm = found.value
        self.hv.undefine(vm.uuid)
        if (
            self.transition(
                found, Status.ERROR, reason, hostname="", observed_generation=vm.generation
            )
            is None
        ):
            return False
        log.error("VM %s is in ERROR: %s", vm.uuid, reason)
        return True

    def keep_running(self, found: Versioned[VM], dom: Domain) -> None:
        vm = found.value
        if dom.power == Power.PAUSED:
            self.hv.resume(vm.uuid)
            self.transition(found, Status.RUNNING, "resumed")
            return
        if vm.reboot_seq > vm.reboot_done:
            self.hv.reboot(vm.uuid)

            def rebooted(vm: VM) -> None:
                vm.reboot_done = vm.reboot_seq
                vm.record(self.me, "rebooted")

            self.write(found, rebooted)
            return
        plugged = self.plug_nics(found)
        if plugged is None:
            return  # it changed meanwhile: the watch brings it back
        if vm.status != Status.RUNNING:
            self.transition(plugged, Status.RUNNING)  # the watch brings it back
            return
        self.learn_host_keys(plugged)

    def learn_host_keys(self, found: Versioned[VM]) -> None:
        """Record the guest's SSH host keys once, from what it printed on its serial console
        (cloud-init's host key block), so that ``ucloud vm ssh`` need not trust the first
        answer. Never replaced: a later boot of the same instance prints none, and a guest that
        prints other keys later (its owner regenerated them) is the owner's business."""
        vm = found.value
        if vm.host_keys:
            self.forget_console(vm.uuid)
            return
        path = self.console_log(vm.uuid)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            size = 0
        if size and size != self.console_read.get(vm.uuid):
            try:
                with path.open("rb") as f:
                    head = f.read(HOST_KEYS_SCAN).decode(errors="replace")
                keys = sshkeys.host_keys_from_console(head)
            except sshkeys.HostKeysError as e:
                log.warning("VM %s: not recording host keys from its console: %s", vm.uuid, e)
                keys = []
            except OSError as e:
                log.warning("VM %s: cannot read its console log: %s", vm.uuid, e)
                keys = []
            if keys:

                def recorded(vm: VM) -> None:
                    if not vm.host_keys:
                        vm.host_keys = [k.line for k in keys]
                        prints = ", ".join(f"{k.type} {k.fingerprint}" for k in keys)
                        vm.record(self.me, f"host keys from its console: {prints}")

                if self.write(found, recorded) is not None:
                    log.info("VM %s: recorded %d host keys from its console", vm.uuid, len(keys))
                    self.forget_console(vm.uuid)
                return  # or it changed meanwhile: the watch brings it back, to read again
            self.console_read[vm.uuid] = size
        # One look every HOST_KEYS_POLL however often the VM is reconciled meanwhile.
        now = time.monotonic()
        if time.time() - vm.status_since < HOST_KEYS_WATCH and now >= self.host_keys_due.get(
            vm.uuid, 0.0
        ):
            self.host_keys_due[vm.uuid] = now + HOST_KEYS_POLL - 0.1
            self.queue.add_after(vm.uuid, HOST_KEYS_POLL)

    def plug_nics(self, found: Versioned[VM]) -> Versioned[VM] | None:
        """A running VM's NICs follow its ports (attached or detached while it runs)."""
        vm = found.value
        try:
            self.networks.ensure(vm)
        except NetPlaneError as e:
            raise Retry(f"VM {vm.uuid}: {e}") from e
        if not self.hv.set_nics(vm.uuid, self.networks.nics(vm)):
            return found
        self.networks.poke()  # a network it left may have no VM here any more
        return self.record(found, f"NICs now: {', '.join(vm.networks) or 'none'}")

    def suspend(self, found: Versioned[VM], dom: Domain) -> None:
        if dom.power == Power.RUNNING:
            self.hv.suspend(found.value.uuid)
        if found.value.status != Status.SUSPENDED:
            self.transition(found, Status.SUSPENDED)

    def stop(self, found: Versioned[VM], dom: Domain | None) -> None:
        """ACPI shutdown, a hard stop after the deadline; then release the host."""
        vm = found.value
        if dom is not None and dom.power != Power.SHUTOFF:
            asked = self.stopping_since.get(vm.uuid)
            if dom.power == Power.PAUSED:
                self.hv.destroy(vm.uuid)  # a paused guest cannot answer ACPI
            elif asked is None:
                self.stopping_since[vm.uuid] = time.monotonic()
                self.hv.shutdown(vm.uuid)
                self.queue.add_after(vm.uuid, 1.0)
                return
            elif time.monotonic() - asked >= self.settings.shutdown_timeout:
                log.warning(
                    "VM %s ignored ACPI shutdown for %g s: stopping it hard",
                    vm.uuid,
                    self.settings.shutdown_timeout,
                )
                self.hv.destroy(vm.uuid)
            else:
                self.queue.add_after(vm.uuid, 1.0)
                return
        self.stopping_since.pop(vm.uuid, None)
        self.hv.undefine(vm.uuid)
        self.networks.poke()
        self.seeds.remove(vm.uuid)
        self.transition(
            found,
            Status.STOPPED,
            hostname="",
            observed_generation=vm.generation,
        )

    def delete(self, found: Versioned[VM]) -> None:
        vm = found.value
        if vm.status != Status.DELETING:
            found = self.transition(found, Status.DELETING) or found
            if found.value.status != Status.DELETING:
                return
        self.hv.undefine(vm.uuid)
        self.networks.poke()
        for disk, pool in vm.disks:
            self.storage.delete_disk(disk, pool=pool)
        for path in (
            self.console_log(vm.uuid),
            self.vnc_socket(vm.uuid),
            consoles.serial_socket(self.vnc_dir, vm.uuid),
            self.seeds.path(vm.uuid),
        ):
            path.unlink(missing_ok=True)
        if self.store.delete(found):
            log.info("VM %s deleted", vm.uuid)
            self.crashes.pop(vm.uuid, None)
            self.forget_console(vm.uuid)

    # --- helpers -------------------------------------------------------------------------------

    def domain_spec(self, vm: VM, seed_iso: str = "") -> DomainSpec:
        return DomainSpec(
            vm=vm.uuid,
            cpu=vm.specs.cpu,
            ram_mib=max(16, round(vm.specs.ram * 1024)),
            disk_xml=self.storage.disk_xml(vm.disk_name)
            + (
                self.storage.disk_xml(vm.hdd_disk, pool=vm.hdd_pool, target=disks.HDD_TARGET)
                if vm.hdd_disk
                else ""
            ),
            console_log=str(self.console_log(vm.uuid)),
            vnc_socket=str(self.vnc_socket(vm.uuid)),
            serial_socket=str(consoles.serial_socket(self.vnc_dir, vm.uuid)),
            nics=tuple(self.networks.nics(vm)),
            seed_iso=seed_iso,
        )

    def local_ports(self) -> list[Port]:
        """The ports of every VM placed here: the networks this host needs."""
        with self.lock:
            return [
                p for v in self.vms.items.values() if self.follows(v.value) for p in v.value.ports
            ]

    def forget_console(self, vm: str) -> None:
        self.console_read.pop(vm, None)
        self.host_keys_due.pop(vm, None)

    def console_log(self, vm: str) -> Path:
        return self.console_dir / f"{vm}.log"

    def vnc_socket(self, vm: str) -> Path:
        return consoles.vnc_socket(self.vnc_dir, vm)

    def notify(self, vm: VM, message: str) -> None:
        if not self.settings.notify_command:
            return
        try:
            proc.run([*shlex.split(self.settings.notify_command), vm.uuid, message], timeout=30)
        except (proc.CommandError, OSError) as e:
            log.error("notification command failed: %s", e)


def detect_capacity(settings: Settings) -> Specs:
    cpu = settings.host_cpu or os.cpu_count() or 1
    ram = settings.host_ram
    if not ram:
        with open("/proc/meminfo") as f:
            total_kib = next(int(line.split()[1]) for line in f if line.startswith("MemTotal:"))
        ram = max(total_kib / (1 << 20) - 1, 0.5)  # keep 1 GiB for the host itself
    return Specs(cpu=cpu, ram=round(ram, 2))


def migration_endpoint(settings: Settings) -> tuple[str, str]:
    """The libvirt URI and the migration stream's address this host publishes for peers."""
    underlay = settings.network_underlay
    uri = settings.migration_peer_uri or (f"qemu+tcp://{underlay}/system" if underlay else "")
    return uri, settings.migration_address or underlay
