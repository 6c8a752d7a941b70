"""Disk provisioning: a VM disk made by RBDStorage.create_disk (a copy-on-write clone of the
image's protected snapshot, grown to the VM's disk size) against a full ``rbd cp`` of the same
image, for images of 1, 4 and 10 GiB: sparse, with some data written across them.

The clone should take the same time whatever the image's size; the copy grows with it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import rbd

from bench.common import (
    ceph_cluster,
    log,
    machine,
    record,
    table,
    with_ceph,
    workdir,
)
from ucloud.config import load_settings
from ucloud.storage.rbd import SNAPSHOT, RBDStorage

CHUNK = 4 << 20  # bytes written at a time (one RADOS object)


def make_image(storage: RBDStorage, name: str, gib: int, mib_per_gib: int) -> int:
    """A ``gib`` GiB image with ``mib_per_gib`` MiB of data a GiB, spread evenly; its snapshot
    protected, as import_image leaves an image. Returns the bytes written."""
    size = gib << 30
    chunks = max(1, gib * mib_per_gib * (1 << 20) // CHUNK)
    data = os.urandom(CHUNK)
    with storage._ioctx(storage.settings.image_pool) as ioctx:
        rbd.RBD().create(ioctx, name, size, old_format=False, features=rbd.RBD_FEATURE_LAYERING)
        with rbd.Image(ioctx, name) as img:
            for i in range(chunks):
                img.write(data, (i * (size // chunks)) // CHUNK * CHUNK)
            img.create_snap(SNAPSHOT)
            img.protect_snap(SNAPSHOT)
    return chunks * CHUNK


def rbd_cli(ceph, *args: str) -> None:
    subprocess.run(
        ["rbd", "-c", str(ceph.conf), "--id", "ucloud", "--keyring", str(ceph.keyring), *args],
        check=True,
        capture_output=True,
        timeout=1800,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.disks", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,4,10", help="image sizes in GiB")
    parser.add_argument("--written", type=int, default=None, help="MiB written a GiB (64)")
    parser.add_argument("--clones", type=int, default=None, help="clones timed a size (10)")
    parser.add_argument("--copies", type=int, default=None, help="rbd cp timed a size (2)")
    parser.add_argument("--quick", action="store_true", help="16 MiB/GiB, 3 clones, 1 copy")
    parser.add_argument("--record", action="store_true", help="write the table to RESULTS.md")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    written = args.written or (16 if args.quick else 64)
    clones = args.clones or (3 if args.quick else 10)
    copies = args.copies or (1 if args.quick else 2)
    sizes = [int(s) for s in args.sizes.split(",")]
    log(f"machine: {machine()}")

    rows = []
    with workdir("disks", keep=args.keep) as wd:
        log("starting Ceph")
        with ceph_cluster(wd) as ceph:
            storage = RBDStorage(with_ceph(load_settings(), ceph))
            storage.disk_exists("warm-up")  # connect to the cluster before any timing
            for gib in sizes:
                image = f"bench-image-{gib}"
                log(f"{gib} GiB image, {written} MiB/GiB of data")
                data = make_image(storage, image, gib, written)
                clone_s = []
                for i in range(clones):
                    disk = f"bench-disk-{gib}-{i}"
                    start = time.perf_counter()
                    storage.create_disk(disk, image, size_gib=2 * gib)
                    clone_s.append(time.perf_counter() - start)
                copy_s = []
                for i in range(copies):
                    start = time.perf_counter()
                    rbd_cli(
                        ceph,
                        "cp",
                        "--no-progress",
                        f"{ceph.pool}/{image}",
                        f"{ceph.pool}/bench-copy-{gib}-{i}",
                    )
                    copy_s.append(time.perf_counter() - start)
                for i in range(clones):
                    storage.delete_disk(f"bench-disk-{gib}-{i}")
                for i in range(copies):
                    storage.delete_disk(f"bench-copy-{gib}-{i}")
                storage.delete_image(image)
                clone = statistics.median(clone_s)
                copy = statistics.median(copy_s)
                rows.append(
                    [
                        gib,
                        data / (1 << 20),
                        1000 * clone,
                        1000 * min(clone_s),
                        1000 * max(clone_s),
                        copy,
                        copy / clone,
                    ]
                )
                log(f"  clone {1000 * clone:.0f} ms, rbd cp {copy:.1f} s")
    text = table(
        [
            "image GiB",
            "data MiB",
            "clone ms (median)",
            "clone ms min",
            "clone ms max",
            "ref: rbd cp s (median)",
            "cp / clone",
        ],
        rows,
    )
    notes = (
        f"- clone: RBDStorage.create_disk (clone of the protected snapshot, then resize to "
        f"twice the image's size), {clones} a size; rbd cp: the same image, whole, {copies} a "
        "size, with the rbd CLI as client.ucloud. One-node Ceph 16 (bluestore OSD on a sparse "
        "file on this machine's disk, no mgr), as the tests' fixture makes it.\n"
        f"- Images are sparse: {written} MiB of random data a GiB, in 4 MiB pieces spread "
        "evenly."
    )
    out = f"{text}\n\n{notes}"
    print(out)
    if args.record:
        record("disks", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
