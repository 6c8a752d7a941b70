"""The one way to run a subprocess: logged, bounded in time, with a readable error."""

from __future__ import annotations

import logging
import shlex
import subprocess
from collections.abc import Sequence

log = logging.getLogger(__name__)


class CommandError(RuntimeError):
    def __init__(self, argv: Sequence[str], returncode: int, stderr: str) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr
        tail = stderr.strip().splitlines()[-1:] or ["(no output)"]
        super().__init__(f"{shlex.join(argv)} exited {returncode}: {tail[0]}")


def run(
    argv: Sequence[str],
    *,
    timeout: float = 300,
    input: bytes | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``argv`` (never through a shell) and return its result; raise CommandError on failure."""
    log.debug("running %s", shlex.join(argv))
    try:
        result = subprocess.run(
            list(argv), input=input, capture_output=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as e:
        raise CommandError(argv, -1, f"timed out after {timeout} s") from e
    if check and result.returncode != 0:
        raise CommandError(argv, result.returncode, result.stderr.decode(errors="replace"))
    return result
