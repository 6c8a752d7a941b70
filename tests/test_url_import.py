"""Image import by URL: the API records it, the real image scanner fetches from an HTTP server
the test starts (on loopback, allowed by the setting) into real Ceph, and refuses loopback,
link-local and redirected addresses when they are not allowed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests import imagefiles
from tests.stack import Ceph
from ucloud.config import Settings
from ucloud.imagescanner.daemon import ImageScanner
from ucloud.models import Image, ImageStatus
from ucloud.storage.rbd import RBDStorage
from ucloud.store import Store


class Server:
    """An HTTP server on loopback: ``files`` by path, and ``redirects`` (path -> Location);
    it records every path asked for."""

    def __init__(self, files: dict[str, bytes], redirects: dict[str, str]) -> None:
        self.asked: list[str] = []
        self.released = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.asked.append(self.path)
                if self.path in redirects:
                    self.send_response(302)
                    self.send_header("Location", redirects[self.path])
                    self.end_headers()
                elif self.path == "/stall":  # promises a body, then sends nothing
                    self.send_response(200)
                    self.send_header("Content-Length", "1000")
                    self.end_headers()
                    self.wfile.flush()
                    server.released.wait(30)
                elif self.path == "/huge":  # announces more than the limit
                    self.send_response(200)
                    self.send_header("Content-Length", str(2 << 30))
                    self.end_headers()
                elif self.path in files:
                    body = files[self.path]
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                else:
                    self.send_error(404)

            def log_message(self, *args: object) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.released.set()
        self.http.shutdown()
        self.http.server_close()
        self.thread.join(10)


@pytest.fixture
def settings(settings: Settings, ceph: Ceph, tmp_path: Path) -> Settings:
    return settings.model_copy(
        update={
            "ceph_conf": str(ceph.conf),
            "ceph_keyring": str(ceph.keyring),
            "ceph_pool": ceph.pool,
            "image_pool": ceph.pool,
            "image_max_size": 1.0,
            "import_dir": str(tmp_path / "imports"),
            "import_timeout": 1.0,
        }
    )


@pytest.fixture
def server(guests, tmp_path: Path) -> Iterator[Server]:
    boot = imagefiles.bootable_qcow2(guests.bootsector, tmp_path / "boot.qcow2").read_bytes()
    s = Server(
        {"/boot.qcow2": boot},
        {
            "/moved": "/boot.qcow2",
            "/metadata": "http://169.254.169.254/latest/meta-data/",
        },
    )
    yield s
    s.stop()


def scanner(store: Store, settings: Settings, allow: str) -> ImageScanner:
    allowed = settings.model_copy(update={"import_allow_networks": allow})
    return ImageScanner(store, allowed, RBDStorage(allowed))


def ask(client, alice, name: str, url: str) -> str:
    r = client.post("/image/import", json=alice.creds(image_name=name, url=url))
    assert r.status_code == 202, r.json
    assert r.json["image"]["url"] == url
    return r.json["uuid"]


def image(store: Store, uuid: str) -> Image:
    found = store.get(Image, uuid)
    assert found is not None
    return found.value


def rbd_ls(ceph: Ceph) -> list[str]:
    return ceph.rbd("ls", ceph.pool).split()


def test_import_from_an_allowed_server_and_through_a_redirect(
    client, alice, store, settings, server, ceph, guests
):
    allowed = scanner(store, settings, "127.0.0.1/32")
    for name, path in (("direct", "/boot.qcow2"), ("moved", "/moved")):
        uuid = ask(client, alice, name, server.url + path)
        allowed.step(uuid)
        made = image(store, uuid)
        assert (made.status, made.reason) == (ImageStatus.CREATED, "")
        assert made.size == guests.bootsector.stat().st_size
        snaps = json.loads(ceph.rbd("snap", "ls", "--format=json", f"{ceph.pool}/{uuid}"))
        assert [(s["name"], s["protected"]) for s in snaps] == [("base", "true")]
        allowed.storage.delete_image(uuid)
    assert server.asked == ["/boot.qcow2", "/moved", "/boot.qcow2"]
    assert os.listdir(settings.import_dir) == []  # the download was never a named file


def test_loopback_link_local_and_redirects_to_them_are_refused(
    client, alice, store, settings, server, ceph
):
    strict = scanner(store, settings, "")
    cases = {
        server.url + "/boot.qcow2": "127.0.0.1 is a loopback address",
        "http://169.254.169.254/latest/meta-data/": "169.254.169.254 is a link-local address",
        "http://[::ffff:127.0.0.1]:1/x": "is a loopback address",
        "http://localhost:1/x": "is a loopback address",
    }
    for n, (url, why) in enumerate(cases.items()):
        uuid = ask(client, alice, f"refused{n}", url)
        strict.step(uuid)
        refused = image(store, uuid)
        assert refused.status == ImageStatus.ERROR
        assert why in refused.reason and "import_allow_networks" in refused.reason
        assert uuid not in rbd_ls(ceph)
    assert server.asked == []  # nothing reached the server

    # Allowed to fetch from loopback, but not to be sent on to the metadata address.
    allowed = scanner(store, settings, "127.0.0.1/32")
    uuid = ask(client, alice, "redirected", server.url + "/metadata")
    allowed.step(uuid)
    refused = image(store, uuid)
    assert refused.status == ImageStatus.ERROR
    assert "169.254.169.254 is a link-local address" in refused.reason
    assert server.asked == ["/metadata"]
    # A download that stalls past import_timeout, one larger than the limit.
    for name, path, why in (
        ("stalled", "/stall", f"fetching {server.url}/stall failed after 0 bytes: timed out"),
        ("huge", "/huge", f"{server.url}/huge is 2147483648 bytes; at most 1073741824 bytes"),
    ):
        uuid = ask(client, alice, name, server.url + path)
        allowed.step(uuid)
        assert image(store, uuid).reason.startswith(why)
        assert uuid not in rbd_ls(ceph)
    assert os.listdir(settings.import_dir) == []
    # A server's refusal is the image's reason too.
    uuid = ask(client, alice, "missing", server.url + "/nothing")
    allowed.step(uuid)
    assert image(store, uuid).reason == f"{server.url}/nothing answered 404 Not Found"


def test_the_api_refuses_what_is_not_an_http_url(client, alice, store):
    for url, why in (
        ("file:///etc/passwd", "must be an http:// or https:// URL"),
        ("http://", "must be an http:// or https:// URL with a host"),
        ("http://user:pw@example.org/x", "must not carry a user name or password"),
        ("http://example.org:99999/x", "not a valid URL"),
        # What urlsplit would read as http://example.org/x, but is no such URL.
        ("ht\ttp://example.org/x", "without spaces or control characters"),
        (" http://example.org/x", "without spaces or control characters"),
        ("http://exa\nmple.org/x", "without spaces or control characters"),
    ):
        r = client.post("/image/import", json=alice.creds(image_name="x", url=url))
        assert r.status_code == 400 and why in r.json["error"], (url, r.json)
    assert store.list(Image)[0] == {}


def test_a_name_that_resolves_to_the_metadata_address_is_refused(tmp_path):
    """A DNS name is checked by the addresses it resolves to, not by how it looks: a name that
    resolves to 169.254.169.254 (here through an /etc/hosts of the test's own mount namespace,
    read by the system's resolver) is refused before any connection."""
    hosts = tmp_path / "hosts"
    hosts.write_text("169.254.169.254 metadata.example.org\n10.9.8.7 mirror.example.org\n")
    probe = (
        "from ucloud.imagescanner.fetch import Policy, check\n"
        "from ucloud.imagescanner.inspect import Refused\n"
        "for url in ('http://metadata.example.org/latest/', 'https://mirror.example.org/x'):\n"
        "    try:\n"
        "        check(url, Policy.networks(''))\n"
        "        print('allowed', url)\n"
        "    except Refused as e:\n"
        "        print('refused', e)\n"
    )
    root = str(Path(__file__).resolve().parent.parent)
    run = subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            'mount --bind "$0" /etc/hosts && exec "$1" -c "$2"',
            str(hosts),
            sys.executable,
            probe,
        ],
        env={**os.environ, "PYTHONPATH": root},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == [
        "refused metadata.example.org resolves to 169.254.169.254, which images are not fetched "
        "from: 169.254.169.254 is a link-local address (an administrator may allow its network: "
        "import_allow_networks)",
        "refused mirror.example.org resolves to 10.9.8.7, which images are not fetched from: "
        "10.9.8.7 is a private address (an administrator may allow its network: "
        "import_allow_networks)",
    ]
