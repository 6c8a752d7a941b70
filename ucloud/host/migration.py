"""Live migrations, the host agents' part (docs/design-decisions.md, "Live migration and
drains").

The target agent prepares (SCHEDULED → PREPARED): the VM's networks built here, its seed
written, and its incoming domain left alone (the VM is in this host's placement index while
it migrates, but not placed here). The source agent migrates (PREPARED → MIGRATING): libvirt's
peer-to-peer live migration on a thread of its own, its progress written into the record, an
abort when asked or past the timeout.

The end is one compare-and-swap, ``hostname = target`` and no migration, written by whichever
agent first sees the target hold the VM and the source not: run it unpaused (libvirt resumes
the target only once the source is paused for good, and undefines the source once the target
runs), or, for a suspended VM (it migrates paused, and libvirt leaves it paused on the
target), have it paused but no longer for the migration. Anything else clears the migration:
the VM stays placed on its source, whose agent restarts it there if its domain is gone
(fencing first, as for every start), and the target agent destroys what it holds of it as it
does for any VM placed elsewhere. An agent that finds a migration MIGRATING with no thread of
its own driving it (it restarted, or the other host died) settles it the same way, by asking
both libvirtds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ucloud import consoles, failpoints
from ucloud.host import metrics
from ucloud.host.hypervisor import (
    Domain,
    HypervisorError,
    MigrationLimits,
    MigrationTarget,
    Power,
    Unreachable,
)
from ucloud.host.netplane import NetPlaneError
from ucloud.models import VM, Host, HostStatus, Migration, MigrationPhase, Status
from ucloud.retry import Retry
from ucloud.store import StoreError, Versioned

if TYPE_CHECKING:
    from ucloud.host.agent import HostAgent

log = logging.getLogger(__name__)


def incoming_to(vm: VM, host: str) -> bool:
    """Whether ``vm`` is migrating to ``host`` (its target chosen: the target follows it)."""
    m = vm.migration
    return m is not None and m.target == host and m.phase != MigrationPhase.REQUESTED


def host_paths(console_dir: Path, vnc_dir: Path, seed_dir: Path) -> dict[str, str]:
    """What a host publishes of its paths (Host.migration_paths), for a source to put the
    files of a VM migrating to it where it keeps them."""
    return {"console": str(console_dir), "vnc": str(vnc_dir), "seed": str(seed_dir)}


class Migrations:
    """The agent's migrations, both ways. Runs in the agent's workers (reconcile) and on one
    thread per outgoing migration."""

    def __init__(self, agent: HostAgent) -> None:
        self.agent = agent
        self.name = agent.name
        self.me = agent.me
        self.settings = agent.settings
        self.threads: dict[str, threading.Thread] = {}  # outgoing migrations under way
        self.aborted_at_restart: set[str] = set()  # jobs a previous life of the agent began
        self.lock = threading.Lock()

    # --- reconcile: called by the agent for a VM with a migration ------------------------------

    def incoming(self, found: Versioned[VM], dom: Domain | None) -> None:
        """The VM migrates here."""
        vm = found.value
        m = vm.migration
        assert m is not None
        if m.phase == MigrationPhase.SCHEDULED:
            self.prepare(found)
        elif m.phase == MigrationPhase.MIGRATING:
            self.settle(found, source_side=False)

    def outgoing(self, found: Versioned[VM], dom: Domain | None) -> bool:
        """The VM migrates away from here; False: the agent reconciles it as usual (the
        migration has not begun)."""
        vm = found.value
        m = vm.migration
        assert m is not None
        if m.phase == MigrationPhase.MIGRATING:
            with self.lock:
                thread = self.threads.get(vm.uuid)
            if thread is None or not thread.is_alive():
                self.settle(found, source_side=True)
            return True
        if m.phase != MigrationPhase.PREPARED:
            return False
        if m.abort:
            self.end(found, None, "migration aborted before it began")
            return True
        if not vm.migratable() or dom is None or dom.power != POWER_OF[vm.status]:
            return False  # the scheduler gives it up, or the agent settles the VM first
        with self.lock:
            thread = self.threads.get(vm.uuid)
        if thread is not None and thread.is_alive():
            # The thread of its last migration is still writing that one's end.
            self.agent.queue.add_after(vm.uuid, 1.0)
            return True
        self.begin(found)
        return True

    # --- the target ----------------------------------------------------------------------------

    def prepare(self, found: Versioned[VM]) -> None:
        vm = found.value
        try:
            self.agent.networks.poke()
            self.agent.networks.ensure(vm)
            self.agent.seeds.write(vm)
        except (NetPlaneError, OSError) as e:
            raise Retry(f"VM {vm.uuid}: preparing its migration here: {e}") from e
        failpoints.hit("migration-prepared")

        def prepared(vm: VM) -> None:
            assert vm.migration is not None
            vm.migration = vm.migration.model_copy(
                update={"phase": MigrationPhase.PREPARED, "phase_since": time.time()}
            )
            vm.record(self.me, "migration target prepared (networks, seed)")

        self.agent.write(found, prepared)

    # --- the source ----------------------------------------------------------------------------

    def begin(self, found: Versioned[VM]) -> None:
        vm = found.value
        m = vm.migration
        assert m is not None
        target = self.target_of(vm.uuid, m)
        if target is None:
            raise Retry(f"VM {vm.uuid}: host {m.target} publishes no migration URI yet")

        def migrating(vm: VM) -> None:
            assert vm.migration is not None
            vm.migration = vm.migration.model_copy(
                update={"phase": MigrationPhase.MIGRATING, "phase_since": time.time()}
            )
            vm.record(self.me, f"migrating to {m.target}")

        written = self.agent.write(found, migrating)
        if written is None:
            return
        thread = threading.Thread(
            target=self.run, args=(written, target), name=f"migrate-{vm.uuid[:8]}", daemon=True
        )
        with self.lock:
            self.threads[vm.uuid] = thread
        thread.start()

    def target_of(self, vm: str, m: Migration) -> MigrationTarget | None:
        """Where the target host wants the VM: its libvirtd, its migration address, and the
        paths of the VM's files there (it published them in its host record)."""
        found = self.agent.store.get(Host, m.target)
        if found is None or not found.value.migration_uri:
            return None
        host = found.value
        paths = host.migration_paths
        return MigrationTarget(
            uri=host.migration_uri,
            address=host.migration_address,
            console_log=str(Path(paths.get("console", "")) / f"{vm}.log"),
            vnc_socket=str(consoles.vnc_socket(paths.get("vnc", ""), vm)),
            serial_socket=str(consoles.serial_socket(paths.get("vnc", ""), vm)),
            seed_iso=str(Path(paths.get("seed", "")) / f"{vm}.iso"),
        )

    def run(self, found: Versioned[VM], target: MigrationTarget) -> None:
        """The outgoing migration's thread: libvirt's call on a thread of its own, watched
        from here (progress, abort, timeout), then settled."""
        vm = found.value
        uuid = vm.uuid
        driven = vm.migration
        assert driven is not None
        timeout = max(vm.specs.ram, 1.0) * self.settings.migration_timeout_per_gib
        limits = MigrationLimits(
            self.settings.migration_max_downtime,
            self.settings.migration_auto_converge,
            self.settings.migration_bandwidth,
        )
        outcome: list[Exception | None] = []

        def call() -> None:
            try:
                self.agent.hv.migrate(uuid, target, limits)
                outcome.append(None)
            except Exception as e:
                outcome.append(e)

        started = time.monotonic()
        worker = threading.Thread(target=call, name=f"libvirt-migrate-{uuid[:8]}", daemon=True)
        worker.start()
        aborted = ""
        shown = 0.0
        try:
            while True:
                worker.join(self.settings.migration_progress_interval)
                if not worker.is_alive():
                    break
                current = self.agent.vms.get(uuid)
                m = current.value.migration if current is not None else None
                if not same(m, driven):
                    m = None  # cleared (or replaced): this one is over
                if not aborted and (m is None or m.abort):
                    aborted = "aborted by an administrator" if m else "its migration was cleared"
                elif not aborted and time.monotonic() - started > timeout:
                    aborted = f"not done within {timeout:g} s"
                if aborted:
                    self.abort(uuid, aborted)
                    continue
                shown = self.show_progress(uuid, shown)
            error = outcome[0] if outcome else HypervisorError("the migration call vanished")
            took = time.monotonic() - started
            if error is None:
                log.info("VM %s migrated to %s in %.1f s", uuid, target.uri, took)
                failpoints.hit("migration-done")
                self.settle_by_id(uuid, driven, source_side=True, done=True)
            else:
                why = aborted or str(error)
                log.warning("VM %s: migration failed after %.1f s: %s", uuid, took, why)
                self.settle_by_id(uuid, driven, source_side=True, failure=why)
        except Exception:
            log.exception("VM %s: settling its migration failed; its agent tries again", uuid)
        finally:
            with self.lock:
                if self.threads.get(uuid) is threading.current_thread():
                    del self.threads[uuid]
            self.agent.queue.add(uuid)

    def abort(self, uuid: str, why: str) -> None:
        log.warning("VM %s: aborting its migration: %s", uuid, why)
        try:
            self.agent.hv.abort_migration(uuid)
        except HypervisorError as e:
            log.error("VM %s: could not abort its migration: %s", uuid, e)

    def show_progress(self, uuid: str, shown: float) -> float:
        """Write the progress into the record when it moved by a percent or more."""
        try:
            progress = self.agent.hv.migration_progress(uuid)
        except HypervisorError:
            return shown
        if progress is None or abs(progress - shown) < 1.0:
            return shown

        def change(vm: VM) -> bool:
            m = vm.migration
            if m is None or m.phase != MigrationPhase.MIGRATING or m.source != self.name:
                return False
            vm.migration = m.model_copy(update={"progress": round(progress, 1)})
            return True

        try:
            self.update(uuid, change)
        except StoreError as e:
            log.warning("VM %s: could not write its migration's progress: %s", uuid, e)
            return shown
        return progress

    # --- the end -------------------------------------------------------------------------------

    def settle_by_id(self, uuid: str, driven: Migration, **how: object) -> None:
        """settle() on the VM as etcd has it now (retried until etcd answers), as long as it is
        still the migration this thread ``driven`` (a later one is not this thread's)."""
        for _ in range(100):
            try:
                found = self.agent.store.get(VM, uuid)
                if found is None or not same(found.value.migration, driven):
                    return
                self.settle(found, **how)  # type: ignore[arg-type]
                return
            except (StoreError, Retry, Unreachable) as e:
                log.warning("VM %s: settling its migration: %s; trying again", uuid, e)
                time.sleep(1.0)

    def settle(
        self, found: Versioned[VM], source_side: bool, done: bool = False, failure: str = ""
    ) -> None:
        """End a migration MIGRATING that nothing drives (any more), by asking both
        libvirtds: the VM stays where it runs. Raises Retry while that cannot be known yet."""
        vm = found.value
        m = vm.migration
        assert m is not None
        if (m.source if source_side else m.target) != self.name:
            return  # not this host's side of it (a later migration of the VM)
        uuid = vm.uuid
        hv = self.agent.hv
        peer = m.target if source_side else m.source
        peer_host = self.agent.store.get(Host, peer)
        peer_dead = peer_host is None or peer_host.value.status == HostStatus.DEAD
        if source_side and not done and not failure and hv.migration_progress(uuid) is not None:
            # A migration job left running by this agent's previous life: end it first.
            self.abort(uuid, "its agent restarted")
            self.aborted_at_restart.add(uuid)
            raise Retry(f"VM {uuid}: waiting for its aborted migration to end")
        if source_side and not failure and uuid in self.aborted_at_restart:
            failure = "aborted: its source's agent restarted while it ran"
        here = hv.domain(uuid)
        there: Domain | str | None
        try:
            if peer_host is None or not peer_host.value.migration_uri:
                raise Unreachable(f"host {peer} publishes no libvirt URI")
            there = hv.peer_domain(peer_host.value.migration_uri, uuid)
        except Unreachable as e:
            log.warning("VM %s: cannot ask %s's libvirtd: %s", uuid, peer, e)
            there = UNKNOWN
        src, tgt = (here, there) if source_side else (there, here)
        why = f": {failure}" if failure else ""
        # Whether it left paused: the agents write no status while it migrates, so SUSPENDED
        # now is SUSPENDED when it began (a resume asked meanwhile is done on arrival).
        paused = vm.status == Status.SUSPENDED
        if arrived(tgt, paused) or (done and tgt == UNKNOWN):
            if running(src):
                log.error("VM %s runs on %s and %s: keeping the source", uuid, m.source, m.target)
                self.end(found, None, f"migration failed: it ran on both hosts{why}")
            elif src == UNKNOWN and not peer_dead and not done:
                raise Retry(f"VM {uuid}: cannot tell whether {m.source} still runs it")
            elif present(src) and not source_side and not peer_dead:
                raise Retry(f"VM {uuid}: {m.source} has not stopped it yet")
            else:
                if source_side and present(src):
                    hv.undefine(uuid)  # paused for good here: the target runs it
                done_stats = hv.migration_done(
                    uuid, peer_host.value.migration_uri if source_side and peer_host else ""
                )
                took = (
                    f" ({done_stats.total_ms / 1000:.1f} s, paused {done_stats.downtime_ms} ms)"
                    if done_stats
                    else ""
                )
                self.end(found, m.target, f"migrated from {m.source} to {m.target}{took}", paused)
            return
        if source_side:
            if tgt == UNKNOWN and not running(src) and not peer_dead:
                raise Retry(f"VM {uuid}: cannot tell whether {m.target} runs it")
            where = (
                "it runs here"
                if running(src)
                else "it stays here, paused"
                if present(src)
                else "it is restarted here"
            )
            self.end(found, None, f"migration to {m.target} failed{why}; {where}")
            return
        # The target, the VM not (yet) handed over here: only a dead source is this agent's to
        # settle.
        if not peer_dead:
            self.agent.queue.add_after(uuid, 2.0)
            return
        hv.undefine(uuid)
        self.end(found, None, f"migration failed: {m.source} died before it was over")

    def end(
        self, found: Versioned[VM], target: str | None, message: str, paused: bool = False
    ) -> None:
        """The one write that ends a migration: placed on ``target`` (it runs there, and no
        longer on the source; ``paused``: it is there paused), or left where it was (None)."""

        def change(vm: VM) -> None:
            if target:
                vm.hostname = target
                # It has not run there: not to be moved again before it has (VM.arrived_paused).
                vm.arrived_paused = paused
            vm.migration = None
            vm.record(self.me, message)

        if self.agent.write(found, change) is None:
            raise Retry(f"VM {found.value.uuid} changed while its migration ended")
        self.aborted_at_restart.discard(found.value.uuid)
        log.info("VM %s: %s", found.value.uuid, message)
        metrics.MIGRATIONS.labels("done" if target else "failed").inc()
        self.agent.networks.poke()

    def update(self, uuid: str, change: Callable[[VM], bool]) -> None:
        written = self.agent.store.update(VM, uuid, change)
        if written is not None:
            with self.agent.lock:
                self.agent.vms.put_local(uuid, written.value, written.mod_revision)


UNKNOWN = "unknown"  # a libvirtd that did not answer


def same(m: Migration | None, other: Migration) -> bool:
    """Whether ``m`` is the migration ``other`` (as it was then: its progress may differ)."""
    return m is not None and (m.source, m.target, m.since) == (
        other.source,
        other.target,
        other.since,
    )


def running(d: Domain | str | None) -> bool:
    return isinstance(d, Domain) and d.power == Power.RUNNING


def arrived(d: Domain | str | None, paused: bool) -> bool:
    """Whether the target's domain ``d`` holds the VM handed over: running, or, for a VM that
    migrated paused, paused but no longer for the migration (libvirt's incoming domain is
    paused until the last byte is in: that one has not arrived)."""
    if running(d):
        return True
    return paused and isinstance(d, Domain) and d.power == Power.PAUSED and not d.migrating


# What a VM's domain is before it migrates (models.MIGRATABLE): a suspended one paused.
POWER_OF = {Status.RUNNING: Power.RUNNING, Status.SUSPENDED: Power.PAUSED}


def present(d: Domain | str | None) -> bool:
    return isinstance(d, Domain) and d.power != Power.SHUTOFF
