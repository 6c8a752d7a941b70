"""The file scanner's loop: inotify events and rescans in, ``/v1/file/`` records out.

A file counts once it is complete: closed after its last write (or found by a rescan, or moved
in whole) and then unchanged (size, mtime, ctime and inode) for ``upload_settle`` seconds.
It is then hashed (sha512, streamed), and registered; a registered file that changes is hashed
again and its record updated; one that disappears is marked removed (records are kept:
images name the file they were made from).

Restart safety: the scanner keeps nothing but etcd. On start (and every
``filescanner_rescan`` seconds, and whenever inotify lost track) it lists the records of its
realm and walks the upload root: a file without a record, or whose size or mtime differ from
it, is hashed; a record without a file is marked removed. A scanner killed mid-hash has
written nothing, and hashes that file again; one killed after writing finds the record.
Each write is one compare-and-swap, so a file is registered once. One scanner serves an
upload root and its realm.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ucloud import uploads
from ucloud.config import Settings
from ucloud.filescanner import metrics
from ucloud.filescanner.watch import Happening, Watcher, What
from ucloud.models import File, now
from ucloud.retry import Backoff
from ucloud.store import Store, Unavailable
from ucloud.uploads import Seen, Unusable, sha512_of

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (user, name)

MAX_LOGGED = 10_000  # skipped paths remembered so each is logged once


@dataclass
class Candidate:
    """A file that is new or changed since it was registered, waiting to be complete."""

    seen: Seen | None
    stable_since: float  # monotonic
    writing: bool  # written to, and not closed since (as inotify tells)


class FileScanner:
    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self.root = Path(settings.upload_root)
        self.realm = settings.upload_realm
        self.files: dict[Key, File] = {}  # registered and not removed
        self.candidates: dict[Key, Candidate] = {}
        self.logged: dict[str, str] = {}  # path -> why it was skipped
        self.watcher: Watcher | None = None
        self.rescan_due = True
        self.ready = threading.Event()  # set once the first rescan is done

    # --- the loop ------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        announced = False
        while not stop.is_set() and not self.root.is_dir():
            if not announced:
                log.warning("upload root %s does not exist yet; waiting for it", self.root)
                announced = True
            stop.wait(5.0)
        if stop.is_set():
            return
        self.watcher = Watcher(self.root)
        next_rescan = 0.0
        log.info("scanning %s for users of realm %s", self.root, self.realm)
        backoff, failures = Backoff.of(self.settings), 0
        try:
            while not stop.is_set():
                try:
                    if self.rescan_due or time.monotonic() >= next_rescan:
                        self.rescan()
                        next_rescan = time.monotonic() + self.settings.filescanner_rescan
                        self.ready.set()
                    for happening in self.watcher.read(timeout=self._tick()):
                        self.on(happening)
                    self.settle()
                    failures = 0
                except Unavailable as e:
                    # Nothing is lost: candidates stay, and a failed rescan is done again.
                    failures += 1
                    log.warning("etcd unavailable (%s); will retry", e)
                    stop.wait(backoff.delay(failures))
                except Exception:
                    failures += 1
                    log.exception("scanning failed; rescanning shortly")
                    self.rescan_due = True
                    stop.wait(backoff.delay(failures))
        finally:
            self.watcher.close()

    def _tick(self) -> float:
        if self.candidates:
            return min(0.25, self.settings.upload_settle / 4)
        return 1.0

    # --- what happened -------------------------------------------------------------------------

    def on(self, happening: Happening) -> None:
        what, path = happening.what, happening.path
        if what == What.RESCAN:
            self.rescan_due = True
        elif what == What.GONE:
            self.gone(path)
        elif what == What.DIRECTORY:
            self.scan_dir(path, None)
        else:
            key = self.key(path)
            if key is None:
                return
            if what == What.CHANGED:
                self.consider(path, None)
            else:
                self.candidate(key, writing=what == What.WRITING)

    def key(self, path: str) -> Key | None:
        try:
            return uploads.split(path)
        except Unusable as e:
            self.skip(path, str(e))
            return None

    def gone(self, path: str) -> None:
        """``path`` was deleted or moved away: a file, or a directory with files in it."""
        prefix = path.split("/", 1)
        for key in [*self.files, *self.candidates]:
            user, name = key
            if [user, name] == prefix or (
                user == prefix[0] and (len(prefix) == 1 or name.startswith(prefix[1] + "/"))
            ):
                self.removed(key)

    def candidate(self, key: Key, writing: bool) -> None:
        found = self.candidates.get(key)
        if found is None:
            self.candidates[key] = Candidate(None, time.monotonic(), writing)
        else:
            found.writing = writing
            found.stable_since = time.monotonic()

    def skip(self, path: str, reason: str) -> None:
        if self.logged.get(path) != reason:
            if len(self.logged) >= MAX_LOGGED:
                self.logged.clear()
            self.logged[path] = reason
            log.warning("skipping %r: %s", path, reason)

    # --- rescans -------------------------------------------------------------------------------

    def rescan(self) -> None:
        """Look at everything: the records of our realm, and every file under the root."""
        assert self.watcher is not None
        self.rescan_due = True  # until it completes
        if not self.root.is_dir():
            # Not "every file was removed": the root itself is gone (unmounted?). Wait.
            self.skip(str(self.root), "the upload root is not a directory now; waiting")
            return
        self.load()
        self.watcher.reset()
        self.watcher.watch("")
        found: set[Key] = set()
        for entry in _entries(self.root):
            if entry.is_dir(follow_symlinks=False):
                self.scan_dir(entry.name, found)
            else:
                self.skip(entry.name, "it is outside any user's directory")
        for key in list(self.files):
            if key not in found:
                self.removed(key)
        self.rescan_due = False

    def load(self) -> None:
        items, _ = self.store.list(File)
        files: dict[Key, File] = {}
        for record in sorted((v.value for v in items.values()), key=lambda f: f.created):
            if record.owner_realm != self.realm or record.removed:
                continue
            key = (record.owner, record.name)
            older = files.get(key)
            if older is not None:
                # Two records for one path (a second scanner on this root?): the newest wins.
                self.mark_removed(older)
            files[key] = record
        self.files = files

    def scan_dir(self, relative: str, found: set[Key] | None) -> None:
        """Watch a directory and consider everything in it (``found`` collects the files)."""
        assert self.watcher is not None
        try:
            for part in relative.split("/"):
                uploads.check_part(part)
            uploads.check_user(relative.split("/")[0])
        except Unusable as e:
            self.skip(relative, str(e))
            return
        self.watcher.watch(relative)
        for entry in _entries(self.root / relative):
            path = f"{relative}/{entry.name}"
            if entry.is_dir(follow_symlinks=False):
                self.scan_dir(path, found)
            else:
                self.consider(path, found)

    def consider(self, path: str, found: set[Key] | None) -> None:
        """Make ``path`` a candidate if it is new or changed since it was registered."""
        key = self.key(path)
        if key is None:
            return
        try:
            seen = uploads.seen(self.root, *key)
        except FileNotFoundError:
            return
        except Unusable as e:
            self.skip(path, str(e))
            if key in self.files:
                self.removed(key)
            return
        if found is not None:
            found.add(key)
        record = self.files.get(key)
        if record is not None and (record.size, record.mtime) == (seen.size, seen.mtime):
            self.candidates.pop(key, None)
            return
        self.candidate(key, writing=False)

    # --- registering ---------------------------------------------------------------------------

    def settle(self) -> None:
        """Register each candidate that has been complete and unchanged long enough."""
        for key, candidate in list(self.candidates.items()):
            try:
                seen = uploads.seen(self.root, *key)
            except (FileNotFoundError, Unusable) as e:
                if isinstance(e, Unusable):
                    self.skip("/".join(key), str(e))
                self.removed(key)
                continue
            moment = time.monotonic()
            if seen != candidate.seen:
                candidate.seen, candidate.stable_since = seen, moment
                continue
            if candidate.writing or moment - candidate.stable_since < self.settings.upload_settle:
                continue
            try:
                if self.register(key, seen):
                    del self.candidates[key]
            except OSError as e:  # reading it failed: leave it until it changes
                self.skip("/".join(key), f"cannot read it ({e.strerror})")
                del self.candidates[key]

    def register(self, key: Key, seen: Seen) -> bool:
        """Hash the file and write its record; False if it changed meanwhile."""
        user, name = key
        log.info("hashing %s/%s (%d bytes)", user, name, seen.size)
        try:
            with uploads.opened(self.root, user, name) as fd:
                digest = sha512_of(fd)
                after = Seen.of(os.fstat(fd))
        except (FileNotFoundError, Unusable):
            return False  # the next settle() sees why
        if after != seen:
            return False
        record = self.files.get(key)
        if record is not None and self._update(record, seen, digest):
            metrics.REGISTERED.inc()
            return True
        new = File(
            owner=user,
            owner_realm=self.realm,
            name=name,
            size=seen.size,
            sha512=digest,
            mtime=seen.mtime,
        )
        self.store.create(new)
        self.files[key] = new
        metrics.REGISTERED.inc()
        log.info("registered %s/%s (%d bytes) as file %s", user, name, seen.size, new.uuid)
        return True

    def _update(self, record: File, seen: Seen, digest: str) -> bool:
        """Bring the record in step with the file; False if the record is gone."""

        def change(f: File) -> bool:
            if (f.size, f.mtime, f.sha512, f.removed) == (seen.size, seen.mtime, digest, False):
                return False
            f.size, f.mtime, f.sha512, f.removed, f.updated = (
                seen.size,
                seen.mtime,
                digest,
                False,
                now(),
            )
            return True

        written = self.store.update(File, record.uuid, change)
        if written is None:
            return False
        self.files[(record.owner, record.name)] = written.value
        if digest != record.sha512:
            log.info("file %s (%s/%s) changed", record.uuid, record.owner, record.name)
        return True

    def removed(self, key: Key) -> None:
        record = self.files.get(key)
        if record is not None:
            self.mark_removed(record)
            log.info("file %s (%s/%s) is gone; marked removed", record.uuid, *key)
        self.files.pop(key, None)
        self.candidates.pop(key, None)

    def mark_removed(self, record: File) -> None:
        def change(f: File) -> bool:
            if f.removed:
                return False
            f.removed, f.updated = True, now()
            return True

        self.store.update(File, record.uuid, change)


def _entries(directory: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(directory) as it:
            return list(it)
    except (FileNotFoundError, NotADirectoryError):
        return []  # gone meanwhile
    except OSError as e:
        log.warning("cannot list %s: %s", directory, e.strerror)
        return []
