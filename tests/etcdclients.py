"""What tests do with their own Store on an etcd they kill, restart or cut off: send its next
call to one member, retry a call that met a dead or cut-off member, wait until it reaches an
etcd brought back, and record what a Follower delivered. Shared by the cluster tests (members
killed), the partition tests (a member cut off) and every test that restarts etcd."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from tests.servers import EtcdCluster
from ucloud.models import Host, Stored
from ucloud.store import Change, Conflict, Snapshot, Store, Unavailable

T = TypeVar("T")


def pin(store: Store, cluster: EtcdCluster, index: int) -> None:
    """Make ``store``'s next call go to member ``index``, whatever python-etcd3 thought of it
    (it forgets a failure after the endpoint's time_retry)."""
    netloc = cluster.members[index].endpoint
    store.client.endpoints[netloc].last_failed = 0
    store.client._current_endpoint_label = netloc


def retrying(call: Callable[[], T], timeout: float = 15) -> T:
    """What a daemon does with a call that met a dead member: try again (here, for a while)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except Unavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def reconnected(store: Store, timeout: float = 30) -> None:
    """Return once ``store`` answers again after the test brought its etcd back (restarted).

    Its channel reconnects within its back-off (etcd_reconnect_max, plus gRPC's jitter), not
    at once: until then every call is Unavailable, as the daemons expect and retry. A test's
    own call right after ``Etcd.start()`` must wait that out too; one that still fails after
    ``timeout`` raises."""
    retrying(lambda: store.get(Host, "-"), timeout)  # any read: the key need not exist


def create(store: Store, obj: Stored, timeout: float = 15) -> None:
    """Create ``obj``, retried; a Conflict after a failed attempt is that attempt's success."""
    deadline = time.monotonic() + timeout
    failed = False
    while True:
        try:
            store.create(obj)
            return
        except Conflict:
            if failed:
                return
            raise
        except Unavailable:
            if time.monotonic() > deadline:
                raise
            failed = True
            time.sleep(0.1)


class Recorder:
    """What one Follower delivered: its Snapshots and every Change as (id, revision)."""

    def __init__(self) -> None:
        self.snapshots: list[Snapshot[Any]] = []
        self.changes: list[tuple[str, int]] = []
        self.ids: dict[str, int] = {}

    def __call__(self, item: Snapshot[Any] | Change[Any]) -> None:
        if isinstance(item, Snapshot):
            self.snapshots.append(item)
        else:
            self.changes.append((item.id, item.revision))
            self.ids[item.id] = item.revision

    def has(self, acked: dict[str, int]) -> bool:
        return all(self.ids.get(id) == rev for id, rev in list(acked.items()))
