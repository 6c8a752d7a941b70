"""``ucloud key ...``: your SSH public keys, which new VMs get (``vm create --ssh-key``), and
the reading of the files ``vm create`` sends (keys, user-data)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ucloud.cli.errors import ConfigError, ExitCode
from ucloud.cli.output import when
from ucloud.cli.session import Session


def read_text(path: str, what: str) -> str:
    """A local file's text (UTF-8), or a usage error that names the file ('-': stdin)."""
    try:
        data = Path("/dev/stdin" if path == "-" else path).expanduser().read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path}: {e.strerror or e}") from e
    try:
        return data.decode()
    except UnicodeDecodeError as e:
        raise ConfigError(f"{what} {path} is not UTF-8 text (byte {e.start})") from e


def add_key(s: Session, args: argparse.Namespace) -> int:
    public_key = read_text(args.file, "public key file")
    key = s.api.post("/key/add", key_name=args.name, public_key=public_key)["key"]
    s.out.data(key)
    s.out.text(f"key {key['name']} added: {key['type']} {key['fingerprint']}")
    return ExitCode.OK


def list_keys(s: Session, args: argparse.Namespace) -> int:
    s.out.listing(
        s.api.get("/key/list")["keys"],
        "no keys: add one with: ucloud key add NAME --file ~/.ssh/id_ed25519.pub",
        ("NAME", "TYPE", "FINGERPRINT", "COMMENT", "ADDED"),
        lambda k: (
            k["name"],
            k["type"],
            k["fingerprint"],
            k["public_key"].split(None, 2)[2] if k["public_key"].count(" ") >= 2 else "",
            when(k["created"]),
        ),
    )
    return ExitCode.OK


def delete_key(s: Session, args: argparse.Namespace) -> int:
    reply = s.api.post("/key/delete", key_name=args.name)
    s.out.data(reply)
    s.out.text(f"key {args.name} deleted (VMs made with it keep it)")
    return ExitCode.OK
