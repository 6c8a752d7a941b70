"""Chaos on the real stack (tests/failover_stack.py): while a user keeps creating VMs and
starting, stopping, suspending, resuming, rebooting and deleting them on two hosts, the
scheduler, the host agents and etcd are SIGKILLed at random moments, each several times, and
started again after a short random pause (about 150 s of it; the test takes under 3 minutes).
Then what a user or an operator would check:

- nothing lost: every VM whose creation was accepted, and that was not deleted, still exists,
  and its ``desired`` is what the last accepted action asked (every accepted action bumped its
  ``generation``: the record's is that action's);
- nothing stuck: every VM settles, within SETTLE seconds, to the status its desired state asks,
  runs (or is paused) in its own host's libvirtd alone, and is named by that host's placement
  index alone; a running VM's console shows the boot marker; and no VM went to ERROR at any
  time, unless for a reason accepted_error accepts;
- nothing left behind: once everything is deleted, no VM key or placement entry in etcd, no
  domain in either libvirtd, no disk in the pool, no QEMU;
- a VM runs once: no disk is ever open in two clients that are not block-listed (DiskWatch).

The faults follow a seeded random.Random; the seed is printed, and UCLOUD_CHAOS_SEED replays
the same faults at the same moments (the user's actions depend on the answers too, so they
follow the same draws only as long as the answers do)."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import pytest

from tests.failover_stack import (  # noqa: F401  (the fixtures libvirtds and pair)
    BOOT,
    NODES,
    SPECS,
    DiskWatch,
    Pair,
    libvirtds_fixture,
    pair_fixture,
)
from tests.servers import Etcd, wait_for
from tests.stack import Libvirtd, qemu_pid, wait_console
from ucloud.models import (
    ACTION_ALLOWED,
    ACTION_CONFLICTS,
    ACTION_DESIRED,
    VM,
    Action,
    Desired,
    HostStatus,
    Status,
    placement_folder,
)
from ucloud.store import Store, Unavailable

CHAOS_SECONDS = float(os.environ.get("UCLOUD_CHAOS_SECONDS", "150"))
MAX_VMS = 6  # VMs alive at once (not asked to be deleted): the machine is small
SETTLE = 120.0  # seconds every VM has, once the chaos ended, to reach its desired state

# How often each kind of fault happens, and the longest pause before the victim is restarted.
# etcd takes a second or two more to answer again: most of its outages outlast the hosts' leases
# (2 s in tests), and the agents then stop their domains.
FAULTS = {"etcd": ((3, 4), 4.0), "scheduler": ((3, 4), 6.0), "agent": ((3, 4), 10.0)}
# The user's actions and how often each is tried among those the VM's status allows; now and
# then one is tried whatever the status (a 409 is a fine answer).
ACTIONS = {
    Action.START: 3,
    Action.STOP: 2,
    Action.SUSPEND: 2,
    Action.RESUME: 3,
    Action.REBOOT: 2,
    Action.DELETE: 0.5,
}
BLIND = 0.2
# What each desired state settles to.
SETTLED = {
    Desired.RUNNING: Status.RUNNING,
    Desired.SUSPENDED: Status.SUSPENDED,
    Desired.STOPPED: Status.STOPPED,
}


# --- faults -----------------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class Fault:
    at: float  # seconds into the chaos
    target: str  # "etcd", "scheduler", or a host's name (its agent)
    pause: float  # seconds it stays dead


def plan_faults(rng: random.Random, seconds: float) -> list[Fault]:
    """Each kind of fault a few times, one in each equal slot of the chaos (faults of different
    kinds may overlap), each victim restarted within its slot."""
    faults = []
    for kind, ((least, most), longest) in FAULTS.items():
        count = rng.randint(least, most)
        slot = (seconds - 10) / count
        for i in range(count):
            pause = rng.uniform(0.5, longest)
            at = 5 + i * slot + rng.uniform(0, max(slot - pause - 2, 0))
            target = rng.choice(NODES) if kind == "agent" else kind
            faults.append(Fault(round(at, 1), target, round(pause, 1)))
    return sorted(faults)


class Chaos:
    """Carries out the faults in a thread: SIGKILL by pid, then a start after the pause."""

    def __init__(self, pair: Pair, etcd: Etcd, faults: list[Fault]) -> None:
        self.pair = pair
        self.etcd = etcd
        self.events = sorted(
            [(f.at, 1, "kill", f.target) for f in faults]
            + [(round(f.at + f.pause, 1), 0, "start", f.target) for f in faults]
        )
        self.t0 = 0.0
        self.journal: list[str] = []
        self.etcd_down: list[tuple[float, float]] = []  # (killed, answering again), monotonic
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos", daemon=True)

    def start(self) -> None:
        self.t0 = time.monotonic()
        self._thread.start()

    def _run(self) -> None:
        try:
            for at, _, what, target in self.events:
                if self._stop.wait(max(self.t0 + at - time.monotonic(), 0)):
                    return
                (self.kill if what == "kill" else self.revive)(target)
                self.note(f"{what} {target}")
        except BaseException as e:  # reported by join()
            self.error = e

    def note(self, what: str) -> None:
        self.journal.append(f"{time.monotonic() - self.t0:6.1f} s  {what}")

    def kill(self, target: str) -> None:
        if target == "etcd":
            # Down from the signal on: noted after stop() returned (a wait for the process), a
            # request failing in between was taken for a 503 while etcd was up.
            self.etcd_down.append((time.monotonic(), float("inf")))
            self.etcd.stop(signal.SIGKILL)
        elif target == "scheduler":
            self.pair.scheduler.stop(signal.SIGKILL)
        else:
            self.pair.agents[target].stop(signal.SIGKILL)

    def revive(self, target: str) -> None:
        if target == "etcd":
            if not self.etcd.running():
                self.etcd.start()  # returns once it answers
                if self.etcd_down:
                    self.etcd_down[-1] = (self.etcd_down[-1][0], time.monotonic())
        elif target == "scheduler":
            if not self.pair.scheduler.alive():
                self.pair.start_scheduler()
        elif not self.pair.agents[target].alive():
            self.pair.start_agent(target)

    def etcd_was_down(self, since: float, until: float, margin: float) -> bool:
        """Whether etcd was down (or back for less than ``margin`` s) at some time in between."""
        return any(k < until and since < b + margin for k, b in self.etcd_down)

    def join(self) -> None:
        self._thread.join()
        if self.error is not None:
            raise self.error

    def restore(self) -> None:
        """Every victim up again (the plan ends with them all started; this is for failures)."""
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(60)
        for target in ("etcd", "scheduler", *NODES):
            self.revive(target)


# --- the user's churn ---------------------------------------------------------------------------


@dataclass
class Request:
    at: float  # monotonic, when sent
    took: float  # seconds to the answer
    action: str
    code: int
    generation: int | None = None  # the VM's generation once an accepted action applied
    desired: str | None = None  # and its desired state then


@dataclass
class Tracked:
    uuid: str
    requests: list[Request] = field(default_factory=list)  # the create first
    gone: bool = False  # its key is gone, as seen by the test

    @property
    def accepted(self) -> list[Request]:
        return [r for r in self.requests if r.code == 202]

    @property
    def delete_accepted(self) -> bool:
        return any(r.action == Action.DELETE for r in self.accepted)

    @property
    def delete_maybe(self) -> bool:
        """A delete was answered 503: it may have been written before etcd went away."""
        return any(r.action == Action.DELETE and r.code == 503 for r in self.requests)


class Churn:
    """A user's random actions through the API, one at a time, each answer recorded."""

    def __init__(self, pair: Pair, rng: random.Random, watch: DiskWatch) -> None:
        self.pair = pair
        self.rng = rng
        self.watch = watch
        self.vms: dict[str, Tracked] = {}
        self.uncertain_creates: list[Request] = []  # answered 503: created or not
        self.unexpected: list[str] = []
        self.codes: Counter[tuple[str, int]] = Counter()
        self.unavailable: list[Request] = []  # every 503
        self.created = 0
        self.errors: dict[str, set[str]] = {}  # VM -> the ERROR events seen in its log

    def saw(self, vm: VM) -> None:
        """Remember the ERROR events in the VM's log (a user who looked would have seen them)."""
        for e in vm.log:
            if e.message.startswith("still ERROR") or " -> ERROR" in e.message:
                self.errors.setdefault(vm.uuid, set()).add(f"{e.time:.1f} {e.by}: {e.message}")

    def run(self, until: float) -> None:
        while time.monotonic() < until:
            self.step()
            self.prune()
            time.sleep(self.rng.uniform(0.2, 1.2))

    def prune(self) -> None:
        """Stop sampling the disks of VMs that are gone (a deleted VM's disk goes first)."""
        for vm in self.vms.values():
            if vm.delete_accepted and not vm.gone:
                try:
                    vm.gone = self.pair.store.get(VM, vm.uuid) is None
                except Unavailable:
                    return
                if vm.gone:
                    self.watch.disks.discard(vm.uuid)

    def live(self) -> list[Tracked]:
        return [v for v in self.vms.values() if not (v.delete_accepted or v.gone)]

    def step(self) -> None:
        live = self.live()
        if len(live) < MAX_VMS and (len(live) < 2 or self.rng.random() < 0.25):
            self.create()
        elif live:
            vm = self.rng.choice(live)
            self.act(vm, self.choose(self.look(vm)))

    def look(self, vm: Tracked) -> VM | None:
        """The VM as its user sees it (None if the API cannot tell now)."""
        r = self.pair.client.get("/vm/status", json=self.pair.user.creds(vmid=vm.uuid))
        self.codes["status", r.status_code] += 1
        if r.status_code == 200:
            seen = VM.model_validate(r.json)
            self.saw(seen)
            return seen
        if r.status_code == 404 and vm.delete_maybe:
            vm.gone = True  # an earlier delete answered 503 was written after all
        elif r.status_code != 503:
            self.unexpected.append(f"status of VM {vm.uuid} answered {r.status_code}")
        return None

    def choose(self, vm: VM | None) -> Action:
        allowed = list(ACTIONS)
        if vm is not None and self.rng.random() > BLIND:
            allowed = [
                a
                for a in ACTIONS
                if vm.status in ACTION_ALLOWED[a] and vm.desired not in ACTION_CONFLICTS[a]
            ] or allowed
        return self.rng.choices(allowed, [ACTIONS[a] for a in allowed])[0]

    def post(self, path: str, what: str, **body: object) -> tuple[Request, dict]:
        sent = time.monotonic()
        r = self.pair.client.post(path, json=self.pair.user.creds(**body))
        request = Request(sent, time.monotonic() - sent, str(what), r.status_code)
        self.codes[str(what), r.status_code] += 1
        if r.status_code == 202:
            vm = r.json["vm"]
            request.generation, request.desired = vm["generation"], vm["desired"]
        elif r.status_code == 503:
            self.unavailable.append(request)
        return request, r.json or {}

    def create(self) -> None:
        self.created += 1
        request, answer = self.post(
            "/vm/create",
            "create",
            vm_name=f"chaos-{self.created}",
            specs=SPECS,
            image=self.pair.image.uuid,
        )
        if request.code == 202:
            self.track(answer["uuid"], request)
        elif request.code == 503:
            self.uncertain_creates.append(request)
        else:
            self.unexpected.append(f"create answered {request.code}")

    def track(self, uuid: str, create: Request | None) -> Tracked:
        """Follow a VM; its disk too (the agent names a new VM's disk after the VM)."""
        vm = self.vms[uuid] = Tracked(uuid, [create] if create else [])
        self.watch.disks.add(uuid)
        return vm

    def act(self, vm: Tracked, action: Action) -> None:
        if vm.gone:
            return
        if action == Action.DELETE:
            request, _ = self.post("/vm/delete", action, vmid=vm.uuid)
        else:
            request, _ = self.post("/vm/action", action, vmid=vm.uuid, action=str(action))
        vm.requests.append(request)
        if request.code == 404 and vm.delete_maybe:
            vm.gone = True  # an earlier delete answered 503 was written after all
        elif request.code not in (202, 409, 503):
            self.unexpected.append(f"{action} of VM {vm.uuid} answered {request.code}")


# --- what a user or an operator checks afterwards ---------------------------------------------


def lost_action(vm: Tracked, record: VM | None) -> str | None:
    """What of the accepted actions the VM's record does not reflect; None if nothing.

    Every accepted action bumped ``generation`` by one (compare-and-swap): the record's must be
    the last accepted one's, with its desired state, unless requests answered 503 after it were
    written all the same."""
    if record is None:
        return None if vm.delete_accepted or vm.delete_maybe else "gone, never deleted"
    accepted = vm.accepted
    generations = [r.generation for r in accepted]
    if generations != sorted(set(generations)):
        return f"accepted actions share generations: {generations}"
    if accepted:
        last = accepted[-1]
        generation, desired = last.generation, {last.desired}
        after = vm.requests[vm.requests.index(last) + 1 :]
    else:  # created by a request answered 503
        generation, desired, after = 0, {Desired.RUNNING.value}, vm.requests
    maybe = [r for r in after if r.code == 503]
    if record.generation == generation and record.desired in desired:
        return None
    wanted = {ACTION_DESIRED[r.action].value for r in maybe if r.action in ACTION_DESIRED}
    if generation < record.generation <= generation + len(maybe) and record.desired in (
        desired | wanted
    ):
        return None
    return (
        f"generation {record.generation}, desired {record.desired}; the last accepted action "
        f"made generation {generation}, desired {desired} ({len(maybe)} answered 503 since)"
    )


@dataclass
class Domains:
    """What one libvirtd runs, as ``virsh list`` shows it."""

    defined: set[str]  # every domain, running or not
    active: set[str]  # running or paused
    paused: set[str]

    @classmethod
    def of(cls, lv: Libvirtd) -> Domains:
        def names(*args: str) -> set[str]:
            return set(lv.virsh("list", "--name", *args).split())

        return cls(names("--all"), names(), names("--state-paused"))


def placement_index(store: Store) -> dict[str, set[str]]:
    """The VMs each host's placement index names (what its agent follows)."""
    return {n: set(store.list_index(placement_folder(n))[0]) for n in NODES}


def unsettled(
    records: dict[str, VM], domains: dict[str, Domains], index: dict[str, set[str]]
) -> list[str]:
    """Every VM not (yet) in the status its desired state asks, or not running where its record
    says (and only there); every domain no VM should have; every placement index entry that
    does not match a VM's record."""
    problems = []
    expected: dict[str, set[str]] = {n: set() for n in NODES}  # the domains each host should have
    for uuid, vm in records.items():
        dom = f"ucloud-{uuid}"
        where = {n for n in NODES if dom in domains[n].defined}
        if vm.desired == Desired.DELETED:
            problems.append(f"VM {uuid} is {vm.status}, being deleted")
            continue
        want = SETTLED[vm.desired]
        if vm.status != want:
            problems.append(f"VM {uuid} is {vm.status}, should be {want}")
            continue
        if want == Status.STOPPED:
            if vm.hostname or where:
                problems.append(f"VM {uuid} is STOPPED on {vm.hostname!r}, its domain on {where}")
            continue
        host = vm.hostname
        if host not in domains:
            problems.append(f"VM {uuid} is {vm.status} on no host ({host!r})")
            continue
        expected[host].add(dom)
        paused = dom in domains[host].paused
        if where != {host} or dom not in domains[host].active or paused != (want == "SUSPENDED"):
            problems.append(f"VM {uuid} is {vm.status} on {host}, its domain on {where}")
        elif want == Status.RUNNING and vm.reboot_done != vm.reboot_seq:
            problems.append(f"VM {uuid}: reboot {vm.reboot_seq} not done ({vm.reboot_done})")
    for node in NODES:
        for dom in sorted(domains[node].defined - expected[node]):
            problems.append(f"{node} has a domain {dom} it should not have")
        placed = {uuid for uuid, vm in records.items() if vm.hostname == node}
        if index[node] != placed:
            problems.append(f"{node}'s placement index names {index[node]}, not {placed}")
    return problems


def accepted_error(reason: str) -> bool:
    """Whether these faults may put a VM in ERROR for ``reason``. None may: every ERROR fails
    the test, with the VM's log. The reasons ucloud gives, and why none is acceptable here:
    - "host X did not start it within 120 s, after 3 attempts", "not running 300 s after
      creation began": no fault here lasts anywhere near that long;
    - "its QEMU died N times within 600 s": the guest never crashes here; what stops its QEMU
      is a host agent that lost its lease (an etcd outage longer than the lease) and stopped
      its domains itself, and a user should not have to restart every VM after etcd flapped."""
    return False


def describe(vm: VM) -> str:
    events = "\n".join(f"    {e.time:.1f} {e.by}: {e.message}" for e in vm.log)
    return (
        f"VM {vm.uuid} desired {vm.desired} status {vm.status} ({vm.reason!r}) on "
        f"{vm.hostname!r} gen {vm.generation}/{vm.observed_generation}:\n{events}"
    )


# --- the test ---------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_chaos(pair: Pair, etcd: Etcd, libvirtds: dict[str, Libvirtd]):
    seed = int(os.environ.get("UCLOUD_CHAOS_SEED") or random.SystemRandom().randrange(1 << 32))
    print(f"chaos seed {seed} (UCLOUD_CHAOS_SEED={seed} replays its faults)")
    rng = random.Random(seed)
    faults = plan_faults(rng, CHAOS_SECONDS)
    for f in faults:
        print(f"  at {f.at:5.1f} s kill {f.target}, restart {f.pause:.1f} s later")
    for name in NODES:
        pair.start_agent(name)
    for name in NODES:
        pair.wait_host(name, HostStatus.UP)

    watch = DiskWatch(pair.ceph, interval=0.5)
    churn = Churn(pair, random.Random(rng.random()), watch)
    chaos = Chaos(pair, etcd, faults)
    began = time.monotonic()
    try:
        chaos.start()
        churn.run(until=chaos.t0 + CHAOS_SECONDS)
        chaos.join()
    finally:
        chaos.restore()
        print("\n".join(chaos.journal))
        print("answers:", ", ".join(f"{a} {c}: {n}" for (a, c), n in sorted(churn.codes.items())))
    try:
        check_after_chaos(pair, churn, chaos, watch, libvirtds)
    finally:
        watch.stop()
    print(f"chaos test took {time.monotonic() - began:.0f} s")


def check_after_chaos(
    pair: Pair, churn: Churn, chaos: Chaos, watch: DiskWatch, libvirtds: dict[str, Libvirtd]
) -> None:
    ended = time.monotonic()
    assert churn.unexpected == []
    # A 503 is the API's answer while etcd is away; long after it came back, it is not.
    late = [r for r in churn.unavailable if not chaos.etcd_was_down(r.at, r.at + r.took, 10)]
    assert late == [], (
        "503 answers while etcd was up: "
        + ", ".join(f"{r.action} at {r.at - chaos.t0:.2f} s" for r in late)
        + "; etcd down "
        + ", ".join(f"{k - chaos.t0:.2f}-{b - chaos.t0:.2f} s" for k, b in chaos.etcd_down)
    )
    for name in NODES:
        pair.wait_host(name, HostStatus.UP)

    # Nothing lost. VMs created by requests answered 503 are followed from now on.
    records = {uuid: v.value for uuid, v in pair.store.list(VM)[0].items()}
    unknown = [uuid for uuid in records if uuid not in churn.vms]
    assert len(unknown) <= len(churn.uncertain_creates), unknown
    for uuid in unknown:
        churn.track(uuid, None)
    lost = {
        uuid: problem
        for uuid, vm in churn.vms.items()
        if (problem := lost_action(vm, records.get(uuid)))
    }
    assert lost == {}, lost
    print(f"{len(churn.vms)} VMs ({len(unknown)} created by requests answered 503)")

    # Nothing stuck: each VM in the status its desired state asks, and running only where its
    # record says. ERROR is a failure unless its reason is accepted (accepted_error).
    seen: dict[str, object] = {}

    def settled() -> bool:
        records = {uuid: v.value for uuid, v in pair.store.list(VM)[0].items()}
        seen["records"] = records
        for vm in records.values():
            churn.saw(vm)
        seen["errors"] = [
            vm
            for vm in records.values()
            if vm.status == Status.ERROR and not accepted_error(vm.reason)
        ]
        domains = {n: Domains.of(lv) for n, lv in libvirtds.items()}
        seen["problems"] = unsettled(records, domains, placement_index(pair.store))
        return bool(seen["errors"]) or not seen["problems"]

    try:
        wait_for(settled, SETTLE, "every VM to settle", interval=2.0)
    except AssertionError:
        everything = [describe(vm) for vm in seen["records"].values()]
        raise AssertionError("\n".join(["not settled:", *seen["problems"], *everything])) from None
    records: dict[str, VM] = seen["records"]
    assert seen["errors"] == [], "\n".join(describe(vm) for vm in seen["errors"])
    print(f"settled {time.monotonic() - ended:.0f} s after the chaos")
    for uuid, vm in records.items():
        if vm.status == Status.RUNNING:
            wait_console(pair.tmp / vm.hostname, uuid, BOOT)
    for uuid, vm in churn.vms.items():
        if uuid not in records:
            vm.gone = True

    # A VM runs once: no disk was ever open in two clients that were not block-listed.
    watch.stop()
    assert watch.violations == [], watch.violations
    assert watch.samples > 0
    print(f"{watch.samples} disk samples")

    # Nothing left behind once everything is deleted.
    for uuid in records:
        r = pair.client.post("/vm/delete", json=pair.user.creds(vmid=uuid))
        assert r.status_code in (202, 409), r.json
    wait_for(lambda: not pair.store.list(VM)[0], 120, "every VM to be deleted")
    assert placement_index(pair.store) == {n: set() for n in NODES}
    for name, lv in libvirtds.items():
        assert lv.virsh("list", "--all", "--name").split() == [], name
    disks = set(pair.ceph.rbd("ls", pair.ceph.pool).split())
    assert disks & set(churn.vms) == set()
    wait_for(lambda: all(qemu_pid(uuid) is None for uuid in churn.vms), 30, "every QEMU to exit")

    # Nothing stuck, on the way either: no VM went to ERROR while the user watched, even one
    # the user then started again.
    errors = {
        uuid: sorted(events)
        for uuid, events in churn.errors.items()
        if not all(accepted_error(e.split(": ", 2)[-1]) for e in events)
    }
    assert errors == {}, f"VMs that went to ERROR during the chaos: {errors}"
