"""Typed objects stored in etcd, and the VM state machine.

Every object is one JSON value under ``<prefix>/<kind>/<id>``. ``desired`` fields are written
only by the API (what the user asked); ``status`` fields only by the scheduler and host agents
(what is true). See docs/design-decisions.md for the transitions.
"""

from __future__ import annotations

import re
import time
import uuid
from enum import StrEnum
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

EVENT_LOG_LENGTH = 20


def now() -> float:
    return time.time()


def new_id() -> str:
    return str(uuid.uuid4())


class Stored(BaseModel):
    """Base of every stored object: ``kind`` names its etcd folder, ``id`` its key in it."""

    model_config = ConfigDict(extra="ignore", validate_assignment=True)
    kind: ClassVar[str]
    id_parts: ClassVar[int] = 1  # '/'-separated parts of an id (a key below the kind's folder)

    @property
    def id(self) -> str:
        raise NotImplementedError

    @classmethod
    def is_id(cls, id: str) -> bool:
        """Whether ``id`` can be an id of this kind: a key of its folder, not a folder."""
        parts = id.split("/")
        return len(parts) == cls.id_parts and all(parts)

    def index_keys(self) -> tuple[str, ...]:
        """The index entries (keys below the store's prefix) that exist exactly while this
        object is stored as it is now. The store puts and deletes them in the same transaction
        as the object itself, so an index never disagrees with the records. None by default."""
        return ()


# --- VMs --------------------------------------------------------------------------------------

PLACEMENT = "placement"  # the placement index: <prefix>/placement/<host>/<vm uuid>


def placement_folder(host: str) -> str:
    """The folder (below the store's prefix) of the VMs placed on ``host``."""
    return f"{PLACEMENT}/{host}/"


def placement_key(host: str, vm: str) -> str:
    return placement_folder(host) + vm


class Desired(StrEnum):
    RUNNING = "running"
    SUSPENDED = "suspended"
    STOPPED = "stopped"
    DELETED = "deleted"


class Status(StrEnum):
    PENDING = "PENDING"  # wants a host, has none
    SCHEDULED = "SCHEDULED"  # placed on a host, not yet created there
    CREATING = "CREATING"
    RUNNING = "RUNNING"
    SUSPENDED = "SUSPENDED"
    STOPPED = "STOPPED"
    KILLED = "KILLED"  # should run, does not: its QEMU or its host died
    ERROR = "ERROR"
    DELETING = "DELETING"


class Action(StrEnum):
    START = "start"
    STOP = "stop"
    SUSPEND = "suspend"
    RESUME = "resume"
    REBOOT = "reboot"
    DELETE = "delete"


# Which statuses each action applies to. Anything else is a 409 that names the status.
ACTION_ALLOWED: dict[Action, frozenset[Status]] = {
    Action.START: frozenset({Status.STOPPED, Status.ERROR}),
    Action.STOP: frozenset(
        {
            Status.PENDING,
            Status.SCHEDULED,
            Status.CREATING,
            Status.RUNNING,
            Status.SUSPENDED,
            Status.KILLED,
            Status.ERROR,
        }
    ),
    Action.SUSPEND: frozenset({Status.RUNNING}),
    Action.RESUME: frozenset({Status.SUSPENDED}),
    Action.REBOOT: frozenset({Status.RUNNING}),
    Action.DELETE: frozenset(set(Status) - {Status.DELETING}),
}

# What each action asks for. Reboot keeps ``desired`` and bumps ``reboot_seq`` instead.
ACTION_DESIRED: dict[Action, Desired] = {
    Action.START: Desired.RUNNING,
    Action.STOP: Desired.STOPPED,
    Action.SUSPEND: Desired.SUSPENDED,
    Action.RESUME: Desired.RUNNING,
    Action.DELETE: Desired.DELETED,
}

# The desired state an action must not contradict while it is still being carried out:
# e.g. suspending a VM that is being stopped is refused rather than silently reordered.
ACTION_CONFLICTS: dict[Action, frozenset[Desired]] = {
    Action.START: frozenset({Desired.DELETED}),
    Action.STOP: frozenset({Desired.DELETED}),
    Action.SUSPEND: frozenset({Desired.STOPPED, Desired.DELETED}),
    Action.RESUME: frozenset({Desired.STOPPED, Desired.DELETED}),
    Action.REBOOT: frozenset({Desired.STOPPED, Desired.SUSPENDED, Desired.DELETED}),
    Action.DELETE: frozenset(),
}


class TransitionError(Exception):
    """An action that cannot apply to a VM in its current state (the API answers 409)."""


class Specs(BaseModel):
    """A VM's size, or a host's capacity. ``ram``, ``hdd`` and ``ssd`` are in GiB."""

    model_config = ConfigDict(extra="forbid")
    cpu: int = Field(ge=0, le=4096)
    ram: float = Field(ge=0, le=1 << 20)
    hdd: float = Field(0, ge=0, le=1 << 30)
    ssd: float = Field(0, ge=0, le=1 << 30)

    @property
    def disk(self) -> float:
        return self.hdd + self.ssd

    def __add__(self, other: Specs) -> Specs:
        return Specs(
            cpu=self.cpu + other.cpu,
            ram=self.ram + other.ram,
            hdd=self.hdd + other.hdd,
            ssd=self.ssd + other.ssd,
        )

    def __sub__(self, other: Specs) -> Specs:
        return Specs.model_construct(
            cpu=self.cpu - other.cpu,
            ram=self.ram - other.ram,
            hdd=self.hdd - other.hdd,
            ssd=self.ssd - other.ssd,
        )


ZERO = Specs(cpu=0, ram=0)


class Event(BaseModel):
    time: float = Field(default_factory=now)
    by: str
    message: str


class Port(BaseModel):
    """A VM's NIC on a network: its MAC and addresses stay with the VM wherever it runs."""

    network: str  # the network's uuid
    mac: str
    ipv6: str
    ipv4: str = ""


def network_ports_folder(network: str) -> str:
    """The index folder of the VMs attached to ``network`` (``netport/<network>/<vm>``)."""
    return f"netport/{network}/"


def port_claims(vm: str, port: Port) -> tuple[str, ...]:
    """The index entries a port holds while its VM is stored: who is attached, and its MAC
    and IPv4 address on the network (each created only if absent: never handed out twice)."""
    claims = [network_ports_folder(port.network) + vm, f"mac/{port.network}/{port.mac}"]
    if port.ipv4:
        claims.append(f"ipv4/{port.network}/{port.ipv4}")
        # What the network's DHCP server hands out, listed by its router (keys only).
        claims.append(f"{network_leases_folder(port.network)}{port.mac},{port.ipv4}")
    return tuple(claims)


def network_leases_folder(network: str) -> str:
    """The index folder of a network's IPv4 reservations (``lease/<network>/<mac>,<ipv4>``)."""
    return f"lease/{network}/"


class FirstBoot(BaseModel):
    """What a VM's NoCloud seed is built from (``ucloud.seed``): fixed when the VM is created,
    so the seed is the same on whichever host starts it. ``hostname`` is the guest's own name
    (``VM.hostname`` is the host the VM is placed on)."""

    hostname: str
    ssh_keys: list[str] = Field(default_factory=list)  # authorized_keys lines, as created
    user_data: str = ""  # the user's, as given; never in API answers (see PUBLIC_EXCLUDE)
    user_data_size: int = 0  # bytes (UTF-8)
    user_data_sha256: str = ""


# What a VM must be to be live-migrated: settled, running or suspended. A suspended VM
# migrates paused and arrives paused (its memory with it); one on its way to another state
# is not moved.
MIGRATABLE: frozenset[tuple[Status, Desired]] = frozenset(
    {(Status.RUNNING, Desired.RUNNING), (Status.SUSPENDED, Desired.SUSPENDED)}
)


# What API answers leave out of a VM: the user-data is shown by size and hash, not echoed.
PUBLIC_EXCLUDE: dict[str, Any] = {"first_boot": {"user_data"}}


class MigrationPhase(StrEnum):
    """The steps of a live migration; each is written by compare-and-swap by the one daemon
    named, and each waits for the previous."""

    REQUESTED = "requested"  # by an administrator or a drain; target may be empty (API)
    SCHEDULED = "scheduled"  # target chosen and its capacity held there (scheduler)
    PREPARED = "prepared"  # the target built the VM's networks and seed (target agent)
    MIGRATING = "migrating"  # the source agent's libvirt is moving memory (source agent)


class Migration(BaseModel):
    """A live migration in flight. The VM stays placed on ``source`` (its ``hostname``) until
    the target runs it and the source no longer does; then whichever agent sees that first
    writes ``hostname = target`` and clears this in one compare-and-swap. A failed or aborted
    migration clears it too, with an event in the VM's log: the VM keeps running on its
    source. While it exists the VM is in the placement index of both hosts, and the
    scheduler's ledger counts it on both."""

    source: str
    target: str = ""  # empty while REQUESTED: the scheduler picks one
    phase: MigrationPhase = MigrationPhase.REQUESTED
    since: float = Field(default_factory=now)  # when it was requested
    phase_since: float = Field(default_factory=now)
    by: str = ""  # who asked: "admin <realm>/<name>", or "drain"
    progress: float = 0.0  # percent of memory sent, while MIGRATING
    abort: bool = False  # an administrator asked to abort (the source agent does it)


class VM(Stored):
    kind: ClassVar[str] = "vm"

    uuid: str = Field(default_factory=new_id)
    name: str
    owner: str
    owner_realm: str
    specs: Specs
    image: str  # image uuid
    ports: list[Port] = Field(default_factory=list)  # its NICs, in order
    created: float = Field(default_factory=now)
    # None: a VM created before first-boot seeds existed; it boots without one, as it did.
    first_boot: FirstBoot | None = None

    # Written by the API.
    desired: Desired = Desired.RUNNING
    generation: int = 0  # bumped by every accepted action
    reboot_seq: int = 0

    # Written by the scheduler and the host agents.
    status: Status = Status.PENDING
    status_since: float = Field(default_factory=now)
    reason: str = ""  # why PENDING or ERROR, for the user
    hostname: str = ""  # the host's name; empty when not placed
    observed_generation: int = 0  # the generation an ERROR or final status answers
    reboot_done: int = 0
    attempts: int = 0  # placements tried since the last success
    disk: str = ""  # the VM's disk (storage driver's name), recorded when a host claims it
    # Its empty second disk (specs.hdd GiB) and that disk's pool, recorded in the same claim,
    # so whoever fences or deletes the VM knows it too; empty: it has none (yet).
    hdd_disk: str = ""
    hdd_pool: str = ""
    # The host the VM left without a clean stop (its host died): every storage client that may
    # still have the disk open there must be fenced before the VM runs anywhere again.
    fencing: str = ""
    # A live migration in flight (see Migration); None when there is none.
    migration: Migration | None = None
    # It arrived on its host paused, by a live migration, and has not run since: written by
    # the agent that ended the migration, cleared by any status but SUSPENDED. On QEMU 7.2 a
    # second migration of such a domain fails and takes its QEMU with it (a reboot; see
    # docs/design-decisions.md, "Live migration and drains"): it moves again once resumed.
    arrived_paused: bool = False
    # The guest's SSH host keys (OpenSSH public key lines), as it printed them on its serial
    # console at first boot (cloud-init's keys_to_console): written once by its host agent,
    # never replaced: the same instance keeps its keys wherever it runs (see
    # docs/design-decisions.md, "Host keys from the console"). Empty: not seen yet.
    host_keys: list[str] = Field(default_factory=list)
    log: list[Event] = Field(default_factory=list)

    @property
    def id(self) -> str:
        return self.uuid

    def index_keys(self) -> tuple[str, ...]:
        """A placed VM's entry in its host's placement index (what its host agent follows),
        and its ports' claims (models.port_claims)."""
        placed: tuple[str, ...] = (
            (placement_key(self.hostname, self.uuid),) if self.hostname else ()
        )
        if self.migration is not None and self.migration.target:
            placed += (placement_key(self.migration.target, self.uuid),)  # the target follows it
        return placed + tuple(k for p in self.ports for k in port_claims(self.uuid, p))

    @property
    def migrating_to(self) -> str:
        """The host a migration of this VM holds its specs on besides its own host: its
        target, from when the scheduler chose it (SCHEDULED) until the migration is over (the
        VM is then placed there, or stays where it was); empty: none. What the scheduler's
        ledger and the API's allocated figures count."""
        m = self.migration
        if m is None or m.phase == MigrationPhase.REQUESTED:
            return ""
        return m.target

    @property
    def networks(self) -> list[str]:
        """The uuids of the networks its NICs are on."""
        return [p.network for p in self.ports]

    def record(self, by: str, message: str) -> None:
        """Append to the VM's short event log."""
        self.log = [*self.log, Event(by=by, message=message)][-EVENT_LOG_LENGTH:]

    def set_status(self, status: Status, by: str, reason: str = "") -> None:
        if status != self.status:
            self.status_since = now()
            message = f"{self.status} -> {status}" + (f": {reason}" if reason else "")
        else:
            message = f"still {status}" + (f": {reason}" if reason else "")
        self.status = status
        self.reason = reason
        if status != Status.SUSPENDED:
            self.arrived_paused = False  # it ran since (or will start afresh)
        self.record(by, message)

    @property
    def disk_name(self) -> str:
        """The name of the VM's disk in storage. A host records it in the compare-and-swap that
        claims the VM's first start, before it makes the disk, so whoever fences a dead host
        knows it; a record from before that rule names none, and the agent then used the uuid."""
        return self.disk or self.uuid

    @property
    def disks(self) -> list[tuple[str, str]]:
        """Every disk a host may have opened for the VM, as (name, pool; empty: the storage's
        pool of system disks): what fencing block-lists and deletion removes."""
        hdd = [(self.hdd_disk, self.hdd_pool)] if self.hdd_disk else []
        return [(self.disk_name, ""), *hdd]

    @property
    def wants_host(self) -> bool:
        """True when the scheduler should find this VM a host."""
        if (
            self.hostname
            or self.fencing
            or self.desired not in (Desired.RUNNING, Desired.SUSPENDED)
        ):
            return False
        if self.status == Status.ERROR:
            return self.generation > self.observed_generation  # the user asked for a retry
        return self.status in (Status.PENDING, Status.STOPPED, Status.KILLED)

    def unmigratable(self) -> str:
        """Why the VM cannot be live-migrated as it is now (see MIGRATABLE), or ''."""
        if not self.hostname or (self.status, self.desired) not in MIGRATABLE:
            settled = self.desired == _settled(self.status)
            doing = "" if settled else f", being {self.desired}"
            return f"it is {self.status}{doing}; only a RUNNING or SUSPENDED VM migrates"
        if self.arrived_paused:
            return (
                f"it arrived on {self.hostname} suspended, by a live migration, and has not "
                "run since; this QEMU moves it again only once it has run (resume it first)"
            )
        return ""

    def migratable(self) -> bool:
        return not self.unmigratable()

    def apply(self, action: Action, by: str) -> None:
        """Apply a user's action to ``desired``, or raise TransitionError saying why not."""
        if self.status not in ACTION_ALLOWED[action] or self.desired in ACTION_CONFLICTS[action]:
            settled = self.desired == _settled(self.status)
            doing = "" if settled else f", being {self.desired}"
            raise TransitionError(f"cannot {action} VM {self.uuid}: it is {self.status}{doing}")
        if action == Action.REBOOT:
            self.reboot_seq += 1
        else:
            self.desired = ACTION_DESIRED[action]
        self.generation += 1
        self.record(by, f"{action} requested")


def _settled(status: Status) -> Desired | None:
    """What a VM in ``status`` wants when nothing is being done to it (None: no such wish)."""
    return {
        Status.RUNNING: Desired.RUNNING,
        Status.SUSPENDED: Desired.SUSPENDED,
        Status.STOPPED: Desired.STOPPED,
        Status.PENDING: Desired.RUNNING,
        Status.SCHEDULED: Desired.RUNNING,
        Status.CREATING: Desired.RUNNING,
        Status.KILLED: Desired.RUNNING,
        Status.ERROR: Desired.RUNNING,
    }.get(status)


# --- hosts ------------------------------------------------------------------------------------


class AdminState(StrEnum):
    UP = "UP"
    MAINTENANCE = "MAINTENANCE"


class HostStatus(StrEnum):
    UP = "UP"
    DEAD = "DEAD"


class Drain(BaseModel):
    """How the drain of a host in maintenance goes (``ucloud.scheduler.drain``): written by the
    scheduler by compare-and-swap, only when a figure changes."""

    since: float = Field(default_factory=now)  # when the host went into maintenance (seen)
    total: int = 0  # VMs placed on it since the drain began (those it began with, and later)
    remaining: int = 0  # VMs still placed on it
    migrating: int = 0  # migrations out of it in flight
    blocked: int = 0  # VMs that wait because no host has room for them
    failing: int = 0  # VMs whose last migration failed, waiting to be tried again
    # Suspended VMs that arrived by a migration and have not run since (VM.arrived_paused):
    # moved once resumed.
    suspended: int = 0
    reason: str = ""  # why the first of them waits

    def describe(self) -> str:
        """What ``ucloud host list`` shows: "draining 3/5", "drained", "blocked: ..."."""
        if self.remaining == 0:
            return "drained"
        parts = [f"draining {self.total - self.remaining}/{self.total}"]
        if self.blocked:
            vms = "1 VM has" if self.blocked == 1 else f"{self.blocked} VMs have"
            parts = (
                [f"blocked: {vms} nowhere to go"]
                if not self.migrating
                else [*parts, f"{vms} nowhere to go"]
            )
        if self.failing:
            parts.append(f"{self.failing} failed to migrate, retrying")
        if self.suspended:
            parts.append(f"{self.suspended} suspended, moved once resumed")
        return ", ".join(parts)


class Host(Stored):
    kind: ClassVar[str] = "host"

    name: str
    capacity: Specs
    # Who set the capacity: "admin" (`host create`) is kept; "agent" (what the agent offers,
    # from its settings or the machine) follows the agent.
    capacity_by: Literal["agent", "admin"] = "agent"
    admin_state: AdminState = AdminState.UP  # written by administrators
    status: HostStatus = HostStatus.DEAD  # written by the scheduler, from the alive key
    status_since: float = Field(default_factory=now)
    addresses: list[str] = Field(default_factory=list)  # written by the host agent
    # Written by the host agent: its VXLAN endpoint, and the networks whose data plane it
    # holds (the other hosts of a network send its frames there; emptied by the scheduler
    # when it marks the host DEAD, so that it is a peer again only for what it publishes anew).
    underlay: str = ""
    networks: list[str] = Field(default_factory=list)
    # Written by the host agent: where other hosts send a VM live-migrating to it (the libvirt
    # URI their libvirtd reaches its libvirtd at, and the address of QEMU's migration stream);
    # empty: it takes no migrations.
    migration_uri: str = ""
    migration_address: str = ""
    # ... and where the VM's files go there: "console" (its serial log's folder), "vnc" (its
    # VNC and serial sockets' folder), "seed" (its seed ISO's folder).
    migration_paths: dict[str, str] = Field(default_factory=dict)
    # Written by the host agent: it offers to route networks (its ``network_router``); the
    # scheduler chooses each network's router among the hosts that offer it.
    router: bool = False
    # Written by administrators (`host evacuate`): when they said the host is gone for good.
    # Asked while the host is DEAD (after its status_since), it skips the grace: the scheduler
    # evacuates and fences its VMs at once. Older than status_since: a past spell, ignored.
    evacuate_requested: float = 0.0
    # Written by the scheduler while the host is in maintenance: the drain's progress.
    drain: Drain | None = None

    @property
    def evacuation_asked(self) -> bool:
        return self.status == HostStatus.DEAD and self.evacuate_requested > self.status_since

    @property
    def id(self) -> str:
        return self.name

    def why_not_router(self) -> str:
        """Why this host may not route networks now, as its record says ("" if it may)."""
        if not self.router:
            return "it does not offer to (its network_router is off)"
        if self.status != HostStatus.UP:
            return f"it is {self.status}"
        if self.admin_state != AdminState.UP:
            return "it is in maintenance"
        return ""


class Alive(Stored):
    """A host agent's liveness: exists only while the agent renews its lease."""

    kind: ClassVar[str] = "alive"

    name: str
    since: float = Field(default_factory=now)
    pid: int = 0

    @property
    def id(self) -> str:
        return self.name


class HostUsage(Stored):
    """What a host's VMs use, as its agent measured it (for ``ucloud host list``): written by
    the agent alone, bound to its lease (it goes with the host), rewritten only when it changed.
    ``cpu`` is CPUs busy on average since the last measurement; ``ram`` and ``disk`` in GiB."""

    kind: ClassVar[str] = "hostusage"

    name: str
    cpu: float = 0.0
    ram: float = 0.0
    disk: float = 0.0
    vms: int = 0  # running domains measured
    measured: float = Field(default_factory=now)

    @property
    def id(self) -> str:
        return self.name


# --- images, files, networks, users ---------------------------------------------------------


class ImageStatus(StrEnum):
    """Written only by the image scanner (the API writes TO_BE_CREATED when it creates one)."""

    TO_BE_CREATED = "TO_BE_CREATED"  # asked for; no scanner has claimed it yet
    CREATING = "CREATING"  # claimed: being checked and converted (redone if the scanner died)
    CREATED = "CREATED"  # in storage with its protected snapshot: VMs can clone it
    ERROR = "ERROR"  # refused or failed, with the reason; nothing of it is left in storage
    DELETING = "DELETING"  # being removed from storage; the record goes last


class ImageDesired(StrEnum):
    """Written only by the API."""

    CREATED = "created"
    DELETED = "deleted"


class Image(Stored):
    kind: ClassVar[str] = "image"

    uuid: str = Field(default_factory=new_id)
    name: str
    owner: str
    owner_realm: str
    public: bool = False
    store: str = "images"  # the image store it was made in
    pool: str = ""  # the storage pool its store named then; empty: the image_pool setting
    file: str = ""  # uuid of the uploaded file it is made from
    url: str = ""  # or the http(s) URL the image scanner fetches it from
    sha512: str = ""  # of the file's content when the image was asked for
    created: float = Field(default_factory=now)

    # Written by the API.
    desired: ImageDesired = ImageDesired.CREATED

    # Written by the image scanner.
    status: ImageStatus = ImageStatus.TO_BE_CREATED
    status_since: float = Field(default_factory=now)
    reason: str = ""  # why ERROR (or what a transitional state waits for), for the user
    progress: float = 0.0  # percent converted, while CREATING
    size: int = 0  # virtual size in bytes, once CREATED

    @property
    def id(self) -> str:
        return self.uuid

    def set_status(self, status: ImageStatus, reason: str = "") -> None:
        if status != self.status:
            self.status_since = now()
        self.status = status
        self.reason = reason


class ImageStore(Stored):
    """Which storage pool holds the images made in a store; created by administrators. The
    store named by the image_store setting exists implicitly, with the image_pool setting."""

    kind: ClassVar[str] = "imagestore"

    name: str
    pool: str
    created: float = Field(default_factory=now)

    @property
    def id(self) -> str:
        return self.name

    @field_validator("name", "pool")
    @classmethod
    def _plain(cls, v: str) -> str:
        return check_name(v)


class File(Stored):
    """A file in a user's upload directory, as the file scanner last saw it complete."""

    kind: ClassVar[str] = "file"

    uuid: str = Field(default_factory=new_id)
    owner: str
    owner_realm: str
    name: str  # path relative to the user's directory, '/'-separated
    size: int
    sha512: str
    mtime: float  # the file's modification time (seconds since the epoch)
    removed: bool = False  # gone from the directory; kept, as images may name it
    created: float = Field(default_factory=now)  # registered
    updated: float = Field(default_factory=now)  # last hashed, or marked removed

    @property
    def id(self) -> str:
        return self.uuid


class Network(Stored):
    """A tenant network: a VXLAN segment with an IPv6 /64 and optionally an IPv4 subnet.
    Its VXLAN id and prefix are claimed by index entries (``vni/<id>``, ``prefix6/<addr>``)
    created with it, so no two networks ever share them (see ucloud/network/)."""

    kind: ClassVar[str] = "network"

    uuid: str = Field(default_factory=new_id)
    name: str
    owner: str
    owner_realm: str
    shared: bool = False  # made by an administrator: every user may attach it
    vni: int
    ipv6_prefix: str  # e.g. fd75:636c:6f75:1::/64
    ipv4_subnet: str = ""  # e.g. 10.0.0.0/24; empty: IPv6 only
    mtu: int
    created: float = Field(default_factory=now)
    # Set while it is being deleted: no VM may attach it from then on (ucloud/network/).
    deleting: bool = False
    # Its deletion was accepted while VMs were still attached (its owner was deleted with all
    # they own, VMs included): it no longer counts against a quota, and the scheduler deletes
    # it when its last VM goes. Always with ``deleting``.
    deleted: bool = False
    # The host that routes it (holds its gateway addresses, sends its router advertisements,
    # serves its DHCPv4): chosen by the scheduler, or named by an administrator; written by
    # compare-and-swap. Empty while no host may route it, and then ``router_reason`` says why.
    router: str = ""
    router_reason: str = ""

    @property
    def id(self) -> str:
        return self.uuid

    def index_keys(self) -> tuple[str, ...]:
        return (f"vni/{self.vni}", f"prefix6/{self.ipv6_prefix.split('/')[0]}")


class SSHKey(Stored):
    """A user's SSH public key, by name (``ucloud.sshkeys`` checked it)."""

    kind: ClassVar[str] = "sshkey"
    id_parts: ClassVar[int] = 3  # realm/owner/name: a user's keys are one folder

    name: str
    owner: str
    owner_realm: str
    public_key: str  # one authorized_keys line: type, base64, comment
    type: str
    bits: int
    fingerprint: str  # SHA256:..., as ssh-keygen -l prints it
    created: float = Field(default_factory=now)

    @property
    def id(self) -> str:
        return f"{self.owner_realm}/{self.owner}/{self.name}"

    @field_validator("name", "owner", "owner_realm")
    @classmethod
    def _plain(cls, v: str) -> str:
        return check_name(v)


class PerUser(Stored):
    """A record kept per user, under the user's realm/name."""

    id_parts: ClassVar[int] = 2  # realm/name

    name: str
    realm: str

    @property
    def id(self) -> str:
        return f"{self.realm}/{self.name}"

    @field_validator("name", "realm")
    @classmethod
    def _plain(cls, v: str) -> str:
        return check_name(v)


class User(PerUser):
    kind: ClassVar[str] = "user"

    totp_secret: str
    created: float = Field(default_factory=now)


# Names that become etcd key parts: letters, digits, ``-_.``, 1 to 64 characters, not starting
# with '.'. One pattern for the check and for the API's OpenAPI document (ECMA and Python read
# it alike: ASCII classes, no look-around).
NAME_PATTERN = r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$"
_NAME = re.compile(NAME_PATTERN)


def check_name(value: str) -> str:
    """``value`` if it matches NAME_PATTERN (a full match: ``$`` would allow a final newline)."""
    if _NAME.fullmatch(value) is None:
        raise ValueError("must be 1 to 64 letters, digits, '-', '_' or '.', not starting with '.'")
    return value
