"""Which 30-second step a TOTP token is from (auth.token_step): what the API's check and the
console page's once-per-step login rest on."""

from __future__ import annotations

import pyotp

from ucloud import auth

SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
AT = 1_700_000_015.0  # in step 56666667 (RFC 6238's T = floor(time / 30))
STEP = 56_666_667


def test_a_token_is_found_in_its_step_within_the_window():
    totp = pyotp.TOTP(SECRET)
    for offset in (-1, 0, 1):
        token = totp.generate_otp(STEP + offset)
        assert auth.token_step(SECRET, token, 1, at=AT) == STEP + offset
    assert auth.token_step(SECRET, totp.generate_otp(STEP + 1), 0, at=AT) is None


def test_tokens_outside_the_window_and_bad_input_are_refused():
    totp = pyotp.TOTP(SECRET)
    for offset in (-5, -2, 2):
        assert auth.token_step(SECRET, totp.generate_otp(STEP + offset), 1, at=AT) is None
    for token in ("", "000000x", "\uff11" * 6, "0" * 100):
        assert auth.token_step(SECRET, token, 1, at=AT) is None
    assert auth.token_step("not base32!", "123456", 1, at=AT) is None
