"""The one etcd access layer: typed reads, compare-and-swap writes, leases and resilient watches.

Every read-modify-write is a transaction that compares the key's ``mod_revision`` with the one
read, and retries on conflict; nothing here writes a key blindly except keys bound to a lease
that only their owner writes, and index entries, which are written in the same transaction as
the object that names them (see ``Stored.index_keys``).

Daemons see only this module's types: python-etcd3's and gRPC's errors are translated here, once,
into ``Unavailable`` (etcd did not answer) and ``Conflict``; leases and elections are Store
methods. Benchmarks may use ``Store.client`` for raw references; daemons never do.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, Generic, ParamSpec, TypeVar

import etcd3
import etcd3.exceptions
import etcd3.utils
import grpc
from etcd3 import etcdrpc
from etcd3.etcdrpc import kv_pb2
from pydantic import ValidationError

from ucloud import metrics
from ucloud.config import Settings
from ucloud.models import Stored
from ucloud.retry import Backoff

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Stored)
P = ParamSpec("P")
R = TypeVar("R")

# What a lost or restarting etcd looks like through python-etcd3: raised as Unavailable.
_TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    etcd3.exceptions.ConnectionFailedError,
    etcd3.exceptions.ConnectionTimeoutError,
    etcd3.exceptions.InternalServerError,
    etcd3.exceptions.WatchTimedOut,
    etcd3.exceptions.NoServerAvailableError,
    grpc.RpcError,
)

# ValueError: python-etcd3's answer to a call on a closed client (the store was closed).
_TRANSPORT_OR_CLOSED: tuple[type[BaseException], ...] = (*_TRANSPORT_ERRORS, ValueError)

# What python-etcd3 takes for a failed member (its _FAILED_EP_CODES): the next call goes elsewhere.
MEMBER_FAILED = (
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.INTERNAL,
)

# gRPC metadata that makes a member without a leader refuse a request, and end a watch stream
# when it loses its leader (etcd's rpctypes.MetadataRequireLeaderKey/MetadataHasLeader).
REQUIRE_LEADER = ("hasleader", "true")


MAX_TXN_OPS = 128  # etcd's default --max-txn-ops, per compare/success/failure list
LIST_PAGE = 500  # keys a Range answer: a VM with a full event log is about 4 KiB
INDEX_PAGE = 5000  # index entries a Range answer (keys only: ~80 bytes each)


class StoreError(Exception):
    """What the store raises; a daemon catches these, never an etcd client's own."""


class Unavailable(StoreError):
    """etcd did not answer (lost, restarting, without a leader): try again later. Whether a
    write that raised this was applied is unknown; a compare-and-swap makes retrying safe."""


class Conflict(StoreError):
    """A compare-and-swap lost to another writer too many times, or a create found the key."""


class Compacted(StoreError):
    """A read at a revision etcd has compacted away: read the latest instead."""


# What may end a watch stream that reads too (IndexFollower): resumed after a back-off.
_WATCH_ERRORS: tuple[type[BaseException], ...] = (*_TRANSPORT_OR_CLOSED, StoreError)


def _etcd_call(method: Callable[P, R]) -> Callable[P, R]:
    """Translate the etcd client's transport errors into Unavailable, at this one boundary."""

    operation = method.__name__

    @functools.wraps(method)
    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        # Every request through the store is counted and timed here, and nowhere else.
        with metrics.timed_etcd(operation):
            try:
                return method(*args, **kwargs)
            except _TRANSPORT_ERRORS as e:
                metrics.etcd_failed(operation)
                raise Unavailable(_brief(e)) from e

    return call


@dataclass(frozen=True)
class Versioned(Generic[M]):
    """An object as read from etcd, with the revision a compare-and-swap must compare against."""

    value: M
    mod_revision: int


@dataclass(frozen=True)
class Snapshot(Generic[M]):
    """Every object of a kind at ``revision``: where a follower starts, and restarts after a
    compaction made its position unreachable."""

    kind: type[M]
    items: dict[str, Versioned[M]]
    revision: int


@dataclass(frozen=True)
class Change(Generic[M]):
    """One object put or deleted at ``revision`` (``value`` is None for a delete).

    A change a follower read rather than watched (IndexFollower) is the object as it was at
    ``read_at``: ``revision`` is then its mod_revision, which may be older."""

    kind: type[M]
    id: str
    value: M | None
    revision: int
    read_at: int = 0

    @property
    def seen_at(self) -> int:
        """The store revision this change describes the object at."""
        return max(self.revision, self.read_at)


class Client(etcd3.MultiEndpointEtcd3Client):
    """python-etcd3's client of several members, made to leave a failed member at once.

    python-etcd3 fails over only inside its own calls, and only by refusing a failed member for
    its endpoint's ``time_retry``: a call made later (a lease renewal every ttl/3, a watch after
    its back-off) goes to the dead member again, every time; and a one-member etcd is refused
    outright for that long after it is back. Here no member is ever refused (time_retry=0):
    a call that fails moves the client on to the next member instead, and so does a watch
    stream of ours that breaks (leave()). Several calls failing at once may move it more than
    one member on; one that lands on the dead member again moves it on again.

    Every request requires a leader (etcd's ``hasleader`` metadata, clientv3's
    WithRequireLeader): a member cut off from the majority is alive and keeps its clients'
    connections, but a watch stream on it would stay open and deliver nothing, and a read on it
    would wait for a leader until our timeout and fail as UNKNOWN "context deadline exceeded",
    no member failure, so every next call would go there again. With it the member refuses a
    call at once, and ends a watch stream about three election timeouts after losing its
    leader, both with UNAVAILABLE "no leader": the store moves on as from a dead member."""

    def __init__(self, endpoints: list[etcd3.Endpoint], timeout: float, failover: bool) -> None:
        super().__init__(endpoints, timeout=timeout, failover=failover)
        # Sent with every call (python-etcd3 sets it only for a user's token: we have none).
        self.metadata = (REQUIRE_LEADER,)

    def leave(self, endpoint: etcd3.Endpoint) -> None:
        """Move on to the next member, if ``endpoint`` is still the one in use."""
        labels = list(self.endpoints)
        if self.endpoint_in_use is endpoint:
            # Setting the label also drops the stubs bound to the failed member's channel.
            self._current_endpoint_label = labels[(labels.index(endpoint.netloc) + 1) % len(labels)]

    def _manage_grpc_errors(self, exc: grpc.RpcError) -> None:
        # python-etcd3 calls this from every one of its calls that failed; it always raises.
        failed = self.endpoint_in_use
        try:
            super()._manage_grpc_errors(exc)
        finally:
            if exc.code() in MEMBER_FAILED:
                self.leave(failed)

    def read_at(self, reads: Sequence[tuple[bytes, int]]) -> list[Any]:
        """Each key's KeyValue (None if absent) at its own revision, in one transaction of
        ranges (python-etcd3's transactions cannot read at a revision); fails over as its
        calls do."""
        ops = [
            etcdrpc.RequestOp(request_range=etcdrpc.RangeRequest(key=key, revision=revision))
            for key, revision in reads
        ]
        try:
            response = self.kvstub.Txn(
                etcdrpc.TxnRequest(success=ops),
                self.timeout,
                credentials=self.call_credentials,
                metadata=self.metadata,
            )
        except grpc.RpcError as e:
            self._manage_grpc_errors(e)
            raise
        return [
            r.response_range.kvs[0] if r.response_range.kvs else None for r in response.responses
        ]


def channel_options(settings: Settings) -> list[tuple[str, int]]:
    """gRPC options of the channel to each etcd member.

    A channel whose connection broke reconnects by itself, after gRPC's back-off: 1 s after the
    first failed attempt, 1.6 times longer after each next one, up to 2 minutes. Until its next
    attempt every call on it fails at once (UNAVAILABLE), however long etcd has been back: after
    a 20 s outage the first call that succeeded came 5 s after etcd answered again, and the
    wait grows with the outage. Capped at ``etcd_reconnect_max``, a member that is back is
    reached within that (plus gRPC's jitter of 20 %); an attempt costs a TCP connect."""
    ms = max(int(settings.etcd_reconnect_max * 1000), 1)
    return [
        ("grpc.initial_reconnect_backoff_ms", min(ms, 1000)),  # 1000: gRPC's own
        ("grpc.max_reconnect_backoff_ms", ms),
    ]


class Store:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.prefix = settings.etcd_prefix.rstrip("/")
        endpoints = [
            etcd3.Endpoint(host, port, secure=False, time_retry=0, opts=channel_options(settings))
            for host, port in settings.etcd_members()  # time_retry: see Client
        ]
        self.client = Client(endpoints, timeout=settings.etcd_timeout, failover=True)
        # The followers started and not stopped: what ucloud_etcd_watch_up reports.
        self.following: set[_Following[Any]] = set()

    def close(self) -> None:
        self.client.close()

    # --- keys --------------------------------------------------------------------------------

    def folder(self, kind: type[Stored]) -> str:
        return f"{self.prefix}/{kind.kind}/"

    def key(self, kind: type[Stored], id: str) -> str:
        if not kind.is_id(id):
            raise ValueError(f"{id!r} is not a {kind.kind} id")
        return self.folder(kind) + id

    def key_of(self, obj: Stored) -> str:
        return self.key(type(obj), obj.id)

    def _id_from_key(self, kind: type[Stored], key: bytes) -> str:
        return key.decode()[len(self.folder(kind)) :]

    def index_key(self, path: str) -> str:
        """The key of an index entry or folder named by a path below the prefix
        (``Stored.index_keys``, ``models.placement_folder``)."""
        return f"{self.prefix}/{path}"

    def _index_ops(self, old: Stored | None, new: Stored | None) -> list[Any]:
        """The index entries to delete and to put when ``old`` (as stored) becomes ``new``."""
        before = set(old.index_keys()) if old is not None else set()
        after = set(new.index_keys()) if new is not None else set()
        t = self.client.transactions
        return [t.delete(self.index_key(k)) for k in sorted(before - after)] + [
            t.put(self.index_key(k), b"") for k in sorted(after - before)
        ]

    # --- reads -------------------------------------------------------------------------------

    @_etcd_call
    def get(self, kind: type[M], id: str) -> Versioned[M] | None:
        """The object, or None if there is none (as for an id no object can have: user input
        such as ``a/b`` or ``''`` finds nothing, it never reaches into another key)."""
        if not kind.is_id(id):
            return None
        value, meta = self.client.get(self.key(kind, id))
        if value is None:
            return None
        return Versioned(kind.model_validate_json(value), meta.mod_revision)

    @_etcd_call
    def list(self, kind: type[M], under: str = "") -> tuple[dict[str, Versioned[M]], int]:
        """Every object of ``kind`` (whose id starts with ``under``), and the store revision
        the list was read at: watch from revision + 1 to miss nothing.

        Read in pages (one Range answer must fit gRPC's 4 MiB), every page at the first page's
        revision, so the whole list is one consistent snapshot."""
        prefix = (self.folder(kind) + under).encode()
        end = etcd3.utils.prefix_range_end(prefix)
        while True:
            try:
                return self._list_pages(kind, prefix, end)
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.OUT_OF_RANGE:
                    raise
                # Compacted between two pages: read the whole list again at a newer revision.

    @_etcd_call
    def list_index(self, folder: str) -> tuple[dict[str, int], int]:
        """The entries of an index folder (a path below the prefix, e.g.
        ``models.placement_folder(host)``): each entry's path below the folder with the revision
        it was written at, and the store revision the list was read at. Keys only, in pages."""
        start = self.index_key(folder).encode()
        end = etcd3.utils.prefix_range_end(start)
        while True:
            entries: dict[str, int] = {}
            revision = 0
            key = start
            try:
                while True:
                    response = self.client.get_range_response(
                        key, end, limit=INDEX_PAGE, revision=revision, keys_only=True
                    )
                    revision = revision or response.header.revision
                    for kv in response.kvs:
                        entries[kv.key[len(start) :].decode()] = kv.mod_revision
                    if not response.more or not response.kvs:
                        return entries, revision
                    key = response.kvs[-1].key + b"\0"
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.OUT_OF_RANGE:
                    raise
                # Compacted between two pages: read it all again at a newer revision.

    @_etcd_call
    def read(
        self, kind: type[M], reads: Sequence[tuple[str, int]]
    ) -> Sequence[Versioned[M] | None]:
        """Objects each as it was at its own revision (None: absent then, or unreadable), in
        transactions of up to MAX_TXN_OPS reads; Compacted if a revision is compacted away."""
        found: list[Versioned[M] | None] = []
        for start in range(0, len(reads), MAX_TXN_OPS):
            chunk = reads[start : start + MAX_TXN_OPS]
            try:
                kvs = self.client.read_at(
                    [(self.key(kind, id).encode(), revision) for id, revision in chunk]
                )
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.OUT_OF_RANGE:
                    raise Compacted(f"reading {kind.kind} at revision {chunk[0][1]}") from e
                raise
            for (id, _), kv in zip(chunk, kvs, strict=True):
                if kv is None:
                    found.append(None)
                    continue
                try:
                    found.append(Versioned(kind.model_validate_json(kv.value), kv.mod_revision))
                except ValidationError as e:
                    log.error("skipping unreadable %s %s: %s", kind.kind, id, e)
                    found.append(None)
        return found

    def _list_pages(
        self, kind: type[M], start: bytes, end: bytes
    ) -> tuple[dict[str, Versioned[M]], int]:
        items: dict[str, Versioned[M]] = {}
        revision = 0
        key = start
        while True:
            # Through python-etcd3's call, not its kvstub: only its calls fail over.
            response = self.client.get_range_response(key, end, limit=LIST_PAGE, revision=revision)
            revision = revision or response.header.revision
            for kv in response.kvs:
                id = self._id_from_key(kind, kv.key)
                try:
                    items[id] = Versioned(kind.model_validate_json(kv.value), kv.mod_revision)
                except ValidationError as e:
                    log.error("skipping unreadable %s %s: %s", kind.kind, id, e)
            if not response.more or not response.kvs:
                return items, revision
            key = response.kvs[-1].key + b"\0"

    # --- writes ------------------------------------------------------------------------------

    @_etcd_call
    def create(self, obj: Stored, lease: etcd3.Lease | None = None) -> int:
        """Write ``obj`` if its key does not exist; return the new revision, or raise Conflict."""
        key = self.key_of(obj)
        ok, responses = self.client.transaction(
            compare=[self.client.transactions.version(key) == 0],
            success=[
                self.client.transactions.put(key, obj.model_dump_json(), lease=lease),
                *self._index_ops(None, obj),
            ],
            failure=[],
        )
        if not ok:
            raise Conflict(f"{obj.kind} {obj.id} already exists")
        return responses[0].response_put.header.revision

    @_etcd_call
    def put_owned(self, obj: Stored, lease: etcd3.Lease) -> None:
        """Write a lease-bound key that only its lease holder ever writes (an alive key)."""
        self.client.put(self.key_of(obj), obj.model_dump_json(), lease=lease)

    def swap(self, obj: M, was: Versioned[M]) -> int | None:
        """Write ``obj`` over ``was`` (the object as read) if its key is still at was's
        revision; the new revision, or None."""
        return self.swap_many([(obj, was)])

    def swap_edited(
        self, was: Versioned[M], edit: Callable[[M], object], guard: Guard | None = None
    ) -> Versioned[M] | None:
        """The one way a daemon changes what it read: a copy of ``was``'s object, changed by
        ``edit`` (a status set and recorded, a field filled in), compare-and-swapped over it.
        The object as written, or None if it changed meanwhile (nothing written). ``was``
        stays as read: a mirror may still hold it."""
        obj = edited(was, edit)
        revision = self.swap_many([(obj, was)], guard)
        return None if revision is None else Versioned(obj, revision)

    @_etcd_call
    def swap_many(
        self, writes: Sequence[tuple[M, Versioned[M] | None]], guard: Guard | None = None
    ) -> int | None:
        """Write each object over the one it was read as, all in one transaction, if every key
        is still at its revision (and ``guard`` holds); return the new revision, or None if
        anything changed meanwhile. A ``was`` of None creates: the key must not exist. The
        index entries that change (``Stored.index_keys``: a VM's host) change in the same
        transaction, so an index never disagrees with the records: its objects' compares
        cover it. Each list of a transaction holds at most
        MAX_TXN_OPS operations: a batch of VMs that move is at most MAX_TXN_OPS // 2 long."""
        if not writes:
            return None
        return self._transaction(swap=writes, guard=guard)

    @_etcd_call
    def commit(
        self,
        *,
        create: Sequence[Stored] = (),
        swap: Sequence[tuple[Stored, Versioned[Any] | None]] = (),
        delete: Sequence[Versioned[Any]] = (),
        unchanged: Sequence[Versioned[Any]] = (),
        absent: Sequence[str] = (),
        guard: Guard | None = None,
    ) -> int | None:
        """Several objects in one transaction: ``create`` (their keys must not exist),
        ``swap`` (each written over the object as read; as swap_many, a ``was`` of None
        creates), ``delete`` (as read), if every
        object of ``unchanged`` is still as read, no index entry of ``absent`` (paths below
        the prefix) exists, and ``guard`` holds. Index entries follow as in swap_many. For
        writes whose uniqueness an index entry guarantees (a network's VXLAN id, a port's
        IPv4 address), and writes decided from other objects that must still be as read
        (the network a port is on; the hosts a scheduler placed VMs on, as it saw them).
        The new revision, or None if any compare failed (nothing written)."""
        return self._transaction(
            create=create, swap=swap, delete=delete, unchanged=unchanged, absent=absent, guard=guard
        )

    def _transaction(
        self,
        *,
        create: Sequence[Stored] = (),
        swap: Sequence[tuple[Stored, Versioned[Any] | None]] = (),
        delete: Sequence[Versioned[Any]] = (),
        unchanged: Sequence[Versioned[Any]] = (),
        absent: Sequence[str] = (),
        guard: Guard | None = None,
    ) -> int | None:
        """The one builder of the store's object transactions (swap_many, commit)."""
        t = self.client.transactions
        compare = [t.version(self.key_of(obj)) == 0 for obj in create]
        # etcd compares a missing key's mod_revision as 0.
        compare += [
            t.mod(self.key_of(obj)) == (was.mod_revision if was else 0) for obj, was in swap
        ]
        compare += [t.mod(self.key_of(f.value)) == f.mod_revision for f in (*delete, *unchanged)]
        compare += [t.version(self.index_key(path)) == 0 for path in absent]
        if guard is not None:
            compare.append(guard.compare(t))
        # The objects first: the first answer's header is the transaction's revision.
        success = [t.put(self.key_of(obj), obj.model_dump_json()) for obj in create]
        success += [t.put(self.key_of(obj), obj.model_dump_json()) for obj, _ in swap]
        success += [t.delete(self.key_of(f.value)) for f in delete]
        for obj in create:
            success += self._index_ops(None, obj)
        for obj, was in swap:
            success += self._index_ops(was.value if was else None, obj)
        for f in delete:
            success += self._index_ops(f.value, None)
        assert len(compare) <= MAX_TXN_OPS, "split batches below etcd's --max-txn-ops"
        assert len(success) <= MAX_TXN_OPS, "split batches below etcd's --max-txn-ops"
        ok, responses = self.client.transaction(compare=compare, success=success, failure=[])
        if not ok or not responses:
            return None
        first = responses[0]
        return int(getattr(first, first.WhichOneof("response")).header.revision)

    @_etcd_call
    def delete(self, found: Versioned[M], guard: Guard | None = None) -> bool:
        """Delete the object (and its index entries) if its key is still at the revision it
        was read at (and ``guard`` holds)."""
        key = self.key_of(found.value)
        t = self.client.transactions
        compare = [t.mod(key) == found.mod_revision]
        if guard is not None:
            compare.append(guard.compare(t))
        success = [t.delete(key), *self._index_ops(found.value, None)]
        ok, _ = self.client.transaction(compare=compare, success=success, failure=[])
        return ok

    @_etcd_call
    def fix_index(self, kind: type[Stored], fixes: Sequence[IndexFix], guard: Guard | None) -> bool:
        """Put and delete index entries so that the index agrees with the records, in one
        transaction, if every object named is still at the revision the fix was made from (0:
        still absent) and ``guard`` holds. For entries no write kept in step: those of records
        from before the index existed, and strays."""
        t = self.client.transactions
        compare = [t.mod(self.key(kind, f.id)) == f.mod_revision for f in fixes]
        if guard is not None:
            compare.append(guard.compare(t))
        success = [t.delete(self.index_key(k)) for f in fixes for k in f.delete] + [
            t.put(self.index_key(k), b"") for f in fixes for k in f.put
        ]
        assert len(compare) <= MAX_TXN_OPS, "split batches below etcd's --max-txn-ops"
        assert len(success) <= MAX_TXN_OPS, "split batches below etcd's --max-txn-ops"
        ok, _ = self.client.transaction(compare=compare, success=success, failure=[])
        return ok

    def update(
        self,
        kind: type[M],
        id: str,
        change: Callable[[M], bool | None],
        *,
        attempts: int = 20,
    ) -> Versioned[M] | None:
        """Read-modify-write with compare-and-swap: ``change`` edits the object in place and
        returns False to leave it unwritten. Retries on conflict; returns the object as written
        (or as found, when not written), or None if there is no such object."""
        for _ in range(attempts):
            current = self.get(kind, id)
            if current is None:
                return None
            obj = current.value.model_copy(deep=True)  # `current` stays as read: see swap_many
            if change(obj) is False:
                return current
            revision = self.swap(obj, current)
            if revision is not None:
                return Versioned(obj, revision)
        raise Conflict(f"{kind.kind} {id} kept changing; gave up after {attempts} attempts")

    @_etcd_call
    def holds(self, guard: Guard) -> bool:
        """Whether ``guard`` still holds: its key exists, created at its revision."""
        _, meta = self.client.get(guard.key)
        return meta is not None and bool(meta.create_revision == guard.create_revision)

    # --- leases ------------------------------------------------------------------------------

    @_etcd_call
    def lease(self, ttl: int) -> etcd3.Lease:
        return self.client.lease(ttl)

    def hold_lease(self, ttl: int, on_lost: Callable[[], None]) -> KeepAlive:
        """Grant a lease and keep it renewed (see KeepAlive)."""
        granted_at = time.monotonic()
        return KeepAlive(self, self.lease(ttl), on_lost, granted_at).start()

    # --- elections ---------------------------------------------------------------------------

    def election_key(self, name: str) -> str:
        return f"{self.prefix}/election/{name}"

    @_etcd_call
    def campaign(self, name: str, identity: str, lease: etcd3.Lease) -> Guard | None:
        """Take the lead of election ``name`` if nobody holds it: its key, bound to ``lease``,
        holding ``identity``. The Guard for the leader's writes, or None if another leads."""
        key = self.election_key(name)
        t = self.client.transactions
        won, responses = self.client.transaction(
            compare=[t.version(key) == 0],
            success=[t.put(key, identity, lease=lease)],
            failure=[],
        )
        if not won:
            return None
        # The key was created by this very put: its create revision is the put's revision.
        return Guard(key, responses[0].response_put.header.revision)

    @_etcd_call
    def leader(self, name: str) -> tuple[str, int] | None:
        """Who leads election ``name`` (its identity) and its key's mod_revision; None if
        nobody does."""
        value, meta = self.client.get(self.election_key(name))
        if value is None:
            return None
        return value.decode(), meta.mod_revision

    # --- watches -----------------------------------------------------------------------------

    @_etcd_call
    def wait_deleted(self, key: str, after_revision: int, timeout: float) -> None:
        """Return when ``key`` is deleted after ``after_revision``, or after ``timeout``."""
        stream = WatchStream(self, key, after_revision + 1, timeout=timeout)
        try:
            for response in stream:
                if response.canceled or any(e.type == kv_pb2.Event.DELETE for e in response.events):
                    return
        except grpc.RpcError as e:
            # The timeout ends the stream as DEADLINE_EXCEEDED, or, when etcd reaches the
            # deadline first, as UNKNOWN "context deadline exceeded": neither is a failure.
            code, details = e.code(), e.details() or ""
            if code != grpc.StatusCode.DEADLINE_EXCEEDED and "deadline exceeded" not in details:
                raise
        finally:
            stream.cancel()

    def follow(
        self, kind: type[M], deliver: Callable[[Snapshot[M] | Change[M]], None]
    ) -> Follower[M]:
        """Deliver a Snapshot of every ``kind`` object, then each Change after it, forever:
        across broken streams and etcd restarts (resuming after the last revision seen) and
        compactions (with a fresh Snapshot). See Follower."""
        follower = Follower(self, kind, deliver)
        follower.start()
        return follower

    def follow_index(
        self, kind: type[M], folder: str, deliver: Callable[[Snapshot[M] | Change[M]], None]
    ) -> IndexFollower[M]:
        """Like follow(), for only the ``kind`` objects named in an index folder (a path below
        the prefix: ``models.placement_folder(host)``, the VMs placed on a host), and the
        change that takes each out of it. See IndexFollower."""
        follower = IndexFollower(self, kind, folder, deliver)
        follower.start()
        return follower


@dataclass(frozen=True)
class IndexFix:
    """Index entries (paths below the prefix) to put and delete while object ``id`` is still at
    ``mod_revision`` (0: while it does not exist): see Store.fix_index."""

    id: str
    mod_revision: int
    put: tuple[str, ...] = ()
    delete: tuple[str, ...] = ()


def edited(was: Versioned[M], edit: Callable[[M], object]) -> M:
    """A copy of ``was``'s object changed by ``edit``; ``was`` stays as read (a mirror may
    hold it). What every write of a daemon starts from (Store.swap_edited)."""
    obj = was.value.model_copy(deep=True)
    edit(obj)
    return obj


@dataclass(frozen=True)
class Guard:
    """A condition a transaction also checks: here, that a key was created at a revision (the
    scheduler's leadership key), so a deposed leader's writes fail."""

    key: str
    create_revision: int

    def compare(self, t: Any) -> Any:
        return t.create(self.key) == self.create_revision


class WatchStream:
    """One gRPC watch stream over ``key`` (a whole prefix if ``prefix``) from ``start_revision``,
    and over any key added later with watch(): iterate it for etcd's raw watch responses;
    cancel() ends it from any thread.

    etcd's Watch API multiplexes: each create request on a stream is answered, in the order
    sent, by a response marked ``created`` that carries the new watch's id (every later
    response of that watch carries it too); unwatch() cancels one by that id.

    The one place that speaks etcd's watch protocol (python-etcd3 0.13's own watcher dies
    silently when its stream breaks). Errors of the stream come out of the iteration as
    grpc.RpcError; resuming is the caller's choice (Follower resumes)."""

    def __init__(
        self,
        store: Store,
        key: str | None,
        start_revision: int = 0,
        *,
        prefix: bool = False,
        timeout: float | None = None,
    ) -> None:
        self._requests: queue.SimpleQueue[Any] = queue.SimpleQueue()
        if key is not None:
            self.watch(key, start_revision, prefix=prefix)
        client = self._client = store.client
        channel = client.channel  # the member in use; a break moves the client on (see Client)
        self._endpoint = next(e for e in client.endpoints.values() if e.channel is channel)
        self._call = etcdrpc.WatchStub(channel).Watch(
            self._send(),
            timeout=timeout,
            credentials=client.call_credentials,
            metadata=client.metadata,
        )

    def watch(self, key: str, start_revision: int, *, prefix: bool = False) -> None:
        """Add a watch over ``key`` (a whole prefix if ``prefix``) from ``start_revision``."""
        raw = key.encode()
        create = etcdrpc.WatchCreateRequest(key=raw, start_revision=start_revision)
        if prefix:
            create.range_end = etcd3.utils.prefix_range_end(raw)
        self._requests.put(etcdrpc.WatchRequest(create_request=create))

    def unwatch(self, watch_id: int) -> None:
        """Cancel one watch; responses of it already on their way may still come."""
        cancel = etcdrpc.WatchCancelRequest(watch_id=watch_id)
        self._requests.put(etcdrpc.WatchRequest(cancel_request=cancel))

    def _send(self) -> Iterator[Any]:
        # Ends only at cancel(): closing our side would end the watches.
        while (request := self._requests.get()) is not None:
            yield request

    def __iter__(self) -> Iterator[Any]:
        try:
            yield from self._call
        except grpc.RpcError as e:
            # The member went away: the next stream must go to another one. (Not on
            # DEADLINE_EXCEEDED: that is this stream's own timeout.)
            if e.code() in MEMBER_FAILED and e.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                self._client.leave(self._endpoint)
            raise

    def cancel(self) -> None:
        self._call.cancel()
        self._requests.put(None)


class _Following(Generic[M]):
    """What Follower and IndexFollower share: list and deliver a Snapshot (retrying until etcd
    answers), then watch in a thread of their own; after a broken stream, resume after a
    back-off; after a compaction, list again. Deliveries are in revision order, on the
    follower's thread. Subclasses say how to list (``_list``) and how to watch (``_watch``)."""

    def __init__(
        self,
        store: Store,
        kind: type[M],
        deliver: Callable[[Snapshot[M] | Change[M]], None],
        name: str,
    ) -> None:
        self.store = store
        self.kind = kind
        self.deliver = deliver
        self.name = name
        # Capped as the channel's reconnects are (channel_options): a stream broken by a lost
        # etcd is made again within that of its return, not after a back-off that grew all
        # through the outage (while etcd is away an attempt fails at once, without a packet).
        settings = store.settings
        self.backoff = Backoff(settings.retry_initial, settings.etcd_reconnect_max)
        self.next_revision = 0  # 0: list first
        # True while a watch stream is open: what was delivered is current but for events in
        # flight. A reader that must not serve stale data asks etcd itself when it is False.
        self.live = False
        self._stopped = threading.Event()
        self._stream: WatchStream | None = None
        self._thread = threading.Thread(target=self._run, name=f"follow-{name}", daemon=True)

    def start(self) -> None:
        """List (retrying until etcd answers) and deliver the first Snapshot before returning,
        then watch in the background."""
        self.store.following.add(self)
        self._list_until_done()
        self._thread.start()

    def stop(self) -> None:
        self.store.following.discard(self)
        self._stopped.set()
        stream = self._stream
        if stream is not None:
            stream.cancel()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def _list(self) -> None:
        """Read, deliver a Snapshot, and set next_revision past it (Unavailable, Compacted)."""
        raise NotImplementedError

    def _watch(self) -> bool:
        """Stream events until the stream ends; True if it delivered anything."""
        raise NotImplementedError

    def _list_until_done(self) -> None:
        failures = 0
        while not self._stopped.is_set():
            try:
                self._list()
                return
            except (Unavailable, Compacted) as e:
                log.warning("listing %s: %s; retrying", self.name, e)
                failures += 1
                self._stopped.wait(self.backoff.delay(failures))

    def _run(self) -> None:
        failures = 0
        while not self._stopped.is_set():
            if self.next_revision == 0:
                self._list_until_done()
                continue
            try:
                if self._watch():
                    failures = 0  # the stream worked for a while: start backing off afresh
            except Compacted as e:
                log.warning("%s: %s; listing again", self.name, e)
                self.next_revision = 0
            except _WATCH_ERRORS as e:
                if self._stopped.is_set():
                    return
                log.warning(
                    "watch on %s broke (%s); resuming at revision %d",
                    self.name,
                    _brief(e),
                    self.next_revision,
                )
            if self.next_revision == 0:
                continue  # compacted: a list is the remedy, at once (it backs off if it fails)
            failures += 1
            self._stopped.wait(self.backoff.delay(failures))


class Follower(_Following[M]):
    """List-then-watch of one kind of object that does not lose events.

    It owns its gRPC watch stream (python-etcd3 0.13's watcher thread dies with a NameError
    when a stream breaks, without telling anyone): when the stream breaks it watches again
    from the revision after the last event delivered; when etcd has compacted that revision
    away it lists again and delivers a fresh Snapshot.
    """

    def __init__(
        self, store: Store, kind: type[M], deliver: Callable[[Snapshot[M] | Change[M]], None]
    ) -> None:
        super().__init__(store, kind, deliver, kind.kind)

    def _list(self) -> None:
        items, revision = self.store.list(self.kind)
        self.deliver(Snapshot(self.kind, items, revision))
        self.next_revision = revision + 1

    def _watch(self) -> bool:
        """Stream events until the stream ends; True if it delivered anything."""
        stream = WatchStream(
            self.store, self.store.folder(self.kind), self.next_revision, prefix=True
        )
        self._stream = stream
        if self._stopped.is_set():  # stop() ran before the stream existed
            stream.cancel()
        delivered = False
        try:
            for response in stream:
                self.live = True
                if response.compact_revision:
                    log.warning("%s watch position was compacted; listing again", self.kind.kind)
                    self.next_revision = 0
                    return delivered
                if response.canceled:
                    return delivered
                for event in response.events:
                    self._deliver_event(event)
                    delivered = True
            return delivered
        finally:
            self.live = False
            stream.cancel()

    def _deliver_event(self, event: Any) -> None:
        id = self.store._id_from_key(self.kind, event.kv.key)
        revision = event.kv.mod_revision
        value: M | None = None
        if event.type != kv_pb2.Event.DELETE:
            try:
                value = self.kind.model_validate_json(event.kv.value)
            except ValidationError as e:
                log.error("ignoring unreadable %s %s: %s", self.kind.kind, id, e)
                self.next_revision = revision + 1
                return
        self.deliver(Change(self.kind, id, value, revision))
        self.next_revision = revision + 1


class IndexFollower(_Following[M]):
    """List-then-watch of the objects one index folder names (a host's placement index: the
    VMs placed on it), over one multiplexed watch stream that carries a watch of the folder
    and one of each object it names. It delivers what a Follower of the kind would, for those
    objects alone: a Snapshot of them, then each Change of each, including the one that takes
    it out of the folder (a VM placed elsewhere, or deleted); after that one it is no longer
    watched.

    - Listing: the folder's entries at revision R, each object read as it was at R: the
      Snapshot. The folder and each object are then watched from R + 1.
    - An entry put at P: the object as it was at P is read and delivered (the transaction that
      put the entry also wrote the object, or, for a repaired index, found it so), then
      watched from P + 1. An entry deleted at Q: the object as it was at Q is delivered, and
      its watch cancelled. A read delivers ``Change.read_at``: its revision is the object's.
    - Each object's changes come in revision order, never one older than one delivered
      before (its reads and its watch overlap; the older is dropped).
    - A broken stream: every watch is made again, on a new stream, from its next revision
      (resumed, not replayed). A compacted revision, of the folder or of any object: list
      again (a new Snapshot).
    """

    def __init__(
        self,
        store: Store,
        kind: type[M],
        folder: str,
        deliver: Callable[[Snapshot[M] | Change[M]], None],
    ) -> None:
        super().__init__(store, kind, deliver, folder)
        self.folder = folder  # below the prefix
        self.folder_key = store.index_key(folder)
        # next_revision: of the folder's watch
        self.watched: dict[str, int] = {}  # object id -> the revision to deliver its changes from

    def _list(self) -> None:
        entries, revision = self.store.list_index(self.folder)
        ids = [id for id in entries if self.kind.is_id(id)]
        found = self.store.read(self.kind, [(id, revision) for id in ids])
        items = {id: v for id, v in zip(ids, found, strict=True) if v is not None}
        self.deliver(Snapshot(self.kind, items, revision))
        self.watched = dict.fromkeys(ids, revision + 1)
        self.next_revision = revision + 1

    def _watch(self) -> bool:
        """Stream events until the stream ends; True if it delivered anything."""
        stream = WatchStream(self.store, None)
        self._stream = stream
        if self._stopped.is_set():  # stop() ran before the stream existed
            stream.cancel()
        pending: deque[str | None] = deque()  # whom each unanswered create is for (None: folder)
        by_watch: dict[int, str | None] = {}  # etcd's watch id -> None (the folder) or object id
        watch_of: dict[str, int] = {}  # object id -> its watch's id

        def watch(id: str | None, start: int) -> None:
            if id is None:
                stream.watch(self.folder_key, start, prefix=True)
            else:
                stream.watch(self.store.key(self.kind, id), start)
            pending.append(id)

        def unwatch(id: str) -> None:
            watch_id = watch_of.pop(id, None)
            if watch_id is not None:  # else it is still being created: see below
                del by_watch[watch_id]
                stream.unwatch(watch_id)

        watch(None, self.next_revision)
        for watched, start in self.watched.items():
            watch(watched, start)
        delivered = False
        try:
            for response in stream:
                self.live = True
                if response.created:
                    created = pending.popleft()
                    if response.canceled:
                        log.warning("%s: etcd refused a watch: %s", self.folder, response)
                        return delivered
                    if created is not None and (created not in self.watched or created in watch_of):
                        stream.unwatch(response.watch_id)  # left the folder since, or a double
                    else:
                        by_watch[response.watch_id] = created
                        if created is not None:
                            watch_of[created] = response.watch_id
                    continue
                if response.watch_id not in by_watch:
                    continue  # the last of a watch cancelled here
                if response.compact_revision:
                    log.warning("%s: watch position compacted; listing again", self.folder)
                    self.next_revision = 0
                    return delivered
                if response.canceled:
                    return delivered  # etcd ended one: make them all again on a new stream
                of = by_watch[response.watch_id]
                if of is None:
                    if self._folder_changed(response.events, watch, unwatch):
                        delivered = True
                else:
                    for event in response.events:
                        if self._object_changed(of, event):
                            delivered = True
            return delivered
        finally:
            self.live = False
            stream.cancel()

    def _folder_changed(
        self,
        events: Sequence[Any],
        watch: Callable[[str, int], None],
        unwatch: Callable[[str], None],
    ) -> bool:
        """Entries put and deleted: read each object as of then, deliver it, (un)watch it."""
        changes: list[tuple[str, bool, int]] = []  # (id, put, revision)
        for event in events:
            id = event.kv.key.decode()[len(self.folder_key) :]
            if self.kind.is_id(id):
                changes.append((id, event.type != kv_pb2.Event.DELETE, event.kv.mod_revision))
        # A failure here leaves everything as it was: the new stream brings these events again.
        found = self.store.read(self.kind, [(id, revision) for id, _, revision in changes])
        for (id, put, revision), value in zip(changes, found, strict=True):
            start = self.watched.get(id)
            if (start is None and put) or (start is not None and revision >= start):
                self.deliver(
                    Change(
                        self.kind,
                        id,
                        value.value if value is not None else None,
                        value.mod_revision if value is not None else revision,
                        read_at=revision,
                    )
                )
            if put:
                if start is None:
                    watch(id, revision + 1)
                self.watched[id] = max(start or 0, revision + 1)
            elif start is not None:
                del self.watched[id]
                unwatch(id)
        if events:
            self.next_revision = events[-1].kv.mod_revision + 1
        return bool(changes)

    def _object_changed(self, id: str, event: Any) -> bool:
        revision = event.kv.mod_revision
        start = self.watched.get(id)
        if start is None or revision < start:
            return False  # left the folder, or older than what was delivered (a read)
        self.watched[id] = revision + 1
        value: M | None = None
        if event.type != kv_pb2.Event.DELETE:
            try:
                value = self.kind.model_validate_json(event.kv.value)
            except ValidationError as e:
                log.error("ignoring unreadable %s %s: %s", self.kind.kind, id, e)
                return False
        self.deliver(Change(self.kind, id, value, revision))
        return True


def _brief(e: BaseException) -> str:
    if isinstance(e, grpc.RpcError):
        code = e.code() if hasattr(e, "code") else None
        return f"grpc {getattr(code, 'name', code)}"
    return type(e).__name__ + (f": {e}" if str(e) else "")


class KeepAlive:
    """Holds a lease: renews it in the background, knows how long it surely lasts, and calls
    ``on_lost`` once when it cannot renew it before it expires.

    ``remaining()`` is counted on this process's monotonic clock from the moment each renewal
    was *sent*: etcd restarts the TTL when it receives the request, later, so the lease lives
    at least as long as this says. A process that was paused (SIGSTOP, a VM migration of its
    own machine) finds its lease gone as soon as it runs again, before it asks etcd."""

    def __init__(
        self,
        store: Store,
        lease: etcd3.Lease,
        on_lost: Callable[[], None],
        granted_at: float,
    ) -> None:
        self.store = store
        self.lease = lease
        self.on_lost = on_lost
        self.ttl = lease.ttl
        self.expires = granted_at + self.ttl  # see remaining()
        self._lost = False
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="keepalive", daemon=True)

    def start(self) -> KeepAlive:
        self._thread.start()
        return self

    def stop(self, revoke: bool = False) -> None:
        self._stopped.set()
        if revoke:
            with suppress(*_TRANSPORT_ERRORS):
                self.lease.revoke()

    def remaining(self) -> float:
        """Seconds the lease surely still lasts; 0 once it is lost or may be."""
        if self._lost:
            return 0.0
        return max(0.0, self.expires - time.monotonic())

    def _run(self) -> None:
        while not self._stopped.wait(max(self.ttl / 3, 0.2)):
            sent = time.monotonic()
            try:
                ttl = next(iter(self.store.client.refresh_lease(self.lease.id))).TTL
            except _TRANSPORT_OR_CLOSED as e:  # ValueError: the store was closed
                log.warning("could not renew lease %x (%s)", self.lease.id, _brief(e))
                ttl = None
            if ttl is not None and ttl > 0 and sent < self.expires:
                self.expires = sent + ttl
            elif ttl is not None or time.monotonic() >= self.expires:
                log.error("lease %x is lost", self.lease.id)
                self._lost = True
                self._stopped.set()
                self.on_lost()
                return
