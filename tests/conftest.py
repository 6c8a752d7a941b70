"""Fixtures: a real etcd for the session, and a fresh key prefix for each test."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pyotp
import pytest

from tests.bed import bed, bed_ceph, bed_cluster, bed_etcd  # noqa: F401  (the test bed)
from tests.clirun import admin_cli, alice_cli, api_url, cli, home  # noqa: F401  (the CLI's)
from tests.onehost import cluster  # noqa: F401  (one host: scheduler, agent, API)
from tests.servers import Etcd
from tests.stack import (  # noqa: F401  (fixtures of the real stack)
    api,
    ceph,
    debian_guest,
    guests,
    libvirtd,
)
from ucloud import auth
from ucloud.config import Settings, load_settings
from ucloud.models import Image, ImageStatus
from ucloud.storage import Storage
from ucloud.store import Store


@pytest.fixture(scope="session")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Etcd]:
    server = Etcd(tmp_path_factory.mktemp("etcd"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def settings(etcd: Etcd) -> Settings:
    # A prefix of its own isolates each test from the others on one etcd.
    return load_settings(
        etcd_endpoints=f"127.0.0.1:{etcd.port}",
        etcd_prefix=f"/test-{uuid.uuid4().hex[:8]}/v1",
        dead_host_grace=0.5,
        scheduler_lease_ttl=2,
        host_lease_ttl=2,
        host_start_margin=1,
        scheduler_resync=2,
    )


@pytest.fixture
def store(settings: Settings) -> Iterator[Store]:
    s = Store(settings)
    yield s
    s.close()


class Account:
    """A user in etcd, able to sign requests with a current token."""

    def __init__(self, name: str, realm: str, secret: str) -> None:
        self.name, self.realm, self.secret = name, realm, secret
        self.login_step = -1  # the 30 s step of its last console-page login's token

    def login_token(self) -> str:
        """A token for a console-page login, which takes each 30 s step once: now's, or a
        step after its last login's. The API takes the next step's too (totp_valid_window 1);
        a later one is waited for."""
        totp = pyotp.TOTP(self.secret)
        step = max(totp.timecode(time.time()), self.login_step + 1)
        wait = (step - 1) * totp.interval - time.time()
        if wait > 0:
            time.sleep(wait + 0.1)
        self.login_step = step
        return totp.generate_otp(step)

    def creds(self, **fields: object) -> dict[str, object]:
        return {
            "name": self.name,
            "realm": self.realm,
            "token": auth.current_token(self.secret),
            **fields,
        }


def make_account(store: Store, name: str, realm: str = "users") -> Account:
    from ucloud.api.users import create_user

    user = create_user(store, name, realm)
    return Account(user.name, user.realm, user.totp_secret)


def make_image(
    store: Store, name: str = "debian", owner: Account | None = None, public: bool = True
) -> Image:
    image = Image(
        name=name,
        owner=owner.name if owner else "admin",
        owner_realm=owner.realm if owner else "ucloud-admin",
        public=public,
        status=ImageStatus.CREATED,
    )
    store.create(image)
    return image


SPECS = {"cpu": 1, "ram": 1, "ssd": 4}  # a small VM's, as the API takes them


def create_vm(client, account: Account, image: Image, **extra) -> str:
    """A VM named web, created through the API (a test client); its uuid."""
    body = account.creds(vm_name="web", specs=SPECS, image=image.uuid, **extra)
    r = client.post("/vm/create", json=body)
    assert r.status_code == 202, r.json
    return r.json["uuid"]


def register_image(
    store: Store,
    storage: Storage,
    source: str,
    name: str,
    owner: str,
    owner_realm: str,
    public: bool = True,
) -> Image:
    """Import ``source`` (a file qemu-img reads) into ``storage`` as a new image, recorded
    CREATED with no file: the image scanner's work without the scanner, for tests and
    benchmarks of what comes after it."""
    image = Image(name=name, owner=owner, owner_realm=owner_realm, public=public)
    image.size = storage.import_image(image.uuid, source)
    image.status = ImageStatus.CREATED
    store.create(image)
    return image


@pytest.fixture
def app(settings: Settings, store: Store):
    from ucloud.api import create_app

    app = create_app(settings, store)
    yield app
    app.extensions["ucloud"].catalog.stop()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def admin(store: Store, settings: Settings) -> Account:
    return make_account(store, "root", settings.admin_realm)


@pytest.fixture
def alice(store: Store) -> Account:
    return make_account(store, "alice")


@pytest.fixture
def bob(store: Store) -> Account:
    return make_account(store, "bob")


@pytest.fixture
def image(store: Store) -> Image:
    return make_image(store)


@pytest.fixture
def scheduler(store: Store, settings: Settings):
    """A scheduler in a thread of the test process (the election is left out)."""
    from ucloud.scheduler.daemon import Scheduler

    s = Scheduler(Store(settings), settings)
    stop = threading.Event()
    thread = threading.Thread(target=s.run, args=(stop,), daemon=True)
    thread.start()
    yield s
    stop.set()
    thread.join(10)
    assert not thread.is_alive()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    """Each phase's report on the test item (``item.rep_call``): fixtures that keep artifacts
    of failed tests (browser screenshots) look at it."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
