"""The router of each tenant network: the host that holds its gateway addresses, sends its
router advertisements and serves its DHCPv4 (ucloud/host/gateway.py), written in the
network's record (``Network.router``) by guarded compare-and-swap.

Chosen as VMs are placed (placement.py), smaller: filters keep the hosts that may route now
(up and alive, not in maintenance, offering to route: their agent's ``network_router``), and
the weigher takes the one that routes the fewest networks (ties: by name). A network keeps its
router, chosen or named by an administrator, while that host passes the filters; when it no
longer does (DEAD, in maintenance, no longer offering), another is chosen. A network that no
host may route waits, with the reason in its record (``router_reason``), and gets one when a
host appears. Networks being deleted get none.

What a pass looks at grows with what changed: a host's change wakes the networks it routes and
those waiting; a network's change wakes it; a resync wakes every one.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ucloud.mirror import Mirror
from ucloud.models import Network
from ucloud.scheduler import placement
from ucloud.scheduler.ledger import Ledger
from ucloud.scheduler.placement import HostState
from ucloud.scheduler.writes import Writes
from ucloud.store import Change, Snapshot, Versioned, edited

log = logging.getLogger(__name__)

RouterFilter = Callable[[HostState], bool]


def offers_routing(h: HostState) -> bool:
    return h.host.router


# (why a host may not route, filter), in the order a reason names them.
ROUTER_FILTERS: list[tuple[str, RouterFilter]] = [
    ("not offering to route (network_router)", offers_routing),
    ("down", placement.is_up),
    ("in maintenance", placement.not_in_maintenance),
]


def may_route(h: HostState) -> str:
    """Why ``h`` may not route networks now ("" if it may)."""
    for why, keep in ROUTER_FILTERS:
        if not keep(h):
            return why
    return ""


def fewest_routed(h: HostState, routed: Mapping[str, int]) -> float:
    """The weigher: the fewer networks a host routes already, the better."""
    return -float(routed.get(h.name, 0))


def routers(hosts: Iterable[HostState]) -> tuple[list[HostState], str]:
    """The hosts that may route now, and (if none) the reason a network waits."""
    passed: list[HostState] = []
    rejected: Counter[str] = Counter()
    for h in hosts:
        why = may_route(h)
        if why:
            rejected[why] += 1
        else:
            passed.append(h)
    if passed:
        return passed, ""
    if not rejected:
        return [], "no host may route it: no hosts are registered"
    details = ", ".join(f"{n} {why}" for why, n in rejected.most_common())
    return [], f"no host may route it: {details}"


def choose(candidates: list[HostState], routed: Mapping[str, int]) -> HostState | None:
    """The best router among ``candidates`` (hosts that passed the filters): the highest
    weight, then the first name."""
    if not candidates:
        return None
    return min(candidates, key=lambda h: (-fewest_routed(h, routed), h.name))


class Routers:
    def __init__(self, ledger: Ledger, writes: Writes) -> None:
        self.ledger = ledger
        self.writes = writes
        self.networks: Mirror[Network] = Mirror()
        self.by_router: dict[str, set[str]] = {}  # host -> networks it routes
        self.waiting: set[str] = set()  # networks without a router
        self.todo: set[str] = set()  # networks to look at in the next pass

    # --- changes -------------------------------------------------------------------------------

    def deliver(self, item: Snapshot[Any] | Change[Any]) -> None:
        for id, before, after in self.networks.apply(item):
            self._changed(id, before, after)

    def _changed(
        self, id: str, before: Versioned[Network] | None, after: Versioned[Network] | None
    ) -> None:
        if before is not None and before.value.router:
            self.by_router.get(before.value.router, set()).discard(id)
        self.waiting.discard(id)
        self.todo.discard(id)
        if after is None:
            return
        if after.value.router:
            self.by_router.setdefault(after.value.router, set()).add(id)
        else:
            self.waiting.add(id)
        self.todo.add(id)

    def host_changed(self, name: str) -> None:
        self.todo.update(self.by_router.get(name, ()))
        self.todo.update(self.waiting)

    def resync(self) -> None:
        self.todo.update(self.networks.items)

    # --- a pass --------------------------------------------------------------------------------

    def step(self) -> None:
        if not self.todo:
            return
        hosts = {h.name: h for h in self.ledger.host_states()}
        candidates, reason = routers(hosts.values())
        routed = {name: len(ids) for name, ids in self.by_router.items()}
        for id in sorted(self.todo):
            found = self.networks.get(id)
            if found is not None and not self._fine(found.value, hosts):
                self._choose(found, candidates, reason, routed)
            # Forgotten only once looked at: etcd going away (an exception) keeps the rest.
            self.todo.discard(id)

    def _fine(self, net: Network, hosts: dict[str, HostState]) -> bool:
        """Whether the network needs nothing: being deleted, or routed by a host that may."""
        if net.deleting:
            return True
        current = hosts.get(net.router) if net.router else None
        return current is not None and not may_route(current)

    def _choose(
        self,
        found: Versioned[Network],
        candidates: list[HostState],
        reason: str,
        routed: dict[str, int],
    ) -> None:
        net = found.value
        best = choose(candidates, routed)
        router = best.name if best is not None else ""
        if (router, reason) == (net.router, net.router_reason):
            return
        if router:
            was = f"instead of {net.router}" if net.router else "first"
            log.info("network %s (%s): routed by %s (%s)", net.name, net.uuid, router, was)
        else:
            log.warning("network %s (%s) waits: %s", net.name, net.uuid, reason)

        def change(n: Network) -> None:
            n.router, n.router_reason = router, reason

        new = edited(found, change)
        revision = self.writes.store.swap_many([(new, found)], self.writes.guard)
        if revision is None:
            self.writes.check_guard()
            return  # it changed meanwhile: the watch brings it, and it is looked at again
        if net.router:
            routed[net.router] = routed.get(net.router, 0) - 1
        if router:
            routed[router] = routed.get(router, 0) + 1
        self._changed(net.uuid, found, self.networks.put_local(net.uuid, new, revision)[2])
        self.todo.discard(net.uuid)
