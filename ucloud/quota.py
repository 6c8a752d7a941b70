"""Per-user quotas: what each user may hold, what they hold now, and the one rule that checks it.

A user's usage is a record of its own (``quotausage/<realm>/<name>``), written by the API in
the same etcd transaction as the change that alters it, compare-and-swapped: two requests
racing for the last free slot both read the same usage, and only one transaction succeeds (the
other reads again and is refused). What counts is computed from ``desired`` fields alone, which
only the API writes, so no other daemon ever has to touch usage:

- ``vms``, ``disk``: every VM not asked to be deleted (its disks: ``ssd`` + ``hdd``);
- ``cpu``, ``ram``: VMs that should run (desired running or suspended): a stopped VM holds its
  disk but no CPU or memory, so starting one is checked like creating one;
- ``images``: images not asked to be deleted;
- ``networks``: networks, but those whose deletion was accepted while VMs were still on them
  (their owner was deleted; the scheduler removes them when their last VM goes). A network
  marked ``deleting`` only for the moment a deletion checks for attached VMs still counts:
  its deletion is accepted, and usage released, in the transaction that deletes it. Shared
  networks count against the administrator who created them, like anything else.

Usage is released when the API accepts a deletion, not when a host finishes it: from then on
the VM, image or network only waits for its storage to go, and nothing can bring it back. A recount
(``recount``, run by the scheduler's leader) recomputes usage from the objects and repairs any
record that disagrees, so a usage that drifted (a bug, a hand edit, a record from before quotas)
does not stay wrong.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from ucloud.config import Settings
from ucloud.models import VM, Desired, Image, ImageDesired, Network, PerUser, Stored
from ucloud.store import Conflict, Guard, Store, Versioned

log = logging.getLogger(__name__)

Owner = tuple[str, str]  # (realm, name)

RESOURCES = ("vms", "cpu", "ram", "disk", "networks", "images")
UNITS = {"ram": " GiB", "disk": " GiB"}
UNLIMITED = -1


class Amounts(BaseModel):
    """An amount of each resource: a usage, a change of usage, or limits (-1: no limit)."""

    model_config = ConfigDict(extra="forbid")
    vms: int = 0
    cpu: int = 0
    ram: float = 0.0  # GiB
    disk: float = 0.0  # GiB
    networks: int = 0
    images: int = 0

    def __add__(self, other: Amounts) -> Amounts:
        return Amounts(**{r: getattr(self, r) + getattr(other, r) for r in RESOURCES})

    def __sub__(self, other: Amounts) -> Amounts:
        return Amounts(**{r: getattr(self, r) - getattr(other, r) for r in RESOURCES})

    def is_zero(self) -> bool:
        return all(getattr(self, r) == 0 for r in RESOURCES)

    def rounded(self) -> Amounts:
        """Sums of float GiB drift by a few ulps: keep them comparable to a recount."""
        return self.model_copy(update={"ram": round(self.ram, 6), "disk": round(self.disk, 6)})


class Usage(PerUser):
    """What a user holds now: written only by the API (and repaired by the recount)."""

    kind: ClassVar[str] = "quotausage"

    used: Amounts = Field(default_factory=Amounts)


class Limits(BaseModel):
    """An administrator's overrides of the default limits; None: the default (a setting)."""

    model_config = ConfigDict(extra="forbid")
    vms: int | None = Field(None, ge=UNLIMITED)
    cpu: int | None = Field(None, ge=UNLIMITED)
    ram: float | None = Field(None, ge=UNLIMITED)
    disk: float | None = Field(None, ge=UNLIMITED)
    networks: int | None = Field(None, ge=UNLIMITED)
    images: int | None = Field(None, ge=UNLIMITED)


class Quota(PerUser):
    """A user's own limits, set by administrators; a user without one has the defaults."""

    kind: ClassVar[str] = "quota"

    limits: Limits = Field(default_factory=Limits)


class QuotaExceeded(Exception):
    """A change that would take a user past a limit; the message names the limit and usage."""


# --- what counts ------------------------------------------------------------------------------


def of_vm(vm: VM | None) -> Amounts:
    if vm is None or vm.desired == Desired.DELETED:
        return Amounts()
    active = vm.desired in (Desired.RUNNING, Desired.SUSPENDED)
    return Amounts(
        vms=1,
        cpu=vm.specs.cpu if active else 0,
        ram=vm.specs.ram if active else 0.0,
        disk=vm.specs.ssd + vm.specs.hdd,
    )


def of_image(image: Image | None) -> Amounts:
    if image is None or image.desired == ImageDesired.DELETED:
        return Amounts()
    return Amounts(images=1)


def of_network(network: Network | None) -> Amounts:
    if network is None or network.deleted:
        return Amounts()
    return Amounts(networks=1)


def count(
    vms: Iterable[VM], images: Iterable[Image], networks: Iterable[Network] = ()
) -> dict[Owner, Amounts]:
    """Every owner's usage, from their objects."""
    usage: dict[Owner, Amounts] = {}
    for amounts, owner in (
        [(of_vm(v), (v.owner_realm, v.owner)) for v in vms]
        + [(of_image(i), (i.owner_realm, i.owner)) for i in images]
        + [(of_network(n), (n.owner_realm, n.owner)) for n in networks]
    ):
        usage[owner] = usage.get(owner, Amounts()) + amounts
    return {owner: amounts.rounded() for owner, amounts in usage.items()}


def defaults(settings: Settings) -> Amounts:
    return Amounts(**{r: getattr(settings, f"quota_{r}") for r in RESOURCES})


def effective(settings: Settings, quota: Quota | None) -> Amounts:
    """A user's limits: their overrides where set, else the defaults."""
    base = defaults(settings)
    if quota is None:
        return base
    overrides = {r: v for r in RESOURCES if (v := getattr(quota.limits, r)) is not None}
    return base.model_copy(update=overrides)


def check(used: Amounts, change: Amounts, limits: Amounts) -> None:
    """QuotaExceeded if ``change`` takes any resource it increases past its limit. A resource
    it does not increase is never refused: a user over a lowered limit may still stop and
    delete, and change what stays within it."""
    over = []
    for r in RESOURCES:
        more, now, limit = getattr(change, r), getattr(used, r), getattr(limits, r)
        if more > 0 and limit != UNLIMITED and now + more > limit + 1e-9:
            unit = UNITS.get(r, "")
            amounts = f"{now:g}{unit} in use, this needs {more:g}{unit} more"
            over.append(f"{r} limit is {limit:g}{unit}, {amounts}")
    if over:
        raise QuotaExceeded(
            f"quota exceeded: {'; '.join(over)} (ask an administrator for a higher limit, or "
            "free some)"
        )


# --- charging a change ------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """Writes to make together (``was`` None: the object must not exist yet), objects to
    delete (as read) with them, and the change of usage they make for their owner."""

    writes: Sequence[tuple[Stored, Versioned[Any] | None]]
    change: Amounts
    deletes: Sequence[Versioned[Any]] = ()
    # Objects the writes depend on, compared unchanged (the networks a new VM's ports are
    # on), and index entries that must not exist (its ports' claims): see Store.commit.
    unchanged: Sequence[Versioned[Any]] = ()
    absent: Sequence[str] = ()


def charge(
    store: Store, settings: Settings, owner: Owner, plan: Callable[[], Plan | None]
) -> int | None:
    """Make ``plan``'s writes and the owner's usage change in one transaction, if within the
    owner's limits; retried on any conflict, with ``plan`` called again on fresh reads.

    ``plan`` returns None to write nothing (and raise to refuse). Returns the revision of the
    transaction, or None. QuotaExceeded when over a limit (nothing written); store.Conflict
    when the objects kept changing."""
    realm, name = owner
    limits: Amounts | None = None  # read once: a limit set meanwhile applies from the next
    for _ in range(100):
        planned = plan()
        if planned is None:
            return None
        writes = list(planned.writes)
        change = planned.change.rounded()
        if not change.is_zero():
            found = store.get(Usage, f"{realm}/{name}")
            usage = Usage(name=name, realm=realm, used=current(store, owner, found))
            if limits is None:
                override = store.get(Quota, f"{realm}/{name}")
                limits = effective(settings, override.value if override else None)
            check(usage.used, change, limits)
            usage.used = (usage.used + change).rounded()
            writes.append((usage, found))
        revision = store.commit(
            swap=writes,
            delete=planned.deletes,
            unchanged=planned.unchanged,
            absent=planned.absent,
        )
        if revision is not None:
            return revision
    raise Conflict(f"the objects of {realm}/{name} kept changing; try again")


def current(store: Store, owner: Owner, found: Versioned[Usage] | None) -> Amounts:
    """The owner's usage: its record, or (none yet: a user from before quotas, or one who
    never held anything) counted from the objects. A usage created from a count is written
    with 'must not exist' as its compare, so a concurrent change retries."""
    if found is not None:
        return found.value.used
    return used_by(store, owner)


def used_by(store: Store, owner: Owner) -> Amounts:
    vms, _ = store.list(VM)
    images, _ = store.list(Image)
    networks, _ = store.list(Network)

    def mine(objects: dict[str, Versioned[Any]]) -> list[Any]:
        return [o.value for o in objects.values() if (o.value.owner_realm, o.value.owner) == owner]

    owned = count(mine(vms), mine(images), mine(networks))
    return owned.get(owner, Amounts())


def show(store: Store, settings: Settings, owner: Owner) -> tuple[Amounts, Amounts, Limits]:
    """(limits in effect, usage, the administrator's overrides) of ``owner``."""
    realm, name = owner
    found = store.get(Usage, f"{realm}/{name}")
    override = store.get(Quota, f"{realm}/{name}")
    quota = override.value if override else None
    return (
        effective(settings, quota),
        current(store, owner, found),
        quota.limits if quota else Limits(),
    )


# --- the recount ------------------------------------------------------------------------------


def recount(store: Store, guard: Guard | None = None) -> int:
    """Make every usage record agree with the objects; return how many were wrong.

    Safe beside the API's writes: VMs are listed first, at revision R. Every change that alters
    a usage rewrites that usage record in its own transaction, so a record unchanged since R
    (mod_revision <= R) saw no such change after R, and the count agrees with it unless it is
    wrong. Such a record is compare-and-swapped; one changed after R is left for the next
    recount. (Images and networks are listed after R: a change to them after R moved the record
    past R.)"""
    vms, revision = store.list(VM)
    images, _ = store.list(Image)
    networks, _ = store.list(Network)
    usages, _ = store.list(Usage)
    counted = count(
        (v.value for v in vms.values()),
        (i.value for i in images.values()),
        (n.value for n in networks.values()),
    )
    recorded = {(u.value.realm, u.value.name): u for u in usages.values()}
    repaired = 0
    for owner in set(counted) | set(recorded):
        found = recorded.get(owner)
        right = counted.get(owner, Amounts())
        if found is not None and (
            found.mod_revision > revision or found.value.used.rounded() == right
        ):
            continue
        if found is None and right.is_zero():
            continue
        realm, name = owner
        usage = Usage(name=name, realm=realm, used=right)
        if store.swap_many([(usage, found)], guard) is None:
            continue  # changed meanwhile: the next recount looks again
        if found is None:  # a user from before quotas: not wrong, only not recorded yet
            log.info("usage of %s/%s recorded: %s", realm, name, right.model_dump())
            continue
        repaired += 1
        log.warning(
            "usage of %s/%s was %s; recounted: %s",
            realm,
            name,
            found.value.used.model_dump(),
            right.model_dump(),
        )
    return repaired
