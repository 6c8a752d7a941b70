"""The OpenAPI document tells the truth: schemathesis generates requests for every operation
it describes (valid ones, and invalid ones that must be refused), sends them to a live API
(gunicorn, as deployed, on a real etcd) and checks every answer: no server error, only the
documented status codes, bodies and headers (a 405 names the allowed methods in Allow),
invalid input refused.

Requests are signed by a hook (tests/schemathesis_hooks.py) that fills a current
administrator's credentials into what was generated (administrators may call every operation;
uploads are signed by a user of the upload realm), and points half of the valid ids at objects
that exist. The test then checks from the answers that every operation did its work at least
once (a success, or a 409 about the state of what it was pointed at), not only refused.
Not checked: positive data acceptance (a valid request may name a VM or an image that does not
exist, which no schema can say) and the object-level authorization probe (it needs a second
identity in headers; ownership is tested in tests/test_api.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import requests

from tests.conftest import Account, make_account, make_image
from tests.servers import Etcd, free_port, wait_for
from tests.stack import daemon
from ucloud.api.imports import URL_PATTERN
from ucloud.api.schemas import SIZE_PATTERN
from ucloud.config import load_settings
from ucloud.models import NAME_PATTERN, VM, File, Image, Specs
from ucloud.store import Store

# Per operation and phase: the run takes about 10 s here. A deeper run, with another seed:
# UCLOUD_ST_EXAMPLES=200 UCLOUD_ST_SEED=7 pytest tests/test_openapi_conformance.py
EXAMPLES = int(os.environ.get("UCLOUD_ST_EXAMPLES", "10"))
ROOT = Path(__file__).resolve().parent.parent  # where the hooks module is importable from
SEED = int(os.environ.get("UCLOUD_ST_SEED", "16"))  # the same requests in every run


def test_every_operation_answers_as_documented(etcd: Etcd, tmp_path: Path) -> None:
    port = free_port()
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    settings = load_settings(
        etcd_endpoints=f"127.0.0.1:{etcd.port}",
        etcd_prefix=f"/test-{uuid.uuid4().hex[:8]}/v1",
        api_bind=f"127.0.0.1:{port}",
        api_workers=1,
        default_image="debian",  # so VMs can be made from requests that name no image
        upload_root=str(uploads),
    )
    store = Store(settings)
    admin = make_account(store, "root", settings.admin_realm)
    uploader = make_account(store, "uploader", settings.upload_realm)
    debian = make_image(store, "debian")
    api = daemon("ucloud.api.main", settings, tmp_path / "api.log")
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        try:
            return requests.get(url + "/openapi.json", timeout=2).ok
        except requests.ConnectionError:
            return False

    try:
        wait_for(answers, 30, f"the API on {url} (log: {tmp_path / 'api.log'})")
        ids = _objects(store, url, admin, debian, tmp_path)
        log = tmp_path / "answers.txt"
        env = {
            **os.environ,
            "SCHEMATHESIS_HOOKS": "tests.schemathesis_hooks",
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
            ),
            "UCLOUD_ST_NAME": admin.name,
            "UCLOUD_ST_REALM": admin.realm,
            "UCLOUD_ST_SECRET": admin.secret,
            "UCLOUD_ST_UPLOADER": json.dumps(
                {"name": uploader.name, "realm": uploader.realm, "secret": uploader.secret}
            ),
            "UCLOUD_ST_IDS": json.dumps(ids),
            "UCLOUD_ST_ANSWERS": str(log),
        }
        argv = [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "run",
            f"{url}/openapi.json",
            "--checks=all",
            "--exclude-checks=positive_data_acceptance,object_level_authorization",
            "--phases=examples,coverage,fuzzing",
            f"--max-examples={EXAMPLES}",
            f"--seed={SEED}",
            "--workers=1",
            "--no-color",
            "--generation-database=none",
        ]
        # In tmp_path: schemathesis keeps a folder of its own (.schemathesis) where it runs.
        run = subprocess.run(
            argv, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600
        )
        print(run.stdout[-3000:])  # the summary, shown with pytest -s
        assert run.returncode == 0, run.stdout[-20000:] + run.stderr[-5000:]
        assert api.alive()
        # Every operation did its work at least once (a success, or a 409 about the state of
        # what it was pointed at), signed and past its checks: not only refused or not found.
        reached: dict[str, set[int]] = {}
        for line in log.read_text().splitlines():
            method, path, status = line.split()
            reached.setdefault(f"{method} {path}", set()).add(int(status))
        operations = requests.get(url + "/openapi.json", timeout=10).json()["paths"]
        unreached = {
            f"{method.upper()} {path}": sorted(reached.get(f"{method.upper()} {path}", ()))
            for path, methods in operations.items()
            for method in methods
            if not any(s < 300 or s == 409 for s in reached.get(f"{method.upper()} {path}", ()))
        }
        assert unreached == {}
        assert any(p.is_file() for p in (uploads / uploader.name).iterdir())
    finally:
        api.stop()
        store.close()


def _objects(store: Store, url: str, admin: Account, image: Image, folder: Path) -> dict:
    """Objects for the hook to point the generated ids at (see tests/schemathesis_hooks.py):
    one of each kind that every operation may use, and one more for each deleting operation.
    Made through the API where it makes them, as a user would."""

    def call(path: str, **fields: object) -> dict:
        r = requests.post(url + path, json=admin.creds(**fields), timeout=10)
        assert r.status_code < 300, (path, r.text)
        return r.json()

    def vm(name: str) -> str:
        specs = Specs(cpu=1, ram=1)
        made = VM(name=name, owner="alice", owner_realm="users", specs=specs, image=image.uuid)
        store.create(made)
        return made.uuid

    for user in ("bob", "carol"):
        call("/user/create", user=user, user_realm="users")
    for host in ("h1", "h2"):
        call("/host/create", hostname=host, specs={"cpu": 4, "ram": 8})
    lan = call("/network/create", network_name="lan")["network"]["uuid"]
    doomed_lan = call("/network/create", network_name="doomed")["network"]["uuid"]
    key = folder / "id"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    public_key = key.with_suffix(".pub").read_text().strip()
    call("/key/add", key_name="laptop", public_key=public_key)
    upload = File(
        owner=admin.name, owner_realm=admin.realm, name="disk.img", size=1, sha512="0", mtime=0
    )
    store.create(upload)
    return {
        "vmid": {"vmid": vm("web"), "network": lan},
        "hostname": {"hostname": "h1"},
        "router": {"router": "h1"},
        "user": {"user": "bob", "user_realm": "users"},
        "network": {"network": lan, "router": "h1"},
        "key_name": {"key_name": "laptop"},
        "public_key": {"public_key": public_key},
        "url": {"url": "https://images.example.org/debian.qcow2"},
        "file_uuid": {"file_uuid": upload.uuid},
        "uuid": {"uuid": make_image(store, "scratch").uuid},
        "image": {"image": image.uuid},
        "POST /vm/delete": {"vmid": {"vmid": vm("doomed")}},
        "POST /host/delete": {"hostname": {"hostname": "h2"}},
        "POST /user/delete": {"user": {"user": "carol", "user_realm": "users"}},
        "POST /network/delete": {"network": {"network": doomed_lan}},
        "POST /image/delete": {"uuid": {"uuid": make_image(store, "doomed").uuid}},
    }


def test_the_document_names_every_answer_and_the_rules_the_server_enforces(client, app):
    doc = client.get("/openapi.json").json
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            codes = set(op["responses"])
            assert {"400", "401", "405", "413", "503"} <= codes, (path, method)
            assert "Allow" in op["responses"]["405"]["headers"]
            assert any(c.startswith("2") for c in codes), (path, method)
    vm_ops = doc["paths"]
    assert {"404", "409"} <= set(vm_ops["/vm/action"]["post"]["responses"])
    assert "404" in vm_ops["/vm/status"]["get"]["responses"]
    assert "403" in vm_ops["/host/create"]["post"]["responses"]  # administrators only
    assert "quota" in vm_ops["/vm/create"]["post"]["responses"]["403"]["description"]
    schemas = doc["components"]["schemas"]
    hostname = schemas["HostCreate"]["properties"]["hostname"]
    assert (hostname["pattern"], hostname["maxLength"]) == (NAME_PATTERN, 64)
    ram = schemas["VMSpecs"]["properties"]["ram"]["anyOf"]
    assert ram[0] == {"type": "number", "exclusiveMinimum": 0, "maximum": 4096}
    assert ram[1]["pattern"] == SIZE_PATTERN
    reply = vm_ops["/vm/status"]["get"]["responses"]["200"]["content"]["application/json"]
    assert reply["schema"] == {"$ref": "#/components/schemas/VM"}
    assert "hdd_disk" in schemas["VM"]["properties"]
    # A resize names at least one size; an upload's sha512 is 128 hex digits.
    resize = schemas["VMResize"]["anyOf"]
    assert [one["required"] for one in resize] == [["cpu"], ["ram"], ["ssd"], ["hdd"]]
    upload = vm_ops["/file/upload/{name}"]["put"]["parameters"]
    sha512 = next(p for p in upload if p["name"] == "X-UCloud-SHA512")
    assert sha512["schema"]["pattern"] == "^[0-9a-fA-F]{128}$"
    assert schemas["ImageImport"]["properties"]["url"]["pattern"] == URL_PATTERN


def test_a_wrong_method_is_405_with_the_methods_allowed(client):
    r = client.delete("/vm/create")
    assert r.status_code == 405
    assert set(r.headers["Allow"].replace(" ", "").split(",")) == {"POST", "OPTIONS"}
    assert "error" in r.json
