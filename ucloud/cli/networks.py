"""``ucloud network ...`` and ``ucloud vm network ...``: networks, and VMs' NICs on them."""

from __future__ import annotations

import argparse
from typing import Any

from ucloud.cli.errors import ExitCode
from ucloud.cli.output import when
from ucloud.cli.session import Session
from ucloud.cli.vms import nics, resolve


def create(s: Session, args: argparse.Namespace) -> int:
    fields: dict[str, Any] = {"network_name": args.name, "shared": args.shared}
    if args.ipv4:
        fields["ipv4"] = args.ipv4
    if args.mtu:
        fields["mtu"] = args.mtu
    if args.router:
        fields["router"] = args.router
    network = s.api.post("/network/create", **fields)["network"]
    s.out.data(network)
    prefixes = ", ".join(p for p in (network["ipv6_prefix"], network["ipv4_subnet"]) if p)
    s.out.text(
        f"network {network['name']} created: {network['uuid']} (VXLAN {network['vni']}, {prefixes})"
    )
    return ExitCode.OK


def list_networks(s: Session, args: argparse.Namespace) -> int:
    s.out.listing(
        s.api.get("/network/list")["networks"],
        "no networks",
        ("UUID", "NAME", "OWNER", "IPV6", "IPV4", "MTU", "VMS", "CREATED", "ROUTER"),
        lambda n: (
            n["uuid"],
            n["name"] + (" (shared)" if n["shared"] else ""),
            f"{n['owner_realm']}/{n['owner']}",
            n["ipv6_prefix"],
            n["ipv4_subnet"] or "-",
            n["mtu"],
            len(n["attached"]),
            when(n["created"]),
            router(n),  # last: a reason it waits may be long
        ),
    )
    return ExitCode.OK


def router(n: dict[str, Any]) -> str:
    """The host that routes it, or why none does yet."""
    return n.get("router") or f"- ({n.get('router_reason') or 'not chosen yet'})"


def set_router(s: Session, args: argparse.Namespace) -> int:
    reply = s.api.post("/network/router", network=args.network, router=args.host)
    s.out.data(reply["network"])
    s.out.text(reply.get("message", f"network {args.network} is routed by {args.host}"))
    return ExitCode.OK


def delete(s: Session, args: argparse.Namespace) -> int:
    reply = s.api.post("/network/delete", network=args.network)
    s.out.data(reply)
    s.out.text(reply.get("message", f"network {args.network} deleted"))
    return ExitCode.OK


def attach(s: Session, args: argparse.Namespace) -> int:
    return _change(s, args, "/vm/network/attach")


def detach(s: Session, args: argparse.Namespace) -> int:
    return _change(s, args, "/vm/network/detach")


def _change(s: Session, args: argparse.Namespace, path: str) -> int:
    reply = s.api.post(path, vmid=resolve(s.api, args.vm), network=args.network)
    vm = reply["vm"]
    s.out.data(vm)
    s.out.text(f"{reply.get('message', 'queued')}: VM {vm['uuid']} now has {nics(vm)}")
    return ExitCode.OK
