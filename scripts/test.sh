#!/usr/bin/env bash
# Run the full test suite: installs what it needs (Debian packages, the venv), and the test
# fixtures start what they need (etcd, Ceph, libvirtd, QEMU guests) and stop it by pid.
# Extra arguments go to pytest, e.g.  scripts/test.sh -k scheduler -x
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
.venv/bin/ruff check ucloud tests
.venv/bin/mypy ucloud        # types ([tool.mypy] in pyproject.toml)
.venv/bin/lint-imports       # which parts may import which ([tool.importlinter])
exec .venv/bin/pytest -q -p no:cacheprovider "$@"
