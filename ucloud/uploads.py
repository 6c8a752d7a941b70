"""Users' uploaded files, as both scanners see them: which paths under the upload root count,
opening them safely, and hashing them.

A path counts when it lies inside a user's directory, every part of it is UTF-8 text without
control characters and does not start with a dot (upload tools such as rsync write into hidden
temporary names and rename when done), and it is a regular file, or a symlink to one inside
the same user's directory. Files are opened one directory at a time with O_NOFOLLOW, so a
symlink swapped in after the check cannot lead outside. (Hard links are the kernel's business:
fs.protected_hardlinks, on by default, stops users linking files they do not own.)

The file scanner registers files with their sha512; the image scanner checks a file against it
before it converts it. Both use this module, so neither depends on the other.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ucloud.models import check_name

CHUNK = 1 << 20  # hashing reads this much at a time


class Unusable(Exception):
    """A path that is not a user's file; the message says why (for the log)."""


@dataclass(frozen=True)
class Seen:
    """What identifies a file's content without reading it: any write changes ctime, which
    (unlike mtime) nobody can set back."""

    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int

    @classmethod
    def of(cls, st: os.stat_result) -> Seen:
        return cls(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)

    @property
    def mtime(self) -> float:
        return self.mtime_ns / 1e9


def check_part(part: str) -> None:
    """Raise Unusable unless ``part`` (one path component, as os.fsdecode gives it) is a
    name we register."""
    try:
        part.encode("utf-8")
    except UnicodeEncodeError:
        # os.fsdecode turns bytes that are not UTF-8 into lone surrogates.
        raise Unusable("its name is not valid UTF-8 text") from None
    if any(ord(c) < 32 or ord(c) == 127 for c in part):
        raise Unusable("its name contains control characters")
    if part.startswith("."):
        raise Unusable("it is hidden (a dot name: an upload in progress, or not meant for us)")


def split(relative: str) -> tuple[str, str]:
    """(user, name) of a path relative to the upload root; Unusable if it is not a file
    path inside a user's directory."""
    parts = relative.split("/")
    if len(parts) < 2:
        raise Unusable("it is outside any user's directory")
    for part in parts:
        check_part(part)
    check_user(parts[0])
    return parts[0], "/".join(parts[1:])


def check_user(name: str) -> None:
    """Raise Unusable unless a directory in the root named ``name`` can be a user's."""
    try:
        check_name(name)
    except ValueError as e:
        raise Unusable(f"directory {name!r} is not named as a user can be ({e})") from None


def user_dir(root: Path, user: str) -> Path:
    """The user's directory; Unusable if it is not a real directory (a symlinked user
    directory could point anywhere)."""
    path = root / user
    try:
        st = os.lstat(path)
    except OSError as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise Unusable(f"cannot look at {path} ({e.strerror})") from e
    if not stat.S_ISDIR(st.st_mode):
        raise Unusable(f"{path} is not a directory (a symlink?)")
    return path


def resolve(root: Path, user: str, name: str) -> str:
    """The path, relative to the user's directory, of the file ``name`` is (itself, or the
    target of a symlink); Unusable if that lies outside the user's directory."""
    home = user_dir(root, user)
    real_home = os.path.realpath(home)
    real = os.path.realpath(home / name)
    if not real.startswith(real_home + os.sep):
        raise Unusable("it is a symlink to a file outside the user's directory")
    return real[len(real_home) + 1 :]


def open_file(root: Path, user: str, name: str) -> int:
    """A read-only descriptor of the user's file ``name``, opened without following any
    symlink on the way but the one ``resolve`` checked. FileNotFoundError if it is gone,
    Unusable if it is not a regular file inside the user's directory."""
    parts = resolve(root, user, name).split(os.sep)
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(user_dir(root, user), flags | os.O_DIRECTORY)
    try:
        for part in parts[:-1]:
            child = os.open(part, flags | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
        # O_NONBLOCK: opening a FIFO must not hang the scanner.
        child = os.open(parts[-1], flags | os.O_NONBLOCK | os.O_NOCTTY, dir_fd=fd)
    except OSError as e:
        if isinstance(e, FileNotFoundError):
            raise
        # ELOOP or ENOTDIR: a part became a symlink after it was resolved; or EACCES...
        raise Unusable(f"it cannot be opened safely ({e.strerror})") from e
    finally:
        os.close(fd)
    if not stat.S_ISREG(os.fstat(child).st_mode):
        os.close(child)
        raise Unusable("it is not a regular file")
    return child


@contextmanager
def opened(root: Path, user: str, name: str) -> Iterator[int]:
    fd = open_file(root, user, name)
    try:
        yield fd
    finally:
        os.close(fd)


def seen(root: Path, user: str, name: str) -> Seen:
    with opened(root, user, name) as fd:
        return Seen.of(os.fstat(fd))


def sha512_of(fd: int) -> str:
    """sha512 of an open file, streamed: images run to many GiB and are never read whole."""
    digest = hashlib.sha512()
    offset = 0
    # pread: the descriptor's position is left alone for whoever else reads it.
    while chunk := os.pread(fd, CHUNK, offset):
        digest.update(chunk)
        offset += len(chunk)
    return digest.hexdigest()
