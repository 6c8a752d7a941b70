"""The ``ucloud`` CLI run in-process against the real API on a loopback port: the fixtures of
every test that drives the CLI (tests/conftest.py offers them to all)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from werkzeug.serving import make_server

from tests.servers import free_port
from ucloud.cli.main import main

if TYPE_CHECKING:  # (conftest imports this module)
    from tests.conftest import Account

CLIENT_KEYS = ("UCLOUD_API_URL", "UCLOUD_USER", "UCLOUD_REALM", "UCLOUD_SEED")


def shown(out: str, field: str) -> str:
    """The value of ``field`` in a ``vm status``-like listing ("name:   value"), whatever
    the column it is aligned to."""
    for line in out.splitlines():
        name, sep, value = line.partition(":")
        if sep and name == field:
            return value.strip()
    raise AssertionError(f"no field {field!r} in:\n{out}")


@pytest.fixture
def api_url(app) -> Iterator[str]:
    port = free_port()
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}"
    server.shutdown()
    thread.join(10)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A home of its own, and no client settings from the environment running the tests."""
    monkeypatch.setenv("HOME", str(tmp_path))
    for key in (*CLIENT_KEYS, "UCLOUD_CLIENT_CONFIG"):
        monkeypatch.delenv(key, raising=False)
    return tmp_path


class CLI:
    """Runs ``ucloud`` in-process with its own client settings; returns (code, stdout, stderr)."""

    def __init__(
        self,
        capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch,
        env: dict[str, str] | None = None,
    ) -> None:
        self.capsys, self.monkeypatch, self.env = capsys, monkeypatch, env or {}

    def as_user(self, url: str, account: Account) -> CLI:
        values = (url, account.name, account.realm, account.secret)
        return CLI(self.capsys, self.monkeypatch, dict(zip(CLIENT_KEYS, values, strict=True)))

    def __call__(self, *argv: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        with self.monkeypatch.context() as m:
            for key, value in self.env.items():
                m.setenv(key, value)
            code = main(list(argv))
        out, err = self.capsys.readouterr()
        return code, out, err

    def json(self, *argv: str) -> object:
        code, out, err = self("--json", *argv)
        assert code == 0, err
        return json.loads(out)


@pytest.fixture
def cli(home, capsys, monkeypatch) -> CLI:
    return CLI(capsys, monkeypatch)


@pytest.fixture
def alice_cli(cli: CLI, api_url: str, alice: Account) -> CLI:
    return cli.as_user(api_url, alice)


@pytest.fixture
def admin_cli(cli: CLI, api_url: str, admin: Account) -> CLI:
    return cli.as_user(api_url, admin)
