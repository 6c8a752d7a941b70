"""Time-based one-time passwords (RFC 6238) for users, shared by the API and the CLI."""

from __future__ import annotations

import pyotp


def new_secret() -> str:
    return pyotp.random_base32()


def current_token(secret: str) -> str:
    return pyotp.TOTP(secret).now()


def verify(secret: str, token: str, window: int) -> bool:
    """True if ``token`` is the secret's password for now, or up to ``window`` 30-second steps
    before or after now (clock drift). Older tokens are refused."""
    try:
        return pyotp.TOTP(secret).verify(token, valid_window=window)
    except ValueError:  # a secret that is not base32
        return False
