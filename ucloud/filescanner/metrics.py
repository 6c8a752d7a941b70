"""The file scanner's metrics."""

from __future__ import annotations

from prometheus_client import Counter

REGISTERED = Counter(
    "ucloud_files_registered_total",
    "Uploaded files registered (new ones, and changed ones hashed again)",
)
