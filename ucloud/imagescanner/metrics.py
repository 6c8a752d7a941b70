"""The image scanner's metrics: image imports, their results and durations. (Whether this
scanner leads is ``ucloud_leader{election="imagescanner"}``, from ucloud.daemon.)"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

IMPORTS = Counter(
    "ucloud_image_imports_total",
    "Images imported into storage (result=created), refused by vetting (refused), or given "
    "up after failed attempts (failed)",
    ["result"],
)
IMPORT_SECONDS = Histogram(
    "ucloud_image_import_duration_seconds",
    "Time to vet and convert one image into storage (attempts that finished: created or refused)",
    buckets=(0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 3600),
)
