"""sha512 of an open file, streamed: images run to many GiB and are never read whole."""

from __future__ import annotations

import hashlib
import os

CHUNK = 1 << 20


def sha512_of(fd: int) -> str:
    digest = hashlib.sha512()
    offset = 0
    # pread: the descriptor's position is left alone for whoever else reads it.
    while chunk := os.pread(fd, CHUNK, offset):
        digest.update(chunk)
        offset += len(chunk)
    return digest.hexdigest()
