"""``ucloud file ...`` and ``ucloud image ...``: uploaded files, and images made from them."""

from __future__ import annotations

import argparse
from typing import Any

from ucloud.cli.errors import ExitCode
from ucloud.cli.output import size_bytes, table, when
from ucloud.cli.session import Session


def _items(reply: dict[str, Any], key: str) -> list[dict[str, Any]]:
    # {"images": [...]} in the style of /vm/list; a bare list is taken too.
    found = reply.get(key, reply.get("items", []))
    return found if isinstance(found, list) else []


def list_files(s: Session, args: argparse.Namespace) -> int:
    files = _items(s.api.get("/file/list"), "files")
    s.out.data(files)
    if not files:
        s.out.text("no files: upload some first")
        return ExitCode.OK
    rows = [
        (
            f.get("uuid", "-"),
            f.get("name", "-"),
            size_bytes(f.get("size")),
            when(f.get("mtime") or f.get("created")),
        )
        for f in files
    ]
    s.out.text(table(("UUID", "NAME", "SIZE", "MODIFIED"), rows))
    return ExitCode.OK


def create_image(s: Session, args: argparse.Namespace) -> int:
    fields: dict[str, Any] = {"image_name": args.name, "file_uuid": args.file}
    if args.store:
        fields["image_store"] = args.store
    reply = s.api.post("/image/create", **fields)
    image = reply.get("image", reply)
    s.out.data(image)
    s.out.text(
        f"image {image.get('name', args.name)} queued: {image.get('uuid', '?')} "
        f"({image.get('status', 'TO_BE_CREATED')}); follow it with: ucloud image list"
    )
    return ExitCode.OK


def list_images(s: Session, args: argparse.Namespace) -> int:
    images = _items(s.api.get("/image/list"), "images")
    s.out.data(images)
    if not images:
        s.out.text("no images")
        return ExitCode.OK
    rows = [
        (
            i.get("uuid", "-"),
            i.get("name", "-"),
            i.get("status", "-") + (f" ({i['reason']})" if i.get("reason") else ""),
            i.get("store", "-"),
            size_bytes(i.get("size")) if i.get("size") else "-",
            "yes" if i.get("public") else "no",
        )
        for i in images
    ]
    s.out.text(table(("UUID", "NAME", "STATUS", "STORE", "SIZE", "PUBLIC"), rows))
    return ExitCode.OK


def delete_image(s: Session, args: argparse.Namespace) -> int:
    reply = s.api.post("/image/delete", uuid=args.uuid)
    s.out.data(reply)
    s.out.text(reply.get("message", f"image {args.uuid} deleted"))
    return ExitCode.OK
