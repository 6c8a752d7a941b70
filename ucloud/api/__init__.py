"""``ucloud-api``: the Flask application factory."""

from __future__ import annotations

from flask import Flask

from ucloud.config import Settings, load_settings
from ucloud.store import Store


def create_app(settings: Settings | None = None, store: Store | None = None) -> Flask:
    from ucloud.api import (
        accounts,
        consoles,
        endpoint,
        errors,
        hosts,
        images,
        imports,
        keys,
        metrics,
        migrations,
        networks,
        openapi,
        quotas,
        resize,
        uploads,
        users,
        vms,
    )
    from ucloud.web import install_web

    settings = settings or load_settings()
    app = Flask("ucloud.api")
    app.config["MAX_CONTENT_LENGTH"] = settings.api_max_body
    app.json.sort_keys = False  # type: ignore[attr-defined]
    endpoint.install(app, settings, store or Store(settings))
    errors.register(app)
    metrics.install(app)
    modules = (
        vms,
        consoles,
        resize,
        migrations,
        networks,
        hosts,
        users,
        accounts,
        images,
        imports,
        uploads,
        quotas,
        keys,
        openapi,
    )
    for module in modules:
        app.register_blueprint(module.bp)
    install_web(app, settings)
    return app
