"""Disk image files for the file and image tests: good ones and every kind the image scanner
must refuse. Made with qemu-img in a scratch directory; nothing outside it is ever written
(careful: ``qemu-img create -o data_file=X`` truncates X, so X is always a scratch file)."""

from __future__ import annotations

import hashlib
import random
import subprocess
from pathlib import Path


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True, timeout=60)


def bootable_qcow2(bootsector: Path, out: Path) -> Path:
    """The boot-sector test guest as a qcow2."""
    qemu_img("convert", "-f", "raw", "-O", "qcow2", str(bootsector), str(out))
    return out


def sparse_qcow2(out: Path, size: str = "1G", data_mib: int = 64) -> Path:
    """A large, mostly empty qcow2: ``data_mib`` MiB of data in two runs, the rest holes."""
    qemu_img("create", "-f", "qcow2", str(out), size)
    half = data_mib // 2
    subprocess.run(
        [
            "qemu-io",
            "-f",
            "qcow2",
            "-c",
            f"write -P 0xab 0 {half}M",
            "-c",
            f"write -P 0xcd 512M {half}M",
            str(out),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return out


def with_backing_file(out: Path, backing: str = "/etc/passwd") -> Path:
    # -u: do not even open the backing file (its size comes from the command line).
    qemu_img("create", "-f", "qcow2", "-u", "-b", backing, "-F", "raw", str(out), "1M")
    return out


def with_external_data_file(out: Path, scratch: Path) -> Path:
    data = scratch / f"{out.name}.data"
    qemu_img("create", "-f", "qcow2", "-o", f"data_file={data}", str(out), "1M")
    return out


def truncated(good_qcow2: Path, out: Path) -> Path:
    """A qcow2 cut short, as an interrupted upload leaves it (its header still reads)."""
    data = good_qcow2.read_bytes()
    out.write_bytes(data[: len(data) * 3 // 4])
    return out


def random_bytes(out: Path, size: int = 1 << 20) -> Path:
    content = random.Random(4).randbytes(size)
    assert content[510:512] != b"\x55\xaa"  # not a boot sector by chance
    out.write_bytes(content)
    return out


def sparse_raw(bootsector: Path, out: Path, size: int) -> Path:
    """A raw disk of ``size`` bytes (sparse) that starts with the test guest's boot sector."""
    with open(out, "wb") as f:
        f.write(bootsector.read_bytes()[:512])
        f.truncate(size)
    return out


def sha512(path: Path) -> str:
    digest = hashlib.sha512()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
