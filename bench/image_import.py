"""Image import: a 1 GiB qcow2 file through Storage.import_image (RBDStorage: qemu-img convert
straight into RBD, then snapshot and protect) against a plain ``qemu-img convert`` of the same
file into RBD, alternating, on a one-node Ceph cluster.

(The image scanner, ucloud/imagescanner, written alongside this benchmark, vets a file first
(qemu-img info, sha512), then calls import_image with a progress callback: this measures
import_image with such a callback, not the vetting.)
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import rbd

from bench.common import ceph_cluster, log, machine, record, table, with_ceph, workdir
from ucloud.config import load_settings
from ucloud.storage.rbd import SNAPSHOT, RBDStorage

AIM = 1.10  # import_image within 10 % of plain qemu-img convert
CHUNK = 4 << 20


def make_qcow2(directory, gib: int, data_mib: int):
    """A ``gib`` GiB qcow2 with ``data_mib`` MiB of random data spread evenly."""
    raw = directory / "source.raw"
    size = gib << 30
    chunks = max(1, data_mib * (1 << 20) // CHUNK)
    block = os.urandom(CHUNK)
    with open(raw, "wb") as f:
        f.truncate(size)
        for i in range(chunks):
            f.seek((i * (size // chunks)) // CHUNK * CHUNK)
            f.write(block)
    qcow2 = directory / "source.qcow2"
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(qcow2)], check=True)
    raw.unlink()
    return qcow2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.image_import", description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=int, default=1, help="virtual size of the images")
    parser.add_argument(
        "--data", default=None, help="MiB of data in each image, comma-separated (256,1024)"
    )
    parser.add_argument("--repeat", type=int, default=None, help="imports of each kind (3)")
    parser.add_argument("--quick", action="store_true", help="one 256 MiB image, one import")
    parser.add_argument("--record", action="store_true", help="write the table to RESULTS.md")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    repeat = args.repeat or (1 if args.quick else 3)
    datas = [int(d) for d in (args.data or ("256" if args.quick else "256,1024")).split(",")]
    log(f"machine: {machine()}")

    rows = []
    predelete: list[float] = []
    snapshot: list[float] = []
    with workdir("import", keep=args.keep) as wd:
        log("starting Ceph")
        with ceph_cluster(wd) as ceph:
            settings = with_ceph(load_settings(), ceph)
            storage = RBDStorage(settings)
            target = (
                f"rbd:{ceph.pool}/%s:id={settings.ceph_user}:conf={ceph.conf}"
                f":keyring={ceph.keyring}"
            )
            storage.image_exists("warm-up")  # connect to the cluster before any timing
            for data in datas:
                source = make_qcow2(wd, args.gib, data)
                file_mib = source.stat().st_size / (1 << 20)
                ours, plain, meter = [], [], []
                progress: list[float] = []

                def run_plain(name: str, *extra: str, source: Path = source) -> float:
                    start = time.perf_counter()
                    subprocess.run(
                        ["qemu-img", "convert", *extra, "-O", "raw", str(source), target % name],
                        check=True,
                        capture_output=True,
                    )
                    return time.perf_counter() - start

                def run_ours(name: str, source: Path = source, seen: list = progress) -> float:
                    start = time.perf_counter()
                    storage.import_image(name, str(source), progress=seen.append)
                    return time.perf_counter() - start

                for i in range(repeat):
                    # Each in turn goes first: the OSD may still be busy with the last one.
                    jobs = [
                        (plain, lambda i=i: run_plain(f"plain-{i}")),
                        (ours, lambda i=i: run_ours(f"ours-{i}")),
                        (meter, lambda i=i: run_plain(f"meter-{i}", "-p")),
                    ]
                    shift = i % len(jobs)
                    for into, job in jobs[shift:] + jobs[:shift]:
                        into.append(job())
                    log(
                        f"  import_image {ours[-1]:.2f} s, qemu-img convert {plain[-1]:.2f} s,"
                        f" with -p {meter[-1]:.2f} s"
                    )
                    # import_image's own steps around the convert, timed alone:
                    start = time.perf_counter()
                    # its first step: remove a half-made image (here there is none)
                    leftover = getattr(storage, "_remove_leftover", None)
                    if leftover is not None:
                        leftover(ceph.pool, f"missing-{i}")
                    else:
                        storage.delete_image(f"missing-{i}")
                    predelete.append(time.perf_counter() - start)
                    start = time.perf_counter()
                    with storage._ioctx(ceph.pool) as ioctx, rbd.Image(ioctx, f"plain-{i}") as img:
                        img.create_snap(SNAPSHOT)
                        img.protect_snap(SNAPSHOT)
                    snapshot.append(time.perf_counter() - start)
                    for name in (f"ours-{i}", f"plain-{i}", f"meter-{i}"):
                        storage.delete_image(name)
                source.unlink()
                o, p = statistics.median(ours), statistics.median(plain)
                m = statistics.median(meter)
                rows.append(
                    [
                        f"{args.gib} GiB qcow2, {data} MiB data ({file_mib:.0f} MiB file)",
                        o,
                        p,
                        o / p,
                        f"<= {AIM:.2f}",
                        o - p,
                        m,
                        data / o,
                    ]
                )
    pre, snap = statistics.median(predelete), statistics.median(snapshot)
    text = table(
        [
            "image",
            "Storage.import_image s",
            "ref: plain qemu-img convert s",
            "ratio",
            "aim",
            "difference s",
            "ref: qemu-img convert -p s",
            "import_image MiB/s of data",
        ],
        rows,
    )
    notes = (
        f"- Medians of {repeat} imports each, taking turns at going first, into a one-node Ceph 16 "
        "cluster (bluestore OSD on a sparse file on this machine's disk) as client.ucloud.\n"
        f"- import_image's steps besides the convert, timed alone: removing a half-made "
        f"image first (none there) {1000 * pre:.0f} ms; snapshot and protect "
        f"{1000 * snap:.0f} ms.\n"
        "- import_image runs `qemu-img convert -p` and reads its progress (as the image "
        "scanner calls it, with a progress callback); the plain reference has no -p.\n"
        "- The image scanner (ucloud/imagescanner, written alongside this benchmark) vets a "
        "file (qemu-img info, sha512) before it calls import_image: not measured here."
    )
    out = f"{text}\n\n{notes}"
    print(out)
    if args.record:
        record("image import", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
