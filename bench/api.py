"""API throughput: /vm/status, /vm/list (a user with 1,000 VMs) and /vm/create under
ucloud-api (gunicorn, with its own settings), against a bare Flask app under the same gunicorn
configuration (bench/bare.py), with wrk on loopback.

References: GET /bare (a tiny JSON answer: what gunicorn and Flask cost alone) and GET
/payload (the bytes of a real /vm/list answer: what sending that much costs alone). Every
request of the ucloud API checks a TOTP token (auth.current_token) and reads etcd.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

from bench.common import (
    REPO,
    Daemon,
    Window,
    bench_settings,
    daemon,
    etcd_server,
    free_port,
    have_wrk,
    log,
    machine,
    memory_mib,
    record,
    running,
    table,
    token_ahead,
    wait_for,
    workdir,
    wrk,
)
from bench.profile import Profile
from tests.conftest import make_account, make_image
from ucloud.config import Settings, settings_env
from ucloud.models import VM, Event, Specs, Status
from ucloud.store import Store

AIM = 0.5  # of the bare rate


def add_vms(store: Store, owner: str, image: str, n: int) -> list[str]:
    """``n`` running VMs of ``owner`` with the event log a running VM has, in batches."""
    t = store.client.transactions
    ids, ops = [], []
    for i in range(n):
        vm = VM(
            name=f"vm{i}",
            owner=owner,
            owner_realm="users",
            specs=Specs(cpu=1, ram=1, ssd=10),
            image=image,
            status=Status.RUNNING,
            hostname=f"h{i % 50:02d}",
            disk=f"disk-{i}",
        )
        now, host = time.time(), vm.hostname
        vm.log = [
            Event(time=now, by="api", message=f"created by users/{owner}"),
            Event(time=now, by="scheduler", message=f"PENDING -> SCHEDULED: placed on {host}"),
            Event(time=now, by=f"host {host}", message="SCHEDULED -> CREATING"),
            Event(time=now, by=f"host {host}", message="CREATING -> RUNNING"),
        ]
        ids.append(vm.uuid)
        ops.append(t.put(store.key_of(vm), vm.model_dump_json()))
        if len(ops) == 100:
            store.client.transaction(compare=[], success=ops, failure=[])
            ops = []
    if ops:
        store.client.transaction(compare=[], success=ops, failure=[])
    return ids


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.api", description=__doc__.splitlines()[0])
    parser.add_argument("--vms", type=int, default=1000, help="the user's VMs")
    parser.add_argument("--seconds", type=float, default=None, help="per endpoint (10)")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--wrk-threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="3 s per endpoint")
    parser.add_argument("--record", action="store_true", help="write the table to RESULTS.md")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--profile", metavar="DIR", help="py-spy the API workers, into DIR")
    args = parser.parse_args(argv)
    seconds = args.seconds or (3.0 if args.quick else 10.0)
    if not have_wrk():
        print("bench.api needs wrk: apt-get install wrk", file=sys.stderr)
        return 2
    log(f"machine: {machine()}")

    with workdir("api", keep=args.keep) as wd, etcd_server(wd) as etcd:
        settings = bench_settings(etcd, api_bind=f"127.0.0.1:{free_port()}")
        bare_settings = settings.model_copy(update={"api_bind": f"127.0.0.1:{free_port()}"})
        store = Store(settings)
        alice = make_account(store, "alice")
        image = make_image(store, "bench-image")
        vm_ids = add_vms(store, alice.name, image.uuid, args.vms)
        api_url, bare_url = f"http://{settings.api_bind}", f"http://{bare_settings.api_bind}"

        with running(daemon("ucloud.api.main", settings, wd / "api.log")) as api:
            wait_for(lambda: _answers(api_url + "/openapi.json"), 30, "the API")
            listing = _get(api_url + "/vm/list?" + _creds(alice))
            payload = wd / "payload.json"
            payload.write_bytes(listing)
            log(f"/vm/list answers {len(listing) / 1024:.0f} KiB for {args.vms} VMs")
            with running(_start_bare(bare_settings, wd, payload)) as bare:
                wait_for(lambda: _answers(bare_url + "/bare"), 30, "the bare app")
                pids = {"api": api.pid, "bare": bare.pid, "etcd": etcd.proc.pid}
                cases = [
                    ("GET /bare", "bare", "GET", lambda: "/bare", "", None),
                    ("GET /payload", "bare", "GET", lambda: "/payload", "", None),
                    (
                        "GET /vm/status",
                        "api",
                        "GET",
                        lambda: f"/vm/status?{_creds(alice)}&id={vm_ids[0]}",
                        "",
                        "GET /bare",
                    ),
                    (
                        "GET /vm/list",
                        "api",
                        "GET",
                        lambda: f"/vm/list?{_creds(alice)}",
                        "",
                        "GET /bare",
                    ),
                    (
                        "POST /vm/create",
                        "api",
                        "POST",
                        lambda: "/vm/create",
                        "create",
                        "GET /bare",
                    ),
                ]
                results = {}
                for name, server, method, path, body, _ in cases:
                    url = api_url if server == "api" else bare_url
                    text = ""
                    if body == "create":
                        text = json.dumps(
                            {
                                "name": alice.name,
                                "realm": alice.realm,
                                "token": token_ahead(alice.secret),
                                "vm_name": "c%d-%d",
                                "image": image.uuid,
                                "specs": {"cpu": 1, "ram": 1},
                            }
                        )
                    # Warm up (gunicorn workers, connections), then measure.
                    wrk(
                        url,
                        seconds=1,
                        connections=args.connections,
                        method=method,
                        path=path(),
                        body=text,
                        threads=args.wrk_threads,
                        check=True,
                    )
                    log(f"{name} for {seconds:g} s")
                    window = Window({"server": pids[server], "etcd": pids["etcd"]})
                    profile = None
                    if args.profile and server == "api":
                        output = (
                            Path(args.profile) / f"{name.split('/', 1)[1].replace('/', '-')}.txt"
                        )
                        profile = Profile(pids[server], output, subprocesses=True)
                    r = wrk(
                        url,
                        seconds=seconds,
                        connections=args.connections,
                        method=method,
                        path=path(),
                        body=text,
                        threads=args.wrk_threads,
                        check=True,
                    )
                    window.close()
                    if profile is not None:
                        log(f"ucloud-api profile, {name}:\n{profile.stop(all_threads=True)}")
                    if r.errors:
                        raise RuntimeError(f"{name}: {r.errors} errors: {r.first_bad}")
                    results[name] = (r, window)
                rss = {n: memory_mib(p) for n, p in pids.items()}

    rows = []
    for name, server, _, _, _, ref in cases:
        r, w = results[name]
        if ref is None:
            ref = name if name == "GET /bare" else "GET /bare"
        base = results[ref][0].rate
        payload_ref = results["GET /payload"][0].rate if name == "GET /vm/list" else float("nan")
        rows.append(
            [
                name,
                "ucloud-api" if server == "api" else "bare Flask",
                r.rate,
                r.p50_ms,
                r.p90_ms,
                r.p99_ms,
                base,
                f"{r.rate / base:.1%}",
                f"{AIM:.0%}" if server == "api" else "-",
                payload_ref,
                1000 * w.cpu["server"] / max(r.requests, 1),
                1000 * w.cpu["etcd"] / max(r.requests, 1),
            ]
        )
    text = table(
        [
            "endpoint",
            "served by",
            "req/s",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "ref: bare req/s",
            "of bare",
            "aim",
            "ref: same bytes, bare req/s",
            "server CPU ms/req",
            "etcd CPU ms/req",
        ],
        rows,
    )
    notes = (
        f"- {args.vms} VMs of one user (each with the 4-entry event log of a running VM); "
        f"/vm/list answers {len(listing) / 1024:.0f} KiB. wrk: {args.wrk_threads} thread(s), "
        f"{args.connections} connections, {seconds:g} s per endpoint, after 1 s of warm-up.\n"
        f"- Both servers: gunicorn gthread, {settings.api_workers} workers x "
        f"{settings.api_threads} threads, access log on (ucloud-api's configuration). "
        "'same bytes': the bare app sending a stored copy of the /vm/list answer.\n"
        f"- RSS at the end: ucloud-api {rss['api'][0]:.0f} MiB, bare {rss['bare'][0]:.0f} MiB "
        f"(master and workers), etcd {rss['etcd'][0]:.0f} MiB."
    )
    out = f"{text}\n\n{notes}"
    print(out)
    if args.record:
        record("api", out)
    return 0


def _start_bare(settings: Settings, wd: Path, payload: Path) -> Daemon:
    env = {
        **settings_env(settings),
        "UCLOUD_ENV_FILE": "/dev/null",
        "BENCH_PAYLOAD": str(payload),
        "PYTHONPATH": str(REPO),
    }
    return Daemon([sys.executable, "-m", "bench.bare"], env, wd / "bare.log")


def _creds(account) -> str:
    return urllib.parse.urlencode(
        {"name": account.name, "realm": account.realm, "token": token_ahead(account.secret)}
    )


def _get(url: str) -> bytes:
    return urllib.request.urlopen(url, timeout=30).read()


def _answers(url: str) -> bool:
    try:
        _get(url)
        return True
    except OSError:
        return False


if __name__ == "__main__":
    sys.exit(main())
