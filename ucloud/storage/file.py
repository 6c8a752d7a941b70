"""Disks as qcow2 overlays of images in a local directory: one machine, no Ceph."""

from __future__ import annotations

import json
import os
from pathlib import Path
from xml.sax.saxutils import quoteattr

from ucloud import proc
from ucloud.config import Settings
from ucloud.storage import Progress, StorageError, convert_argv, failure, progress_reader


class FileStorage:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.images = Path(settings.image_dir)
        self.disks = Path(settings.state_dir) / "disks"

    def _image(self, image: str) -> Path:
        return self.images / f"{image}.qcow2"

    def _disk(self, disk: str) -> Path:
        return self.disks / f"{disk}.qcow2"

    def import_image(
        self, image: str, source: str, *, pool: str = "", progress: Progress | None = None
    ) -> int:
        self.images.mkdir(parents=True, exist_ok=True)
        target = self._image(image)
        partial = target.with_suffix(".partial")
        try:
            proc.stream(
                convert_argv(self.settings, source, str(partial), "qcow2"),
                progress_reader(progress),
                timeout=3600,
            )
            os.replace(partial, target)
        except proc.CommandError as e:
            partial.unlink(missing_ok=True)
            raise StorageError(f"cannot import: {failure(e)}") from e
        return _virtual_size(target)

    def delete_image(self, image: str, *, pool: str = "") -> None:
        self._image(image).unlink(missing_ok=True)

    def image_exists(self, image: str, *, pool: str = "") -> bool:
        return self._image(image).is_file()

    def create_disk(self, disk: str, image: str, size_gib: float, *, pool: str = "") -> None:
        path = self._disk(disk)
        if not path.exists():
            base = self._image(image)
            if not base.is_file():
                raise StorageError(f"image {image} is not in {self.images}")
            self.disks.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(".partial")
            proc.run(
                [
                    "qemu-img",
                    "create",
                    "-q",
                    "-f",
                    "qcow2",
                    "-F",
                    "qcow2",
                    "-b",
                    str(base),
                    str(partial),
                ]
            )
            os.replace(partial, path)
        self.grow_disk(disk, size_gib)

    def grow_disk(self, disk: str, size_gib: float, *, pool: str = "") -> None:
        path = self._disk(disk)
        if not path.is_file():
            raise StorageError(f"disk {disk} does not exist in {self.disks}")
        wanted = int(size_gib * (1 << 30))
        if _virtual_size(path) < wanted:
            proc.run(["qemu-img", "resize", "-q", str(path), str(wanted)])

    def create_blank_disk(self, disk: str, size_gib: float, *, pool: str = "") -> None:
        path = self._disk(disk)
        wanted = int(size_gib * (1 << 30))
        if not path.exists():
            self.disks.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(".partial")
            proc.run(["qemu-img", "create", "-q", "-f", "qcow2", str(partial), str(wanted)])
            os.replace(partial, path)
        self.grow_disk(disk, size_gib)

    def delete_disk(self, disk: str, *, pool: str = "") -> None:
        self._disk(disk).unlink(missing_ok=True)

    def disk_exists(self, disk: str, *, pool: str = "") -> bool:
        return self._disk(disk).is_file()

    def fence_disk(self, disk: str, *, pool: str = "") -> list[str]:
        # Local files: no other host can reach them, so no other host runs this VM.
        return []

    def disk_xml(self, disk: str, *, pool: str = "", target: str = "vda") -> str:
        return (
            "<disk type='file' device='disk'>"
            "<driver name='qemu' type='qcow2' cache='none'/>"
            f"<source file={quoteattr(str(self._disk(disk)))}/>"
            f"<target dev={quoteattr(target)} bus='virtio'/>"
            "</disk>"
        )

    def libvirt_secret(self) -> None:
        return None


def _virtual_size(path: Path) -> int:
    info = proc.run(["qemu-img", "info", "--output=json", "-U", str(path)]).stdout
    return int(json.loads(info)["virtual-size"])
