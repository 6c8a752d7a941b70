"""Sampling profiles of a daemon under load, with py-spy (``pip install py-spy``), and a plain
text summary of where its time went.

    .venv/bin/python -m bench.profile FILE.txt     # summarize a profile written earlier
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path


def py_spy() -> str | None:
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


class Profile:
    """``py-spy record`` of one process, in collapsed-stack ("raw") form, until stop()."""

    def __init__(self, pid: int, output: Path, rate: int = 250, subprocesses: bool = False) -> None:
        exe = py_spy()
        if exe is None:
            raise RuntimeError("py-spy is not installed: .venv/bin/pip install py-spy")
        self.output = output
        output.parent.mkdir(parents=True, exist_ok=True)
        argv = [exe, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw"]
        argv += ["--output", str(output), "--nonblocking", "--threads"]
        argv += ["--subprocesses"] if subprocesses else []
        self.proc = subprocess.Popen(
            argv,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self, all_threads: bool = False) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self.output.exists():
            return "(no profile written)"
        return summarize(self.output, all_threads=all_threads)


def summarize(path: Path, top: int = 25, all_threads: bool = False) -> str:
    """Functions by inclusive share of the samples of the busiest thread (or of all threads),
    and by own share."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    per_thread: Counter[str] = Counter()
    stacks: list[tuple[str, list[str], int]] = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        frames = stack.split(";")
        thread = frames[0]
        per_thread[thread] += int(count)
        stacks.append((thread, frames[1:], int(count)))
    if not per_thread:
        return "(empty profile)"
    busiest, total = per_thread.most_common(1)[0]
    if all_threads:
        busiest, total = "(all)", sum(per_thread.values())
    for thread, frames, n in stacks:
        if thread != busiest and not all_threads:
            continue
        for f in {_function(f) for f in frames}:
            inclusive[f] += n
        if frames:
            own[_short(frames[-1])] += n
    lines = [f"busiest thread {busiest}: {total} samples"]
    lines.append("inclusive, by function:")
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in inclusive.most_common(top)]
    lines.append("own, by line:")
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in own.most_common(top)]
    return "\n".join(lines)


def _function(frame: str) -> str:
    """'function (path/to/file.py:123)' -> 'function (file.py)'."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit('/', 1)[-1].split(':', 1)[0]})" if where else name


def _short(frame: str) -> str:
    # "function (path/to/file.py:123)" -> "function (file.py:123)"
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit('/', 1)[-1]}" if where else name


if __name__ == "__main__":
    print(summarize(Path(sys.argv[1])))
