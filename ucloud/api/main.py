"""``ucloud-api``: serve the API with gunicorn, or bootstrap the first administrator.

ucloud-api                      serve on UCLOUD_API_BIND
ucloud-api create-admin NAME    create an administrator and print its TOTP seed
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from gunicorn.app.base import BaseApplication

from ucloud.config import Settings, load_settings
from ucloud.logs import setup_logging
from ucloud.store import Conflict, Store


class _Gunicorn(BaseApplication):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        super().__init__()

    def load_config(self) -> None:
        s = self.settings
        for key, value in {
            "bind": s.api_bind,
            "workers": s.api_workers,
            "threads": s.api_threads,
            "worker_class": "gthread",
            # gthread: the worker's main loop beats, not its requests, so an upload that lasts
            # hours is not cut (tests/test_uploads.py uploads past a 2 s timeout).
            "timeout": s.api_worker_timeout,
            "accesslog": "-",
            "loglevel": s.log_level.lower(),
            # Each worker makes its own app, and so its own etcd channel: gRPC channels must
            # not cross a fork.
            "preload_app": False,
            # gunicorn 27 opens a control socket at one fixed path per user: every ucloud-api
            # on a machine would claim the same one. Nothing here uses it.
            "control_socket_disable": True,
        }.items():
            if key in self.cfg.settings:  # control_socket_disable is new in gunicorn 27
                self.cfg.set(key, value)

    def load(self) -> Any:
        from ucloud.api import create_app

        setup_logging("api", self.settings.log_level)
        return create_app(self.settings)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ucloud-api", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    admin = sub.add_parser("create-admin", help="create an administrator, print its seed")
    admin.add_argument("name")
    args = parser.parse_args(argv)
    settings = load_settings()
    setup_logging("api", settings.log_level)

    if args.command == "create-admin":
        from ucloud.api.users import create_user, credentials

        try:
            user = create_user(Store(settings), args.name, settings.admin_realm)
        except Conflict as e:
            print(f"ucloud-api: {e}", file=sys.stderr)
            return 1
        print(json.dumps(credentials(user), indent=2))
        return 0

    _Gunicorn(settings).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
