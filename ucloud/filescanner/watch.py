"""inotify on every directory under the upload root, as plain happenings to paths.

inotify watches one directory, not a tree: each directory gets its own watch, added when it
appears. What inotify cannot tell reliably (its queue overflowed, a watched directory moved,
no watch could be added) comes out as a RESCAN, and the scanner looks at everything again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from inotify_simple import INotify
from inotify_simple import flags as F

log = logging.getLogger(__name__)

MASK = (
    F.CREATE
    | F.MODIFY
    | F.CLOSE_WRITE
    | F.ATTRIB
    | F.DELETE
    | F.MOVED_FROM
    | F.MOVED_TO
    | F.DELETE_SELF
    | F.MOVE_SELF
    | F.ONLYDIR
    | F.DONT_FOLLOW
    | F.EXCL_UNLINK
)


class What(Enum):
    WRITING = "writing"  # created or written to: not complete yet
    WRITTEN = "written"  # closed after writing, or moved in: complete, if it stays so
    CHANGED = "changed"  # its metadata changed: look at it again
    GONE = "gone"  # deleted or moved away
    DIRECTORY = "directory"  # a new directory: watch it and look inside
    RESCAN = "rescan"  # inotify lost track: look at everything


@dataclass(frozen=True)
class Happening:
    what: What
    path: str = ""  # relative to the root, '/'-separated; "" for RESCAN


class Watcher:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.inotify = INotify()
        self.dirs: dict[int, str] = {}  # watch descriptor -> directory relative to root

    def close(self) -> None:
        self.inotify.close()

    def reset(self) -> None:
        """Forget every watch (before a rescan adds them again)."""
        for wd in list(self.dirs):
            # OSError: its directory is gone, and the kernel dropped the watch already.
            with contextlib.suppress(OSError):
                self.inotify.rm_watch(wd)
        self.dirs.clear()

    def watch(self, relative: str) -> bool:
        """Watch the directory ``relative`` (""; the root); False if it cannot be."""
        try:
            wd = self.inotify.add_watch(self.root / relative if relative else self.root, MASK)
        except OSError as e:
            # ENOSPC: fs.inotify.max_user_watches is too low; the periodic rescans still
            # find what happens in this directory, only later.
            log.warning("cannot watch %s (%s); relying on rescans", relative or ".", e.strerror)
            return False
        self.dirs[wd] = relative  # a directory moved within the tree keeps its wd
        return True

    def read(self, timeout: float) -> list[Happening]:
        """What happened, waiting up to ``timeout`` seconds for the first event."""
        happenings = []
        for event in self.inotify.read(timeout=int(timeout * 1000)):
            if event.mask & F.Q_OVERFLOW:
                log.warning("inotify queue overflowed; rescanning")
                happenings.append(Happening(What.RESCAN))
                continue
            if event.mask & F.IGNORED:
                self.dirs.pop(event.wd, None)
                continue
            parent = self.dirs.get(event.wd)
            if parent is None:
                continue
            if event.mask & (F.DELETE_SELF | F.MOVE_SELF):
                if event.mask & F.MOVE_SELF:
                    # Its path in our map is stale now, and so are its children's.
                    happenings.append(Happening(What.RESCAN))
                continue
            path = f"{parent}/{event.name}" if parent else event.name
            what = _what(event.mask)
            if event.mask & F.CREATE and what == What.WRITING and self._whole(path):
                what = What.WRITTEN
            happenings.append(Happening(what, path))
        return happenings

    def _whole(self, path: str) -> bool:
        """Whether a file that just appeared is complete at once: a symlink or a hard link
        is never opened for writing, so no close will follow."""
        try:
            st = os.lstat(self.root / path)
        except OSError:
            return False
        return stat.S_ISLNK(st.st_mode) or st.st_nlink > 1


def _what(mask: int) -> What:
    if mask & F.ISDIR:
        if mask & (F.CREATE | F.MOVED_TO):
            return What.DIRECTORY
        if mask & (F.DELETE | F.MOVED_FROM):
            return What.GONE
        return What.CHANGED
    if mask & (F.DELETE | F.MOVED_FROM):
        return What.GONE
    if mask & (F.CLOSE_WRITE | F.MOVED_TO):
        return What.WRITTEN
    if mask & F.ATTRIB:
        return What.CHANGED
    return What.WRITING
