"""Disks and images in Ceph RBD.

An image is an RBD image with a protected snapshot ``base``: the snapshot is the mark that
the import finished. A VM disk is a copy-on-write clone of that snapshot, grown to the VM's
disk size. Images are imported with ``qemu-img convert`` straight into RBD (no temporary
copy), then snapshotted and protected.
"""

from __future__ import annotations

import base64
import configparser
import contextlib
import json
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from xml.sax.saxutils import quoteattr

import rados
import rbd

from ucloud import proc
from ucloud.config import Settings
from ucloud.storage import Progress, StorageError, convert_argv, failure, progress_reader

log = logging.getLogger(__name__)

SNAPSHOT = "base"
CONNECT_TIMEOUT = 10


class RBDStorage:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.user = settings.ceph_user
        self._cluster: rados.Rados | None = None
        self._lock = threading.Lock()

    # --- connection ----------------------------------------------------------------------------

    def _connect(self) -> rados.Rados:
        with self._lock:
            if self._cluster is None:
                conf = {"keyring": self.settings.ceph_keyring} if self.settings.ceph_keyring else {}
                try:
                    cluster = rados.Rados(
                        conffile=self.settings.ceph_conf, rados_id=self.user, conf=conf
                    )
                    cluster.connect(timeout=CONNECT_TIMEOUT)
                except rados.Error as e:
                    raise StorageError(f"cannot reach Ceph as client.{self.user}: {e}") from e
                self._cluster = cluster
            return self._cluster

    @contextmanager
    def _ioctx(self, pool: str) -> Iterator[rados.Ioctx]:
        try:
            ioctx = self._connect().open_ioctx(pool)
        except rados.ObjectNotFound as e:
            raise StorageError(f"Ceph pool {pool!r} does not exist") from e
        except rados.Error as e:
            self._reset()
            raise StorageError(f"Ceph unavailable: {e}") from e
        try:
            yield ioctx
        finally:
            ioctx.close()

    def _reset(self) -> None:
        with self._lock:
            if self._cluster is not None:
                try:
                    self._cluster.shutdown()
                finally:
                    self._cluster = None

    # --- images --------------------------------------------------------------------------------

    def import_image(
        self, image: str, source: str, *, pool: str = "", progress: Progress | None = None
    ) -> int:
        pool = pool or self.settings.image_pool
        self._remove_leftover(pool, image)
        target = f"rbd:{pool}/{image}:id={self.user}:conf={self.settings.ceph_conf}"
        if self.settings.ceph_keyring:
            target += f":keyring={self.settings.ceph_keyring}"
        try:
            proc.stream(
                convert_argv(self.settings, source, target, "raw"),
                progress_reader(progress),
                timeout=6 * 3600,
            )
            with self._ioctx(pool) as ioctx, rbd.Image(ioctx, image) as img:
                img.create_snap(SNAPSHOT)
                img.protect_snap(SNAPSHOT)
                return img.size()
        except (proc.CommandError, rbd.Error) as e:
            # qemu-img has exited, releasing its lock. (An import abandoned by an exception
            # from ``progress`` is left as it is, for the next import to remove.)
            self.delete_image(image, pool=pool)
            log.error("importing image %s failed: %s", image, e)
            raise StorageError(f"cannot import into pool {pool}: {failure(e)}") from e

    def _remove_leftover(self, pool: str, image: str) -> None:
        """Remove a half-made image. Its importer may have died holding the image's
        exclusive lock, or just open: its watch lingers for 30 s (osd_client_watch_timeout),
        during which a removal fails. Breaking the lock and block-listing the watchers ends
        that at once. No live client has it open: imports are the image scanner's, one image
        at a time, and nothing clones a half-made image. An importer killed inside its
        ``rbd create`` may have left the image's id but no header yet: it cannot be opened
        (ImageNotFound), yet every create fails ("File exists") until it is removed."""
        with self._ioctx(pool) as ioctx:
            try:
                with rbd.Image(ioctx, image) as img:
                    lockers = img.list_lockers()
                    for client, cookie, _ in lockers["lockers"] if lockers else []:
                        log.warning("breaking %s's lock on half-made image %s", client, image)
                        img.break_lock(client, cookie)
                for addr in self._block_list_watchers(ioctx, image):
                    log.warning("block-listed %s, which had half-made image %s open", addr, image)
            except rbd.ImageNotFound:
                pass  # none, or one whose creation died before its header: removed below
        self.delete_image(image, pool=pool)

    def delete_image(self, image: str, *, pool: str = "") -> None:
        with self._ioctx(pool or self.settings.image_pool) as ioctx:
            try:
                with rbd.Image(ioctx, image) as img:
                    for snap in list(img.list_snaps()):
                        if img.is_protected_snap(snap["name"]):
                            img.unprotect_snap(snap["name"])
                        img.remove_snap(snap["name"])
            except rbd.ImageNotFound:
                pass  # none, or half-created (an id, no header): remove() clears what is left
            try:
                rbd.RBD().remove(ioctx, image)
            except rbd.ImageNotFound:
                pass
            except rbd.ImageBusy as e:
                raise StorageError(
                    f"image {image} is in use (VM disks cloned from it, or a process has it open)"
                ) from e

    def image_exists(self, image: str, *, pool: str = "") -> bool:
        with self._ioctx(pool or self.settings.image_pool) as ioctx:
            try:
                with rbd.Image(ioctx, image, read_only=True) as img:
                    return any(
                        s["name"] == SNAPSHOT for s in img.list_snaps()
                    ) and img.is_protected_snap(SNAPSHOT)
            except rbd.ImageNotFound:
                return False

    # --- disks ---------------------------------------------------------------------------------

    def create_disk(self, disk: str, image: str, size_gib: float, *, pool: str = "") -> None:
        pool = pool or self.settings.image_pool
        with (
            self._ioctx(pool) as parent,
            self._ioctx(self.settings.ceph_pool) as child,
        ):
            try:
                rbd.RBD().clone(parent, image, SNAPSHOT, child, disk)
            except rbd.ImageExists:
                pass  # made by an earlier attempt
            except rbd.ImageNotFound as e:
                raise StorageError(f"image {image} is not in pool {pool}") from e
        self.grow_disk(disk, size_gib)

    def grow_disk(self, disk: str, size_gib: float, *, pool: str = "") -> None:
        wanted = int(size_gib * (1 << 30))
        with self._ioctx(pool or self.settings.ceph_pool) as ioctx:
            try:
                with rbd.Image(ioctx, disk) as img:
                    if img.size() < wanted:
                        log.info("growing disk %s to %d bytes", disk, wanted)
                        img.resize(wanted, allow_shrink=False)
            except rbd.ImageNotFound as e:
                raise StorageError(f"disk {disk} does not exist") from e

    def create_blank_disk(self, disk: str, size_gib: float, *, pool: str = "") -> None:
        wanted = int(size_gib * (1 << 30))
        with (
            self._ioctx(pool or self.settings.ceph_pool) as ioctx,
            contextlib.suppress(rbd.ImageExists),  # made by an earlier attempt
        ):
            rbd.RBD().create(ioctx, disk, wanted)
        self.grow_disk(disk, size_gib, pool=pool)

    def delete_disk(self, disk: str, *, pool: str = "") -> None:
        with self._ioctx(pool or self.settings.ceph_pool) as ioctx:
            try:
                rbd.RBD().remove(ioctx, disk)
            except rbd.ImageNotFound:
                pass
            except rbd.ImageBusy as e:
                raise StorageError(f"disk {disk} is still open (by a running QEMU?)") from e

    def disk_exists(self, disk: str, *, pool: str = "") -> bool:
        with self._ioctx(pool or self.settings.ceph_pool) as ioctx:
            return disk in rbd.RBD().list(ioctx)

    def fence_disk(self, disk: str, *, pool: str = "") -> list[str]:
        """Block-list every client watching the disk (each QEMU that has it open watches its
        header): the OSDs refuse their writes from then on, whatever becomes of their host.
        A block-list entry names one client instance (address and nonce), so the fenced QEMUs
        stay fenced and a new one on any host is not."""
        try:
            with self._ioctx(pool or self.settings.ceph_pool) as ioctx:
                return self._block_list_watchers(ioctx, disk)
        except rbd.ImageNotFound:
            return []
        except (rados.Error, rbd.Error) as e:
            raise StorageError(f"cannot fence disk {disk}: {e}") from e

    def _block_list_watchers(self, ioctx: rados.Ioctx, name: str) -> list[str]:
        """Block-list every client watching ``name``'s header; return their addresses. Opened
        read-only, the image is not watched by this client itself."""
        with rbd.Image(ioctx, name, read_only=True) as image:
            clients = [w["addr"] for w in image.watchers_list()]
        for addr in clients:
            command = {
                "prefix": "osd blocklist",
                "blocklistop": "add",
                "addr": addr,
                "expire": self.settings.fence_expiry,
            }
            ret, _, err = self._connect().mon_command(
                json.dumps(command), b"", timeout=CONNECT_TIMEOUT
            )
            if ret != 0:
                raise StorageError(f"cannot block-list Ceph client {addr}: {err} ({ret})")
        return clients

    def disk_xml(self, disk: str, *, pool: str = "", target: str = "vda") -> str:
        name = quoteattr(f"{pool or self.settings.ceph_pool}/{disk}")
        return (
            "<disk type='network' device='disk'>"
            "<driver name='qemu' type='raw' cache='writeback' discard='unmap'/>"
            f"<source protocol='rbd' name={name}>"
            f"<config file={quoteattr(self.settings.ceph_conf)}/>"
            "</source>"
            f"<auth username={quoteattr(self.user)}>"
            f"<secret type='ceph' usage={quoteattr(self.secret_usage)}/>"
            "</auth>"
            f"<target dev={quoteattr(target)} bus='virtio'/>"
            "</disk>"
        )

    @property
    def secret_usage(self) -> str:
        return f"ucloud client.{self.user}"

    def libvirt_secret(self) -> tuple[str, str]:
        return self.secret_usage, self._key()

    def _key(self) -> str:
        """The cephx key of our user, base64, as libvirt's ceph secret wants it."""
        path = self.settings.ceph_keyring or self._connect().conf_get("keyring")
        parser = configparser.ConfigParser()
        for candidate in str(path).split(","):
            parser.read(candidate.strip())
        section = f"client.{self.user}"
        if not parser.has_option(section, "key"):
            raise StorageError(f"no key for {section} in {path}")
        key = parser.get(section, "key").strip()
        base64.b64decode(key, validate=True)  # fail here, not inside QEMU
        return key
