"""Reading a NoCloud seed ISO back, as a test checks what a guest will find on it."""

from __future__ import annotations

import io

import pycdlib


def read_seed(data: bytes) -> tuple[str, dict[str, dict[str, bytes]]]:
    """The volume id, and the files under each of the ISO's name spaces: ``iso_path`` (plain
    ISO 9660), ``joliet_path`` and ``rr_path`` (Rock Ridge, what Linux shows)."""
    iso = pycdlib.pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(data))
    label = iso.pvd.volume_identifier.decode().strip()
    spaces: dict[str, dict[str, bytes]] = {}
    for path_kind in ("iso_path", "joliet_path", "rr_path"):
        files = {}
        for child in iso.list_children(**{path_kind: "/"}):
            if child.is_dot() or child.is_dotdot():
                continue
            if path_kind == "rr_path":
                name = child.rock_ridge.name().decode()
            elif path_kind == "joliet_path":
                name = child.file_identifier().decode("utf-16-be")
            else:
                name = child.file_identifier().decode()
            out = io.BytesIO()
            iso.get_file_from_iso_fp(out, **{path_kind: "/" + name})
            files[name] = out.getvalue()
        spaces[path_kind] = files
    iso.close()
    return label, spaces
