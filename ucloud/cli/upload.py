"""``ucloud file upload PATH``: stream a file to the API, with a progress bar on stderr."""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote

from ucloud.cli.errors import ConfigError, ExitCode
from ucloud.cli.output import Output, size_bytes
from ucloud.cli.session import Session

CHUNK = 1 << 20


class Progress:
    """One line on stderr, redrawn at most five times a second (only on a terminal)."""

    def __init__(self, out: Output, what: str, total: int) -> None:
        self.out, self.what, self.total = out, what, total
        self.done = 0
        self.started = self.shown = time.monotonic()
        self.tty = sys.stderr.isatty()

    def add(self, count: int) -> None:
        self.done += count
        now = time.monotonic()
        if self.tty and (now - self.shown >= 0.2 or self.done >= self.total):
            self.shown = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        share = self.done / self.total if self.total else 1.0
        bar = "#" * int(share * 30)
        rate = self.done / max(now - self.started, 1e-6)
        line = (
            f"\r{self.what} [{bar:<30}] {share:4.0%} {size_bytes(self.done)}/"
            f"{size_bytes(self.total)} {size_bytes(int(rate))}/s "
        )
        print(line, end="", file=self.out.err, flush=True)

    def finish(self) -> None:
        if self.tty:
            self._draw(time.monotonic())
            print(file=self.out.err, flush=True)


class Reader:
    """The file, read a chunk at a time by requests as it sends it, counted for the bar."""

    def __init__(self, file: BinaryIO, progress: Progress) -> None:
        self.file, self.progress = file, progress

    def read(self, size: int = -1) -> bytes:
        chunk = self.file.read(CHUNK if size is None or size < 0 else size)
        self.progress.add(len(chunk))
        return chunk


def upload(s: Session, args: argparse.Namespace) -> int:
    path = Path(args.path)
    name = args.name or path.name
    try:
        size = os.stat(path).st_size
        if not path.is_file():
            raise ConfigError(f"{path} is not a file")
        with open(path, "rb") as f:
            sha512 = _sha512(f, Progress(s.out, f"hashing   {name}", size))
            f.seek(0)
            progress = Progress(s.out, f"uploading {name}", size)
            reply = s.api.put_file(
                f"/file/upload/{quote(name, safe='')}",
                {"X-UCloud-SHA512": sha512},
                Reader(f, progress),
                size,
            )
            progress.finish()
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from e
    s.out.data(reply)
    s.out.text(
        f"uploaded {name} ({size_bytes(size)}); it is listed by 'ucloud file list' once the "
        "file scanner has registered it (a few seconds)"
    )
    return ExitCode.OK


def _sha512(file: BinaryIO, progress: Progress) -> str:
    digest = hashlib.sha512()
    while chunk := file.read(CHUNK):
        digest.update(chunk)
        progress.add(len(chunk))
    progress.finish()
    return digest.hexdigest()
