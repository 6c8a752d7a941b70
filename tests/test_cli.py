"""The ``ucloud`` CLI, run in-process against the real API on a loopback port and a real etcd."""

from __future__ import annotations

import json
import re
import threading
import time

import pytest
from werkzeug.serving import make_server

from tests.clirun import CLI, shown
from tests.conftest import Account
from tests.servers import free_port, wait_for
from ucloud.cli.errors import ExitCode
from ucloud.models import VM, Alive, Desired, Drain, Host, Image, Specs, Status


def create(cli: CLI, image: Image, name: str = "web") -> dict:
    vm = cli.json("vm", "create", name, "--image", image.name, "--cpu", "1", "--ram", "512M")
    assert isinstance(vm, dict)
    return vm


# --- VMs --------------------------------------------------------------------------------------


def test_vm_create_list_status(alice_cli, image, store):
    code, out, err = alice_cli(
        "vm", "create", "web", "--image", image.name, "--cpu", "2", "--ram", "2", "--ssd", "20G"
    )
    assert code == 0, err
    (vm,) = store.list(VM)[0].values()
    assert out.strip() == f"VM web created: {vm.value.uuid}"
    assert (vm.value.specs.cpu, vm.value.specs.ram, vm.value.specs.ssd) == (2, 2.0, 20.0)

    code, out, _ = alice_cli("vm", "list")
    assert code == 0
    header, row = out.splitlines()
    assert header.split() == [
        "UUID",
        "NAME",
        "STATUS",
        "DESIRED",
        "HOST",
        "CPU",
        "RAM",
        "ADDRESSES",
    ]
    assert row.split() == [vm.value.uuid, "web", "PENDING", "running", "-", "2", "2G", "-"]
    # Columns line up under their headers.
    assert header.index("STATUS") == row.index("PENDING")

    # By name as well as by uuid.
    code, out, _ = alice_cli("vm", "status", "web")
    assert code == 0
    assert shown(out, "uuid") == vm.value.uuid
    assert shown(out, "owner") == "users/alice"
    assert shown(out, "status").startswith("PENDING since")
    assert shown(out, "specs") == "2 CPU, 2G RAM, 20G SSD, 0 HDD"
    assert shown(out, "host keys") == "- (not seen on its console yet)"
    events = out.split("events:\n", 1)[1].splitlines()
    assert events[0].split() == ["TIME", "BY", "MESSAGE"]
    assert events[1].endswith("api  created by users/alice")


def test_json_output_parses(alice_cli, image):
    vm = create(alice_cli, image)
    assert (vm["name"], vm["status"], vm["specs"]["ram"]) == ("web", "PENDING", 0.5)
    assert [v["uuid"] for v in alice_cli.json("vm", "list")] == [vm["uuid"]]
    status = alice_cli.json("vm", "status", vm["uuid"])
    assert status["log"][0]["by"] == "api"
    # --json may come after the subcommand too.
    code, out, _ = alice_cli("vm", "list", "--json")
    assert code == 0
    assert json.loads(out)[0]["uuid"] == vm["uuid"]


def test_refused_action_exits_1_with_the_apis_message(alice_cli, image):
    vm = create(alice_cli, image)
    code, out, err = alice_cli("vm", "suspend", vm["uuid"])
    assert code == ExitCode.REFUSED
    assert out == ""
    assert f"cannot suspend VM {vm['uuid']}: it is PENDING" in err
    code, _, err = alice_cli("vm", "status", "no-such-vm")
    assert code == ExitCode.REFUSED
    assert "no VM named 'no-such-vm'" in err


def test_bad_size_is_refused_with_the_apis_reason(alice_cli, image, store):
    code, _, err = alice_cli(
        "vm", "create", "x", "--image", image.name, "--cpu", "1", "--ram", "lots"
    )
    assert code == ExitCode.REFUSED
    assert "specs.ram" in err and "not a size" in err
    assert store.list(VM)[0] == {}


def test_create_without_name_and_image_needs_the_clusters_default(alice_cli, store):
    """Name and image may be left out (the API generates one, takes the other from its
    settings); a cluster without a default image says so."""
    code, _, err = alice_cli("vm", "create", "--cpu", "1", "--ram", "1", "--hdd", "5G")
    assert code == ExitCode.REFUSED
    assert "no default image (setting UCLOUD_DEFAULT_IMAGE)" in err
    assert store.list(VM)[0] == {}


def test_wait_on_stop_of_a_pending_vm(alice_cli, image, store, scheduler):
    vm = create(alice_cli, image)
    code, out, err = alice_cli("vm", "stop", vm["uuid"], "--wait", "--timeout", "20")
    assert code == 0, err
    assert out.strip() == f"VM {vm['uuid']} is STOPPED"
    assert f"waiting for VM {vm['uuid']} to be STOPPED" in err
    assert "scheduler: PENDING -> STOPPED" in err
    assert store.get(VM, vm["uuid"]).value.status == Status.STOPPED

    # With no host, the VM cannot start: --wait gives up, exit 4, and says how to go on.
    code, _, err = alice_cli("--json", "vm", "start", vm["uuid"], "--wait", "--timeout", "1")
    assert code == ExitCode.TIMEOUT
    assert f"VM {vm['uuid']} is still" in err
    assert "--timeout" in err

    # Deleting a VM that never had a disk: the scheduler removes it, and --wait sees it gone.
    result = alice_cli.json("vm", "delete", vm["uuid"], "--wait", "--timeout", "20")
    assert result == {"uuid": vm["uuid"], "deleted": True}
    assert store.get(VM, vm["uuid"]) is None


def test_wait_fails_when_the_vm_goes_to_error(alice_cli, image, store, monkeypatch):
    vm = create(alice_cli, image)

    # Stand in for a daemon: the first poll finds the VM in ERROR.
    from ucloud.cli import wait

    real = wait.API.get

    def get(self, path, **fields):
        if path == "/vm/status":
            store.update(VM, vm["uuid"], lambda v: v.set_status(Status.ERROR, "test", "no disk"))
        return real(self, path, **fields)

    monkeypatch.setattr(wait.API, "get", get)
    code, _, err = alice_cli("vm", "stop", vm["uuid"], "--wait", "--timeout", "10")
    assert code == ExitCode.REFUSED
    assert f"VM {vm['uuid']} went to ERROR: no disk" in err


def test_wait_ignores_the_error_it_was_asked_to_retry(alice_cli, image, store, scheduler):
    vm = create(alice_cli, image)

    def fail(v: VM) -> None:
        v.set_status(Status.ERROR, "test", "old trouble")
        v.desired = Desired.RUNNING

    store.update(VM, vm["uuid"], fail)
    # stop is accepted from ERROR; the old ERROR must not count as this request's failure.
    code, out, err = alice_cli("vm", "stop", vm["uuid"], "--wait", "--timeout", "20")
    assert code == 0, err
    assert out.strip() == f"VM {vm['uuid']} is STOPPED"


# --- configuration and connectivity -----------------------------------------------------------


def test_missing_config_says_what_to_set_where(cli, home, api_url):
    code, out, err = cli("vm", "list")
    assert code == ExitCode.USAGE
    assert out == ""
    path = home / ".config" / "ucloud" / "client.env"
    assert "UCLOUD_USER, UCLOUD_REALM, UCLOUD_SEED are not set" in err
    assert f"put these lines in {path}" in err
    assert "UCLOUD_SEED=<the TOTP seed your administrator gave you>" in err


def test_config_file_and_environment(cli, home, api_url, alice, monkeypatch):
    path = home / ".config" / "ucloud" / "client.env"
    path.parent.mkdir(parents=True)
    path.write_text(
        f"UCLOUD_API_URL={api_url}\nUCLOUD_USER=alice\nUCLOUD_REALM=users\n"
        f"UCLOUD_SEED={alice.secret}\n"
    )
    path.chmod(0o600)
    code, out, err = cli("vm", "list")
    assert (code, out.strip(), err) == (0, "no VMs", "")

    # The environment wins over the file.
    monkeypatch.setenv("UCLOUD_USER", "mallory")
    code, _, err = cli("vm", "list")
    assert code == ExitCode.REFUSED
    assert "unknown user, or the token is wrong or expired" in err
    assert "clock" in err  # the hint: a wrong clock makes wrong tokens
    monkeypatch.delenv("UCLOUD_USER")

    # A seed others can read is worth a warning, not a failure.
    path.chmod(0o644)
    code, _, err = cli("vm", "list")
    assert code == 0
    assert f"chmod 600 {path}" in err

    # A misspelt setting is pointed out.
    with path.open("a") as f:
        f.write("UCLOUD_RELAM=users\n")
    code, _, err = cli("vm", "list")
    assert code == 0
    assert f"{path}: unknown setting UCLOUD_RELAM" in err

    # A config named explicitly must exist.
    code, _, err = cli("--config", str(home / "nope.env"), "vm", "list")
    assert code == ExitCode.USAGE
    assert "nope.env does not exist" in err

    monkeypatch.setenv("UCLOUD_SEED", "not base32!")
    code, _, err = cli("vm", "list")
    assert code == ExitCode.USAGE
    assert "UCLOUD_SEED (the environment) is not a TOTP seed" in err


def test_unreachable_api_exits_3(cli, alice):
    code, out, err = cli.as_user(f"http://127.0.0.1:{free_port()}", alice)("vm", "list")
    assert code == ExitCode.UNREACHABLE
    assert out == ""
    assert "cannot reach the API at http://127.0.0.1:" in err
    assert "connection refused" in err
    assert "UCLOUD_API_URL" in err


def test_usage_errors_exit_2(cli, capsys):
    assert cli("vm", "stop")[0] == ExitCode.USAGE
    assert cli("vm", "stop", "x", "--timeout", "-1")[0] == ExitCode.USAGE
    code, out, _ = cli("--help")
    assert code == 0
    assert "exit codes:" in out and "3  the API cannot be reached" in out


def serve(wsgi) -> tuple[str, object]:
    port = free_port()
    server = make_server("127.0.0.1", port, wsgi, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{port}", server


@pytest.mark.parametrize(
    ("status", "content_type", "body", "message"),
    [
        (
            "503 Service Unavailable",
            "application/json",
            b'{"error": "the cluster store (etcd) is unavailable; try again shortly"}',
            "the API is unavailable (HTTP 503): the cluster store (etcd) is unavailable",
        ),
        ("502 Bad Gateway", "text/html", b"<h1>Bad Gateway</h1>", "HTTP 502 Bad Gateway"),
        ("200 OK", "text/html", b"<html>hello</html>", "with something that is not JSON"),
    ],
)
def test_unavailable_or_foreign_server_exits_3(cli, alice, status, content_type, body, message):
    def wsgi(environ, start_response):
        start_response(status, [("Content-Type", content_type)])
        return [body]

    url, server = serve(wsgi)
    try:
        code, out, err = cli.as_user(url, alice)("vm", "list")
    finally:
        server.shutdown()
    assert (code, out) == (ExitCode.UNREACHABLE, "")
    assert message in err


# --- endpoints an older API server does not offer --------------------------------------------


@pytest.mark.parametrize(
    ("argv", "path"),
    [
        (("file", "list"), "/file/list"),
        (("image", "list"), "/image/list"),
        (("image", "create", "deb", "--file", "f-uuid"), "/image/create"),
        (("image", "delete", "i-uuid"), "/image/delete"),
    ],
)
def test_missing_endpoints_are_named(cli, alice, argv, path):
    def older_api(environ, start_response):
        # From before files and images: 404, and an OpenAPI document without them.
        if environ["PATH_INFO"] == "/openapi.json":
            start_response("200 OK", [("Content-Type", "application/json")])
            return [b'{"paths": {"/vm/list": {}}}']
        start_response("404 NOT FOUND", [("Content-Type", "application/json")])
        return [b'{"error": "The requested URL was not found on the server."}']

    url, server = serve(older_api)
    try:
        code, out, err = cli.as_user(url, alice)(*argv)
    finally:
        server.shutdown()
    assert code == ExitCode.REFUSED
    assert out == ""
    assert f"this API server does not offer {path} yet" in err


# --- administrators ---------------------------------------------------------------------------


def test_admin_creates_a_user_who_can_log_in(admin_cli, cli, api_url):
    code, out, err = admin_cli("user", "create", "carol", "--realm", "users")
    assert code == 0, err
    seed = out.split("seed:", 1)[1].split()[0]
    assert "UCLOUD_USER=carol" in out
    assert f"UCLOUD_SEED={seed}" in out
    assert "otpauth://totp/" in out

    carol = cli.as_user(api_url, Account("carol", "users", seed))
    assert carol.json("vm", "list") == []
    # carol is no administrator.
    code, _, err = carol("user", "create", "dave", "--realm", "users")
    assert code == ExitCode.REFUSED
    assert "only administrators may do this" in err
    assert "administrator's account; you are users/carol" in err


def test_user_create_json(admin_cli):
    user = admin_cli.json("user", "create", "erin", "--realm", "users")
    assert (user["name"], user["realm"]) == ("erin", "users")
    assert len(user["seed"]) >= 16
    code, _, err = admin_cli("user", "create", "erin", "--realm", "users")
    assert code == ExitCode.REFUSED
    assert "already exists" in err


def test_hosts(admin_cli):
    code, out, _ = admin_cli("host", "list")
    assert (code, out.startswith("no hosts")) == (0, True)
    code, out, err = admin_cli(
        "host", "create", "h1", "--cpu", "8", "--ram", "16G", "--ssd", "100", "--hdd", "1T"
    )
    assert code == 0, err
    assert out.startswith("host h1 registered")
    code, _, err = admin_cli("host", "create", "h1", "--cpu", "8", "--ram", "16")
    assert code == ExitCode.REFUSED
    assert "host h1 already exists" in err

    code, out, _ = admin_cli("host", "maintenance", "h1", "on")
    assert code == 0
    assert "h1 is in maintenance" in out
    code, out, _ = admin_cli("host", "list")
    header, row = out.splitlines()
    assert header.split() == [
        "NAME",
        "STATUS",
        "ADMIN",
        "CPU",
        "CPU-USED",
        "RAM",
        "RAM-USED",
        "DISK",
        "DISK-USED",
        "ADDRESSES",
        "DRAIN",
    ]
    # allocated/total; nothing measured: no agent runs there; no scheduler drains it
    assert row.split() == [
        "h1",
        "DEAD",
        "MAINTENANCE",
        "0/8",
        "-",
        "0/16G",
        "-",
        "0/1124G",
        "-",
        "-",
        "-",
    ]

    hosts = admin_cli.json("host", "maintenance", "h1", "off")
    assert hosts["admin_state"] == "UP"
    assert [h["admin_state"] for h in admin_cli.json("host", "list")] == ["UP"]
    code, _, err = admin_cli("host", "maintenance", "h9", "on")
    assert (code, "no host h9" in err) == (ExitCode.REFUSED, True)


def test_host_evacuate_and_drain_progress(admin_cli, store):
    admin_cli("host", "create", "h1", "--cpu", "8", "--ram", "16G")
    store.create(Alive(name="h1"))  # its agent holds its lease
    code, _, err = admin_cli("host", "evacuate", "h1")
    assert code == ExitCode.REFUSED
    assert "host h1 is alive" in err
    store.delete(store.get(Alive, "h1"))
    code, out, err = admin_cli("host", "evacuate", "h1")
    assert code == 0, err
    assert "host h1 is DEAD, evacuation asked: no VM is placed on it" in out
    code, _, err = admin_cli("host", "evacuate", "h9")
    assert (code, "no host h9" in err) == (ExitCode.REFUSED, True)

    # What the scheduler writes while it drains the host (tests/unit/test_drain.py)
    store.update(Host, "h1", lambda h: setattr(h, "drain", Drain(total=5, remaining=2)))
    code, out, _ = admin_cli("host", "list")
    assert out.splitlines()[1].endswith("draining 3/5")
    assert admin_cli.json("host", "list")[0]["drain"]["total"] == 5


def test_administrators_see_and_act_on_every_vm(alice_cli, admin_cli, image):
    vm = create(alice_cli, image)
    assert [v["uuid"] for v in admin_cli.json("vm", "list")] == [vm["uuid"]]
    code, out, err = admin_cli("vm", "stop", vm["uuid"])
    assert code == 0, err
    assert out.strip() == f"stop queued: VM {vm['uuid']} is PENDING now"
    assert alice_cli.json("vm", "status", "web")["desired"] == "stopped"


def test_hosts_are_for_administrators(alice_cli):
    code, _, err = alice_cli("host", "list")
    assert code == ExitCode.REFUSED
    assert "only administrators may do this" in err


# --- networks ---------------------------------------------------------------------------------


def test_network_create_attach_show_detach_delete(alice_cli, image):
    code, out, err = alice_cli("network", "create", "lan", "--ipv4", "10.3.0.0/24")
    assert code == 0, err
    assert out.startswith("network lan created: ") and "10.3.0.0/24" in out
    vm = create(alice_cli, image)
    code, out, err = alice_cli("vm", "network", "attach", "web", "lan")
    assert code == 0, err
    code, out, _ = alice_cli("vm", "list")
    assert out.splitlines()[1].split()[-1] == "10.3.0.2"
    code, out, _ = alice_cli("vm", "status", "web")
    (nic_line,) = [line for line in out.splitlines() if line.startswith("networks:")]
    assert "52:54:00:" in nic_line and "10.3.0.2" in nic_line
    code, out, _ = alice_cli("network", "list")
    assert out.splitlines()[1].split()[1:3] == ["lan", f"users/{vm['owner']}"]
    code, _, err = alice_cli("network", "delete", "lan")
    assert code != 0 and vm["uuid"] in err
    assert alice_cli("vm", "network", "detach", "web", "lan")[0] == 0
    code, out, err = alice_cli("network", "delete", "lan")
    assert code == 0, err
    assert alice_cli("network", "list")[1].strip() == "no networks"


def test_an_administrator_names_a_networks_router(admin_cli, store):
    store.create(Host(name="r1", capacity=Specs(cpu=1, ram=1), router=True, status="UP"))
    store.create(Host(name="r2", capacity=Specs(cpu=1, ram=1), router=True, status="UP"))
    code, out, err = admin_cli("network", "create", "lan", "--router", "r1")
    assert code == 0, err
    code, out, _ = admin_cli("network", "list")
    assert out.splitlines()[0].split()[-1] == "ROUTER"
    assert out.splitlines()[1].split()[-1] == "r1"
    code, out, err = admin_cli("network", "router", "lan", "r2")
    assert (code, out.strip()) == (0, "network lan is routed by r2"), err
    code, _, err = admin_cli("network", "router", "lan", "nosuch")
    assert code != 0 and "no host nosuch" in err
    assert admin_cli.json("network", "list")[0]["router"] == "r2"


# --- migration --------------------------------------------------------------------------------


def test_migrate_waits_and_shows_progress(alice_cli, admin_cli, image, store, app):
    from ucloud.models import Alive, Host, HostStatus, MigrationPhase, Specs

    for name in ("h1", "h2"):
        store.create(Host(name=name, capacity=Specs(cpu=4, ram=8), status=HostStatus.UP))
        store.create(Alive(name=name))
    vm = create(alice_cli, image)

    def running(v: VM) -> None:
        v.hostname, v.status = "h1", Status.RUNNING

    store.update(VM, vm["uuid"], running)
    code, _, err = alice_cli("vm", "migrate", "web")
    assert code == ExitCode.REFUSED and "only administrators" in err

    def step(v: VM, progress: float | str | None) -> None:
        assert v.migration is not None
        if progress is None:
            v.migration = v.migration.model_copy(
                update={"phase": MigrationPhase.MIGRATING, "target": "h2"}
            )
        elif progress == "over":
            v.hostname, v.migration = "h2", None
            v.record("host h2", "migrated from h1 to h2")
        else:
            v.migration = v.migration.model_copy(update={"progress": progress})

    # Each step stays until the CLI was answered with it: the CLI polls every second, and on a
    # loaded machine a poll can come later than a step of fixed length would last.
    answered: list[dict] = []  # the migration in each /vm/status answer, in order
    served = app.wsgi_app

    def recording(environ, start_response):
        body = b"".join(served(environ, start_response))
        if environ["PATH_INFO"] == "/vm/status":
            answered.append(json.loads(body).get("migration") or {})
        return [body]

    app.wsgi_app = recording
    showing = {
        None: lambda m: m.get("phase") == "migrating",
        40.0: lambda m: m.get("progress") == 40,
    }

    def agents() -> None:
        """What the scheduler and the agents would write, in steps."""
        while (found := store.get(VM, vm["uuid"])) is None or found.value.migration is None:
            time.sleep(0.1)
        for progress in (None, 40.0, "over"):
            store.update(VM, vm["uuid"], lambda v, p=progress: step(v, p))
            if progress in showing:
                seen = lambda p=progress: any(showing[p](m) for m in answered)  # noqa: E731
                wait_for(seen, 20, f"the CLI to be answered with step {progress}")

    helper = threading.Thread(target=agents, daemon=True)
    helper.start()
    code, out, err = admin_cli("vm", "migrate", "web", "--to", "h2", "--wait", "--timeout", "30")
    helper.join(10)
    assert code == 0, err
    assert out.strip().endswith("migrated: it runs on h2"), out
    assert "migrating: h1 -> h2, 40 % sent" in err, err
    assert "migrated from h1 to h2" in err
    code, out, _ = admin_cli("vm", "status", "web")
    assert re.search(r"^host: +h2$", out, re.M), out
    assert "migration" not in out.split("events:")[0], out  # shown only while one is on
