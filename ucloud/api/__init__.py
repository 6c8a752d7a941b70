"""``ucloud-api``: the Flask application factory."""

from __future__ import annotations

from flask import Flask

from ucloud.config import Settings, load_settings
from ucloud.store import Store


def create_app(settings: Settings | None = None, store: Store | None = None) -> Flask:
    from ucloud.api import endpoint, errors, hosts, images, keys, networks, openapi, users, vms

    settings = settings or load_settings()
    app = Flask("ucloud.api")
    app.config["MAX_CONTENT_LENGTH"] = settings.api_max_body
    app.json.sort_keys = False  # type: ignore[attr-defined]
    endpoint.install(app, settings, store or Store(settings))
    errors.register(app)
    for module in (vms, networks, hosts, users, images, keys, openapi):
        app.register_blueprint(module.bp)
    return app
