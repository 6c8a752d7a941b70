"""The client's own configuration: who the user is and where the API is.

It is separate from the daemons' ``ucloud.config.Settings``: a user's machine has no etcd and
no cluster settings, and a cluster's ``.env`` must not hold a user's TOTP seed.

Read from ``UCLOUD_*`` environment variables and a ``KEY=VALUE`` file (``--config``, else
``$UCLOUD_CLIENT_CONFIG``, else ``~/.config/ucloud/client.env``); the environment wins.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from dotenv import dotenv_values

from ucloud import auth
from ucloud.cli.errors import ConfigError

API_URL = "UCLOUD_API_URL"
USER = "UCLOUD_USER"
REALM = "UCLOUD_REALM"
SEED = "UCLOUD_SEED"
CONFIG_FILE = "UCLOUD_CLIENT_CONFIG"
DEFAULT_API_URL = "http://127.0.0.1:5000"

# What to write for each setting, for the message when one is missing.
_EXAMPLES = {
    USER: "your user name",
    REALM: "your realm",
    SEED: "the TOTP seed your administrator gave you",
}


def default_path() -> Path:
    return Path.home() / ".config" / "ucloud" / "client.env"


@dataclass(frozen=True)
class ClientConfig:
    api_url: str
    user: str
    realm: str
    seed: str
    path: Path  # the config file, read or not: named in messages as where to put settings
    sources: Mapping[str, str] = field(default_factory=dict)  # key -> where its value came from
    warnings: tuple[str, ...] = ()  # for the user, not worth failing over

    def require_user(self) -> None:
        """Raise ConfigError naming every missing setting, and where to put it."""
        missing = [key for key in (USER, REALM, SEED) if not getattr(self, _ATTR[key])]
        if not missing:
            return
        lines = "\n".join(f"  {key}=<{_EXAMPLES[key]}>" for key in missing)
        names = ", ".join(missing)
        raise ConfigError(
            f"{names} {'is' if len(missing) == 1 else 'are'} not set",
            f"put these lines in {self.path} (or set them in the environment):\n{lines}",
        )

    def credentials(self) -> dict[str, str]:
        """The fields that authenticate one request, with a token for now."""
        self.require_user()
        try:
            token = auth.current_token(self.seed)
        except ValueError as e:  # binascii.Error: not base32
            raise ConfigError(
                f"{SEED} ({self.sources.get(SEED, 'unknown source')}) is not a TOTP seed",
                "a seed is base32: letters A-Z and digits 2-7, as /user/create printed it",
            ) from e
        return {"name": self.user, "realm": self.realm, "token": token}


_ATTR = {API_URL: "api_url", USER: "user", REALM: "realm", SEED: "seed"}


def load(path: str | None = None, environ: Mapping[str, str] | None = None) -> ClientConfig:
    """The configuration from ``path`` (or the default file) and ``environ`` (or os.environ)."""
    env = os.environ if environ is None else environ
    named = path or env.get(CONFIG_FILE) or ""
    file = Path(named).expanduser() if named else default_path()
    if named and not file.is_file():
        # Asked for by name: a typo must not silently fall back to other settings.
        raise ConfigError(f"config file {file} does not exist", "check --config or $" + CONFIG_FILE)

    values: dict[str, str] = {}
    sources: dict[str, str] = {}
    warnings: list[str] = []
    if file.is_file():
        try:
            read = dotenv_values(file)
        except OSError as e:
            raise ConfigError(f"cannot read config file {file}: {e.strerror}") from e
        for key, value in read.items():
            if key not in _ATTR:
                # Most likely a typo, which would otherwise show up as "not set" later.
                known = ", ".join(_ATTR)
                warnings.append(f"{file}: unknown setting {key} (known: {known})")
            elif value:
                values[key], sources[key] = value.strip(), str(file)
        if SEED in values and _readable_by_others(file):
            # The seed is a password: say so, as ssh does for keys, but do not refuse to work.
            warnings.append(
                f"{file} holds your TOTP seed and others may read it; run: chmod 600 {file}"
            )
    for key in _ATTR:
        if env.get(key):
            values[key], sources[key] = env[key].strip(), "the environment"

    api_url = values.get(API_URL, DEFAULT_API_URL).rstrip("/")
    parts = urlsplit(api_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(
            f"{API_URL} ({sources.get(API_URL)}) is {api_url!r}, not an http(s) URL",
            f"for example {API_URL}=https://ucloud.example.org",
        )
    return ClientConfig(
        api_url=api_url,
        user=values.get(USER, ""),
        realm=values.get(REALM, ""),
        seed=values.get(SEED, ""),
        path=file,
        sources=sources,
        warnings=tuple(warnings),
    )


def _readable_by_others(file: Path) -> bool:
    try:
        return bool(file.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO))
    except OSError:
        return False
