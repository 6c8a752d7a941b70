"""The unit layer: no root, no etcd, Ceph or libvirtd; the whole of it runs in seconds.

Everything under tests/unit/ is marked ``unit``, so ``pytest -m unit`` (or
``scripts/test.sh -m unit``) runs exactly this layer; and each of its tests gets a short
timeout, so a regression that makes one hang (a queue that never hands a key out) fails in
seconds instead of the suite's 300.
"""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
UNIT_TIMEOUT = 20  # seconds, for one test


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # This hook sees every collected item of the session, not only this folder's.
    for item in items:
        if item.path.resolve().is_relative_to(HERE):
            item.add_marker(pytest.mark.unit)
            item.add_marker(pytest.mark.timeout(UNIT_TIMEOUT))
