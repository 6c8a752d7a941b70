#!/usr/bin/env bash
# Run the full test suite: installs what it needs (Debian packages, the venv), and the test
# fixtures start what they need (etcd, Ceph, libvirtd, QEMU guests) and stop it by pid.
# Extra arguments go to pytest, e.g.  scripts/test.sh -k scheduler -x
# The unit layer alone (tests/unit/: no root, no servers, seconds):  scripts/test.sh -m unit
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -eq 0 ]; then
  bash scripts/install-deps.sh
elif [ -x .venv/bin/python ]; then
  # Not root: install-deps.sh needs root (apt-get, system users), and the unit layer needs
  # nothing of what it adds but the venv, which exists. (The rest of the suite starts etcd,
  # Ceph and libvirtd, and needs root anyway.) Re-run install-deps.sh as root when
  # pyproject.toml's dependencies change.
  echo "test.sh: not root: using the existing .venv without running install-deps.sh" >&2
else
  echo "test.sh: no .venv yet; as root, run once: scripts/install-deps.sh" >&2
  echo "  (or without root: python3 -m venv .venv && .venv/bin/pip install -e '.[dev]')" >&2
  exit 1
fi
.venv/bin/ruff check ucloud tests bench
.venv/bin/ruff format --check ucloud tests bench
.venv/bin/mypy ucloud        # types ([tool.mypy] in pyproject.toml)
.venv/bin/lint-imports       # which parts may import which ([tool.importlinter])
# `-m unit` without a path collects tests/unit alone: the other test modules import Ceph's
# bindings (rados) when collected, and a venv made without install-deps.sh has none.
prev= unit= path=
for arg in "$@"; do
  if [ "$prev" = -m ] && [ "$arg" = unit ]; then unit=1; fi
  case $arg in tests*) path=1 ;; esac
  prev=$arg
done
if [ -n "$unit" ] && [ -z "$path" ]; then set -- tests/unit "$@"; fi
# The whole suite runs in UCLOUD_TEST_WORKERS processes (default 2; 0: one, in this one), a
# test file each at a time: most tests wait on leases, boots and watches, so two finish in
# about half the time on two cores. Every fixture makes its own servers, ports, folders and
# namespaces, so files in two processes never share one. The unit layer alone runs in this
# process (seconds).
workers=${UCLOUD_TEST_WORKERS:-2}
if [ -z "$unit" ] && [ "$workers" != 0 ]; then set -- -n "$workers" --dist loadfile "$@"; fi
# The slowest tests, so CI time is watched where it goes.
exec .venv/bin/pytest -q -p no:cacheprovider --durations=25 "$@"
