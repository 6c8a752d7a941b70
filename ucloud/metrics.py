"""Prometheus metrics: what every daemon shares (serving /metrics, etcd requests, elections,
watches) and the helpers each daemon's own metrics module builds on.

Two kinds of metrics, kept apart on purpose:
- **state** (how many VMs are RUNNING, a host's capacity, a VM's CPU time) is computed when
  Prometheus scrapes, by a collector that reads the daemon's watch-fed mirror: a deleted VM's
  series is gone at the next scrape, and nothing has to be kept in step with the mirror;
- **events** (placements, crashes, imports, API requests, etcd requests) are counters and
  histograms in the process that does them.

Labels are ids and names (VM uuid, host name, operation), never user data.

A new daemon serves its metrics with ``daemon.serve_metrics`` on a ``<daemon>_metrics_port``
setting of its own, exports what it holds with a StateCollector over its own table, and events
with counters (as ucloud-console does, ``ucloud/console/metrics.py``): see
docs/design-decisions.md, "Metrics".
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client import multiprocess as _multiprocess
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import start_http_server
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from ucloud.store import Store

log = logging.getLogger(__name__)

# Latencies from a millisecond (an etcd read on a quiet cluster) to half a minute.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

# --- etcd, at the store's one boundary (store._etcd_call) ---------------------------------------

ETCD_SECONDS = Histogram(
    "ucloud_etcd_request_duration_seconds",
    "Time of one etcd request made through the store, by store operation (failed ones too)",
    ["operation"],
    buckets=LATENCY_BUCKETS,
)
ETCD_ERRORS = Counter(
    "ucloud_etcd_request_errors_total",
    "etcd requests that failed (etcd did not answer: Unavailable), by store operation",
    ["operation"],
)

# --- elections (daemon.lead): one gauge for every daemon of which one acts at a time ----------

LEADER = Gauge(
    "ucloud_leader",
    "1 while this process leads its election (scheduler, imagescanner), else 0",
    ["election"],
)


@contextmanager
def timed_etcd(operation: str) -> Iterator[None]:
    """Count and time one etcd request; ``failed`` is told by the caller (see store.py)."""
    started = time.monotonic()
    try:
        yield
    finally:
        # labels() at each call, not once at import: a gunicorn worker must make its children
        # after the master switched to multiprocess values (use_multiprocess).
        ETCD_SECONDS.labels(operation).observe(time.monotonic() - started)


def etcd_failed(operation: str) -> None:
    ETCD_ERRORS.labels(operation).inc()


# --- state collectors ----------------------------------------------------------------------


class StateCollector(Collector):
    """A collector made of a function that returns metric families, computed at each scrape.

    ``describe`` is empty so that registering it does not call ``collect`` (the daemon may not
    be ready); a collect that raises is logged and answers nothing rather than failing the
    whole scrape."""

    def __init__(self, name: str, collect: Callable[[], Iterable[Metric]]) -> None:
        self.name = name
        self._collect = collect

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        try:
            return list(self._collect())
        except Exception:
            log.exception("collecting %s metrics failed", self.name)
            return []


def gauge(name: str, documentation: str, labels: Iterable[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=list(labels))


def counter_family(
    name: str, documentation: str, labels: Iterable[str] = ()
) -> CounterMetricFamily:
    """A counter whose value is read, not counted here (a VM's CPU time from libvirt)."""
    return CounterMetricFamily(name, documentation, labels=list(labels))


def watches(store: Store) -> Iterable[Metric]:
    """``ucloud_etcd_watch_up``: 1 while each of the daemon's watches has its stream open."""
    up = gauge(
        "ucloud_etcd_watch_up",
        "1 while this watch of etcd has its stream open; 0 while it lists or resumes "
        "(etcd lost, or its member restarting)",
        ["watch"],
    )
    for follower in list(store.following):
        up.add_metric([follower.name], 1.0 if follower.live else 0.0)
    yield up


def register_watches(store: Store, registry: CollectorRegistry = REGISTRY) -> None:
    registry.register(StateCollector("watches", lambda: watches(store)))


# --- serving -------------------------------------------------------------------------------


class Server:
    """A /metrics HTTP server on its own thread (prometheus_client's WSGI server)."""

    def __init__(self, port: int, address: str, registry: CollectorRegistry) -> None:
        self.httpd, self.thread = start_http_server(port, address, registry)

    @property
    def port(self) -> int:
        return int(self.httpd.server_port)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def serve(
    port: int, address: str, registry: CollectorRegistry = REGISTRY, what: str = ""
) -> Server | None:
    """Serve ``registry`` on ``address:port`` (None when ``port`` is 0: metrics are off)."""
    if not port:
        return None
    server = Server(port, address, registry)
    log.info("metrics%s on http://%s:%d/metrics", f" of {what}" if what else "", address, port)
    return server


# --- several processes (gunicorn's workers) ------------------------------------------------


def use_multiprocess() -> str:
    """Make every metric value created from now on live in a per-process file in a fresh
    directory, which a MultiProcessCollector adds up; return the directory.

    For the API: gunicorn's master calls this before it forks its workers (workers make their
    values lazily, on first use, so all of theirs are files); the master then serves the sum.
    prometheus_client reads PROMETHEUS_MULTIPROC_DIR when it is first imported, which is too
    early to choose here, hence the value class is set again."""
    directory = tempfile.mkdtemp(prefix="ucloud-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
    return directory


def multiprocess_registry(directory: str) -> CollectorRegistry:
    registry = CollectorRegistry()
    _multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    return registry


def process_gone(pid: int) -> None:
    """A worker exited: forget its live gauges (its counters stay in the sums)."""
    _multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


# --- sampling with a deadline ----------------------------------------------------------------


class Sampler:
    """Takes a sample (``take``) on a thread of its own, one at a time, and lets a scrape wait
    at most ``timeout`` for a fresh one: if the source is slow (libvirtd busy with a migrating
    domain), the scrape gets the last sample instead, and at most one call is ever in flight."""

    def __init__(self, take: Callable[[], Any], timeout: float) -> None:
        self._take = take
        self.timeout = timeout
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._done.set()
        self.last: Any = None
        self.taken_at = 0.0  # monotonic time of the last sample (0: none yet)
        self.failures = 0  # samples that raised, in a row

    def get(self) -> Any:
        with self._lock:
            if self._done.is_set():
                self._done.clear()
                threading.Thread(target=self._run, name="sampler", daemon=True).start()
        self._done.wait(self.timeout)
        return self.last

    def _run(self) -> None:
        try:
            self.last = self._take()
            self.taken_at = time.monotonic()
            if self.failures:
                log.info("sampling works again")
            self.failures = 0
        except Exception as e:
            self.failures += 1
            if self.failures == 1:  # once a run of failures, not at every scrape
                log.warning("sampling failed (the last sample is served meanwhile): %s", e)
        finally:
            self._done.set()
