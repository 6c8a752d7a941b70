"""The image scanner's reconcile loop: images asked for become images in storage, and images
asked to go are removed.

States (``status``, written only here once the API has created the record):

    TO_BE_CREATED --claim (CAS)--> CREATING --vetted, converted, snapshotted--> CREATED
                                      |
                                      +--refused or failed--> ERROR (reason; nothing stored)
    any, once desired is "deleted" --> DELETING --removed from storage--> record deleted

Each step is one compare-and-swap, guarded by the scanner's leadership (one scanner acts; others
stand by), so a deposed scanner cannot write. Restart safety: an image found CREATING was being
made by a scanner that stopped or died; it is made again from the start (the storage removes the
half-made image first, breaking the dead importer's lock), and only its final CAS marks it
CREATED, so it is created exactly once. A conversion never outlives its scanner: qemu-img is
killed when the scanner dies (proc.stream) or stops leading (the progress callback).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

from ucloud import uploads
from ucloud.config import Settings
from ucloud.imagescanner import fetch
from ucloud.imagescanner.inspect import GIB, Refused, inspect, source_spec
from ucloud.models import File, Image, ImageDesired, ImageStatus
from ucloud.retry import Backoff, Retry
from ucloud.storage import Storage, StorageError
from ucloud.store import Change, Conflict, Guard, Snapshot, Store, Unavailable, Versioned
from ucloud.uploads import Seen, Unusable, sha512_of
from ucloud.workqueue import WorkQueue

log = logging.getLogger(__name__)

ATTEMPTS = 3  # failed attempts (storage errors, surprises) before an image goes to ERROR


class Stopped(Exception):
    """The scanner is stopping or no longer leads: abandon the conversion (it is redone)."""


class ImageScanner:
    def __init__(
        self, store: Store, settings: Settings, storage: Storage, guard: Guard | None = None
    ) -> None:
        self.store = store
        self.settings = settings
        self.storage = storage
        self.guard = guard
        self.queue = WorkQueue(Backoff.of(settings))
        self.stopping = threading.Event()

    # --- the loop ------------------------------------------------------------------------------

    def run(self, stop: threading.Event, lost: threading.Event | None = None) -> None:
        """Reconcile until ``stop`` (or ``lost``: leadership gone) is set."""
        self.stopping.clear()
        follower = self.store.follow(Image, self.deliver)
        workers = self.queue.run_workers(self.settings.image_workers, self.reconcile, "image")
        log.info("image scanner is up (%d at once)", self.settings.image_workers)
        next_resync = time.monotonic() + self.settings.imagescanner_resync
        try:
            while not stop.wait(0.5) and not (lost and lost.is_set()):
                if time.monotonic() >= next_resync:
                    with suppress(Unavailable):
                        self.resync()
                    next_resync = time.monotonic() + self.settings.imagescanner_resync
        finally:
            self.stopping.set()  # running conversions stop at their next progress line
            follower.stop()
            self.queue.close()
            for worker in workers:
                worker.join(timeout=10)

    def deliver(self, update: Snapshot[Image] | Change[Image]) -> None:
        if isinstance(update, Snapshot):
            self.queue.add_all(update.items)
        else:
            self.queue.add(update.id)

    def resync(self) -> None:
        """The safety net: look again at every image that needs a step."""
        items, _ = self.store.list(Image)
        for id, found in items.items():
            image = found.value
            if image.desired == ImageDesired.DELETED or image.status in (
                ImageStatus.TO_BE_CREATED,
                ImageStatus.CREATING,
            ):
                self.queue.add(id)

    # --- reconcile -----------------------------------------------------------------------------

    def reconcile(self, id: str) -> None:
        """step(); the work queue retries what raises Retry, with back-off."""
        if self.stopping.is_set():
            return
        try:
            self.step(id)
        except Stopped:
            log.info("left image %s unfinished: stopping", id)
        except Unavailable as e:
            raise Retry(f"image {id}: etcd unavailable ({e})") from e
        except StorageError as e:  # Ceph down, say: worth trying again, a few times
            self.retry_or_fail(id, f"storing it failed: {e}")
        except Exception as e:
            log.exception("handling image %s failed", id)
            self.retry_or_fail(id, f"it failed ({e})")

    def retry_or_fail(self, id: str, reason: str) -> None:
        count = self.queue.failures(id) + 1
        if count < ATTEMPTS:
            raise Retry(f"image {id}: {reason}")
        self.discard(id)
        self.fail(id, f"{reason}; tried {count} times: ask the administrator")

    def step(self, id: str) -> None:
        found = self.store.get(Image, id)
        if found is None:
            return
        image = found.value
        if image.desired == ImageDesired.DELETED:
            self.delete(found)
        elif image.status == ImageStatus.TO_BE_CREATED:
            claimed = self.transition(found, ImageStatus.CREATING)
            if claimed is not None:
                self.create(claimed.value)
        elif image.status == ImageStatus.CREATING:
            # Claimed before, by a scanner that stopped or died on it, or an attempt failed.
            log.info("image %s is CREATING but nobody makes it; making it again", id)
            self.create(image)

    # --- creating ------------------------------------------------------------------------------

    def create(self, image: Image) -> None:
        log.info("creating image %s (%s) from file %s", image.uuid, image.name, image.file)
        pool = image.pool or self.settings.image_pool
        try:
            size = self.convert(image, pool)
        except Refused as e:
            log.warning("image %s refused: %s", image.uuid, e)
            self.fail(image.uuid, str(e))
            return
        self.finish(image, size)

    def convert(self, image: Image, pool: str) -> int:
        """Vet the image's file and convert it into storage; its virtual size in bytes."""
        if image.url:
            return self.convert_url(image, pool)
        file = self.store.get(File, image.file)
        if file is None or file.value.removed:
            raise Refused(f"its file {image.file} is no longer in the upload directory")
        if file.value.owner_realm != self.settings.upload_realm:
            raise Refused(f"its file {image.file} is not in this scanner's upload directory")
        root = Path(self.settings.upload_root)
        try:
            with uploads.opened(root, file.value.owner, file.value.name) as fd:
                before = Seen.of(os.fstat(fd))
                checked = inspect(fd, int(self.settings.image_max_size * GIB))
                if sha512_of(fd) != image.sha512:
                    raise Refused(
                        "its file changed since the image was asked for (its sha512 differs):"
                        " ask for the image again"
                    )
                size = self.storage.import_image(
                    image.uuid,
                    source_spec(fd, checked.format),
                    pool=pool,
                    progress=self.progress_writer(image.uuid),
                )
                if Seen.of(os.fstat(fd)) != before:
                    self.storage.delete_image(image.uuid, pool=pool)
                    raise Refused("its file changed while it was converted: ask again")
        except FileNotFoundError as e:
            raise Refused(f"its file {file.value.name} is gone from the upload directory") from e
        except Unusable as e:
            raise Refused(f"its file {file.value.name} cannot be used: {e}") from e
        return size

    def convert_url(self, image: Image, pool: str) -> int:
        """Fetch the image's URL (see fetch.py), vet what came and convert it into storage.
        The download counts as the first half of the progress."""
        progress = self.progress_writer(image.uuid)
        s = self.settings
        policy = fetch.Policy(
            allowed_networks=fetch.Policy.networks(s.import_allow_networks),
            limit=int(s.image_max_size * GIB),
            timeout=s.import_timeout,
            deadline=s.import_deadline,
        )
        log.info("fetching image %s from %s", image.uuid, image.url)
        with fetch.download(image.url, policy, s.import_dir, lambda p: progress(p / 2)) as fd:
            checked = inspect(fd, int(s.image_max_size * GIB))
            return self.storage.import_image(
                image.uuid,
                source_spec(fd, checked.format),
                pool=pool,
                progress=lambda p: progress(50 + p / 2),
            )

    def progress_writer(self, id: str) -> Callable[[float], None]:
        """Record the conversion's progress at most every image_progress_interval seconds;
        abandon the conversion if the scanner is stopping."""
        last = time.monotonic()

        def progress(percent: float) -> None:
            nonlocal last
            if self.stopping.is_set():
                raise Stopped()
            moment = time.monotonic()
            if moment - last < self.settings.image_progress_interval:
                return
            last = moment

            def change(image: Image) -> bool:
                if image.status != ImageStatus.CREATING or image.progress == percent:
                    return False
                image.progress = percent
                return True

            try:
                self.update(id, change)
            except Stopped:
                raise
            except Exception as e:  # progress is for show: never fail a conversion over it
                log.warning("could not record progress of image %s: %s", id, type(e).__name__)

        return progress

    def finish(self, image: Image, size: int) -> None:
        def change(current: Image) -> bool:
            if current.status != ImageStatus.CREATING or current.desired != ImageDesired.CREATED:
                return False  # asked to go meanwhile: the next step deletes it
            current.set_status(ImageStatus.CREATED)
            current.size, current.progress = size, 100.0
            return True

        if self.update(image.uuid, change) is None:
            # Its record was deleted while it converted: nobody will ever use it.
            self.storage.delete_image(image.uuid, pool=image.pool or self.settings.image_pool)
            return
        log.info("image %s (%s) is CREATED: %d bytes", image.uuid, image.name, size)

    def discard(self, id: str) -> None:
        """Remove whatever an abandoned attempt left in storage."""
        found = self.store.get(Image, id)
        if found is not None:
            pool = found.value.pool or self.settings.image_pool
            try:
                self.storage.delete_image(id, pool=pool)
            except StorageError as e:
                log.error("image %s may have left a half-made image in storage: %s", id, e)

    def fail(self, id: str, reason: str) -> None:
        def change(image: Image) -> bool:
            if image.status not in (ImageStatus.TO_BE_CREATED, ImageStatus.CREATING):
                return False
            image.set_status(ImageStatus.ERROR, reason)
            return True

        self.update(id, change)

    # --- deleting ------------------------------------------------------------------------------

    def delete(self, found: Versioned[Image]) -> None:
        if found.value.status != ImageStatus.DELETING:
            moved = self.transition(found, ImageStatus.DELETING)
            if moved is None:
                return  # it changed meanwhile: its watch event brings it back
            found = moved
        image = found.value
        try:
            self.storage.delete_image(image.uuid, pool=image.pool or self.settings.image_pool)
        except StorageError as e:
            self.transition(found, ImageStatus.DELETING, f"cannot delete it yet: {e}")
            raise Retry(f"cannot delete image {image.uuid} yet: {e}") from e
        if self.store.delete(found, guard=self.guard):
            log.info("image %s (%s) deleted", image.uuid, image.name)

    # --- writes --------------------------------------------------------------------------------

    def transition(
        self, found: Versioned[Image], status: ImageStatus, reason: str = ""
    ) -> Versioned[Image] | None:
        """Compare-and-swap the image into ``status``; None if it changed meanwhile."""

        def edit(image: Image) -> None:
            image.set_status(status, reason)
            if status == ImageStatus.CREATING:
                image.progress = 0.0

        return self.store.swap_edited(found, edit, self.guard)

    def update(self, id: str, change: Callable[[Image], bool]) -> Versioned[Image] | None:
        """Read-modify-write under the leadership guard (Store.update has no guard)."""
        for _ in range(20):
            found = self.store.get(Image, id)
            if found is None:
                return None
            image = found.value.model_copy(deep=True)
            if not change(image):
                return found
            revision = self.store.swap_many([(image, found)], guard=self.guard)
            if revision is not None:
                return Versioned(image, revision)
            if self.guard is not None and self.stopping.is_set():
                raise Stopped()
        raise Conflict(f"image {id} kept changing")
