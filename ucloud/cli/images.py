"""``ucloud file ...`` and ``ucloud image ...``: uploaded files, and images made from them."""

from __future__ import annotations

import argparse
from typing import Any

from ucloud.cli.errors import ExitCode
from ucloud.cli.output import size_bytes, when
from ucloud.cli.session import Session


def list_files(s: Session, args: argparse.Namespace) -> int:
    s.out.listing(
        s.api.get("/file/list")["files"],
        "no files: upload some first",
        ("UUID", "NAME", "SIZE", "MODIFIED"),
        lambda f: (f["uuid"], f["name"], size_bytes(f["size"]), when(f["mtime"])),
    )
    return ExitCode.OK


def create_image(s: Session, args: argparse.Namespace) -> int:
    """``image create NAME --file UUID`` and ``image import NAME --url URL``."""
    fields: dict[str, Any] = {"image_name": args.name}
    if getattr(args, "url", None):
        path, fields["url"] = "/image/import", args.url
    else:
        path, fields["file_uuid"] = "/image/create", args.file
    if args.store:
        fields["image_store"] = args.store
    reply = s.api.post(path, **fields)
    image = reply.get("image", reply)
    s.out.data(image)
    s.out.text(
        f"image {image.get('name', args.name)} queued: {image.get('uuid', '?')} "
        f"({image.get('status', 'TO_BE_CREATED')}); follow it with: ucloud image list"
    )
    return ExitCode.OK


def list_images(s: Session, args: argparse.Namespace) -> int:
    s.out.listing(
        s.api.get("/image/list")["images"],
        "no images",
        ("UUID", "NAME", "STATUS", "STORE", "SIZE", "PUBLIC"),
        lambda i: (
            i["uuid"],
            i["name"],
            i["status"] + (f" ({i['reason']})" if i["reason"] else ""),
            i["store"],
            size_bytes(i["size"]) if i["size"] else "-",
            "yes" if i["public"] else "no",
        ),
    )
    return ExitCode.OK


def delete_image(s: Session, args: argparse.Namespace) -> int:
    reply = s.api.post("/image/delete", uuid=args.uuid)
    s.out.data(reply)
    s.out.text(reply.get("message", f"image {args.uuid} deleted"))
    return ExitCode.OK
