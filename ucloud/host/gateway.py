"""The router of tenant networks: one dnsmasq per network on its router host, sending router
advertisements (the /64 for SLAAC, the MTU) and serving DHCPv4 with the addresses reserved
in etcd only (a ``static`` range: a MAC not reserved gets nothing).

Each dnsmasq has its own config, hosts file, lease file and pid file in
``<state_dir>/gateway/<vni>/``; it is started when its network is routed here, told to re-read
its hosts file (SIGHUP) when the reservations change, and stopped by the pid in its pid file
(checked against its command line) when the network leaves. No DNS (``port=0``).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path

from ucloud import proc

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Routed:
    """One network this host routes."""

    vni: int
    bridge: str
    ipv6_prefix: str
    ipv4_subnet: str
    mtu: int
    leases: tuple[tuple[str, str], ...]  # (MAC, IPv4) reserved on it


def gateway_addresses(ipv6_prefix: str, ipv4_subnet: str) -> tuple[str, ...]:
    """The router's addresses on a network: the /64's ::1 and the subnet's first host."""
    six = ipaddress.IPv6Network(ipv6_prefix)
    found = [f"{six.network_address + 1}/{six.prefixlen}"]
    if ipv4_subnet:
        four = ipaddress.IPv4Network(ipv4_subnet)
        found.append(f"{four.network_address + 1}/{four.prefixlen}")
    return tuple(found)


class Gateways:
    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir / "gateway"

    def apply(self, routed: list[Routed]) -> None:
        wanted = {str(r.vni): r for r in routed}
        for r in routed:
            self._ensure(r)
        if self.dir.is_dir():
            for folder in self.dir.iterdir():
                if folder.name not in wanted:
                    self._stop(folder)
                    shutil.rmtree(folder, ignore_errors=True)
                    log.info("network %s: its router is gone from here", folder.name)

    def _ensure(self, r: Routed) -> None:
        folder = self.dir / str(r.vni)
        folder.mkdir(parents=True, exist_ok=True)
        conf, hosts = folder / "dnsmasq.conf", folder / "hosts"
        text = config(r, folder)
        hosts_text = "".join(f"{mac},{ip}\n" for mac, ip in r.leases)
        hosts_changed = _write_if_changed(hosts, hosts_text)
        conf_changed = _write_if_changed(conf, text)
        pid = self._pid(folder)
        if pid is not None and conf_changed:
            self._stop(folder)
            pid = None
        if pid is None:
            proc.run(["dnsmasq", f"--conf-file={conf}"], timeout=30)
            log.info("network %d: router advertisements and DHCP on %s", r.vni, r.bridge)
        elif hosts_changed:
            os.kill(pid, signal.SIGHUP)  # re-reads the hosts file

    def _pid(self, folder: Path) -> int | None:
        """The pid of the folder's dnsmasq, if it runs (its command line names its config)."""
        try:
            pid = int((folder / "dnsmasq.pid").read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return None
        return pid if str(folder / "dnsmasq.conf").encode() in cmdline else None

    def _stop(self, folder: Path) -> None:
        pid = self._pid(folder)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)


def config(r: Routed, folder: Path) -> str:
    lines = [
        f"interface={r.bridge}",
        "bind-interfaces",
        "except-interface=lo",
        "port=0",
        "user=root",
        f"pid-file={folder / 'dnsmasq.pid'}",
        f"dhcp-leasefile={folder / 'leases'}",
        f"dhcp-hostsfile={folder / 'hosts'}",
        f"log-facility={folder / 'dnsmasq.log'}",
        "enable-ra",
        f"dhcp-range=::,constructor:{r.bridge},ra-only,64,1h",
        f"ra-param={r.bridge},mtu:{r.mtu},10",
    ]
    if r.ipv4_subnet:
        four = ipaddress.IPv4Network(r.ipv4_subnet)
        lines.append(f"dhcp-range={four.network_address},static,{four.netmask},1h")
        lines.append(f"dhcp-option=option:mtu,{r.mtu}")
        lines.append("dhcp-authoritative")
    return "\n".join(lines) + "\n"


def _write_if_changed(path: Path, text: str) -> bool:
    try:
        if path.read_text() == text:
            return False
    except OSError:
        pass
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return True
