"""Consoles: time from asking for a console to its first frame, against the same VNC handshake
straight on the host's socket; and ucloud-console's CPU and memory with many consoles open.

One host on the real stack (a private libvirtd, the host agent, its console relay, the
scheduler, the API under gunicorn, ucloud-console; disks on the ``file`` storage driver: the
disk is not what is measured) and one boot-sector VM, whose VGA text screen is the frame.

- ``ucloud``: POST /vm/console (a token written to etcd), open the WebSocket it names (the
  proxy forks, consumes the token, reads the VM and the host's relay, sends the relay a signed
  ticket), the RFB handshake, one full frame in Raw encoding (720x400, 1.1 MiB).
- ``direct``: the same RFB handshake and frame on the display's unix socket on the host: what
  the console costs without ucloud (the floor).

Then ``--consoles`` consoles are opened at once and held: ucloud-console's CPU and memory (the
listener and its forked children: RSS summed, and PSS, which counts shared pages once) idle,
and while every console asks for an incremental update twice a second (the guest prints a dot
a second); the relay's beside it, and both with no console open as the baseline.
"""

from __future__ import annotations

import argparse
import contextlib
import secrets
import socket
import sys
import threading
import time
from pathlib import Path

import requests

from bench.common import (
    Window,
    bench_settings,
    etcd_server,
    log,
    machine,
    pct,
    record,
    table,
    tree,
    workdir,
)
from tests.conftest import make_account, register_image
from tests.rfb import Stream, first_frame, frame, over_socket, over_websocket
from tests.servers import Daemon, free_port, wait_for
from tests.stack import GUEST_DIR, SCRIPTS, host_settings, run_script, start_libvirtd, stop_libvirtd
from ucloud import consoles
from ucloud.cli.console import connect
from ucloud.config import Settings, settings_env
from ucloud.models import VM, Status
from ucloud.storage import open_storage
from ucloud.store import Store

PER_DISPLAY = 25  # consoles held on one VM's display (QEMU allows 32)


def pss_mib(pid: int) -> float:
    total = 0
    for p in tree(pid):
        with contextlib.suppress(OSError), open(f"/proc/{p}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
    return total / 1024


def syn_retransmits() -> int:
    """The machine's TCP SYN retransmissions so far: a lost SYN costs a client 1, 3, 7, 15,
    31 s, which shows in the p95 of a loaded machine."""
    with open("/proc/net/netstat") as f:
        lines = [line.split() for line in f if line.startswith("TcpExt:")]
    return int(dict(zip(lines[0], lines[1], strict=True))["TCPSynRetrans"])


def start(name: str, settings: Settings, wd: Path, *module: str) -> Daemon:
    env = {**settings_env(settings), "UCLOUD_ENV_FILE": "/dev/null"}
    return Daemon([sys.executable, "-m", *module], env, wd / f"{name}.log")


def timed_console(api: str, creds: dict[str, str], vmid: str) -> tuple[float, float]:
    """Seconds to the first frame through ucloud, and of that the /vm/console request."""
    t0 = time.perf_counter()
    r = requests.post(f"{api}/vm/console", json={**creds, "vmid": vmid}, timeout=30)
    r.raise_for_status()
    t1 = time.perf_counter()
    ws = connect(r.json()["websocket"])
    try:
        first_frame(over_websocket(ws))
    finally:
        ws.close()
    return time.perf_counter() - t0, t1 - t0


def timed_direct(path: Path) -> float:
    t0 = time.perf_counter()
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(path))
        first_frame(over_socket(s))
    return time.perf_counter() - t0


class Held:
    """A console held open by a thread that asks for an incremental update when told to."""

    def __init__(self, url: str, active: threading.Event, stop: threading.Event) -> None:
        self.ws = connect(url)
        self.stream: Stream = over_websocket(self.ws, timeout=120)
        self.screen = first_frame(self.stream)
        self.updates = 0
        self.error = ""
        self.thread = threading.Thread(target=self._run, args=(active, stop), daemon=True)
        self.thread.start()

    def _run(self, active: threading.Event, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                if active.wait(0.5) and not stop.is_set():
                    frame(self.stream, self.screen.width, self.screen.height, incremental=True)
                    self.updates += 1
                    time.sleep(0.5)
        except Exception as e:  # report, do not hide: the table says how many failed
            self.error = str(e)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ws.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.consoles", description=__doc__.splitlines()[0])
    parser.add_argument("--opens", type=int, default=None, help="consoles timed (50; quick 15)")
    parser.add_argument("--consoles", type=int, default=50, help="held open at once (50)")
    parser.add_argument("--window", type=float, default=None, help="s measured (15; quick 8)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--record", action="store_true", help="write the table to RESULTS.md")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    opens = args.opens or (15 if args.quick else 50)
    window = args.window or (8.0 if args.quick else 15.0)
    log(f"machine: {machine()}")
    run_script(str(SCRIPTS / "build-guests.sh"), str(GUEST_DIR), timeout=900)

    with contextlib.ExitStack() as stack:
        wd = stack.enter_context(workdir("consoles", keep=args.keep))
        etcd = stack.enter_context(etcd_server(wd))
        lv = start_libvirtd(wd / "lv")
        stack.callback(stop_libvirtd, lv)
        api_port, proxy_port = free_port(), free_port()
        settings = bench_settings(
            etcd,
            storage="file",
            image_dir=str(wd / "images"),
            api_bind=f"127.0.0.1:{api_port}",
            api_workers=1,
            console_url=f"http://127.0.0.1:{api_port}",
            console_websocket_url=f"ws://127.0.0.1:{proxy_port}/",
            console_proxy_bind=f"127.0.0.1:{proxy_port}",
            console_relay_secret=secrets.token_hex(32),
        )
        host = host_settings(
            settings, None, lv, "node1", wd / "node1", console_relay_bind=f"127.0.0.1:{free_port()}"
        )
        store = Store(settings)
        stack.callback(store.close)
        image = register_image(
            store,
            open_storage(host),
            str(GUEST_DIR / "bootsector.raw"),
            "boot",
            "root",
            "ucloud-admin",
        )
        user = make_account(store, "bench")
        daemons = {
            "scheduler": start("scheduler", host, wd, "ucloud.scheduler.main"),
            "agent": start("agent", host, wd, "ucloud.host.main"),
            "relay": start("relay", host, wd, "ucloud.console.main", "relay"),
            "api": start("api", settings, wd, "ucloud.api.main"),
            "proxy": start("proxy", settings, wd, "ucloud.console.main"),
        }
        for d in daemons.values():
            stack.callback(d.stop)
        api = settings.console_url
        wait_for(lambda: _answers(api), 30, "the API")
        wait_for(lambda: store.get(consoles.ConsoleRelay, "node1"), 30, "the relay")
        # QEMU lets at most 32 viewers share one display (its VNC `connections` limit):
        # the held consoles are spread over enough VMs.
        vms = []
        for i in range(max(1, -(-args.consoles // PER_DISPLAY))):
            body = {
                **user.creds(),
                "vm_name": f"boot{i}",
                "image": image.uuid,
                "specs": {"cpu": 1, "ram": 0.125, "ssd": 1},
            }
            vms.append(requests.post(f"{api}/vm/create", json=body, timeout=30).json()["uuid"])
        for vmid in vms:
            log_file = Path(host.state_dir) / "console" / f"{vmid}.log"
            wait_for(
                lambda v=vmid: (found := store.get(VM, v)) and found.value.status == Status.RUNNING,
                90,
                "the VMs",
            )
            wait_for(
                lambda f=log_file: f.exists() and "UCLOUD-BOOT-OK" in f.read_text(),
                30,
                "the guest to draw its first line",
            )
        vmid = vms[0]
        socket_path = consoles.vnc_socket(host.vnc_dir, vmid)

        log(f"timing {opens} consoles each way")
        ours, asks, direct = [], [], []
        syn0 = syn_retransmits()
        for _ in range(opens):
            creds = user.creds()
            total, ask = timed_console(api, creds, vmid)
            ours.append(total)
            asks.append(ask)
            direct.append(timed_direct(socket_path))

        syns = syn_retransmits() - syn0
        log("through ucloud, s:", " ".join(f"{t:.3f}" for t in ours))
        log("direct, s:", " ".join(f"{t:.3f}" for t in direct))
        proxy, relay = daemons["proxy"].pid, daemons["relay"].pid
        pids = {"proxy": proxy, "relay": relay}
        base = Window(pids)
        time.sleep(window)
        base.close()
        base_pss = {n: pss_mib(p) for n, p in pids.items()}

        log(f"holding {args.consoles} consoles")
        active, stop_all = threading.Event(), threading.Event()
        held: list[Held] = []
        t0 = time.perf_counter()
        for i in range(args.consoles):
            ask = {**user.creds(), "vmid": vms[i % len(vms)]}
            r = requests.post(f"{api}/vm/console", json=ask, timeout=30)
            held.append(Held(r.json()["websocket"], active, stop_all))
        opened_in = time.perf_counter() - t0
        idle = Window(pids)
        time.sleep(window)
        idle.close()
        idle_pss = {n: pss_mib(p) for n, p in pids.items()}
        active.set()
        busy = Window(pids)
        time.sleep(window)
        busy.close()
        busy_pss = {n: pss_mib(p) for n, p in pids.items()}
        stop_all.set()
        updates = sum(h.updates for h in held)
        failed = sum(1 for h in held if h.error)
        for h in held:
            h.close()
        children = len(tree(proxy)) - 1

    rows = [
        [
            "first frame, through ucloud (token, proxy, relay)",
            pct(ours, 50) * 1000,
            pct(ours, 95) * 1000,
        ],
        ["  of which POST /vm/console", pct(asks, 50) * 1000, pct(asks, 95) * 1000],
        [
            "first frame, straight on the host's socket (reference)",
            pct(direct, 50) * 1000,
            pct(direct, 95) * 1000,
        ],
    ]
    latency = table(
        ["console opened to its first full frame (720x400, Raw)", "p50 ms", "p95 ms"], rows
    )
    usage = []
    for label, w, pss in (
        ("no console open", base, base_pss),
        (f"{args.consoles} consoles open, idle", idle, idle_pss),
        (f"{args.consoles} consoles, 2 updates/s each", busy, busy_pss),
    ):
        usage.append(
            [
                label,
                w.percent("proxy"),
                w.rss["proxy"],
                pss["proxy"],
                w.percent("relay"),
                w.rss["relay"],
                pss["relay"],
            ]
        )
    resources = table(
        [
            "",
            "proxy CPU %",
            "proxy RSS MiB (sum)",
            "proxy PSS MiB",
            "relay CPU %",
            "relay RSS MiB",
            "relay PSS MiB",
        ],
        usage,
    )
    notes = (
        f"{opens} consoles timed each way, one after the other; {args.consoles} opened at once "
        f"on {len(vms)} VMs in {opened_in:.1f} s ({children} proxy children at the end), "
        f"{window:g} s windows; "
        f"{updates} incremental updates answered, {failed} consoles failed. TCP SYNs "
        f"retransmitted on this machine while the consoles were timed: {syns}."
    )
    text = f"{latency}\n\n{resources}\n\n{notes}"
    print(text)
    if args.record:
        record("consoles", text)
    return 0


def _answers(url: str) -> bool:
    try:
        return requests.get(f"{url}/openapi.json", timeout=2).status_code == 200
    except requests.RequestException:
        return False


if __name__ == "__main__":
    sys.exit(main())
