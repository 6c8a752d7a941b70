"""SSH keys and first-boot data through the API and the CLI, on a real etcd: what is kept, who
sees it, and bad input refused with nothing created."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tests.clirun import CLI
from tests.conftest import Account
from tests.keyfiles import fingerprint, keygen
from ucloud.cli.errors import ExitCode
from ucloud.models import VM, SSHKey
from ucloud.store import Store

SPECS = {"cpu": 1, "ram": 1, "ssd": 4}


@pytest.fixture(scope="module")
def pubs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("keys")
    return {
        "ed": keygen(folder, "ed", "-t", "ed25519"),
        "rsa": keygen(folder, "rsa", "-t", "rsa", "-b", "3072"),
        "weak": keygen(folder, "weak", "-t", "rsa", "-b", "1024"),
    }


def add_key(client, account: Account, name: str, pub: Path | str):
    text = pub.read_text() if isinstance(pub, Path) else pub
    return client.post("/key/add", json=account.creds(key_name=name, public_key=text))


def keys_of(client, account: Account) -> list[dict]:
    r = client.get("/key/list", json=account.creds())
    assert r.status_code == 200, r.json
    return r.json["keys"]


def create(client, account: Account, image, **extra):
    body = account.creds(vm_name="Web_1", specs=SPECS, image=image.uuid, **extra)
    return client.post("/vm/create", json=body)


def test_keys_are_their_owners(client, alice, bob, admin, pubs, store: Store):
    r = add_key(client, alice, "laptop", pubs["ed"])
    assert r.status_code == 201, r.json
    key = r.json["key"]
    assert (key["name"], key["type"], key["bits"]) == ("laptop", "ssh-ed25519", 256)
    assert key["fingerprint"] == fingerprint(pubs["ed"])
    assert key["public_key"] == pubs["ed"].read_text().strip()
    assert add_key(client, alice, "work", pubs["rsa"]).status_code == 201
    assert [k["name"] for k in keys_of(client, alice)] == ["laptop", "work"]

    # The same name twice is refused; the same name for another user is theirs.
    r = add_key(client, alice, "laptop", pubs["rsa"])
    assert (r.status_code, r.json["error"]) == (409, "you already have a key named laptop")
    assert add_key(client, bob, "laptop", pubs["rsa"]).status_code == 201

    # Nobody else sees or deletes alice's keys, administrators included.
    assert [k["name"] for k in keys_of(client, bob)] == ["laptop"]
    assert keys_of(client, admin) == []
    for other in (bob, admin):
        r = client.post("/key/delete", json=other.creds(key_name="work"))
        assert (r.status_code, r.json["error"]) == (404, "no key work")
    assert len(store.list(SSHKey)[0]) == 3

    r = client.post("/key/delete", json=alice.creds(key_name="work"))
    assert r.status_code == 200, r.json
    assert [k["name"] for k in keys_of(client, alice)] == ["laptop"]
    assert client.post("/key/delete", json=alice.creds(key_name="work")).status_code == 404


def test_a_user_has_at_most_a_hundred_keys(client, alice, bob, pubs, store, monkeypatch):
    from ucloud.api import keys

    monkeypatch.setattr(keys, "MAX_KEYS", 2)
    assert add_key(client, alice, "one", pubs["ed"]).status_code == 201
    assert add_key(client, alice, "two", pubs["rsa"]).status_code == 201
    r = add_key(client, alice, "three", pubs["ed"])
    assert (r.status_code, r.json["error"]) == (
        409,
        "you have 2 keys, the most one may have: delete one first",
    )
    assert add_key(client, bob, "three", pubs["ed"]).status_code == 201  # per user
    assert len(store.list(SSHKey)[0]) == 3


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("weak", "the RSA key has 1024 bits: at least 2048 are needed"),
        ("options", "options before the key are not allowed"),
        ("garbage", "unknown key type 'hello'"),
        ("mismatch", "the key data is of type 'ssh-ed25519', not 'ssh-rsa'"),
        ("two", "give exactly one public key"),
        ("private", "this is a private key: give the public one (the .pub file)"),
    ],
)
def test_bad_keys_are_400_and_nothing_is_kept(client, alice, pubs, store, key, message):
    good = pubs["ed"].read_text().strip()
    text = {
        "weak": pubs["weak"].read_text(),
        "options": f'command="/bin/true" {good}',
        "garbage": "hello world",
        "mismatch": "ssh-rsa " + good.split()[1],
        "two": good + "\n" + pubs["rsa"].read_text(),
        "private": pubs["ed"].with_suffix("").read_text(),
    }[key]
    r = add_key(client, alice, "k", text)
    assert r.status_code == 400
    assert r.json["error"].startswith("public_key: ")
    assert message in r.json["error"]
    assert store.list(SSHKey)[0] == {}
    r = client.post("/key/add", json=alice.creds(key_name="a/b", public_key=good))
    assert r.status_code == 400
    assert "key_name" in r.json["error"]


def test_a_vm_gets_its_owners_keys_hostname_and_user_data(client, alice, bob, image, pubs, store):
    add_key(client, alice, "laptop", pubs["ed"])
    add_key(client, alice, "work", pubs["rsa"])
    add_key(client, bob, "bobs", pubs["rsa"])
    ed, rsa = pubs["ed"].read_text().strip(), pubs["rsa"].read_text().strip()

    # By default: every key of the owner, the VM's name as a DNS label, no user-data.
    r = create(client, alice, image)
    assert r.status_code == 202, r.json
    default = r.json["vm"]["first_boot"]
    assert default == {
        "hostname": "web-1",
        "ssh_keys": [ed, rsa],
        "user_data_size": 0,
        "user_data_sha256": "",
    }

    script = "#!/bin/sh\necho 'secret: s3cr3t'\n"
    r = create(client, alice, image, ssh_keys=["work"], user_data=script, hostname="Box-7")
    assert r.status_code == 202, r.json
    vmid = r.json["uuid"]
    expected = {
        "hostname": "box-7",
        "ssh_keys": [rsa],
        "user_data_size": len(script),
        "user_data_sha256": hashlib.sha256(script.encode()).hexdigest(),
    }
    # Answers show the user-data by size and hash, never itself; the record keeps it.
    status = client.get("/vm/status", json=alice.creds(vmid=vmid)).json
    assert status["first_boot"] == expected
    listed = client.get("/vm/list", json=alice.creds()).json["vms"]
    assert "s3cr3t" not in json.dumps(listed)
    stored = store.get(VM, vmid)
    assert stored is not None and stored.value.first_boot is not None
    assert stored.value.first_boot.user_data == script

    # Deleting a key later leaves the VMs made with it as they are (their seed does not change).
    client.post("/key/delete", json=alice.creds(key_name="work"))
    after = store.get(VM, vmid)
    assert after is not None and after.value.first_boot == stored.value.first_boot

    r = create(client, alice, image, ssh_keys=[])
    assert r.json["vm"]["first_boot"]["ssh_keys"] == []


@pytest.mark.parametrize(
    ("extra", "status", "message"),
    [
        ({"ssh_keys": ["bobs"]}, 400, "ssh_keys: you have no key named 'bobs': see /key/list"),
        ({"ssh_keys": ["laptop", "nope"]}, 400, "you have no key named 'nope'"),
        ({"hostname": "web_1"}, 400, "hostname: must be 1 to 63 letters"),
        ({"hostname": "a" * 64}, 400, "one DNS label"),
        ({"user_data": "x" * (64 * 1024 + 1)}, 413, "user_data: 65537 bytes is over the limit"),
        ({"user_data": "#!/bin/sh\n\0\0"}, 400, "user_data: must be text"),
    ],
)
def test_bad_first_boot_input_is_4xx_and_creates_nothing(
    client, alice, bob, image, pubs, store, extra, status, message
):
    add_key(client, alice, "laptop", pubs["ed"])
    add_key(client, bob, "bobs", pubs["rsa"])
    r = create(client, alice, image, **extra)
    assert r.status_code == status
    assert message in r.json["error"]
    assert store.list(VM)[0] == {}


def test_user_data_that_is_not_utf8_is_refused(client, alice, image, store):
    # A JSON string may hold a lone surrogate, which no UTF-8 text can.
    body = json.dumps(alice.creds(vm_name="x", specs=SPECS, image=image.uuid))
    body = body[:-1] + ', "user_data": "#!/bin/sh\\n\\udc80"}'
    r = client.post("/vm/create", data=body, content_type="application/json")
    assert r.status_code == 400
    assert "user_data: must be UTF-8 text" in r.json["error"]
    assert store.list(VM)[0] == {}


# --- the CLI ----------------------------------------------------------------------------------


def test_cli_keys_and_first_boot(cli: CLI, api_url, alice, image, pubs, store, tmp_path):
    alice_cli = cli.as_user(api_url, alice)
    code, out, err = alice_cli("key", "add", "laptop", "--file", str(pubs["ed"]))
    assert code == ExitCode.OK, err
    assert fingerprint(pubs["ed"]) in out
    code, out, _ = alice_cli("key", "list")
    assert "laptop" in out and "ed@laptop" in out and fingerprint(pubs["ed"]) in out

    code, _, err = alice_cli("key", "add", "weak", "--file", str(pubs["weak"]))
    assert code == ExitCode.REFUSED
    assert "at least 2048" in err

    user_data = tmp_path / "boot.sh"
    user_data.write_text("#!/bin/sh\necho hello from first boot\n")
    code, out, err = alice_cli(
        "vm", "create", "web", "--image", image.name, "--cpu", "1", "--ram", "1",
        "--ssh-key", "laptop", "--user-data", str(user_data), "--hostname", "front",
    )  # fmt: skip
    assert code == ExitCode.OK, err
    code, out, err = alice_cli("vm", "status", "web")
    assert code == ExitCode.OK, err
    size = len(user_data.read_bytes())
    digest = hashlib.sha256(user_data.read_bytes()).hexdigest()
    assert "first boot:\n  hostname:  front\n" in out
    assert f"  ssh keys:  {fingerprint(pubs['ed'])} ed@laptop\n" in out
    assert f"  user-data: {size} bytes, sha256 {digest}\n" in out
    assert "hello from first boot" not in out

    binary = tmp_path / "blob"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    code, _, err = alice_cli(
        "vm", "create", "web2", "--image", image.name, "--cpu", "1", "--ram", "1",
        "--user-data", str(binary),
    )  # fmt: skip
    assert code == ExitCode.USAGE
    assert f"user-data file {binary} is not UTF-8 text" in err
    code, _, err = alice_cli(
        "vm", "create", "web2", "--image", image.name, "--cpu", "1", "--ram", "1",
        "--ssh-key", "nope",
    )  # fmt: skip
    assert code == ExitCode.REFUSED
    assert "you have no key named 'nope'" in err
    assert [v.value.name for v in store.list(VM)[0].values()] == ["web"]

    code, out, err = alice_cli("key", "delete", "laptop")
    assert code == ExitCode.OK, err
    assert alice_cli("key", "list")[1].strip().startswith("no keys")
