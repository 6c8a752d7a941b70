"""What the benchmarks share: servers from the test infrastructure (tests/servers.py,
tests/stack.py), process accounting from /proc, etcd's own request counters, wrk, percentiles,
tables, and bench/RESULTS.md."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyotp

from tests.servers import Daemon, Etcd, free_port, wait_for
from tests.stack import REPO, SCRIPTS, Ceph, _free_port_block, daemon, run_script
from ucloud.config import Settings, load_settings
from ucloud.store import Store

BENCH = REPO / "bench"
RESULTS = BENCH / "RESULTS.md"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

__all__ = ["REPO", "Ceph", "Daemon", "daemon", "free_port", "wait_for"]


def log(*parts: object) -> None:
    """Progress on stderr, so stdout keeps only the tables."""
    print(time.strftime("%H:%M:%S"), *parts, file=sys.stderr, flush=True)


# --- servers ------------------------------------------------------------------------------------


@contextlib.contextmanager
def workdir(name: str, keep: bool = False) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=f"ucbench-{name}-"))
    try:
        yield path
    finally:
        if keep:
            log(f"kept {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def etcd_server(directory: Path) -> Iterator[Etcd]:
    server = Etcd(directory / "etcd")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def bench_settings(etcd: Etcd, **more: object) -> Settings:
    return load_settings(
        etcd_endpoints=f"127.0.0.1:{etcd.port}",
        etcd_prefix=f"/bench-{uuid.uuid4().hex[:8]}/v1",
        log_level="INFO",
        # Benchmarks create thousands of VMs as one user: no quota (a quota's check is still
        # made: the usage record is written in every create's transaction).
        **{f"quota_{r}": -1 for r in ("vms", "cpu", "ram", "disk", "networks", "images")},
        **more,
    )


@contextlib.contextmanager
def ceph_cluster(directory: Path, osd_size: str = "40G") -> Iterator[Ceph]:
    """A one-node Ceph cluster as the tests' fixture makes it (scripts/ceph-up.sh, no mgr)."""
    cluster = directory / "cluster"
    env = {
        "CEPH_PORT_BASE": str(_free_port_block(100)),
        "CEPH_OSD_SIZE": osd_size,
        "CEPH_NO_MGR": "1",
    }
    run_script(str(SCRIPTS / "ceph-up.sh"), str(cluster), env=env, timeout=300)
    try:
        yield Ceph(cluster, cluster / "ceph.conf", cluster / "ceph.client.ucloud.keyring")
    finally:
        run_script(str(SCRIPTS / "ceph-down.sh"), str(cluster), timeout=120)


def with_ceph(settings: Settings, ceph: Ceph) -> Settings:
    """``settings`` with the storage of ``ceph`` (as tests.stack.host_settings sets it)."""
    return settings.model_copy(
        update={
            "ceph_conf": str(ceph.conf),
            "ceph_keyring": str(ceph.keyring),
            "ceph_pool": ceph.pool,
            "image_pool": ceph.pool,
        }
    )


@contextlib.contextmanager
def running(d: Daemon) -> Iterator[Daemon]:
    try:
        yield d
    finally:
        d.stop()


# --- processes ----------------------------------------------------------------------------------


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants (gunicorn's workers, for instance)."""
    pids = [pid]
    i = 0
    while i < len(pids):
        p = pids[i]
        i += 1
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    pids.extend(int(c) for c in f.read().split())
    return pids


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` and its live descendants."""
    total = 0
    for p in tree(pid):
        with contextlib.suppress(OSError):
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLOCK_TICKS


def memory_mib(pid: int) -> tuple[float, float]:
    """(resident, peak resident) MiB of ``pid`` and its descendants."""
    rss = peak = 0
    for p in tree(pid):
        with contextlib.suppress(OSError), open(f"/proc/{p}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    peak += int(line.split()[1])
    return rss / 1024, peak / 1024


@dataclass
class Window:
    """CPU used by some processes over a stretch of wall time."""

    pids: dict[str, int]
    start: float = field(default_factory=time.monotonic)
    cpu0: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)  # seconds used in the window
    seconds: float = 0.0
    rss: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.cpu0 = {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def close(self) -> Window:
        self.seconds = time.monotonic() - self.start
        self.cpu = {n: cpu_seconds(p) - self.cpu0[n] for n, p in self.pids.items()}
        self.rss = {n: memory_mib(p)[0] for n, p in self.pids.items()}
        return self

    def percent(self, name: str) -> float:
        return 100 * self.cpu[name] / self.seconds if self.seconds else 0.0


# --- etcd ---------------------------------------------------------------------------------------


def etcd_requests(etcd: Etcd) -> Counter[str]:
    """Requests etcd has answered since it started, by gRPC method (Range, Txn, Put...)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{etcd.port}/metrics", timeout=10).read()
    counts: Counter[str] = Counter()
    for line in text.decode().splitlines():
        if line.startswith("grpc_server_handled_total{"):
            labels, _, value = line.rpartition(" ")
            method = labels.split('grpc_method="', 1)[1].split('"', 1)[0]
            counts[method] += int(float(value))
    return counts


def single_txn_rate(store: Store, seconds: float, threads: int = 1) -> float:
    """Transactions a second, each what Store.create sends (compare version == 0, one put of
    a 600-byte value), from ``threads`` clients sharing one channel, one request at a time
    each: the reference every scheduling figure is held against."""
    t = store.client.transactions
    value = "x" * 600
    base = f"{store.prefix}/bench-raw/{uuid.uuid4().hex[:6]}"
    done = [0] * threads
    deadline = time.monotonic() + seconds

    def work(i: int) -> None:
        n = 0
        while time.monotonic() < deadline:
            key = f"{base}/{i}/{n}"
            store.client.transaction(
                compare=[t.version(key) == 0], success=[t.put(key, value)], failure=[]
            )
            n += 1
        done[i] = n

    start = time.monotonic()
    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.monotonic() - start
    store.client.delete_prefix(base)
    return sum(done) / elapsed


# --- wrk ----------------------------------------------------------------------------------------

WRK_LUA = r"""
-- Written by bench/common.py. Env: WRK_METHOD, WRK_PATH, WRK_BODY (a string.format template
-- given the thread number, a per-thread counter and one of WRK_SPECS round robin: unique VM
-- names, varied sizes), WRK_SPECS ("a|b|c"), WRK_CHECK (1: count non-2xx answers and keep the
-- first one's body).
local method = os.getenv("WRK_METHOD") or "GET"
local path = os.getenv("WRK_PATH") or "/"
local template = os.getenv("WRK_BODY") or ""
local specs = {}
for s in string.gmatch(os.getenv("WRK_SPECS") or "", "[^|]+") do table.insert(specs, s) end
local threads = {}
local next_id = 1

function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

function init(args)
  counter = 0
  responses = 0
  bad = 0
  first_bad = ""
end

function request()
  counter = counter + 1
  local body = nil
  if template ~= "" then
    body = string.format(template, id, counter, specs[(counter % math.max(#specs, 1)) + 1] or "")
  end
  return wrk.format(method, path, {["Content-Type"] = "application/json"}, body)
end

if os.getenv("WRK_CHECK") == "1" then
  function response(status, headers, body)
    responses = responses + 1
    if status >= 300 then
      bad = bad + 1
      if first_bad == "" then first_bad = status .. " " .. string.sub(body or "", 1, 200) end
    end
  end
end

function done(summary, latency, requests)
  local bad_total, first = 0, ""
  for _, t in ipairs(threads) do
    bad_total = bad_total + (t:get("bad") or 0)
    local f = t:get("first_bad") or ""
    if first == "" then first = f end
  end
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, ' ..
    '"status": %d, "timeout": %d, "bad": %d, "p50": %d, "p90": %d, "p99": %d, ' ..
    '"mean": %f, "first_bad": %q}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    bad_total, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.mean, first))
end
"""


@dataclass(frozen=True)
class WrkResult:
    requests: int
    seconds: float
    errors: int  # socket errors and non-2xx/3xx answers
    p50_ms: float
    p90_ms: float
    p99_ms: float
    first_bad: str

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


def wrk(
    url: str,
    *,
    seconds: float,
    connections: int,
    threads: int = 2,
    method: str = "GET",
    path: str = "/",
    body: str = "",
    specs: Sequence[str] = (),
    check: bool = False,
    stop_when: Callable[[], bool] | None = None,
) -> WrkResult:
    """Run wrk against ``url`` for ``seconds`` (or until ``stop_when()``: wrk stops on SIGINT
    and still reports). ``body`` is a string.format template given the wrk thread number, a
    per-thread counter and one of ``specs`` in turn."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(WRK_LUA)
        script = f.name
    env = {
        **os.environ,
        "WRK_METHOD": method,
        "WRK_PATH": path,
        "WRK_BODY": body,
        "WRK_SPECS": "|".join(specs),
        "WRK_CHECK": "1" if check else "0",
    }
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s"]
    argv += ["--timeout=10s", "-s", script, url]
    try:
        proc = subprocess.Popen(
            argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        try:
            while stop_when is not None and proc.poll() is None:
                if stop_when():
                    proc.send_signal(signal.SIGINT)
                    break
                time.sleep(0.02)
            out, _ = proc.communicate(timeout=seconds + 60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    finally:
        os.unlink(script)
    line = next((x for x in out.splitlines() if x.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}):\n{out[-2000:]}")
    d = json.loads(line[len("WRKJSON ") :])
    errors = d["connect"] + d["read"] + d["write"] + d["timeout"] + max(d["status"], d["bad"])
    return WrkResult(
        requests=d["requests"],
        seconds=d["duration_us"] / 1e6,
        errors=errors,
        p50_ms=d["p50"] / 1000,
        p90_ms=d["p90"] / 1000,
        p99_ms=d["p99"] / 1000,
        first_bad=d["first_bad"],
    )


def token_ahead(secret: str) -> str:
    """A TOTP token for the next 30 s step: the API (totp_valid_window 1) takes it from now
    for at least 60 s, long enough for one load run."""
    return pyotp.TOTP(secret).at(time.time() + 30)


# --- numbers and tables ---------------------------------------------------------------------------


def pct(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (nearest rank) of ``values``; NaN if empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table (it reads in a terminal too)."""
    cells = [[_cell(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    lines = [
        "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    lines += [
        "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
        for row in cells
    ]
    return "\n".join(lines)


def _cell(value: object) -> str:
    if isinstance(value, float):
        if value != value:
            return "-"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def machine() -> str:
    cpus = os.cpu_count()
    with open("/proc/meminfo") as f:
        mem = int(next(line.split()[1] for line in f if line.startswith("MemTotal:"))) >> 20
    load = os.getloadavg()[0]
    return f"{cpus} cores, {mem} GiB, load average {load:.2f} at start"


def command() -> str:
    module = Path(sys.argv[0]).stem if sys.argv[0].endswith(".py") else "?"
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    if spec is not None:
        module = spec.name
    return " ".join([".venv/bin/python -m", module, *sys.argv[1:]])


def record(section: str, text: str) -> None:
    """Put ``text`` (with the command that made it, and when) into bench/RESULTS.md between
    the section's markers, replacing what an earlier run left there."""
    begin, end = f"<!-- bench:{section} -->", f"<!-- /bench:{section} -->"
    stamp = time.strftime("%Y-%m-%d %H:%M %Z")
    block = f"{begin}\n`{command()}` ({stamp}; {machine()})\n\n{text.strip()}\n{end}"
    current = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    if begin in current and end in current:
        head, rest = current.split(begin, 1)
        _, tail = rest.split(end, 1)
        current = head + block + tail
    else:
        current = current.rstrip() + f"\n\n## {section}\n\n{block}\n"
    RESULTS.write_text(current)
    log(f"recorded in {RESULTS.relative_to(REPO)} ({section})")
