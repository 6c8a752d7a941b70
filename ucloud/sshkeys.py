"""OpenSSH public keys: parsed and checked before ucloud keeps one (``/key/add``).

A key a user adds ends up in every VM's ``authorized_keys``, so it must be exactly one key of a
type OpenSSH still accepts, with no options (``command=``, ``from=``...: those belong to the
VM's owner, not in a key we hand out), and a blob whose content matches its type. The format
is RFC 4253 section 6.6 (and RFC 5656, 8709, OpenSSH's PROTOCOL.u2f for the others).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from dataclasses import dataclass

MAX_LINE = 8192  # an RSA key of 16384 bits is about 2.8 KB of base64
MAX_COMMENT = 256
MIN_RSA_BITS = 2048
MAX_RSA_BITS = 16384

# ECDSA curves: name in the blob, and the length of an uncompressed point (0x04 || x || y).
_CURVES = {"nistp256": 65, "nistp384": 97, "nistp521": 133}
ED25519 = "ssh-ed25519"
RSA = "ssh-rsa"
SK_ED25519 = "sk-ssh-ed25519@openssh.com"
SK_ECDSA = "sk-ecdsa-sha2-nistp256@openssh.com"
TYPES = (
    ED25519,
    *(f"ecdsa-sha2-{c}" for c in _CURVES),
    RSA,
    SK_ED25519,
    SK_ECDSA,
)
# How options that precede an unknown type start (the common ones: a clearer refusal).
_OPTIONS = ("command=", "from=", "no-", "restrict", "cert-")


class InvalidKey(ValueError):
    """Not an OpenSSH public key ucloud accepts; the message says why."""


@dataclass(frozen=True)
class PublicKey:
    type: str
    blob: bytes
    comment: str
    bits: int  # the key's size: RSA modulus bits, curve bits, 256 for Ed25519

    @property
    def line(self) -> str:
        """The key as one authorized_keys line: type, base64 blob, comment."""
        text = f"{self.type} {base64.b64encode(self.blob).decode()}"
        return f"{text} {self.comment}" if self.comment else text

    @property
    def fingerprint(self) -> str:
        """As ``ssh-keygen -l`` prints it: ``SHA256:`` and unpadded base64."""
        digest = hashlib.sha256(self.blob).digest()
        return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def parse(text: str) -> PublicKey:
    """One public key from ``text`` (a ``.pub`` file's content), or InvalidKey saying why."""
    line = text.strip()
    if not line:
        raise InvalidKey("the public key is empty")
    if "PRIVATE KEY" in line:
        raise InvalidKey(
            "this is a private key: give the public one (the .pub file), and keep this secret"
        )
    if len(line) > MAX_LINE:
        raise InvalidKey(f"the public key is longer than {MAX_LINE} characters")
    if "\n" in line or "\r" in line:
        raise InvalidKey("give exactly one public key (one line)")
    parts = line.split(None, 2)
    key_type = parts[0]
    if key_type not in TYPES:
        # authorized_keys options come before the key: a known type further on gives them
        # away whichever options they are (environment=, permitopen=, pty...).
        if any(word in TYPES for word in line.split()[1:]) or key_type.startswith(_OPTIONS):
            raise InvalidKey("options before the key are not allowed: give the bare key")
        if key_type == "ssh-dss":
            raise InvalidKey("DSA keys are no longer accepted by OpenSSH: use ssh-ed25519")
        raise InvalidKey(f"unknown key type {key_type[:40]!r}: use one of {', '.join(TYPES)}")
    if len(parts) < 2:
        raise InvalidKey(f"the {key_type} key has no key data after its type")
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError) as e:
        raise InvalidKey("the key data is not valid base64") from e
    comment = parts[2].strip() if len(parts) > 2 else ""
    if len(comment) > MAX_COMMENT:
        raise InvalidKey(f"the key's comment is longer than {MAX_COMMENT} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in comment):
        raise InvalidKey("the key's comment holds control characters")
    return PublicKey(key_type, blob, comment, _check_blob(key_type, blob))


def _check_blob(key_type: str, blob: bytes) -> int:
    """The key's size in bits, if the blob is a well-formed key of ``key_type``."""
    reader = _Reader(blob)
    embedded = reader.string()
    if embedded != key_type.encode():
        raise InvalidKey(
            f"the key data is of type {embedded[:40].decode(errors='replace')!r}, "
            f"not {key_type!r} as the line says"
        )
    if key_type in (ED25519, SK_ED25519):
        if len(reader.string()) != 32:
            raise InvalidKey("an Ed25519 key must be 32 bytes")
        bits = 256
    elif key_type == RSA:
        exponent, modulus = reader.mpint(), reader.mpint()
        if exponent < 3 or exponent % 2 == 0:
            raise InvalidKey("the RSA key's public exponent is not valid")
        bits = modulus.bit_length()
        if bits < MIN_RSA_BITS:
            raise InvalidKey(f"the RSA key has {bits} bits: at least {MIN_RSA_BITS} are needed")
        if bits > MAX_RSA_BITS:
            raise InvalidKey(f"the RSA key has {bits} bits: at most {MAX_RSA_BITS} are accepted")
    else:  # ECDSA, plain or security key
        curve = reader.string().decode(errors="replace")
        expected = key_type.removeprefix("sk-").removesuffix("@openssh.com")
        if f"ecdsa-sha2-{curve}" != expected or curve not in _CURVES:
            raise InvalidKey(f"the ECDSA key's curve {curve[:20]!r} does not match its type")
        point = reader.string()
        if len(point) != _CURVES[curve] or point[0] != 4:
            raise InvalidKey(f"the ECDSA key's point is not an uncompressed {curve} point")
        bits = int(curve.removeprefix("nistp"))
    if key_type.startswith("sk-"):
        application = reader.string()
        if not application.startswith(b"ssh:"):
            raise InvalidKey("a security key's application must start with 'ssh:'")
    if not reader.done:
        raise InvalidKey("the key data has bytes after the key")
    return bits


class _Reader:
    """SSH wire format: uint32-length-prefixed strings and mpints."""

    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def string(self) -> bytes:
        if self.at + 4 > len(self.data):
            raise InvalidKey("the key data is truncated")
        (length,) = struct.unpack(">I", self.data[self.at : self.at + 4])
        start, self.at = self.at + 4, self.at + 4 + length
        if self.at > len(self.data):
            raise InvalidKey("the key data is truncated")
        return self.data[start : self.at]

    def mpint(self) -> int:
        raw = self.string()
        if raw and raw[0] & 0x80:
            raise InvalidKey("the RSA key holds a negative number")
        return int.from_bytes(raw, "big")

    @property
    def done(self) -> bool:
        return self.at == len(self.data)


# A guest's host keys, as cloud-init's keys_to_console module prints them on the serial console
# (its write-ssh-key-fingerprints script): one public key a line between these markers.
BEGIN_HOST_KEYS = "-----BEGIN SSH HOST KEY KEYS-----"
END_HOST_KEYS = "-----END SSH HOST KEY KEYS-----"
MAX_HOST_KEYS = 8  # cloud-init prints one a type (ed25519, ecdsa, rsa): more is not its block
MAX_BLOCK_LINES = 64  # kernel messages may interleave; a block longer than this never ends


class HostKeysError(ValueError):
    """A host key block that ucloud does not take (too many keys...); the message says why."""


def host_key_label(line: str) -> str:
    """A recorded host key (``VM.host_keys``) as ssh shows it when it asks: fingerprint and
    type. What ``ucloud vm status`` and the console page's VM page show."""
    try:
        key = parse(line)
    except InvalidKey:
        return line[:40]
    return f"{key.fingerprint} ({key.type})"


def host_keys_from_console(text: str) -> list[PublicKey]:
    """The host keys of the first complete host key block in ``text`` (a console log), in the
    order printed; [] if there is no complete block yet (the guest may still be booting).

    A line in the block that holds no key (a kernel message printed meanwhile) is skipped, as is
    a key that is not valid: the keys recorded are only ever well-formed ones. A block with more
    than MAX_HOST_KEYS keys raises HostKeysError: that is no block cloud-init printed."""
    lines = text.splitlines()
    for start, line in enumerate(lines):
        if BEGIN_HOST_KEYS not in line:
            continue
        block = lines[start + 1 : start + 1 + MAX_BLOCK_LINES]
        end = next((i for i, b in enumerate(block) if END_HOST_KEYS in b), None)
        if end is None:
            return []  # truncated: not (yet) a block
        keys: list[PublicKey] = []
        for candidate in block[:end]:
            # A prefix (a timestamp, a log tag) may come before the key on a console line.
            at = min((i for t in TYPES if (i := candidate.find(t + " ")) >= 0), default=-1)
            if at < 0:
                continue
            try:
                key = parse(candidate[at:].strip())
            except InvalidKey:
                continue
            if all(k.blob != key.blob for k in keys):
                keys.append(key)
        if len(keys) > MAX_HOST_KEYS:
            raise HostKeysError(f"the host key block holds {len(keys)} keys, over {MAX_HOST_KEYS}")
        if keys:
            return keys
    return []
