"""``ucloud quota``: limits and usage; ``ucloud quota set``: an administrator's overrides."""

from __future__ import annotations

import argparse
from typing import Any

from ucloud.cli.errors import ExitCode
from ucloud.cli.output import table
from ucloud.cli.session import Session
from ucloud.cli.vms import size

RESOURCES = ("vms", "cpu", "ram", "disk", "networks", "images")
GIB = ("ram", "disk")


def show(s: Session, args: argparse.Namespace) -> int:
    fields: dict[str, Any] = {}
    if args.user:
        fields["user"] = args.user
    if args.realm:
        fields["user_realm"] = args.realm
    reply = s.api.get("/quota/show", **fields)
    s.out.data(reply)
    s.out.text(describe(reply))
    return ExitCode.OK


def set_limits(s: Session, args: argparse.Namespace) -> int:
    limits: dict[str, Any] = {}
    for r in RESOURCES:
        value = getattr(args, r)
        if value is None:
            continue
        if value == "default":
            limits[r] = None
        elif value in ("none", "unlimited"):
            limits[r] = -1
        else:
            limits[r] = size(value)  # the API says what is wrong with a bad one
    reply = s.api.post("/quota/set", user=args.name, user_realm=args.realm, **limits)
    s.out.data(reply)
    s.out.text(describe(reply))
    return ExitCode.OK


def describe(reply: dict[str, Any]) -> str:
    rows = []
    for r in RESOURCES:
        limit, used = reply["limits"][r], reply["usage"][r]
        unit = "G" if r in GIB else ""
        shown = "unlimited" if limit == -1 else f"{limit:g}{unit}"
        source = "set" if r in reply["overrides"] else "default"
        rows.append((r, f"{used:g}{unit}", shown, source))
    title = f"quota of {reply['realm']}/{reply['user']} (cpu and ram: of VMs that should run)"
    return title + "\n" + table(("RESOURCE", "USED", "LIMIT", "LIMIT FROM"), rows)
