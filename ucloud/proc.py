"""The one way to run a subprocess: logged, bounded in time, with a readable error."""

from __future__ import annotations

import io
import logging
import re
import selectors
import shlex
import subprocess
import threading
import time
from collections.abc import Callable, Sequence

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


# Progress meters (qemu-img convert -p) rewrite one line with carriage returns.
_LINE_END = re.compile(rb"[\r\n]")
_STDERR_KEEP = 64 * 1024


def stream(
    argv: Sequence[str],
    on_line: Callable[[str], None],
    *,
    timeout: float = 300,
    die_with_parent: bool = True,
) -> None:
    """Run ``argv`` (never through a shell), handing each line of its stdout to ``on_line``
    as it comes (a line ends in a newline or a carriage return); raise CommandError on
    failure, with the end of its stderr.

    ``die_with_parent``: the command is killed if this process dies (even by SIGKILL), so a
    long job cannot outlive the daemon that would clean up after it.
    """
    command = list(argv)  # as errors name it
    if die_with_parent:
        # util-linux's setpriv sets PR_SET_PDEATHSIG and execs: safer than a preexec_fn in
        # a threaded daemon.
        argv = ["setpriv", "--pdeathsig", "KILL", "--", *command]
    log.debug("streaming %s", shlex.join(argv))
    child = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    # Buffered pipes (Popen's default bufsize): read1 returns what is there, up to a size.
    stdout, stderr_pipe = child.stdout, child.stderr
    assert isinstance(stdout, io.BufferedReader) and isinstance(stderr_pipe, io.BufferedReader)
    stderr = bytearray()

    def drain_stderr(pipe: io.BufferedReader = stderr_pipe) -> None:
        for chunk in iter(lambda: pipe.read1(4096), b""):
            stderr.extend(chunk)
            del stderr[:-_STDERR_KEEP]

    reader = threading.Thread(target=drain_stderr, name="stderr", daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    pending = b""
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(stdout, selectors.EVENT_READ)
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise CommandError(command, -1, f"timed out after {timeout} s")
                if not sel.select(min(left, 1.0)):
                    continue
                chunk = stdout.read1(4096)
                if not chunk:
                    break
                *lines, pending = _LINE_END.split(pending + chunk)
                for line in lines:
                    if line.strip():
                        on_line(line.decode(errors="replace"))
        if pending.strip():
            on_line(pending.decode(errors="replace"))
        try:
            returncode = child.wait(timeout=max(deadline - time.monotonic(), 1.0))
        except subprocess.TimeoutExpired as e:
            raise CommandError(command, -1, f"timed out after {timeout} s") from e
    except BaseException:
        child.kill()
        child.wait()
        raise
    finally:
        reader.join(timeout=5)
        stdout.close()
        stderr_pipe.close()
    if returncode != 0:
        raise CommandError(command, returncode, stderr.decode(errors="replace"))
