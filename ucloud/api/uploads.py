"""Uploads over the API: ``PUT /file/upload/<name>`` streams a file into the user's upload
directory, where the file scanner registers it as any other upload.

The body is the file itself (``application/octet-stream``), so the credentials travel in
headers (``X-UCloud-User``, ``X-UCloud-Realm``, ``X-UCloud-Token``) with the file's
``Content-Length`` and sha512 (``X-UCloud-SHA512``). The file is written in chunks into a
hidden spool directory of the upload root (the scanners skip dot names), and moved into the
user's directory only once its size and sha512 are those announced; a failed or interrupted
upload leaves nothing. Nothing is held in
memory but one chunk. Each upload occupies one of the worker's threads for as long as it lasts
(gthread workers: gunicorn's worker timeout is the worker's heartbeat, not a request's), so a
worker takes at most ``api_uploads_at_once`` at a time and answers 503 beyond that, keeping a
thread for everything else.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import threading
import uuid
from pathlib import Path
from typing import Any

from flask import Blueprint, current_app, jsonify, request
from pydantic import Field

from ucloud import uploads
from ucloud.api import errors
from ucloud.api.endpoint import ROUTES, Principal, Route, authenticate, context
from ucloud.api.schemas import Credentials

bp = Blueprint("upload", __name__)

CHUNK = 1 << 20
PATH = "/file/upload/<name>"
# Uploads in progress, in the upload root (the same file system as users' directories) under
# a dot name, which the file scanner skips and does not watch.
SPOOL = ".ucloud-uploads"

_libc = ctypes.CDLL(None, use_errno=True)


class UploadHeaders(Credentials):
    """What the upload's headers carry (the body is the file)."""

    sha512: str = Field(pattern=r"^[0-9a-f]{128}$", description="the file's sha512, hex")


def _header(name: str, description: str, **schema: object) -> dict[str, Any]:
    return {
        "name": name,
        "in": "header",
        "required": True,
        "schema": {"type": "string", **schema},
        "description": description,
    }


_ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
_RESPONSES = {
    201: "stored; the file scanner registers it",
    400: "bad name or headers, or the size or sha512 differ",
    401: "unknown user or wrong token",
    403: "not a user of the upload realm",
    405: "the path does not take this method; the Allow header lists those it takes",
    409: "a file of that name exists",
    411: "no Content-Length",
    413: "too large (setting UCLOUD_UPLOAD_MAX_SIZE)",
    503: "too many uploads at once, or the cluster store (etcd) is unavailable",
}


def _answer(code: int, text: str) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": text}
    if code >= 400:
        answer["content"] = _ERROR
    if code == 405:
        allow = {"description": "the methods the path takes", "schema": {"type": "string"}}
        answer["headers"] = {"Allow": {**allow, "required": True}}
    return answer


ROUTES.append(
    Route(
        "/file/upload/{name}",
        "PUT",
        UploadHeaders,
        "Upload a file into your upload directory",
        False,
        _RESPONSES,
        None,
        operation={
            "summary": "Upload a file into your upload directory (the body is the file)",
            "operationId": "file_upload",
            "parameters": [
                {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}},
                _header("X-UCloud-User", "your user name"),
                _header("X-UCloud-Realm", "your realm"),
                _header("X-UCloud-Token", "a current TOTP token"),
                # Read in either case (lowered before it is checked).
                _header("X-UCloud-SHA512", "the file's sha512, hex", pattern="^[0-9a-fA-F]{128}$"),
            ],
            "requestBody": {
                "required": True,
                "content": {
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
                },
            },
            "responses": {str(code): _answer(code, text) for code, text in _RESPONSES.items()},
        },
    )
)


@bp.route(PATH, methods=["PUT"])
def upload(name: str) -> Any:
    ctx = context()
    headers = UploadHeaders.model_validate(
        {
            "name": request.headers.get("X-UCloud-User", ""),
            "realm": request.headers.get("X-UCloud-Realm", ""),
            "token": request.headers.get("X-UCloud-Token", ""),
            "sha512": request.headers.get("X-UCloud-SHA512", "").lower(),
        }
    )
    user = authenticate(headers)
    check_name(name)
    if user.realm != ctx.settings.upload_realm:
        raise errors.Forbidden(
            f"uploads are for users of realm {ctx.settings.upload_realm}, not {user.realm}"
        )
    size = request.content_length
    if size is None:
        raise errors.APIError("give the file's size in Content-Length", 411)
    limit = int(ctx.settings.upload_max_size * (1 << 30))
    if size > limit:
        raise errors.APIError(
            f"the file is {size} bytes; uploads may be at most {limit} bytes "
            f"({ctx.settings.upload_max_size:g} GiB)",
            413,
        )
    request.max_content_length = limit  # the app's own limit is for JSON bodies
    gate = _gate(ctx.settings.api_uploads_at_once)
    if not gate.acquire(blocking=False):
        raise errors.APIError("too many uploads at once on this server; try again shortly", 503)
    try:
        store_upload(user, name, size, headers.sha512)
    finally:
        gate.release()
    return jsonify(
        message="uploaded; the file scanner registers it in a few seconds (ucloud file list)",
        name=name,
        size=size,
        sha512=headers.sha512,
    ), 201


def store_upload(user: Principal, name: str, size: int, sha512: str) -> None:
    root = Path(context().settings.upload_root)
    flags = os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_RDONLY
    try:
        (root / user.name).mkdir(mode=0o750, exist_ok=True)
        home_fd = os.open(uploads.user_dir(root, user.name), flags)
        (root / SPOOL).mkdir(mode=0o700, exist_ok=True)
        spool_fd = os.open(root / SPOOL, flags)
    except (OSError, uploads.Unusable) as e:
        raise errors.APIError(f"the upload directory cannot be used: {e}", 500) from e
    temporary = f"{uuid.uuid4().hex}.part"
    try:
        fd = os.open(
            temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640, dir_fd=spool_fd
        )
        try:
            received, digest = _receive(fd, size)
        finally:
            os.close(fd)
        if received != size:
            raise errors.BadRequest(f"the upload ended after {received} of {size} bytes")
        if digest != sha512:
            raise errors.BadRequest(
                "the file's sha512 is not the one announced: it was changed or damaged on the "
                "way; upload it again"
            )
        try:
            # Moved in whole (the file scanner registers a file moved in at once), and never
            # over a file of the same name.
            _rename_noreplace(spool_fd, temporary, home_fd, name)
        except FileExistsError as e:
            raise errors.Conflict(
                f"you already have a file named {name}: choose another name"
            ) from e
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary, dir_fd=spool_fd)
        os.close(spool_fd)
        os.close(home_fd)


def _rename_noreplace(src_dir: int, src: str, dst_dir: int, dst: str) -> None:
    """renameat2(2) with RENAME_NOREPLACE (Linux 3.15, glibc 2.28): FileExistsError if
    ``dst`` exists. A rename, not a link then an unlink: the file scanner sees a file moved in
    as complete, and a hard link's creation only as a file being written."""
    if _libc.renameat2(src_dir, os.fsencode(src), dst_dir, os.fsencode(dst), 1) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno), dst)


def _receive(fd: int, size: int) -> tuple[int, str]:
    """Copy the body to ``fd`` a chunk at a time; (bytes received, their sha512)."""
    digest = hashlib.sha512()
    received = 0
    stream = request.stream
    while received < size:
        chunk = stream.read(min(CHUNK, size - received))
        if not chunk:
            break
        digest.update(chunk)
        view = memoryview(chunk)
        while view:
            view = view[os.write(fd, view) :]
        received += len(chunk)
    return received, digest.hexdigest()


def check_name(name: str) -> None:
    """A plain file name the file scanner registers: no '/', no leading dot, no control
    characters, at most 255 bytes."""
    try:
        uploads.check_part(name)
    except uploads.Unusable as e:
        raise errors.BadRequest(f"file name {name!r} cannot be used: {e}") from e
    if not name or "/" in name or len(name.encode()) > 255:
        raise errors.BadRequest(f"file name {name!r} must be 1 to 255 bytes, without '/'")


def _gate(size: int) -> threading.BoundedSemaphore:
    """The worker's count of uploads under way (dict.setdefault is atomic)."""
    gate: threading.BoundedSemaphore = current_app.extensions.setdefault(
        "ucloud.uploads", threading.BoundedSemaphore(size)
    )
    return gate
