"""SSH public keys (ucloud/sshkeys.py): what /key/add accepts and refuses, checked against keys
that OpenSSH's own ssh-keygen made, and its fingerprints against ssh-keygen -l."""

from __future__ import annotations

import base64
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from ucloud import sshkeys

pytestmark = pytest.mark.skipif(not shutil.which("ssh-keygen"), reason="needs ssh-keygen")

KINDS = {
    "ed25519": ["-t", "ed25519"],
    "ecdsa256": ["-t", "ecdsa", "-b", "256"],
    "ecdsa384": ["-t", "ecdsa", "-b", "384"],
    "ecdsa521": ["-t", "ecdsa", "-b", "521"],
    "rsa2048": ["-t", "rsa", "-b", "2048"],
    "rsa1024": ["-t", "rsa", "-b", "1024"],
}


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("keys")
    made = {}
    for name, args in KINDS.items():
        path = folder / name
        subprocess.run(
            ["ssh-keygen", "-q", *args, "-N", "", "-C", f"me@{name}", "-f", str(path)],
            check=True,
            capture_output=True,
        )
        made[name] = path.with_suffix(".pub")
    return made


def keygen_fingerprint(path: Path) -> str:
    out = subprocess.run(["ssh-keygen", "-l", "-f", str(path)], capture_output=True, text=True)
    return out.stdout.split()[1]


@pytest.mark.parametrize(
    ("name", "bits"),
    [("ed25519", 256), ("ecdsa256", 256), ("ecdsa384", 384), ("ecdsa521", 521), ("rsa2048", 2048)],
)
def test_keys_of_known_types_are_taken_with_openssh_fingerprints(keys, name, bits):
    text = keys[name].read_text()
    key = sshkeys.parse(text)
    assert key.bits == bits
    assert key.comment == f"me@{name}"
    assert key.line == text.strip()
    assert key.fingerprint == keygen_fingerprint(keys[name])


def test_a_key_without_comment_is_the_type_and_data(keys):
    kind, data, _ = keys["ed25519"].read_text().split()
    assert sshkeys.parse(f"  {kind} {data}\n").line == f"{kind} {data}"


def refused(text: str) -> str:
    with pytest.raises(sshkeys.InvalidKey) as e:
        sshkeys.parse(text)
    return str(e.value)


def test_rsa_under_2048_bits_is_refused(keys):
    assert "1024 bits: at least 2048" in refused(keys["rsa1024"].read_text())


def test_options_another_type_and_garbage_are_refused(keys):
    good = keys["ed25519"].read_text().strip()
    kind, data, comment = good.split()
    assert "options" in refused(f'command="/bin/sh" {good}')
    assert "options" in refused(f"restrict {good}")
    for options in ('environment="A=1"', 'permitopen="host:22"', "pty", 'principals="a,b"'):
        assert "options before the key are not allowed" in refused(f"{options} {good}")
    assert "unknown key type" in refused(f"ssh-foo {data}")
    assert "DSA" in refused(f"ssh-dss {data}")
    assert "not valid base64" in refused(f"{kind} AAAA*** {comment}")
    assert "no key data" in refused(kind)
    assert "empty" in refused("  \n")
    assert "one line" in refused(good + "\n" + good)
    # The line says one type, the data holds another.
    ecdsa_data = keys["ecdsa256"].read_text().split()[1]
    assert "of type 'ecdsa-sha2-nistp256', not 'ssh-ed25519'" in refused(f"{kind} {ecdsa_data}")
    assert "control characters" in refused(f"{kind} {data} a\x1bb")


def wire(*parts: bytes) -> str:
    return base64.b64encode(b"".join(struct.pack(">I", len(p)) + p for p in parts)).decode()


def test_malformed_key_data_is_refused():
    ed = b"ssh-ed25519"
    assert "32 bytes" in refused(f"ssh-ed25519 {wire(ed, b'x' * 31)}")
    truncated = base64.b64encode(struct.pack(">I", 32) + b"ssh").decode()
    assert "truncated" in refused(f"ssh-ed25519 {truncated}")
    assert "after the key" in refused(f"ssh-ed25519 {wire(ed, b'x' * 32, b'more')}")
    ec = b"ecdsa-sha2-nistp256"
    point = bytes([4]) + b"x" * 64
    compressed = bytes([2]) + b"x" * 64
    assert "curve" in refused(f"{ec.decode()} {wire(ec, b'nistp384', point)}")
    assert "point" in refused(f"{ec.decode()} {wire(ec, b'nistp256', compressed)}")
    rsa = b"ssh-rsa"
    modulus = bytes([0]) + bytes([255]) * 256  # 2048 bits
    assert "exponent" in refused(f"ssh-rsa {wire(rsa, bytes([4]), modulus)}")
    assert sshkeys.parse(f"ssh-rsa {wire(rsa, bytes([1, 0, 1]), modulus)}").bits == 2048
    too_big = bytes([0]) + bytes([255]) * 2049
    assert "at most 16384" in refused(f"ssh-rsa {wire(rsa, bytes([3]), too_big)}")
    assert "longer than" in refused("ssh-ed25519 " + "A" * 9000)


def test_security_keys_need_an_ssh_application():
    sk = b"sk-ssh-ed25519@openssh.com"
    assert sshkeys.parse(f"{sk.decode()} {wire(sk, b'k' * 32, b'ssh:')} yk").bits == 256
    assert "application" in refused(f"{sk.decode()} {wire(sk, b'k' * 32, b'web:')}")
