"""Uploads over the API on a real etcd: the rules in-process, and a 2 GiB sparse file streamed
through the real API (gunicorn) by the CLI, registered by the real file scanner."""

from __future__ import annotations

import hashlib
import http.client
import io
import os
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import Account
from tests.servers import wait_for
from tests.stack import ServedAPI, daemon
from ucloud import auth
from ucloud.cli.main import main
from ucloud.config import Settings
from ucloud.models import File

CONTENT = b"an image, say\n" * 1000


@pytest.fixture
def settings(settings: Settings, tmp_path: Path) -> Settings:
    root = tmp_path / "uploads"
    root.mkdir()
    # A short gunicorn worker timeout: uploads through the real API outlast it.
    return settings.model_copy(
        update={
            "upload_root": str(root),
            "upload_max_size": 3.0,
            "upload_settle": 0.5,
            "api_worker_timeout": 2,
        }
    )


def put(client, account: Account, name: str, data: bytes, sha512: str | None = None, **headers):
    length = headers.pop("Content-Length", None)
    return client.put(
        f"/file/upload/{name}",
        environ_overrides={"CONTENT_LENGTH": length} if length else {},
        data=data,
        headers={
            "X-UCloud-User": account.name,
            "X-UCloud-Realm": account.realm,
            "X-UCloud-Token": auth.current_token(account.secret),
            "X-UCloud-SHA512": sha512 or hashlib.sha512(data).hexdigest(),
            **headers,
        },
    )


def listing(settings: Settings, user: str) -> list[str]:
    return sorted(os.listdir(Path(settings.upload_root) / user))


def test_upload_lands_under_its_name_complete(client, alice, settings):
    r = put(client, alice, "disk.img", CONTENT)
    assert r.status_code == 201, r.json
    assert r.json["size"] == len(CONTENT)
    path = Path(settings.upload_root) / "alice" / "disk.img"
    assert path.read_bytes() == CONTENT
    assert listing(settings, "alice") == ["disk.img"]
    assert os.listdir(Path(settings.upload_root) / ".ucloud-uploads") == []  # nothing left
    r = put(client, alice, "disk.img", b"other")
    assert r.status_code == 409 and "already have a file named disk.img" in r.json["error"]
    assert path.read_bytes() == CONTENT


def test_refusals_leave_nothing(client, alice, admin, settings):
    r = put(client, alice, "x.img", CONTENT, sha512="0" * 128)
    assert r.status_code == 400 and "sha512 is not the one announced" in r.json["error"]
    r = put(client, alice, ".hidden", CONTENT)
    assert r.status_code == 400 and "cannot be used" in r.json["error"]
    # Refused on its Content-Length, before a byte of it is read.
    r = put(client, alice, "big.img", CONTENT, **{"Content-Length": str(3 << 30 | 1)})
    assert r.status_code == 413
    assert r.json["error"] == (
        "the file is 3221225473 bytes; uploads may be at most 3221225472 bytes (3 GiB)"
    )
    r = put(client, alice, "x.img", CONTENT, **{"X-UCloud-Token": "000000"})
    assert r.status_code == 401
    r = put(client, admin, "x.img", CONTENT)
    assert r.status_code == 403 and "uploads are for users of realm users" in r.json["error"]
    r = client.put("/file/upload/x.img", data=CONTENT)
    assert r.status_code == 400  # no credentials
    assert listing(settings, "alice") == []
    assert os.listdir(Path(settings.upload_root) / ".ucloud-uploads") == []
    assert not (Path(settings.upload_root) / "root").exists()


# --- the real thing ---------------------------------------------------------------------------


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmHWM for {pid}")


def workers(master: int) -> list[int]:
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return [int(c) for c in children]


@pytest.mark.slow
def test_a_2_gib_sparse_file_streams_through_the_api(
    api: ServedAPI,
    settings,
    store,
    alice,
    tmp_path,
    monkeypatch,
    capsys,
):
    scanner = daemon("ucloud.filescanner.main", settings, tmp_path / "files.log")
    try:
        source = tmp_path / "sparse.img"
        with open(source, "wb") as f:
            f.truncate(2 << 30)
        master = api.pid
        before = {pid: peak_rss_kib(pid) for pid in workers(master)}
        for key, value in {
            "UCLOUD_API_URL": api.url,
            "UCLOUD_USER": alice.name,
            "UCLOUD_REALM": alice.realm,
            "UCLOUD_SEED": alice.secret,
            "HOME": str(tmp_path),
        }.items():
            monkeypatch.setenv(key, value)
        assert main(["file", "upload", str(source), "--name", "big.img"]) == 0
        out = capsys.readouterr().out
        assert out.startswith("uploaded big.img (2.0G)")
        after = {pid: peak_rss_kib(pid) for pid in workers(master)}
        growth = max(after[pid] - before.get(pid, 0) for pid in after)
        print(f"\nAPI workers' peak RSS before {before} KiB, after {after} KiB")
        # The file is 2 GiB: a worker that held it would grow by at least that much.
        assert growth < 64 * 1024, f"an API worker's peak RSS grew by {growth} KiB"
        assert max(after.values()) < 256 * 1024

        def registered() -> File | None:
            files = [f.value for f in store.list(File)[0].values() if f.value.name == "big.img"]
            return files[0] if files else None

        file = wait_for(registered, 120, "the file scanner to register big.img")
        zeros = hashlib.sha512()
        chunk = bytes(1 << 20)
        for _ in range(2048):
            zeros.update(chunk)
        assert (file.size, file.sha512, file.owner) == (2 << 30, zeros.hexdigest(), "alice")
        assert listing(settings, "alice") == ["big.img"]
    finally:
        scanner.stop()


def raw_upload(served: ServedAPI, account: Account, name: str, body: bytes, send) -> None:
    """Headers for ``body``, then ``send(connection, body)`` sends (some of) it."""
    connection = http.client.HTTPConnection(served.url.removeprefix("http://"), timeout=30)
    connection.putrequest("PUT", f"/file/upload/{name}")
    for key, value in {
        "X-UCloud-User": account.name,
        "X-UCloud-Realm": account.realm,
        "X-UCloud-Token": auth.current_token(account.secret),
        "X-UCloud-SHA512": hashlib.sha512(body).hexdigest(),
        "Content-Length": str(len(body)),
    }.items():
        connection.putheader(key, value)
    connection.endheaders()
    try:
        send(connection, body)
    finally:
        connection.close()


def test_slow_and_broken_uploads_through_the_real_api(
    api: ServedAPI,
    settings,
    alice,
):
    answers = []

    def slowly(connection, body: bytes) -> None:
        # Five seconds of a slow client: past the workers' 2 s timeout.
        for i in range(0, len(body), len(body) // 5):
            connection.send(body[i : i + len(body) // 5])
            time.sleep(1)
        answers.append(connection.getresponse().status)

    raw_upload(api, alice, "slow.img", CONTENT, slowly)
    assert answers == [201]
    assert (Path(settings.upload_root) / "alice" / "slow.img").read_bytes() == CONTENT

    def half(connection, body: bytes) -> None:
        connection.send(body[: len(body) // 2])  # then the client goes away

    raw_upload(api, alice, "broken.img", CONTENT, half)
    spool = Path(settings.upload_root) / ".ucloud-uploads"
    wait_for(lambda: os.listdir(spool) == [], 10, "the broken upload's part to be removed")
    assert listing(settings, "alice") == ["slow.img"]


class Held(io.RawIOBase):
    """A request body that waits for ``go`` before it gives its bytes: an upload under way."""

    def __init__(self, body: bytes, started: threading.Event, go: threading.Event) -> None:
        self.body, self.started, self.go = io.BytesIO(body), started, go

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True  # the test client measures the body by seeking

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.body.seek(offset, whence)

    def tell(self) -> int:
        return self.body.tell()

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        self.started.set()
        assert self.go.wait(10)
        data = self.body.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def test_a_worker_takes_a_few_uploads_at_once(app, client, alice, settings):
    started, go = threading.Event(), threading.Event()
    first: list[int] = []

    def held_upload(name: str) -> None:
        r = client.put(
            f"/file/upload/{name}",
            input_stream=Held(CONTENT, started, go),
            headers={
                "X-UCloud-User": alice.name,
                "X-UCloud-Realm": alice.realm,
                "X-UCloud-Token": auth.current_token(alice.secret),
                "X-UCloud-SHA512": hashlib.sha512(CONTENT).hexdigest(),
                "Content-Length": str(len(CONTENT)),
            },
        )
        first.append(r.status_code)

    uploads_at_once = settings.api_uploads_at_once
    threads = []
    for n in range(uploads_at_once):
        started.clear()
        thread = threading.Thread(target=held_upload, args=(f"held{n}.img",))
        thread.start()
        threads.append(thread)
        assert started.wait(10)
    r = put(client, alice, "second.img", CONTENT)
    assert r.status_code == 503
    assert r.json["error"] == "too many uploads at once on this server; try again shortly"
    go.set()
    for thread in threads:
        thread.join(10)
    assert first == [201] * uploads_at_once
    assert put(client, alice, "third.img", CONTENT).status_code == 201
