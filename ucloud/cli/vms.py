"""``ucloud vm ...``: create, list, show and act on VMs."""

from __future__ import annotations

import argparse
import re
from typing import Any

from ucloud import sshkeys
from ucloud.cli.errors import ExitCode, Refused
from ucloud.cli.http import API
from ucloud.cli.keys import read_text
from ucloud.cli.output import fields, gib, table, when
from ucloud.cli.session import Session
from ucloud.cli.wait import Goal, wait_for

_UUID = re.compile(r"^[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}$", re.IGNORECASE)
_NUMBER = re.compile(r"^\d+(\.\d+)?$")


def size(text: str) -> int | float | str:
    """A size as typed: plain numbers (GiB) go as numbers, "10G" or "512M" as the string,
    which the API parses; it also says what is wrong with a bad one."""
    text = text.strip()
    if _NUMBER.match(text):
        return float(text) if "." in text else int(text)
    return text


def resolve(api: API, ref: str) -> str:
    """A VM's uuid from its uuid or its name (names are not unique, so a clash is an error)."""
    if _UUID.match(ref):
        return ref
    named = [v for v in api.get("/vm/list").get("vms", []) if v.get("name") == ref]
    if not named:
        raise Refused(f"no VM named {ref!r}", 404, "see your VMs with: ucloud vm list")
    if len(named) > 1:
        uuids = ", ".join(v["uuid"] for v in named)
        raise Refused(f"{len(named)} VMs are named {ref!r}; give one's uuid: {uuids}", 409)
    return named[0]["uuid"]


def create(s: Session, args: argparse.Namespace) -> int:
    specs: dict[str, Any] = {"cpu": args.cpu, "ram": size(args.ram)}
    if args.ssd is not None:
        specs["ssd"] = size(args.ssd)
    if args.hdd is not None:
        specs["hdd"] = size(args.hdd)
    first_boot: dict[str, Any] = {}
    if args.no_ssh_keys or args.ssh_key:
        first_boot["ssh_keys"] = [] if args.no_ssh_keys else args.ssh_key
    if args.user_data is not None:
        first_boot["user_data"] = read_text(args.user_data, "user-data file")
    if args.hostname is not None:
        first_boot["hostname"] = args.hostname
    reply = s.api.post(
        "/vm/create",
        vm_name=args.name,
        specs=specs,
        image=args.image,
        networks=args.network or [],
        **first_boot,
    )
    vm = reply["vm"]
    s.out.text(f"VM {vm['name']} created: {vm['uuid']}")
    if args.wait:
        vm = wait_for(s.api, vm, Goal.of("create", vm), args.timeout, s.out)
        s.out.text(f"VM {vm['uuid']} is {vm['status']} on {vm.get('hostname') or '-'}")
    s.out.data(vm)
    return ExitCode.OK


def list_vms(s: Session, args: argparse.Namespace) -> int:
    s.out.listing(
        s.api.get("/vm/list")["vms"],
        "no VMs",
        ("UUID", "NAME", "STATUS", "DESIRED", "HOST", "CPU", "RAM", "ADDRESSES"),
        lambda v: (
            v["uuid"],
            v["name"],
            v["status"],
            v["desired"],
            v["hostname"] or "-",
            v["specs"]["cpu"],
            gib(v["specs"]["ram"]),
            addresses(v),
        ),
    )
    return ExitCode.OK


def status(s: Session, args: argparse.Namespace) -> int:
    vm = s.api.get("/vm/status", vmid=resolve(s.api, args.vm))
    s.out.data(vm)
    s.out.text(describe(vm))
    return ExitCode.OK


def describe(vm: dict[str, Any]) -> str:
    spec = vm["specs"]
    state = f"{vm['status']} since {when(vm.get('status_since'))}"
    if vm.get("reason"):
        state += f" ({vm['reason']})"
    pairs: list[tuple[str, object]] = [
        ("uuid", vm["uuid"]),
        ("name", vm["name"]),
        ("owner", f"{vm['owner_realm']}/{vm['owner']}"),
        ("status", state),
        ("desired", vm["desired"]),
        ("host", vm.get("hostname") or "-"),
        (
            "specs",
            f"{spec['cpu']} CPU, {gib(spec['ram'])} RAM, "
            f"{gib(spec['ssd'])} SSD, {gib(spec['hdd'])} HDD",
        ),
        ("image", vm["image"]),
        ("networks", nics(vm)),
        ("created", when(vm.get("created"))),
        # What the guest printed on its console at first boot: compare with what ssh shows.
        (
            "host keys",
            "\n           ".join(sshkeys.host_key_label(k) for k in vm.get("host_keys") or [])
            or "- (not seen on its console yet)",
        ),
    ]
    if vm.get("migration"):
        pairs.insert(6, ("migration", describe_migration(vm["migration"])))
    events = [(when(e.get("time")), e.get("by", ""), e.get("message", "")) for e in vm["log"]]
    text = fields(pairs) + "\n\n" + first_boot(vm.get("first_boot"))
    if events:
        text += "\n\nevents:\n" + table(("TIME", "BY", "MESSAGE"), events)
    return text


def first_boot(boot: dict[str, Any] | None) -> str:
    """The guest's hostname, keys and user-data (by size and hash: it may hold secrets)."""
    if not boot:
        return "first boot: none (the VM is older than first-boot seeds)"
    keys = boot.get("ssh_keys") or []
    user_data = "-"
    if boot.get("user_data_size"):
        user_data = f"{boot['user_data_size']} bytes, sha256 {boot['user_data_sha256']}"
    pairs: list[tuple[str, object]] = [
        ("hostname", boot.get("hostname", "-")),
        ("ssh keys", "\n           ".join(_key_label(k) for k in keys) or "-"),
        ("user-data", user_data),
    ]
    return "first boot:\n" + "\n".join("  " + line for line in fields(pairs).splitlines())


def _key_label(line: str) -> str:
    """A key as ssh-keygen -l shows it: fingerprint and comment."""
    try:
        key = sshkeys.parse(line)
    except sshkeys.InvalidKey:
        return line[:40]
    return f"{key.fingerprint} {key.comment}".rstrip()


def act(s: Session, args: argparse.Namespace) -> int:
    """start, stop, suspend, resume, reboot or delete: the handler for all of them."""
    vmid = resolve(s.api, args.vm)
    if args.action == "delete":
        reply = s.api.post("/vm/delete", vmid=vmid)
    else:
        reply = s.api.post("/vm/action", vmid=vmid, action=args.action)
    vm = reply["vm"]
    if not args.wait:
        s.out.text(f"{reply.get('message', 'queued')}: VM {vmid} is {vm['status']} now")
        s.out.data(vm)
        return ExitCode.OK
    final = wait_for(s.api, vm, Goal.of(args.action, vm), args.timeout, s.out)
    if not final:
        s.out.text(f"VM {vmid} is deleted")
        s.out.data({"uuid": vmid, "deleted": True})
    else:
        s.out.text(f"VM {vmid} is {final['status']}")
        s.out.data(final)
    return ExitCode.OK


def nics(vm: dict[str, Any]) -> str:
    """A VM's NICs in one line: MAC and addresses of each."""
    ports = vm.get("ports") or []
    if not ports:
        return "no NICs"
    return "; ".join(
        " ".join(x for x in (p["mac"], p["ipv6"], p.get("ipv4", "")) if x) for p in ports
    )


def addresses(vm: dict[str, Any]) -> str:
    """A VM's addresses for a listing: IPv4 where there is one, else IPv6."""
    return ",".join(p.get("ipv4") or p["ipv6"] for p in vm.get("ports") or []) or "-"


def resize(s: Session, args: argparse.Namespace) -> int:
    fields = {k: size(v) for k in ("ram", "ssd", "hdd") if (v := getattr(args, k)) is not None}
    if args.cpu is not None:
        fields["cpu"] = args.cpu
    vm = s.api.post("/vm/resize", vmid=resolve(s.api, args.vm), **fields)["vm"]
    s.out.data(vm)
    s.out.text(f"VM {vm['uuid']} resized; it takes effect when it starts\n" + describe(vm))
    return ExitCode.OK


def describe_migration(migration: dict[str, Any] | None) -> str:
    """A migration in flight in one line (``vm status``)."""
    if not migration:
        return "-"
    line = (
        f"{migration['phase']}: {migration['source']} -> {migration.get('target') or '?'}"
        f", {migration.get('progress', 0):.0f} % sent"
    )
    return line + (", aborting" if migration.get("abort") else "")
