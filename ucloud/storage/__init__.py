"""Where VM disks and images live, behind one small interface.

Drivers: ``rbd`` (Ceph RBD, the default: a VM disk is a copy-on-write clone of its image's
protected snapshot) and ``file`` (qcow2 overlays on a local image directory, for one machine
without Ceph).
"""

from __future__ import annotations

from typing import Protocol

from ucloud.config import Settings


class StorageError(RuntimeError):
    """A storage operation failed; the message says what to do about it."""


class Storage(Protocol):
    def import_image(self, image: str, source: str) -> int:
        """Convert the file ``source`` (any format qemu-img reads; check it first) into the
        image ``image``, ready to be cloned; return its virtual size in bytes. On failure
        nothing of the image is left behind."""
        ...

    def delete_image(self, image: str) -> None:
        """Remove an image that no disk depends on; nothing happens if it is gone."""
        ...

    def image_exists(self, image: str) -> bool:
        """Whether the image's base (and, for rbd, its protected snapshot) exists."""
        ...

    def create_disk(self, disk: str, image: str, size_gib: float) -> None:
        """Make ``disk`` a copy-on-write child of ``image``, at least ``size_gib`` large.
        Idempotent: an existing disk is left as it is (only grown)."""
        ...

    def delete_disk(self, disk: str) -> None:
        """Remove ``disk``; nothing happens if it is already gone."""
        ...

    def disk_exists(self, disk: str) -> bool: ...

    def disk_xml(self, disk: str) -> str:
        """The libvirt ``<disk>`` element that attaches ``disk`` as the VM's first disk."""
        ...

    def libvirt_secret(self) -> tuple[str, str] | None:
        """(usage name, base64 value) of a secret libvirt must hold for disk_xml, if any."""
        ...


def open_storage(settings: Settings) -> Storage:
    if settings.storage == "rbd":
        from ucloud.storage.rbd import RBDStorage

        return RBDStorage(settings)
    if settings.storage == "file":
        from ucloud.storage.file import FileStorage

        return FileStorage(settings)
    raise ValueError(f"unknown storage driver {settings.storage!r}: use 'rbd' or 'file'")
