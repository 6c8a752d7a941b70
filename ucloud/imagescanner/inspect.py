"""Vetting an uploaded file before it becomes an image, and reading it only as vetted.

qemu-img is what reads disk formats; it is also what a crafted file attacks. So:
- ``qemu-img info`` and ``check`` run under resource limits (as OpenStack does), since a
  crafted qcow2 can make them spend memory and time without bound;
- only raw and qcow2 are accepted, and a qcow2 only when it stands alone: no backing file
  (it would pull another file's content, /etc/shadow say, into the image), no external data
  file (the same, and qemu may write to it), no encryption, nothing qemu-img check calls
  corrupt (a truncated qcow2 converts "fine", reading zeros past its end);
- a raw file must look like a disk: its first sector ends in the boot signature 55 AA (an
  MBR, or GPT's protective MBR). qemu-img calls any file it does not recognise raw, so without
  this any bytes at all, or a format qemu-img cannot name, would pass;
- the conversion then reads the file as the format found, with no backing file allowed
  (``source_spec``), so a file changed after the check cannot smuggle one in.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from ucloud import proc

FORMATS = ("raw", "qcow2")
GIB = 1 << 30
# Limits for qemu-img looking at an untrusted file: 1 GiB of address space, 30 s of CPU.
LIMITS = ("prlimit", f"--as={GIB}", "--cpu=30", "--")
BOOT_SIGNATURE = b"\x55\xaa"


class Refused(Exception):
    """The file cannot become an image; the message tells the user why and what to do."""


@dataclass(frozen=True)
class Inspection:
    format: str
    virtual_size: int  # bytes


def fd_path(fd: int) -> str:
    """A name through which a child process opens the very file this process has open,
    however the path it was opened by has changed since."""
    return f"/proc/{os.getpid()}/fd/{fd}"


def inspect(fd: int, max_size: int) -> Inspection:
    """Check the open file ``fd``; raise Refused with the reason if it is not acceptable."""
    info = _qemu_img(fd, "info")
    fmt = str(info.get("format", "unknown"))
    if fmt not in FORMATS:
        raise Refused(
            f"its format is {fmt}: only raw and qcow2 images are accepted "
            "(qemu-img convert -O qcow2 turns most formats into qcow2)"
        )
    data: dict[str, Any] = (info.get("format-specific") or {}).get("data") or {}
    backing = info.get("full-backing-filename") or info.get("backing-filename")
    if backing:
        raise Refused(
            f"it has a backing file ({backing}): upload a standalone image "
            "(qemu-img convert -O qcow2 merges the backing file into one)"
        )
    if data.get("data-file"):
        raise Refused(
            f"it keeps its data in an external file ({data['data-file']}): upload a "
            "self-contained image (qemu-img convert -O qcow2 makes one)"
        )
    if info.get("encrypted") or data.get("encrypt"):
        raise Refused("it is encrypted: upload an image without encryption")
    if data.get("corrupt"):
        raise Refused("qemu-img marked it corrupt: upload a sound image")
    size = int(info.get("virtual-size", 0))
    if size > max_size:
        raise Refused(
            f"its virtual size, {size / GIB:.2f} GiB, is over the limit of {max_size / GIB:.2f} GiB"
        )
    if fmt == "qcow2":
        _check_qcow2(fd)
    else:
        _check_raw(fd)
    return Inspection(fmt, size)


def source_spec(fd: int, fmt: str) -> str:
    """The file as qemu-img convert must read it: as ``fmt`` only, no backing file."""
    spec: dict[str, Any] = {"driver": fmt, "file": {"driver": "file", "filename": fd_path(fd)}}
    if fmt == "qcow2":
        spec["backing"] = None
    return "json:" + json.dumps(spec)


def _check_qcow2(fd: int) -> None:
    report = _qemu_img(fd, "check", "-f", "qcow2", ok=(0, 2, 3))
    damage = int(report.get("corruptions", 0)) + int(report.get("check-errors", 0))
    if damage:
        raise Refused(
            "it is damaged (truncated, or corrupt: qemu-img check found "
            f"{damage} error{'s' if damage != 1 else ''}): upload it again, completely"
        )


def _check_raw(fd: int) -> None:
    first = os.pread(fd, 512, 0)
    if len(first) < 512:
        raise Refused("it is smaller than one disk sector: it is no disk image")
    if first[510:512] != BOOT_SIGNATURE:
        raise Refused(
            "it is not a disk image qemu-img recognises, and as a raw disk it has no "
            "partition table or boot sector (no 55 AA signature at byte 510): upload a "
            "raw disk or a qcow2 image"
        )


def _qemu_img(fd: int, command: str, *args: str, ok: tuple[int, ...] = (0,)) -> dict[str, Any]:
    argv = [*LIMITS, "qemu-img", command, "--output=json", *args, fd_path(fd)]
    try:
        result = proc.run(argv, timeout=120, check=False)
    except proc.CommandError as e:
        raise Refused(f"qemu-img {command} did not finish on it: {e.stderr}") from e
    if result.returncode not in ok:
        lines = result.stderr.decode(errors="replace").strip().splitlines() or ["no reason"]
        # Name the file as the user knows it, not by our descriptor's path.
        reason = lines[-1].replace(f"'{fd_path(fd)}': ", "").replace(fd_path(fd), "the file")
        if result.returncode < 0 or "Cannot allocate memory" in reason:
            reason = "inspecting it took too much time or memory"
        raise Refused(f"it is not a disk image qemu-img can read ({reason})")
    try:
        parsed = json.loads(result.stdout)
    except ValueError as e:
        raise Refused(f"qemu-img {command} gave no readable report on it") from e
    if not isinstance(parsed, dict):
        raise Refused(f"qemu-img {command} gave no readable report on it")
    return parsed
