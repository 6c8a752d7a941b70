"""Where VM disks and images live, behind one small interface.

Drivers: ``rbd`` (Ceph RBD, the default: a VM disk is a copy-on-write clone of its image's
protected snapshot) and ``file`` (qcow2 overlays on a local image directory, for one machine
without Ceph).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Protocol

from ucloud.config import Settings

# Called with the percentage converted so far, as qemu-img reports it.
Progress = Callable[[float], None]

# One line of ``qemu-img convert -p`` output: "    (12.50/100%)".
_PROGRESS = re.compile(r"\(\s*(\d+(?:\.\d+)?)/100%\)")


class StorageError(RuntimeError):
    """A storage operation failed; the message says what to do about it."""


class Storage(Protocol):
    """``pool``: where an image lives (rbd: the Ceph pool; empty: the image_pool setting).
    The file driver keeps every image in image_dir and ignores it."""

    def import_image(
        self, image: str, source: str, *, pool: str = "", progress: Progress | None = None
    ) -> int:
        """Convert ``source`` (a file name or ``json:`` spec qemu-img reads; vet untrusted
        files first) into the image ``image``, ready to be cloned; return its virtual size in
        bytes. ``progress`` hears the percentage done. A half-made image of the same name
        (an import interrupted before) is removed first; on failure nothing of the image is
        left behind."""
        ...

    def delete_image(self, image: str, *, pool: str = "") -> None:
        """Remove an image that no disk depends on; nothing happens if it is gone."""
        ...

    def image_exists(self, image: str, *, pool: str = "") -> bool:
        """Whether the image's base (and, for rbd, its protected snapshot) exists."""
        ...

    def create_disk(self, disk: str, image: str, size_gib: float, *, pool: str = "") -> None:
        """Make ``disk`` a copy-on-write child of ``image`` (in ``pool``), at least
        ``size_gib`` large. Idempotent: an existing disk is left as it is (only grown)."""
        ...

    def grow_disk(self, disk: str, size_gib: float, *, pool: str = "") -> None:
        """Make ``disk`` at least ``size_gib`` large; a larger disk is left as it is (never
        shrunk). How a resized VM's disks grow: the agent makes each disk its size before
        every start (create_disk and create_blank_disk grow them this way)."""
        ...

    def create_blank_disk(self, disk: str, size_gib: float, *, pool: str = "") -> None:
        """Make ``disk`` an empty disk of at least ``size_gib`` in ``pool`` (a VM's HDD disk;
        empty pool: the pool of system disks). Idempotent, like create_disk.

        Below, ``pool`` is the disk's own pool (empty: the pool of system disks); the file
        driver keeps every disk in one directory and ignores it."""
        ...

    def delete_disk(self, disk: str, *, pool: str = "") -> None:
        """Remove ``disk``; nothing happens if it is already gone."""
        ...

    def disk_exists(self, disk: str, *, pool: str = "") -> bool: ...

    def fence_disk(self, disk: str, *, pool: str = "") -> list[str]:
        """Make sure no client that has ``disk`` open now can ever write to it again; return
        who was fenced. Called before a dead host's VM starts elsewhere: its QEMU may still
        run, cut off from etcd but not from the disks."""
        ...

    def disk_xml(self, disk: str, *, pool: str = "", target: str = "vda") -> str:
        """The libvirt ``<disk>`` element that attaches ``disk`` as virtio disk ``target``."""
        ...

    def libvirt_secret(self) -> tuple[str, str] | None:
        """(usage name, base64 value) of a secret libvirt must hold for disk_xml, if any."""
        ...


def convert_argv(settings: Settings, source: str, target: str, out_format: str) -> list[str]:
    """``qemu-img convert`` with a progress meter, at the configured rate limit."""
    argv = ["qemu-img", "convert", "-p", "-O", out_format]
    if settings.image_convert_rate > 0:
        argv += ["-r", str(settings.image_convert_rate)]
    return [*argv, source, target]


def progress_reader(progress: Progress | None) -> Callable[[str], None]:
    """A proc.stream line handler that hands qemu-img's percentages to ``progress``."""

    def on_line(line: str) -> None:
        match = _PROGRESS.search(line)
        if match and progress is not None:
            progress(float(match.group(1)))

    return on_line


def failure(e: Exception) -> str:
    """What went wrong, in a line fit for a user: a command's last word, not its arguments
    (which name keyrings and configuration files)."""
    stderr = getattr(e, "stderr", None)
    if isinstance(stderr, str) and stderr.strip():
        return stderr.strip().splitlines()[-1]
    return str(e)


def open_storage(settings: Settings) -> Storage:
    if settings.storage == "rbd":
        from ucloud.storage.rbd import RBDStorage

        return RBDStorage(settings)
    if settings.storage == "file":
        from ucloud.storage.file import FileStorage

        return FileStorage(settings)
    raise ValueError(f"unknown storage driver {settings.storage!r}: use 'rbd' or 'file'")
