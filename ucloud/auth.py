"""Time-based one-time passwords (RFC 6238) for users, shared by the API and the CLI."""

from __future__ import annotations

import hmac
import time

import pyotp


def new_secret() -> str:
    return pyotp.random_base32()


def current_token(secret: str) -> str:
    return pyotp.TOTP(secret).now()


def token_step(secret: str, token: str, window: int, at: float | None = None) -> int | None:
    """The 30-second step (RFC 6238's counter T) whose password ``token`` is: now's, or one up
    to ``window`` steps before or after it (clock drift); None if it is none of them (older
    tokens are refused). A login that must not take a token twice (RFC 6238 §5.2) remembers
    the step."""
    try:
        totp = pyotp.TOTP(secret)
        now = totp.timecode(time.time() if at is None else at)
        for step in range(now - window, now + window + 1):
            if hmac.compare_digest(token.encode(), totp.generate_otp(step).encode()):
                return step
    except ValueError:  # a secret that is not base32
        return None
    return None
