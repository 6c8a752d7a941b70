"""Which addresses the image scanner may fetch images from (ucloud/imagescanner/fetch.py)."""

from __future__ import annotations

import ipaddress

import pytest

from ucloud.imagescanner.fetch import Policy, check, refusal
from ucloud.imagescanner.inspect import Refused


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("127.0.0.1", "127.0.0.1 is a loopback address"),
        ("::1", "::1 is a loopback address"),
        ("::ffff:127.0.0.1", "127.0.0.1 is a loopback address"),
        ("169.254.169.254", "169.254.169.254 is a link-local address"),
        ("fe80::1", "fe80::1 is a link-local address"),
        ("10.1.2.3", "10.1.2.3 is a private address"),
        ("192.168.0.1", "192.168.0.1 is a private address"),
        ("fd00::1", "fd00::1 is a private address"),
        ("100.64.0.1", "100.64.0.1 is not a public address"),
        ("0.0.0.0", "0.0.0.0 is unspecified"),
        ("224.0.0.1", "224.0.0.1 is multicast"),
        ("8.8.8.8", None),
        ("2001:4860:4860::8888", None),
    ],
)
def test_what_is_refused(address: str, why: str | None):
    assert refusal(ipaddress.ip_address(address), []) == why


def test_an_allowed_network_opens_only_itself():
    allowed = Policy.networks(" 10.1.2.0/24, fd00::/8 ")
    assert refusal(ipaddress.ip_address("10.1.2.9"), allowed) is None
    assert refusal(ipaddress.ip_address("fd00::5"), allowed) is None
    assert refusal(ipaddress.ip_address("10.1.3.9"), allowed) == "10.1.3.9 is a private address"
    assert refusal(ipaddress.ip_address("0.0.0.0"), Policy.networks("0.0.0.0/0")) is not None


def test_urls_are_checked_before_any_connection():
    target = check("https://127.0.0.1:8443/a/b?c=d", Policy.networks("127.0.0.0/8"))
    assert (target.scheme, target.host, target.port, target.path, target.address) == (
        "https",
        "127.0.0.1",
        8443,
        "/a/b?c=d",
        "127.0.0.1",
    )
    for url, why in (
        ("ftp://example.org/x", "only http and https"),
        ("http://u:p@127.0.0.1/", "user name or password"),
        ("http://localhost/", "localhost resolves to"),
        ("http://[::1]/", "::1 is a loopback address"),
    ):
        with pytest.raises(Refused, match=why):
            check(url, [])
