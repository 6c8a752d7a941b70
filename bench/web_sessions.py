"""What the console page's revocable sessions cost: a page's JSON call with a live session (one
etcd get of its record, then the catalog) against the same call without a cookie (refused
before any etcd read) and a bare get of a session record, all in the same run on one etcd;
and a login (a lease granted, the record created) against a bare create.

In-process through Flask's test client, so the figures are the server's own work, not HTTP's.
"""

from __future__ import annotations

import argparse
import re
import secrets
import sys
import time
from collections.abc import Callable

from bench.common import bench_settings, etcd_server, log, machine, pct, record, table, workdir
from ucloud import auth, websessions
from ucloud.api import create_app
from ucloud.api.users import create_user
from ucloud.models import User
from ucloud.store import Store


def timed(runs: int, call: Callable[[], object]) -> list[float]:
    for _ in range(max(10, runs // 10)):  # warm up
        call()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


def row(what: str, times: list[float], reference: str) -> list[object]:
    return [what, 1000 * pct(times, 50), 1000 * pct(times, 95), reference]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.web_sessions", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=None, help="requests of each (3000; quick 500)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--record", action="store_true", help="write the table to RESULTS.md")
    args = parser.parse_args(argv)
    runs = args.runs or (500 if args.quick else 3000)
    log(f"machine: {machine()}")
    with workdir("websessions") as work, etcd_server(work) as etcd:
        settings = bench_settings(
            etcd, web_secret_key=secrets.token_hex(32), web_cookie_secure=False
        )
        store = Store(settings)
        account = create_user(store, "bench", "users")
        app = create_app(settings, store)
        catalog = app.extensions["ucloud"].catalog
        while catalog.user("users/bench") is None:
            time.sleep(0.05)
        browser = app.test_client()
        form = browser.get("/console/login").text
        found = re.search(r'name="csrf" value="([^"]+)"', form)
        assert found
        login = {
            "name": "bench",
            "realm": "users",
            "token": auth.current_token(account.totp_secret),
            "csrf": found.group(1),
        }
        assert browser.post("/console/login", data=login).status_code == 302
        assert browser.get("/console/api/vms").status_code == 200
        anonymous = app.test_client()
        user = store.get(User, "users/bench")
        assert user is not None
        session_id, record_ = websessions.begin(store, user.value, 3600)

        log(f"{runs} requests of each")
        with_session = timed(runs, lambda: browser.get("/console/api/vms"))
        without = timed(runs, lambda: anonymous.get("/console/api/vms"))
        bare_get = timed(runs, lambda: store.get(websessions.WebSession, record_.digest))
        logins = timed(
            runs // 5,
            lambda: websessions.begin(store, user.value, settings.web_session_lifetime),
        )
        creates = timed(
            runs // 5,
            lambda: store.create(record_.model_copy(update={"digest": secrets.token_hex(32)})),
        )
        app.extensions["ucloud"].catalog.stop()
        store.close()
        assert session_id

    out = table(
        ["what", "p50 ms", "p95 ms", "reference"],
        [
            row("GET /console/api/vms, live session", with_session, "the page's poll"),
            row("GET /console/api/vms, no cookie (401)", without, "no etcd read"),
            row("store.get of a session record", bare_get, "the floor: one etcd get"),
            row("a login's session (lease + create)", logins, "what a login adds"),
            row("store.create of a record, no lease", creates, "the floor: one etcd txn"),
        ],
    )
    print(out)
    if args.record:
        record("web sessions", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
