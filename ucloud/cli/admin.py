"""``ucloud host ...`` and ``ucloud user create``: administrators' commands."""

from __future__ import annotations

import argparse
from typing import Any

from ucloud.cli.config import API_URL, REALM, SEED, USER
from ucloud.cli.errors import ExitCode
from ucloud.cli.output import gib, when
from ucloud.cli.session import Session
from ucloud.cli.vms import size
from ucloud.models import Drain


def list_hosts(s: Session, args: argparse.Namespace) -> int:
    """CPU, RAM and DISK show allocated/total (total: the capacity the host offers; '-': no
    disk declared, disks in Ceph); the *-USED columns what its agent measured its VMs use
    ('-': not measured, e.g. DEAD); DRAIN how the drain of a host in maintenance goes."""
    s.out.listing(
        s.api.get("/host/list")["hosts"],
        "no hosts: register one with: ucloud host create NAME --cpu N --ram SIZE",
        (
            "NAME",
            "STATUS",
            "ADMIN",
            "CPU",
            "CPU-USED",
            "RAM",
            "RAM-USED",
            "DISK",
            "DISK-USED",
            "ADDRESSES",
            "DRAIN",
        ),
        lambda h: (
            h["name"],
            h["status"],
            h["admin_state"],
            f"{h['allocated']['cpu']}/{h['capacity']['cpu']}",
            f"{h['used']['cpu']:g}" if h.get("used") else "-",
            f"{gib(h['allocated']['ram'])}/{gib(h['capacity']['ram'])}",
            gib(h["used"]["ram"]) if h.get("used") else "-",
            f"{gib(_disk(h['allocated']))}/{gib(_disk(h['capacity']) or None)}",
            gib(h["used"]["disk"]) if h.get("used") else "-",
            ", ".join(h["addresses"]) or "-",
            Drain.model_validate(h["drain"]).describe() if h.get("drain") else "-",
        ),
    )
    return ExitCode.OK


def _disk(specs: dict[str, Any]) -> float:
    return float(specs["ssd"]) + float(specs["hdd"])


def create_host(s: Session, args: argparse.Namespace) -> int:
    specs: dict[str, Any] = {"cpu": args.cpu, "ram": size(args.ram)}
    if args.ssd is not None:
        specs["ssd"] = size(args.ssd)
    if args.hdd is not None:
        specs["hdd"] = size(args.hdd)
    reply = s.api.post("/host/create", hostname=args.name, specs=specs)
    host = reply["host"]
    s.out.data(host)
    s.out.text(
        f"host {host['name']} registered; it takes VMs once its agent (ucloud-host) runs there"
    )
    return ExitCode.OK


def maintenance(s: Session, args: argparse.Namespace) -> int:
    reply = s.api.post("/host/maintenance", hostname=args.name, maintenance=args.state == "on")
    host = reply["host"]
    s.out.data(host)
    if host["admin_state"] == "MAINTENANCE":
        s.out.text(
            f"host {host['name']} is in maintenance: no new VMs are placed on it, and its "
            "running and suspended VMs are live-migrated away (ucloud host list shows the drain)"
        )
    else:
        s.out.text(
            f"host {host['name']} is {host['admin_state']}: it takes new VMs (VMs moved away "
            "stay where they went)"
        )
    return ExitCode.OK


def evacuate(s: Session, args: argparse.Namespace) -> int:
    reply = s.api.post("/host/evacuate", hostname=args.name)
    s.out.data(reply["host"])
    s.out.text(reply["message"])
    return ExitCode.OK


def create_user(s: Session, args: argparse.Namespace) -> int:
    user = s.api.post("/user/create", user=args.name, user_realm=args.realm)
    s.out.data(user)
    settings = {
        API_URL: s.config.api_url,
        USER: user["name"],
        REALM: user["realm"],
        SEED: user["seed"],
    }
    s.out.text(
        f"user {user['realm']}/{user['name']} created. Its TOTP seed is shown only now: "
        "give it to the user over a safe channel.\n\n"
        f"seed:    {user['seed']}\n"
        f"otpauth: {user['otpauth']}\n\n"
        "The user's client config (~/.config/ucloud/client.env, mode 600):\n"
        + "\n".join(f"{k}={v}" for k, v in settings.items())
    )
    return ExitCode.OK


def delete_host(s: Session, args: argparse.Namespace) -> int:
    reply = s.api.post("/host/delete", hostname=args.name)
    s.out.data(reply["host"])
    s.out.text(reply["message"])
    return ExitCode.OK


OWNED = ("vms", "images", "files", "keys", "networks")


def list_users(s: Session, args: argparse.Namespace) -> int:
    s.out.listing(
        s.api.get("/user/list")["users"],
        "no users",
        ("REALM", "NAME", "VMS", "IMAGES", "FILES", "KEYS", "NETWORKS"),
        lambda u: (u["realm"], u["name"], *(u["owns"][k] for k in OWNED)),
    )
    return ExitCode.OK


def delete_user(s: Session, args: argparse.Namespace) -> int:
    reply = s.api.post(
        "/user/delete", user=args.name, user_realm=args.realm, delete_owned=args.delete_owned
    )
    s.out.data(reply)
    deleting = ", ".join(f"{n} {kind}" for kind, n in reply["deleting"].items() if n)
    s.out.text(reply["message"] + (f"; deleting {deleting}" if deleting else ""))
    return ExitCode.OK


def reset_totp(s: Session, args: argparse.Namespace) -> int:
    user = s.api.post("/user/reset-totp", user=args.name, user_realm=args.realm)
    s.out.data(user)
    s.out.text(
        f"user {user['realm']}/{user['name']} has a new TOTP seed (the old one no longer "
        "works); it is shown only now: give it to the user over a safe channel.\n\n"
        f"seed:    {user['seed']}\n"
        f"otpauth: {user['otpauth']}"
    )
    return ExitCode.OK


def list_sessions(s: Session, args: argparse.Namespace) -> int:
    s.out.listing(
        s.api.get("/user/sessions", user=args.name, user_realm=args.realm)["sessions"],
        "no sessions",
        ("SESSION", "SINCE", "UNTIL", "FROM", "BROWSER"),
        lambda x: (x["session"], when(x["created"]), when(x["expires"]), x["address"], x["agent"]),
    )
    return ExitCode.OK


def end_sessions(s: Session, args: argparse.Namespace) -> int:
    reply = s.api.post(
        "/user/end-sessions", user=args.name, user_realm=args.realm, session=args.session
    )
    s.out.data(reply)
    s.out.text(reply["message"])
    return ExitCode.OK
