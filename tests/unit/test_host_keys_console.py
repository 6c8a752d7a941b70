"""A guest's SSH host keys from its console log (sshkeys.host_keys_from_console): what
cloud-init's keys_to_console module printed on a real Debian guest's serial console, and what
the parser refuses or skips (the guest controls its console: anything may be there)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from ucloud import sshkeys

# From the serial console log of a Debian 12 guest (cloud-init 22.4.2) on the test bed
# (tests/test_firstboot.py), its host key block and the lines around it, as libvirt wrote them.
EXCERPT = Path(__file__).parent / "data" / "cloud-init-22.4-console.txt"
BEGIN, END = sshkeys.BEGIN_HOST_KEYS, sshkeys.END_HOST_KEYS


def block(*lines: str) -> str:
    return "\r\n".join(["[   40.1] cloud-init[612]: ...", BEGIN, *lines, END, "login: "])


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Ten ed25519 public keys ssh-keygen made."""
    if not shutil.which("ssh-keygen"):
        pytest.skip("needs ssh-keygen")
    folder = tmp_path_factory.mktemp("keys")
    lines = []
    for i in range(10):
        path = folder / f"k{i}"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "root@vm", "-f", str(path)],
            check=True,
            capture_output=True,
        )
        lines.append(path.with_suffix(".pub").read_text().strip())
    return lines


def test_the_keys_a_real_debian_guest_printed():
    text = EXCERPT.read_text()
    keys = sshkeys.host_keys_from_console(text)
    assert [k.type for k in keys] == ["ecdsa-sha2-nistp256", "ssh-ed25519", "ssh-rsa"]
    printed = text.split(BEGIN)[1].split(END)[0].split()
    assert [k.line for k in keys] == [" ".join(printed[i : i + 3]) for i in range(0, 9, 3)]
    # Its fingerprints block (printed just before) names the same keys.
    for key in keys:
        assert key.fingerprint in text


def test_no_block_garbage_or_a_truncated_block_give_no_keys(made):
    assert sshkeys.host_keys_from_console("") == []
    assert sshkeys.host_keys_from_console(bytes(range(256)).decode(errors="replace") * 50) == []
    assert sshkeys.host_keys_from_console(f"{BEGIN}\r\n{made[0]}\r\n") == []  # no end yet
    assert sshkeys.host_keys_from_console(f"{made[0]}\r\n{END}\r\n") == []  # no beginning
    # The end too far after the beginning: not a block.
    noise = ["[ 1.0] random: crng init done"] * (sshkeys.MAX_BLOCK_LINES + 1)
    assert sshkeys.host_keys_from_console(block(made[0], *noise)) == []
    # Cut in the middle of a key (the log was read while the guest printed): not that key.
    half = made[1][: len(made[1]) // 2]
    assert [k.line for k in sshkeys.host_keys_from_console(block(made[0], half))] == [made[0]]


def test_invalid_keys_are_skipped_and_noise_and_prefixes_tolerated(made):
    text = block(
        "ssh-dss AAAAB3NzaC1kc3MAAACBAP root@vm",
        "ssh-ed25519 not-base64!! root@vm",
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA== root@vm",  # a blob cut short
        "ssh-rsa " + made[0].split()[1],  # a blob of another type
        "[   41.2] kernel: eth0: link up",
        "ec2: " + made[1],  # a log tag before the key
        made[2] + "\x1b[0m",  # a control character in the comment
        made[1],  # the same key again
        'command="sh" ' + made[3],  # what comes before a key is no part of it
    )
    keys = sshkeys.host_keys_from_console(text)
    assert [k.line for k in keys] == [made[1], made[3]]


def test_too_many_keys_are_refused(made):
    assert len(sshkeys.host_keys_from_console(block(*made[: sshkeys.MAX_HOST_KEYS]))) == 8
    with pytest.raises(sshkeys.HostKeysError, match="9 keys"):
        sshkeys.host_keys_from_console(block(*made[: sshkeys.MAX_HOST_KEYS + 1]))


def test_the_first_complete_block_counts(made):
    assert sshkeys.host_keys_from_console(block(made[0]) + block(made[1]))[0].line == made[0]
    # A block with no valid key at all does not stop a later one.
    assert sshkeys.host_keys_from_console(block("nonsense") + block(made[1]))[0].line == made[1]
