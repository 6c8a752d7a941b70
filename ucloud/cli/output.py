"""How results are shown: aligned tables and key/value blocks for people, JSON for scripts.

Results go to stdout; progress, warnings and errors go to stderr, so that ``--json`` output
can be piped straight into a parser.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO


@dataclass
class Output:
    json: bool = False
    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)

    def data(self, value: Any) -> None:
        """In --json mode, the command's one JSON document."""
        if self.json:
            print(json.dumps(value, indent=2), file=self.out)

    def text(self, line: str = "") -> None:
        """A line for people; nothing in --json mode."""
        if not self.json:
            print(line, file=self.out)

    def listing(
        self,
        items: list[dict[str, Any]],
        empty: str,
        headers: Sequence[str],
        row: Callable[[dict[str, Any]], Sequence[object]],
    ) -> None:
        """A list command's answer: the items as JSON, or a table (``empty`` if none)."""
        self.data(items)
        self.text(table(headers, (row(i) for i in items)) if items else empty)

    def progress(self, line: str) -> None:
        print(line, file=self.err, flush=True)


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """Columns aligned with two spaces between them; the last one is not padded."""
    cells = [list(headers)] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        padded = [c.ljust(w) for c, w in zip(row[:-1], widths, strict=False)] + [row[-1]]
        lines.append("  ".join(padded).rstrip())
    return "\n".join(lines)


def fields(pairs: Sequence[tuple[str, object]]) -> str:
    """``key: value`` lines with the values aligned."""
    width = max((len(k) for k, _ in pairs), default=0) + 1
    return "\n".join(f"{(k + ':').ljust(width)} {v}" for k, v in pairs)


def when(timestamp: float | None) -> str:
    """A Unix time in the user's local time zone, to the second."""
    if not timestamp:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


def gib(value: float | int | None) -> str:
    """A size the API gives in GiB, written the way the API accepts it ("10G", "512M")."""
    if value is None:
        return "-"
    if value == 0:
        return "0"
    if value < 1:
        return f"{value * 1024:g}M"
    return f"{value:g}G"


def size_bytes(value: int | None) -> str:
    if value is None:
        return "-"
    size = float(value)
    for unit in ("B", "K", "M", "G"):
        if size < 1024:
            return f"{size:.0f}{unit}" if unit == "B" else f"{size:.1f}{unit}"
        size /= 1024
    return f"{size:.1f}T"
