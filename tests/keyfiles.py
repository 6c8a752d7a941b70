"""SSH key pairs made by ssh-keygen, and their fingerprints as ssh-keygen prints them: what a
test compares ucloud's answers with."""

from __future__ import annotations

import subprocess
from pathlib import Path


def keygen(folder: Path, name: str, *args: str) -> Path:
    """A new key pair ``folder/name`` (no passphrase, comment ``name@laptop``); its .pub file."""
    path = folder / name
    subprocess.run(
        ["ssh-keygen", "-q", *args, "-N", "", "-C", f"{name}@laptop", "-f", str(path)],
        check=True,
        capture_output=True,
    )
    return path.with_suffix(".pub")


def fingerprint(pub: Path) -> str:
    """``SHA256:...``, as ``ssh-keygen -l`` prints it."""
    return subprocess.run(
        ["ssh-keygen", "-l", "-f", str(pub)], check=True, capture_output=True, text=True
    ).stdout.split()[1]
