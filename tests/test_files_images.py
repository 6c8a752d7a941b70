"""Uploaded files and images: the file scanner on a real directory, the API's file and image
endpoints, and the image scanner on real etcd, Ceph and qemu-img, up to a VM that boots from
an uploaded image."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import imagefiles
from tests.conftest import Account, make_image
from tests.servers import Daemon, wait_for
from tests.stack import Ceph, Libvirtd, daemon, host_settings, wait_console
from ucloud.cli.errors import ExitCode
from ucloud.config import Settings, settings_env
from ucloud.filescanner.daemon import FileScanner
from ucloud.imagescanner.daemon import ImageScanner
from ucloud.models import VM, File, Image, ImageDesired, ImageStatus, Specs, Status
from ucloud.storage.file import FileStorage
from ucloud.store import Store

BOOT = "UCLOUD-BOOT-OK"
MIB = 1 << 20


# --- fixtures and helpers ---------------------------------------------------------------------


@pytest.fixture
def uploads(tmp_path: Path) -> Path:
    root = tmp_path / "uploads"
    for user in ("alice", "bob"):
        (root / user).mkdir(parents=True)
    return root


@pytest.fixture
def scan_settings(settings: Settings, uploads: Path) -> Settings:
    return settings.model_copy(
        update={"upload_root": str(uploads), "upload_realm": "users", "upload_settle": 0.3}
    )


@pytest.fixture
def filescanner(store: Store, scan_settings: Settings) -> Iterator[FileScanner]:
    """The file scanner in a thread of the test (its logs reach caplog)."""
    own = Store(scan_settings)
    scanner = FileScanner(own, scan_settings)
    stop = threading.Event()
    thread = threading.Thread(target=scanner.run, args=(stop,), daemon=True)
    thread.start()
    assert scanner.ready.wait(10)
    yield scanner
    stop.set()
    thread.join(10)
    own.close()
    assert not thread.is_alive()


def files(store: Store, **match: object) -> list[File]:
    """File records, those whose fields equal ``match``."""
    found = [v.value for v in store.list(File)[0].values()]
    return [f for f in found if all(getattr(f, k) == v for k, v in match.items())]


def wait_file(store: Store, timeout: float = 10, **match: object) -> File:
    def one() -> File | None:
        found = files(store, **match)
        assert len(found) <= 1, found
        return found[0] if found else None

    return wait_for(one, timeout, f"a file record with {match}")


def wait_image(store: Store, uuid: str, status: ImageStatus, timeout: float = 30) -> Image:
    def reached() -> Image | None:
        found = store.get(Image, uuid)
        assert found is not None, f"image {uuid} is gone"
        image = found.value
        if image.status == ImageStatus.ERROR and status != ImageStatus.ERROR:
            raise AssertionError(f"image {uuid} went to ERROR: {image.reason}")
        return image if image.status == status else None

    return wait_for(reached, timeout, f"image {uuid} to be {status}", interval=0.1)


def create_image(client, user: Account, file: File, name: str) -> str:
    r = client.post("/image/create", json=user.creds(image_name=name, file_uuid=file.uuid))
    assert r.status_code == 202, r.json
    return r.json["uuid"]


def rbd_ls(ceph: Ceph) -> list[str]:
    return ceph.rbd("ls", ceph.pool).split()


def user_file(store: Store, uploads: Path, user: str, name: str, source: Path) -> File:
    """Copy ``source`` into the user's upload directory; its record, once registered."""
    target = uploads / user / name
    subprocess.run(["cp", "--sparse=always", str(source), str(target)], check=True)
    return wait_file(store, owner=user, name=name, sha512=imagefiles.sha512(target))


# --- the file scanner ---------------------------------------------------------------------------


def test_a_file_counts_once_written_and_closed_with_its_sha512(
    filescanner, store, uploads, scan_settings
):
    path = uploads / "alice" / "disk.img"
    with open(path, "wb") as f:
        f.write(b"a" * MIB)
        f.flush()
        time.sleep(scan_settings.upload_settle * 4)  # unchanged, but still open for writing
        assert files(store) == []
        f.write(b"b" * MIB)
    record = wait_file(store, owner="alice", name="disk.img")
    assert record.sha512 == imagefiles.sha512(path)
    assert (record.owner_realm, record.size, record.removed) == ("users", 2 * MIB, False)
    assert record.mtime == path.stat().st_mtime_ns / 1e9

    # Nested directories count, and name the file by its path in the user's directory.
    (uploads / "bob" / "isos" / "old").mkdir(parents=True)
    (uploads / "bob" / "isos" / "old" / "x.raw").write_bytes(b"x")
    assert wait_file(store, owner="bob", name="isos/old/x.raw").size == 1


def test_a_changed_file_is_hashed_again_and_a_removed_one_marked(filescanner, store, uploads):
    path = uploads / "alice" / "disk.img"
    path.write_bytes(b"first")
    first = wait_file(store, owner="alice", name="disk.img")

    path.write_bytes(b"second version")
    second = wait_file(store, owner="alice", sha512=imagefiles.sha512(path))
    assert (second.uuid, second.size) == (first.uuid, 14)

    # Replaced by a rename (as rsync and editors do): the same record, hashed again.
    (uploads / "alice" / ".disk.img.tmp").write_bytes(b"third")
    os.rename(uploads / "alice" / ".disk.img.tmp", path)
    third = wait_file(store, owner="alice", sha512=imagefiles.sha512(path))
    assert third.uuid == first.uuid

    path.unlink()
    wait_file(store, uuid=first.uuid, removed=True)
    assert len(files(store)) == 1

    # A directory moved away takes its files with it.
    (uploads / "alice" / "dir").mkdir()
    (uploads / "alice" / "dir" / "a").write_bytes(b"a")
    inside = wait_file(store, owner="alice", name="dir/a")
    os.rename(uploads / "alice" / "dir", uploads / "outside-dir")
    wait_file(store, uuid=inside.uuid, removed=True)


def test_files_outside_user_directories_are_skipped_and_logged(filescanner, store, uploads, caplog):
    alice = uploads / "alice"
    (alice / "passwd").symlink_to("/etc/passwd")
    (alice / "escape").symlink_to("../bob/secret")
    (uploads / "bob" / "secret").write_bytes(b"bob's")
    os.close(os.open(os.fsencode(alice) + b"/bad-\xff-name.img", os.O_CREAT | os.O_WRONLY))
    (alice / "control\nchar").write_bytes(b"c")
    (alice / ".hidden").write_bytes(b"h")
    (uploads / "loose.img").write_bytes(b"loose")
    (uploads / "Not a user").mkdir()
    (uploads / "Not a user" / "f").write_bytes(b"f")
    # A symlink to a file inside the same directory counts, under its own name.
    (alice / "real.img").write_bytes(b"real")
    (alice / "alias.img").symlink_to("real.img")

    wait_file(store, owner="alice", name="alias.img")
    wait_file(store, owner="alice", name="real.img")
    wait_file(store, owner="bob", name="secret")
    time.sleep(1)
    assert sorted((f.owner, f.name) for f in files(store)) == [
        ("alice", "alias.img"),
        ("alice", "real.img"),
        ("bob", "secret"),
    ]
    log = caplog.text
    assert "skipping 'alice/passwd': it is a symlink to a file outside" in log
    assert "skipping 'alice/escape': it is a symlink to a file outside" in log
    assert "skipping 'alice/bad-\\udcff-name.img': its name is not valid UTF-8 text" in log
    assert "skipping 'alice/control\\nchar': its name contains control characters" in log
    assert "skipping 'alice/.hidden': it is hidden" in log
    assert "skipping 'loose.img': it is outside any user's directory" in log
    assert "skipping 'Not a user': directory 'Not a user' is not named as a user can be" in log

    # A registered file replaced by a symlink to a file outside is no file of the user's.
    (alice / "real.img").unlink()
    (alice / "real.img").symlink_to("/etc/passwd")
    wait_file(store, owner="alice", name="real.img", removed=True)


def test_file_scanner_killed_mid_hash_registers_the_file_once(
    store, uploads, scan_settings, tmp_path
):
    big = uploads / "alice" / "big.raw"
    with open(big, "wb") as f:  # sparse: 1 GiB to hash, a few bytes on disk
        f.write(b"start")
        f.truncate(1 << 30)
    (uploads / "alice" / "small.img").write_bytes(b"small")

    def start() -> Daemon:
        return daemon("ucloud.filescanner.main", scan_settings, tmp_path / "filescanner.log")

    scanner = start()
    try:
        # Each start and the hash take seconds on a loaded machine: a start took 8 s and the
        # hash 11 s at load 9.
        wait_for(
            lambda: "hashing alice/big.raw" in scanner.output(), 60, "the scanner to hash big.raw"
        )
        scanner.stop(signal.SIGKILL)
        assert files(store, name="big.raw") == []

        scanner = start()
        record = wait_file(store, timeout=120, name="big.raw")
        assert record.sha512 == imagefiles.sha512(big)
        wait_file(store, name="small.img")  # by this scanner or the first: before the kill
        scanner.stop(signal.SIGKILL)
        scanner = start()  # once more: what is registered is not registered again
        wait_for(lambda: scanner.output().count("for users of realm") == 3, 60, "a third start")
        time.sleep(2)
        assert [f.uuid for f in files(store, name="big.raw")] == [record.uuid]
        assert len(files(store, name="small.img")) == 1
        # Killed mid-hash, then hashed in full; the third start finds it registered as it is.
        assert scanner.output().count("hashing alice/big.raw") == 2
    finally:
        scanner.stop()


# --- the API ------------------------------------------------------------------------------------


def register_file(store: Store, owner: Account, name: str = "disk.qcow2", **fields) -> File:
    file = File(
        owner=owner.name,
        owner_realm=owner.realm,
        name=name,
        size=1,
        sha512="0" * 128,
        mtime=1.0,
        **fields,
    )
    store.create(file)
    return file


def test_file_list_shows_ones_own_files_not_removed(client, store, alice, bob, admin):
    mine = register_file(store, alice, "a.qcow2")
    register_file(store, alice, "gone.qcow2", removed=True)
    register_file(store, bob, "b.qcow2")
    r = client.get("/file/list", json=alice.creds())
    assert r.status_code == 200
    assert [(f["uuid"], f["name"]) for f in r.json["files"]] == [(mine.uuid, "a.qcow2")]
    assert set(r.json["files"][0]) >= {"uuid", "name", "size", "sha512", "mtime", "created"}
    # Administrators see every user's.
    everyone = client.get("/file/list", json=admin.creds()).json["files"]
    assert sorted(f["name"] for f in everyone) == ["a.qcow2", "b.qcow2"]


def test_image_create_records_the_request_and_refuses_bad_ones(client, store, alice, bob, settings):
    mine = register_file(store, alice)
    removed = register_file(store, alice, "old.qcow2", removed=True)
    theirs = register_file(store, bob)

    def create(**fields: object):
        return client.post("/image/create", json=alice.creds(**fields))

    r = create(image_name="deb", file_uuid=mine.uuid)
    assert r.status_code == 202, r.json
    image = store.get(Image, r.json["uuid"]).value
    assert (image.status, image.desired, image.store, image.pool) == (
        ImageStatus.TO_BE_CREATED,
        ImageDesired.CREATED,
        settings.image_store,
        settings.image_pool,
    )
    assert (image.file, image.sha512, image.owner, image.public) == (
        mine.uuid,
        mine.sha512,
        "alice",
        False,
    )

    refusals = [
        ({"image_name": "x", "file_uuid": theirs.uuid}, 404, f"no file {theirs.uuid}"),
        ({"image_name": "x", "file_uuid": "nope"}, 404, "no file nope"),
        ({"image_name": "x", "file_uuid": "a/b"}, 404, "no file a/b"),
        ({"image_name": "x", "file_uuid": removed.uuid}, 404, "was removed"),
        ({"image_name": "deb", "file_uuid": mine.uuid}, 409, "already have an image named deb"),
        (
            {"image_name": "x", "file_uuid": mine.uuid, "image_store": "fast"},
            400,
            "unknown image store 'fast'",
        ),
        ({"image_name": "bad name", "file_uuid": mine.uuid}, 400, "image_name"),
        ({"file_uuid": mine.uuid}, 400, "image_name: Field required"),
        ({"image_name": "x"}, 400, "file_uuid: Field required"),
        ({"image_name": "x", "file_uuid": mine.uuid, "public": True}, 403, "administrators"),
        ({"image_name": "x", "file_uuid": mine.uuid, "size": 3}, 400, "size"),
    ]
    for fields, status, message in refusals:
        r = create(**fields)
        assert (r.status_code, fields) == (status, fields), r.json
        assert message in r.json["error"]
    assert len(store.list(Image)[0]) == 1


def test_image_list_and_delete(client, store, alice, bob, admin):
    public = make_image(store, "debian")
    mine = make_image(store, "mine", owner=alice, public=False)
    theirs = make_image(store, "theirs", owner=bob, public=False)
    in_use = make_image(store, "used", owner=alice, public=False)
    vm = VM(
        name="v", owner="alice", owner_realm="users", specs=Specs(cpu=1, ram=1), image=in_use.uuid
    )
    store.create(vm)

    listed = client.get("/image/list", json=alice.creds()).json["images"]
    assert sorted(i["name"] for i in listed) == ["debian", "mine", "used"]
    assert {"uuid", "status", "reason", "store", "size", "public", "progress"} <= set(listed[0])
    assert len(client.get("/image/list", json=admin.creds()).json["images"]) == 4

    def delete(user: Account, uuid: str):
        return client.post("/image/delete", json=user.creds(uuid=uuid))

    assert delete(alice, theirs.uuid).status_code == 404
    r = delete(alice, public.uuid)
    assert (r.status_code, "not yours" in r.json["error"]) == (403, True)
    r = delete(alice, in_use.uuid)
    assert r.status_code == 409
    assert f"used by 1 VM(s) ({vm.uuid})" in r.json["error"]
    assert store.get(Image, in_use.uuid).value.desired == ImageDesired.CREATED

    assert delete(alice, "theirs").status_code == 404  # by name: one's own, then public ones
    r = delete(alice, "debian")  # the same rule as /vm/create's: the public image is found
    assert (r.status_code, "not yours" in r.json["error"]) == (403, True)
    assert delete(alice, "a/b").status_code == 404  # not an id: nothing, never another key
    r = delete(alice, "mine")
    assert r.status_code == 202, r.json
    assert (r.json["image"]["uuid"], r.json["image"]["desired"]) == (mine.uuid, "deleted")
    assert delete(alice, mine.uuid).status_code == 202  # asking again changes nothing
    assert delete(admin, theirs.uuid).status_code == 202
    assert store.get(Image, theirs.uuid).value.desired == ImageDesired.DELETED


def test_image_stores(client, store, alice, admin, settings):
    r = client.post("/image/store/create", json=alice.creds(image_store="ssd", pool="fast"))
    assert r.status_code == 403
    r = client.post("/image/store/create", json=admin.creds(image_store="ssd", pool="fast"))
    assert r.status_code == 201, r.json
    for name in ("ssd", settings.image_store):
        r = client.post("/image/store/create", json=admin.creds(image_store=name, pool="p"))
        assert r.status_code == 409
    r = client.post("/image/store/create", json=admin.creds(image_store="x", pool="a/b"))
    assert r.status_code == 400
    stores = client.get("/image/store/list", json=alice.creds()).json["image_stores"]
    assert [(s["name"], s["pool"]) for s in stores] == [
        (settings.image_store, settings.image_pool),
        ("ssd", "fast"),
    ]

    file = register_file(store, alice)
    r = client.post(
        "/image/create",
        json=alice.creds(image_name="quick", file_uuid=file.uuid, image_store="ssd"),
    )
    assert r.status_code == 202
    assert (r.json["image"]["store"], r.json["image"]["pool"]) == ("ssd", "fast")


def test_cli_file_and_image_commands(alice_cli, store, alice):
    file = register_file(store, alice, "disk.qcow2")
    assert [f["uuid"] for f in alice_cli.json("file", "list")] == [file.uuid]
    code, out, err = alice_cli("image", "create", "mine", "--file", file.uuid)
    assert code == 0, err
    assert "image mine queued" in out
    images = alice_cli.json("image", "list")
    assert [(i["name"], i["status"]) for i in images] == [("mine", "TO_BE_CREATED")]
    code, out, err = alice_cli("image", "delete", "mine")
    assert (code, out.strip()) == (0, "image deletion queued"), err
    code, _, err = alice_cli("image", "create", "x", "--file", "nope")
    assert code == ExitCode.REFUSED
    assert "no file nope" in err


# --- the image scanner ------------------------------------------------------------------------


def test_image_scanner_with_the_file_storage_driver(
    filescanner, store, client, alice, uploads, scan_settings, guests, tmp_path
):
    """The scanner's state machine in-process, on local storage (no Ceph)."""
    settings = scan_settings.model_copy(
        update={"storage": "file", "image_dir": str(tmp_path / "images")}
    )
    own = Store(settings)
    scanner = ImageScanner(own, settings, FileStorage(settings))
    stop = threading.Event()
    thread = threading.Thread(target=scanner.run, args=(stop,), daemon=True)
    thread.start()
    try:
        good = user_file(
            store,
            uploads,
            "alice",
            "boot.qcow2",
            imagefiles.bootable_qcow2(guests.bootsector, tmp_path / "boot.qcow2"),
        )
        bad = user_file(
            store, uploads, "alice", "random.img", imagefiles.random_bytes(tmp_path / "r.img")
        )
        made = create_image(client, alice, good, "boot")
        refused = create_image(client, alice, bad, "random")
        assert wait_image(store, made, ImageStatus.CREATED).size == 1 * MIB
        assert "no 55 AA signature" in wait_image(store, refused, ImageStatus.ERROR).reason
        assert sorted(p.name for p in (tmp_path / "images").iterdir()) == [f"{made}.qcow2"]

        for uuid in (made, refused):
            assert client.post("/image/delete", json=alice.creds(uuid=uuid)).status_code == 202
        wait_for(lambda: not store.list(Image)[0], 10, "both images deleted")
        assert list((tmp_path / "images").iterdir()) == []
    finally:
        stop.set()
        thread.join(15)
        own.close()
    assert not thread.is_alive()


# --- the image scanner, on Ceph -----------------------------------------------------------------


@dataclass
class Scanners:
    """Both scanners as processes, with a temporary directory of their own to watch."""

    settings: Settings
    tmp: Path
    temp: Path  # their TMPDIR
    files: Daemon
    images: Daemon

    @classmethod
    def start(cls, settings: Settings, tmp: Path) -> Scanners:
        temp = tmp / "scanner-tmp"
        temp.mkdir()
        s = cls(settings, tmp, temp, None, None)  # type: ignore[arg-type]
        s.files = s._start("ucloud.filescanner.main", "filescanner")
        s.images = s._start("ucloud.imagescanner.main", "imagescanner")
        return s

    def _start(self, module: str, name: str) -> Daemon:
        env = {**settings_env(self.settings), "UCLOUD_ENV_FILE": "/dev/null"}
        env["TMPDIR"] = str(self.temp)
        return Daemon([sys.executable, "-m", module], env, self.tmp / f"{name}.log")

    def restart_images(self, sig: int) -> None:
        self.images.stop(sig)
        self.images = self._start("ucloud.imagescanner.main", "imagescanner")

    def stop(self) -> None:
        self.files.stop()
        self.images.stop()


@pytest.fixture
def scanners(scan_settings: Settings, ceph: Ceph, tmp_path: Path) -> Iterator[Scanners]:
    settings = scan_settings.model_copy(
        update={
            "ceph_conf": str(ceph.conf),
            "ceph_keyring": str(ceph.keyring),
            "ceph_pool": ceph.pool,
            "image_pool": ceph.pool,
            "image_max_size": 1.5,
            "image_convert_rate": 8 * MIB,  # slow enough to watch a 1 GiB image convert
            "image_progress_interval": 0.5,
            "imagescanner_lease_ttl": 2,
        }
    )
    s = Scanners.start(settings, tmp_path)
    yield s
    s.stop()


def test_an_uploaded_qcow2_becomes_an_image_and_a_vm_boots_from_it(
    scanners, store, client, alice, uploads, ceph: Ceph, libvirtd: Libvirtd, guests, tmp_path
):
    source = imagefiles.bootable_qcow2(guests.bootsector, tmp_path / "boot.qcow2")
    file = user_file(store, uploads, "alice", "boot.qcow2", source)
    assert [f["uuid"] for f in client.get("/file/list", json=alice.creds()).json["files"]] == [
        file.uuid
    ]
    uuid = create_image(client, alice, file, "mybootsector")
    image = wait_image(store, uuid, ImageStatus.CREATED)
    assert (image.size, image.progress, image.reason) == (guests.bootsector.stat().st_size, 100, "")
    assert uuid in rbd_ls(ceph)
    snaps = json.loads(ceph.rbd("snap", "ls", "--format=json", f"{ceph.pool}/{uuid}"))
    assert [(s["name"], s["protected"]) for s in snaps] == [("base", "true")]

    host = host_settings(scanners.settings, ceph, libvirtd, "node1", tmp_path / "node1")
    scheduler = daemon("ucloud.scheduler.main", scanners.settings, tmp_path / "scheduler.log")
    agent = daemon("ucloud.host.main", host, tmp_path / "agent.log")
    try:
        body = alice.creds(
            vm_name="vm", specs={"cpu": 1, "ram": 0.125, "ssd": 1}, image="mybootsector"
        )
        r = client.post("/vm/create", json=body)
        assert r.status_code == 202, r.json
        vmid = r.json["uuid"]
        wait_for(
            lambda: store.get(VM, vmid).value.status == Status.RUNNING, 60, f"VM {vmid} RUNNING"
        )
        wait_console(Path(host.state_dir), vmid, BOOT)

        # The image is in use: it cannot go. Once the VM is gone, it can, from Ceph too.
        r = client.post("/image/delete", json=alice.creds(uuid=uuid))
        assert r.status_code == 409
        client.post("/vm/delete", json=alice.creds(vmid=vmid))
        wait_for(lambda: store.get(VM, vmid) is None, 60, "the VM to be deleted")
    finally:
        agent.stop()
        scheduler.stop()
    r = client.post("/image/delete", json=alice.creds(uuid=uuid))
    assert r.status_code == 202, r.json
    wait_for(lambda: store.get(Image, uuid) is None, 30, "the image record to go")
    assert uuid not in rbd_ls(ceph)


def test_unsafe_or_broken_files_are_refused_and_leave_nothing_in_ceph(
    scanners, store, client, alice, uploads, ceph: Ceph, guests, tmp_path
):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    good = imagefiles.bootable_qcow2(guests.bootsector, scratch / "good.qcow2")
    cases = {
        "backing.qcow2": (
            imagefiles.with_backing_file(scratch / "backing.qcow2", "/etc/passwd"),
            "it has a backing file (/etc/passwd)",
        ),
        "datafile.qcow2": (
            imagefiles.with_external_data_file(scratch / "datafile.qcow2", scratch),
            "it keeps its data in an external file",
        ),
        "truncated.qcow2": (
            imagefiles.truncated(good, scratch / "truncated.qcow2"),
            "it is damaged (truncated, or corrupt",
        ),
        "random.img": (
            imagefiles.random_bytes(scratch / "random.img"),
            "it is not a disk image qemu-img recognises",
        ),
        "huge.raw": (
            imagefiles.sparse_raw(guests.bootsector, scratch / "huge.raw", 2 << 30),
            "its virtual size, 2.00 GiB, is over the limit of 1.50 GiB",
        ),
    }
    before = set(rbd_ls(ceph))
    asked = {}
    for name, (source, reason) in cases.items():
        file = user_file(store, uploads, "alice", name, source)
        asked[create_image(client, alice, file, name)] = reason
    # A file whose content is not what the image was asked for (changed since).
    file = user_file(store, uploads, "alice", "good.qcow2", good)
    changed = Image(
        name="changed", owner="alice", owner_realm="users", file=file.uuid, sha512="0" * 128
    )
    store.create(changed)
    asked[changed.uuid] = "its file changed since the image was asked for"

    for uuid, reason in asked.items():
        image = wait_image(store, uuid, ImageStatus.ERROR)
        assert reason in image.reason, (image.name, image.reason)
    assert set(rbd_ls(ceph)) == before
    assert not any(name.startswith(tuple(asked)) for name in rbd_ls(ceph))
    assert "Traceback" not in scanners.images.output()


def qemu_img_pids(uuid: str) -> list[int]:
    """qemu-img processes converting into the image ``uuid``."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if cmdline.startswith(b"qemu-img\0convert") and uuid.encode() in cmdline:
                pids.append(int(entry))
    return pids


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has stopped; only its parent has not collected it yet


def big_files(pid: int, source: Path) -> list[str]:
    """Regular files of 64 MiB or more that process ``pid`` has open, but ``source``."""
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            st = os.stat(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target != str(source) and os.path.isfile(target) and st.st_size >= 64 * MIB:
            found.append(target)
    return found


def test_image_scanner_killed_mid_conversion_finishes_once_with_no_temporary_copy(
    scanners, store, client, alice, uploads, ceph: Ceph, tmp_path
):
    source = imagefiles.sparse_qcow2(tmp_path / "big.qcow2", "1G", data_mib=64)
    file = user_file(store, uploads, "alice", "big.qcow2", source)
    before = set(rbd_ls(ceph))
    uuid = create_image(client, alice, file, "big")
    uploaded = uploads / "alice" / "big.qcow2"

    def converting() -> list[int]:
        image = store.get(Image, uuid).value
        pids = qemu_img_pids(uuid)
        # qemu-img reads the upload through the scanner's descriptor, and writes only to RBD.
        for pid in pids:
            assert big_files(pid, uploaded) == [], "qemu-img writes a large local file"
        assert not [p for p in scanners.temp.rglob("*") if p.stat().st_size >= 64 * MIB]
        return pids if 0 < image.progress < 100 else []

    # Stopped politely, the scanner abandons the conversion and leaves the image CREATING.
    pids = wait_for(converting, 30, "the conversion to report progress", interval=0.1)
    started = time.monotonic()
    scanners.restart_images(signal.SIGTERM)
    assert time.monotonic() - started < 10
    assert f"left image {uuid} unfinished: stopping" in scanners.images.output()
    assert not any(running(p) for p in pids)
    assert store.get(Image, uuid).value.status == ImageStatus.CREATING

    # Killed, its conversion dies with it (and does not write on behind the next scanner).
    pids = wait_for(converting, 30, "the conversion to start again", interval=0.1)
    scanners.restart_images(signal.SIGKILL)
    wait_for(lambda: not any(running(p) for p in pids), 10, "qemu-img to die")
    assert store.get(Image, uuid).value.status == ImageStatus.CREATING

    wait_for(converting, 30, "the conversion to start once more", interval=0.1)
    image = wait_image(store, uuid, ImageStatus.CREATED, timeout=60)
    assert image.size == 1 << 30
    assert set(rbd_ls(ceph)) - before == {uuid}
    assert "nobody makes it; making it again" in scanners.images.output()
    # The image holds exactly the upload's content.
    target = f"rbd:{ceph.pool}/{uuid}@base:id=ucloud:conf={ceph.conf}:keyring={ceph.keyring}"
    subprocess.run(
        ["qemu-img", "compare", "-f", "qcow2", "-F", "raw", str(uploaded), target],
        check=True,
        capture_output=True,
        timeout=120,
    )
    assert not any(p.stat().st_size >= 64 * MIB for p in scanners.temp.rglob("*"))


def test_an_import_removes_an_image_its_killed_importer_left_half_created(
    settings: Settings, ceph: Ceph, tmp_path
):
    """An importer killed inside ``rbd create`` leaves the image's id object and no header:
    the image cannot be opened, yet every create of its name fails ("File exists"). The next
    import must clear it (CI saw an image scanner retry such an import for ever)."""
    import rados
    import rbd

    from ucloud.storage.rbd import RBDStorage

    storage = RBDStorage(
        settings.model_copy(
            update={
                "ceph_conf": str(ceph.conf),
                "ceph_keyring": str(ceph.keyring),
                "ceph_pool": ceph.pool,
                "image_pool": ceph.pool,
            }
        )
    )
    name = f"half-{os.getpid()}-{time.monotonic_ns()}"
    image_id = b"0123456789ab"
    cluster = rados.Rados(
        conffile=str(ceph.conf), rados_id="ucloud", conf={"keyring": str(ceph.keyring)}
    )
    cluster.connect()
    try:
        with cluster.open_ioctx(ceph.pool) as ioctx:
            # What librbd's create writes first: the id object (a length-prefixed string).
            ioctx.write_full(f"rbd_id.{name}", len(image_id).to_bytes(4, "little") + image_id)
            with pytest.raises(rbd.ImageNotFound):
                rbd.Image(ioctx, name).close()
            with pytest.raises(rbd.ImageExists):
                rbd.RBD().create(ioctx, name, 1 << 20)

            source = imagefiles.sparse_qcow2(tmp_path / "small.qcow2", "1G", data_mib=2)
            assert storage.import_image(name, str(source)) == 1 << 30
            assert storage.image_exists(name)
            storage.delete_image(name)
            assert name not in rbd.RBD().list(ioctx)
    finally:
        cluster.shutdown()
