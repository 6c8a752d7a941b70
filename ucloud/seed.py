"""A VM's cloud-init NoCloud seed: what a new VM learns on its first boot.

An ISO 9660 volume labelled ``cidata`` (with Joliet and Rock Ridge names, as cloud-init's
NoCloud datasource and every guest kernel read it) holding:

- ``meta-data``: ``instance-id`` (the VM's uuid: a restart, an evacuation or a migration is the
  same instance, so cloud-init never runs first boot twice), ``local-hostname``, and
  ``public-keys`` (the VM's SSH keys: taken by cloud-init whatever the user-data is);
- ``user-data``: the user's own (a ``#cloud-config``, a ``#!`` script...), or else a
  cloud-config with the SSH keys.

- ``network-config`` (a VM with ports only): version 2, one ethernet per port matched by its
  MAC and named ``eth<i>`` in port order, its IPv6 address set statically (the port's,
  which SLAAC would give too), router advertisements accepted (the default route, the MTU),
  DHCPv4 where the network has IPv4 (the router hands out the port's reserved address).
  Without one cloud-init configures the first NIC by DHCP (and RA).

The seed is built from the VM's record alone (``VM.first_boot``, fixed at creation), with fixed
timestamps, so every host that starts the VM makes the same bytes (docs/design-decisions.md).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import threading
import time as _time
import unicodedata
from time import gmtime, strftime, struct_time
from typing import Any

import pycdlib

from ucloud.models import VM, FirstBoot

VOLUME_ID = "cidata"
MAX_HOSTNAME = 63  # one DNS label: cloud-init and most guests take the first label anyway

_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def check_hostname(value: str) -> str:
    """A hostname a user asked for: one DNS label (RFC 1123), lower-cased."""
    name = value.strip().lower()
    if not _LABEL.match(name):
        raise ValueError(
            "must be 1 to 63 letters, digits or '-', not starting or ending with '-' "
            "(one DNS label, such as 'web-1')"
        )
    return name


def hostname_for(vm_name: str, vm_uuid: str) -> str:
    """The default guest hostname: the VM's name made DNS-safe (``My_VM.2`` -> ``my-vm-2``,
    ``Café`` -> ``cafe``: accents folded away rather than the letter lost); ``vm-<uuid
    prefix>`` if nothing of it is left."""
    ascii_name = unicodedata.normalize("NFKD", vm_name).encode("ascii", "ignore").decode()
    name = re.sub(r"[^a-z0-9]+", "-", ascii_name.lower()).strip("-")[:MAX_HOSTNAME].strip("-")
    return name or f"vm-{vm_uuid[:8]}"


def first_boot(hostname: str, ssh_keys: list[str], user_data: str) -> FirstBoot:
    data = user_data.encode()
    return FirstBoot(
        hostname=hostname,
        ssh_keys=ssh_keys,
        user_data=user_data,
        user_data_size=len(data),
        user_data_sha256=hashlib.sha256(data).hexdigest() if data else "",
    )


# --- the files ------------------------------------------------------------------------------


def _yaml_str(value: str) -> str:
    # A JSON string is a YAML double-quoted scalar: no quoting rules of our own to get wrong.
    return json.dumps(value)


def meta_data(vm: VM, boot: FirstBoot) -> str:
    lines = [
        f"instance-id: {_yaml_str(vm.uuid)}",
        f"local-hostname: {_yaml_str(boot.hostname)}",
    ]
    if boot.ssh_keys:
        lines.append("public-keys:")
        lines += [f"  - {_yaml_str(key)}" for key in boot.ssh_keys]
    return "\n".join(lines) + "\n"


def user_data(boot: FirstBoot) -> str:
    if boot.user_data:
        return boot.user_data
    lines = ["#cloud-config", "# made by ucloud: the VM's SSH keys (meta-data has them too)"]
    if boot.ssh_keys:
        lines.append("ssh_authorized_keys:")
        lines += [f"  - {_yaml_str(key)}" for key in boot.ssh_keys]
    return "\n".join(lines) + "\n"


def files(vm: VM) -> dict[str, bytes]:
    """The seed's files by name; empty for a VM without first-boot data (an older record)."""
    if vm.first_boot is None:
        return {}
    found = {
        "meta-data": meta_data(vm, vm.first_boot).encode(),
        "user-data": user_data(vm.first_boot).encode(),
    }
    if vm.ports:
        found["network-config"] = network_config(vm).encode()
    return found


def network_config(vm: VM) -> str:
    """cloud-init's network config (version 2; JSON is YAML) for the VM's ports."""
    ethernets = {
        f"eth{i}": {
            "match": {"macaddress": port.mac},
            "set-name": f"eth{i}",
            "addresses": [f"{port.ipv6}/64"],
            "accept-ra": True,
            "dhcp4": bool(port.ipv4),
            "dhcp6": False,
        }
        for i, port in enumerate(vm.ports)
    }
    return json.dumps({"version": 2, "ethernets": ethernets}, indent=2, sort_keys=True) + "\n"


# --- the ISO --------------------------------------------------------------------------------


class _FixedClock:
    """What pycdlib sees as its ``time`` module while it builds a seed: every timestamp it
    writes (volume dates, directory records, Rock Ridge times) is ``at``, in UTC whatever the
    host's time zone. pycdlib takes no dates of its own, and two hosts must make the same
    bytes."""

    def __init__(self) -> None:
        self.at = 0.0

    def time(self) -> float:
        return self.at

    def localtime(self, seconds: float | None = None) -> struct_time:
        return gmtime(self.at if seconds is None else seconds)

    def gmtime(self, seconds: float | None = None) -> struct_time:
        return gmtime(self.at if seconds is None else seconds)

    def strftime(self, fmt: str, t: Any = None) -> str:
        return strftime(fmt, t if t is not None else gmtime(self.at))

    def __getattr__(self, name: str) -> Any:
        return getattr(_time, name)  # what reading an ISO uses (strptime, mktime...)


_clock = _FixedClock()
_clock_lock = threading.Lock()  # one build at a time sets the clock (agents build in threads)
for _module in (pycdlib.pycdlib, pycdlib.headervd, pycdlib.dates, pycdlib.utils):
    _module.time = _clock  # type: ignore[attr-defined]


def iso(vm: VM) -> bytes:
    """The seed as an ISO image; the same VM record gives the same bytes on any host.
    Its timestamps are the VM's creation time (whole seconds)."""
    contents = files(vm)
    with _clock_lock:
        _clock.at = float(int(vm.created))
        cd = pycdlib.pycdlib.PyCdlib()
        cd.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident=VOLUME_ID)
        for name, data in sorted(contents.items()):
            iso_name = "/" + name.replace("-", "").upper()[:8] + ".;1"
            cd.add_fp(io.BytesIO(data), len(data), iso_name, rr_name=name, joliet_path=f"/{name}")
        out = io.BytesIO()
        cd.write_fp(out)
        cd.close()
    return out.getvalue()
