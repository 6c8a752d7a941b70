"""Run every benchmark, one after the other, in quick mode (or full with --full).

.venv/bin/python -m bench.all [--full] [--record] [--only scheduling,api,...]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from bench.common import REPO, log

# In the order of priority.
BENCHMARKS = [
    "scheduling",
    "api",
    "disks",
    "provisioning",
    "image_import",
    "failover",
    "migration",
    "consoles",
    "metrics",
    "netplane",
    "netattach",
    "ssh_ready",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.all", description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="full runs (tens of minutes)")
    parser.add_argument("--record", action="store_true", help="write tables to RESULTS.md")
    parser.add_argument("--only", default=",".join(BENCHMARKS))
    args = parser.parse_args(argv)
    failed = []
    for name in args.only.split(","):
        argv = [sys.executable, "-m", f"bench.{name}"]
        argv += [] if args.full else ["--quick"]
        argv += ["--record"] if args.record else []
        log(f"== {' '.join(argv[1:])}")
        start = time.monotonic()
        code = subprocess.run(argv, cwd=REPO).returncode
        log(f"== bench.{name}: exit {code} after {time.monotonic() - start:.0f} s")
        if code:
            failed.append(name)
    if failed:
        log(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
