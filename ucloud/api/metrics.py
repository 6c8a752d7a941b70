"""The API's metrics: requests by endpoint, method and status, and their latency.

gunicorn runs several worker processes; each counts its own requests into a file of
prometheus_client's multiprocess mode, and gunicorn's master serves the sums on
``api_metrics_port`` (ucloud.api.main). The API keeps no state worth exporting: VMs and hosts
are exported by the leading scheduler. /metrics is not on the API's own port (a public one,
behind the TLS proxy), so it is not in the OpenAPI document.
"""

from __future__ import annotations

import time

from flask import Flask, Response, g, request
from prometheus_client import Counter, Histogram

from ucloud.metrics import LATENCY_BUCKETS

REQUESTS = Counter(
    "ucloud_api_requests_total",
    "API requests answered, by endpoint (the route; 'unmatched' for unknown paths), method and "
    "HTTP status",
    ["endpoint", "method", "status"],
)
SECONDS = Histogram(
    "ucloud_api_request_duration_seconds",
    "Time to answer an API request, by endpoint and method",
    ["endpoint", "method"],
    buckets=LATENCY_BUCKETS,
)

METHODS = frozenset({"GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"})


def install(app: Flask) -> None:
    @app.before_request
    def started() -> None:
        g.ucloud_started = time.monotonic()

    @app.after_request
    def count(response: Response) -> Response:
        rule = request.url_rule
        # Routes, not paths: a path holds whatever a client sent (labels are never user data).
        endpoint = rule.rule if rule is not None else "unmatched"
        method = request.method if request.method in METHODS else "other"
        REQUESTS.labels(endpoint, method, str(response.status_code)).inc()
        began = g.get("ucloud_started")
        if began is not None:
            SECONDS.labels(endpoint, method).observe(time.monotonic() - began)
        return response
