"""The API benchmark's reference: a bare Flask app served by ucloud-api's own gunicorn
configuration (workers, threads, worker class, access log), on UCLOUD_API_BIND.

GET /bare      {"ok": true}
GET /payload   the bytes of the file $BENCH_PAYLOAD (a response as large as /vm/list's)
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from flask import Flask, Response, jsonify

from ucloud.api.main import _Gunicorn
from ucloud.config import load_settings


def create_app() -> Flask:
    app = Flask("bench.bare")
    path = os.environ.get("BENCH_PAYLOAD")
    payload = Path(path).read_bytes() if path else b"{}"

    @app.get("/bare")
    def bare() -> Any:
        return jsonify({"ok": True})

    @app.get("/payload")
    def sized() -> Any:
        return Response(payload, mimetype="application/json")

    return app


class Bare(_Gunicorn):
    def load(self) -> Any:
        return create_app()


def main() -> int:
    Bare(load_settings()).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
