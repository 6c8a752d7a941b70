"""The one settings model, read from the environment (``UCLOUD_*``) and a ``.env`` file.

The file is ``$UCLOUD_ENV_FILE`` if set, else ``/etc/ucloud/ucloud.env`` and ``./.env`` (later
files win, the environment wins over both).
"""

from __future__ import annotations

import os
import socket
import textwrap
from pathlib import Path
from typing import Any, ClassVar, Self

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _env_files() -> tuple[str, ...]:
    explicit = os.environ.get("UCLOUD_ENV_FILE")
    if explicit:
        return (explicit,)
    return ("/etc/ucloud/ucloud.env", ".env")


class _Group(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="UCLOUD_", extra="ignore")
    read_by: ClassVar[str]


class CommonSettings(_Group):
    read_by = "every daemon"

    etcd_endpoints: str = Field(
        "127.0.0.1:2379", description="comma-separated host:port of the etcd cluster's members"
    )
    etcd_prefix: str = "/v1"
    etcd_timeout: float = Field(5.0, description="seconds for one etcd request")
    etcd_reconnect_max: float = Field(
        1.0,
        description="seconds at most between attempts to reconnect to an etcd member that went "
        "away (gRPC's own back-off grows to 2 minutes: requests would fail that long after etcd "
        "is back)",
    )

    log_level: str = "INFO"

    metrics_address: str = Field(
        "127.0.0.1",
        description="address the daemons' Prometheus /metrics ports listen on (each daemon's "
        "port is its own *_metrics_port setting; 0: no metrics)",
    )

    # a failed step is tried again after retry_initial, twice that, ... at most retry_max
    retry_initial: float = Field(0.5, description="seconds before the first retry of a failure")
    retry_max: float = Field(30.0, description="seconds between retries at most")

    def etcd_members(self) -> list[tuple[str, int]]:
        members = []
        for item in self.etcd_endpoints.split(","):
            host, _, port = item.strip().rpartition(":")
            members.append((host or "127.0.0.1", int(port)))
        return members


class APISettings(_Group):
    read_by = "ucloud-api"

    api_bind: str = "127.0.0.1:5000"
    api_workers: int = 2
    api_threads: int = 4
    api_max_body: int = Field(
        256 * 1024,
        description="largest request body in bytes (above user_data_max: JSON escapes grow it)",
    )
    user_data_max: int = Field(
        64 * 1024, description="largest user-data (first-boot script or cloud-config) in bytes"
    )
    admin_realm: str = "ucloud-admin"
    default_image: str = Field(
        "",
        description="the image (uuid, or a public image's name) of VMs created without one, "
        "as the original API's requests are; empty: requests must name an image",
    )
    totp_valid_window: int = Field(
        1, description="how many 30 s steps before and after now a token may be from"
    )
    api_metrics_port: int = Field(
        0, description="Prometheus /metrics of every worker, served by gunicorn's master; 0: off"
    )

    # Each user's limits unless an administrator set their own (`ucloud quota set`); -1: none.
    quota_vms: int = Field(20, ge=-1, description="VMs a user may have (default limit)")
    quota_cpu: int = Field(64, ge=-1, description="CPUs of a user's running VMs")
    quota_ram: float = Field(128.0, ge=-1, description="GiB of RAM of a user's running VMs")
    quota_disk: float = Field(2048.0, ge=-1, description="GiB of disk (ssd + hdd) of a user's VMs")
    quota_networks: int = Field(10, ge=-1, description="networks a user may have")
    quota_images: int = Field(20, ge=-1, description="images a user may have")

    upload_max_size: float = Field(
        100.0, gt=0, description="GiB: the largest file uploaded over the API (PUT /file/upload)"
    )
    api_worker_timeout: int = Field(
        30,
        ge=1,
        description="seconds a silent gunicorn worker lives before it is killed (its main loop's "
        "heartbeat: a long request, an upload, does not count)",
    )
    api_uploads_at_once: int = Field(
        2, ge=1, description="uploads one API worker takes at a time (each holds a thread)"
    )


class SchedulerSettings(_Group):
    read_by = "ucloud-scheduler"

    cpu_allocation_ratio: float = 4.0
    ram_allocation_ratio: float = 1.0
    disk_allocation_ratio: float = 1.0
    scheduler_lease_ttl: int = Field(5, description="seconds before a dead leader is replaced")
    scheduler_resync: float = Field(30.0, description="seconds between full reconciles")
    quota_recount: float = Field(
        300.0, description="seconds between recounts of every user's quota usage (a repair)"
    )
    scheduled_deadline: float = Field(
        120.0, description="seconds a VM may stay SCHEDULED before it is placed again"
    )
    schedule_attempts: int = Field(3, description="placements tried before a VM goes to ERROR")
    scheduler_metrics_port: int = Field(0, description="Prometheus /metrics; 0: off")
    dead_host_grace: float = Field(
        0.0,
        description="seconds between a host's lease expiring and its VMs being moved (they "
        "are fenced first, so no wait is needed for safety)",
    )
    migration_prepare_deadline: float = Field(
        120.0,
        description="seconds a migration's target may take to prepare (networks, seed) and its "
        "source to begin, before the migration is given up (the VM stays on its source)",
    )
    drain_parallel: int = Field(
        2,
        ge=1,
        description="live migrations out of a host in maintenance at once (its drain)",
    )


class HostSettings(_Group):
    read_by = "ucloud-host"

    hostname: str = Field(default_factory=socket.gethostname)
    host_lease_ttl: int = Field(10, description="seconds without renewal before a host is dead")
    host_cpu: int = Field(0, description="CPUs to offer; 0: all of the machine's")
    host_ram: float = Field(0, description="GiB of RAM to offer; 0: the machine's, less 1 GiB")
    host_start_margin: float = Field(
        3.0,
        description="seconds the host's lease must surely last for a VM to be started; past "
        "that the cluster may fence the host and start the VM elsewhere",
    )
    host_workers: int = Field(4, description="VMs reconciled at once")
    host_resync: float = Field(30.0, description="seconds between full reconciles")
    hypervisor: str = Field("libvirt", description="'libvirt', or 'fake' for simulations")
    libvirt_uri: str = "qemu:///system"
    accel: str = Field("auto", description="'kvm', 'qemu' (TCG), or 'auto': KVM if it works")
    vnc_dir: str = Field(
        "/run/ucloud/vnc", description="VNC sockets; short: a socket path has at most 107 bytes"
    )
    state_dir: str = Field("/var/lib/ucloud", description="consoles, VNC sockets, disks")
    shutdown_timeout: float = Field(
        60.0, description="seconds for ACPI shutdown before a hard stop"
    )
    creating_deadline: float = Field(300.0, description="seconds to create and start a VM")
    crash_limit: int = Field(3, description="restarts within crash_window before ERROR")
    crash_window: float = 600.0
    notify_command: str = Field(
        "", description="run with the VM uuid and a message when a VM crashes (empty: none)"
    )
    host_metrics_port: int = Field(0, description="Prometheus /metrics; 0: off")
    host_stats_timeout: float = Field(
        0.5,
        description="seconds a scrape waits for libvirt's domain statistics before it answers "
        "with the last ones (a busy or migrating domain never holds a scrape up)",
    )
    host_usage_interval: float = Field(
        60.0,
        description="seconds between measurements of the host's used CPU, RAM and disk; the "
        "host's usage record in etcd is rewritten only when they changed",
    )
    migration_peer_uri: str = Field(
        "",
        description="the libvirt URI other hosts' libvirtds reach this host's libvirtd at, for "
        "live migrations to it (published in its host record); empty: "
        "qemu+tcp://<network_underlay>/system",
    )
    migration_address: str = Field(
        "",
        description="the address other hosts' QEMUs send a migrating VM's memory to (QEMU's "
        "migration stream, tcp://ADDRESS); empty: network_underlay",
    )
    migration_max_downtime: int = Field(
        300, description="milliseconds a migrating VM may be paused for its last copy (QEMU's)"
    )
    migration_timeout_per_gib: float = Field(
        60.0,
        description="seconds a live migration may take per GiB of the VM's RAM (at least one "
        "GiB's worth) before it is aborted; the VM keeps running on its source",
    )
    migration_bandwidth: int = Field(
        0,
        description="MiB/s a live migration may send at most (it shares the link with the "
        "VMs' traffic); 0: as fast as it goes",
    )
    migration_auto_converge: bool = Field(
        True,
        description="slow a guest's vCPUs down when it dirties memory faster than it is sent "
        "(KVM guests only: under TCG a throttled migration was seen to corrupt guest memory)",
    )
    migration_progress_interval: float = Field(
        2.0, description="seconds between writes of a migration's progress into the VM's record"
    )

    @model_validator(mode="after")
    def _start_margin_fits_the_lease(self) -> Self:
        # The agent renews its lease every third of the TTL: a margin above two thirds of it
        # would refuse every start.
        if self.host_start_margin > self.host_lease_ttl * 2 / 3:
            raise ValueError(
                f"host_start_margin ({self.host_start_margin:g} s) must be at most two thirds "
                f"of host_lease_ttl ({self.host_lease_ttl} s)"
            )
        return self


class StorageSettings(_Group):
    read_by = "ucloud-host, ucloud-scheduler (fencing), ucloud-imagescanner"

    storage: str = Field("rbd", description="'rbd' (Ceph) or 'file' (qcow2 overlays)")
    ceph_conf: str = "/etc/ceph/ceph.conf"
    ceph_user: str = Field("ucloud", description="cephx user, without 'client.'")
    ceph_keyring: str = Field("", description="the cephx user's keyring; empty: Ceph's default")
    ceph_pool: str = Field("ucloud", description="pool of VM disks")
    image_pool: str = Field("ucloud", description="pool of images")
    hdd_pool: str = Field(
        "", description="pool of VMs' HDD disks (their specs' hdd); empty: ceph_pool"
    )
    image_dir: str = Field("/var/lib/ucloud/images", description="images, for the file driver")

    fence_expiry: float = Field(
        7 * 86400.0,
        description="seconds a fenced storage client stays block-listed (Ceph); a fenced QEMU "
        "must be gone by then (see the operator manual: the agent's watchdog)",
    )

    image_convert_rate: int = Field(
        0, description="bytes a second one image conversion may read; 0: no limit"
    )


class FileScannerSettings(_Group):
    read_by = "ucloud-filescanner (upload_root, upload_realm: ucloud-api too, for uploads)"

    upload_root: str = Field(
        "/var/www", description="users' upload directories: <upload_root>/<user name>/"
    )
    upload_realm: str = Field(
        "users", description="the realm of the users whose directories are in upload_root"
    )
    upload_settle: float = Field(
        2.0, description="seconds a file must stay unchanged after it is written to count"
    )
    filescanner_rescan: float = Field(
        300.0, description="seconds between full rescans of upload_root (inotify's safety net)"
    )
    filescanner_metrics_port: int = Field(0, description="Prometheus /metrics; 0: off")


class ImageScannerSettings(_Group):
    read_by = "ucloud-imagescanner (image_store: ucloud-api too)"

    image_store: str = Field(
        "images", description="the image store of requests that name none; its pool: image_pool"
    )
    image_max_size: float = Field(100.0, description="GiB: the largest virtual size of an image")
    image_workers: int = Field(1, description="images converted at once")
    image_progress_interval: float = Field(
        3.0, description="seconds between progress updates in an image's record"
    )
    imagescanner_resync: float = Field(30.0, description="seconds between full reconciles")
    imagescanner_lease_ttl: int = Field(
        5, description="seconds before a dead image scanner is replaced by a standby"
    )
    imagescanner_metrics_port: int = Field(0, description="Prometheus /metrics; 0: off")
    import_allow_networks: str = Field(
        "",
        description="comma-separated networks images may be fetched from by URL although they "
        "are loopback, link-local or private (e.g. an internal mirror's 10.1.2.0/24); others "
        "are refused",
    )
    import_timeout: float = Field(
        30.0, gt=0, description="seconds to connect, or to wait for data, when fetching a URL"
    )
    import_deadline: float = Field(
        3600.0, gt=0, description="seconds a whole download from a URL may take"
    )
    import_dir: str = Field(
        "/var/lib/ucloud/imports",
        description="where images fetched by URL are kept while they are converted (not /tmp: "
        "often in memory); files there are unlinked at once",
    )


class NetworkSettings(_Group):
    read_by = "ucloud-api (allocation), ucloud-host (data plane)"

    network_vni_range: str = Field(
        "1000-999999", description="VXLAN ids given to networks: FIRST-LAST (at most 16777215)"
    )
    network_ipv6_pool: str = Field(
        "fd75:636c:6f75::/48",
        description="the IPv6 prefix networks get their /64 from (a ULA by default; set "
        "the routed prefix of your site)",
    )
    network_mtu: int = Field(
        1450, description="MTU of new networks: the underlay's less VXLAN's 50 bytes (IPv4)"
    )
    network_underlay: str = Field(
        "",
        description="this host's underlay address, the VXLAN endpoint the other hosts send "
        "to; empty: its networks reach no other host",
    )
    network_vxlan_port: int = Field(4789, description="UDP port of VXLAN on the underlay")
    network_router: bool = Field(
        False,
        description="this host may be a network's router (the scheduler chooses one per "
        "network among these): it then holds the network's gateway addresses (::1 of the "
        "/64, .1 of the IPv4 subnet), sends router advertisements and serves DHCPv4 "
        "(dnsmasq); give it to the hosts the routed prefixes reach",
    )
    network_dataplane: str = Field(
        "linux", description="'linux' (bridges and VXLAN devices), or 'none' (simulations)"
    )


class ConsoleSettings(_Group):
    read_by = "ucloud-console, ucloud-console-relay and ucloud-api (console tokens, web page)"

    console_url: str = Field(
        "http://127.0.0.1:5000",
        description="the console page's public address as users reach it (behind TLS: "
        "https://console.example.com); console URLs start with it",
    )
    console_websocket_url: str = Field(
        "",
        description="where browsers open console WebSockets; empty: the console page's own "
        "address with /websockify (a TLS front sends that path to ucloud-console)",
    )
    console_token_ttl: int = Field(60, description="seconds a console token may wait for use")
    console_proxy_bind: str = Field(
        "127.0.0.1:6080", description="ucloud-console's WebSocket address (host:port)"
    )
    console_relay_bind: str = Field(
        "127.0.0.1:6090",
        description="ucloud-console-relay's address on a host (host:port); only ucloud-console "
        "needs to reach it",
    )
    console_metrics_port: int = Field(
        0,
        description="ucloud-console's Prometheus /metrics (consoles opened, refused, open); 0: off",
    )
    console_relay_metrics_port: int = Field(
        0, description="a relay's Prometheus /metrics (tickets, consoles open on its host); 0: off"
    )
    console_relay_address: str = Field(
        "",
        description="the relay's address as ucloud-console reaches it; empty: console_relay_bind",
    )
    console_relay_secret: str = Field(
        "",
        description="shared by ucloud-console and every relay: signs the tickets that open a "
        "VM's console on its host (at least 32 characters; no console works without it)",
    )
    web_secret_key: str = Field(
        "",
        description="signs the console page's CSRF tokens (of its sessions and its login "
        "form); the same in every ucloud-api (the page is off without it)",
    )
    web_session_lifetime: int = Field(
        8 * 3600,
        description="seconds a login on the console page lasts (its session record in etcd "
        "too, unless a logout or an administrator ends it sooner)",
    )
    web_cookie_secure: bool = Field(
        True,
        description="send the session cookie over HTTPS only (set false only to try the page "
        "over plain HTTP on a loopback address)",
    )
    web_assets_dir: str = Field(
        "",
        description="the node_modules that `npm ci` made from ucloud's package.json (xterm.js, "
        "and noVNC bundled into one module); empty: the one beside the ucloud package",
    )


class Settings(
    CommonSettings,
    APISettings,
    SchedulerSettings,
    HostSettings,
    StorageSettings,
    FileScannerSettings,
    ImageScannerSettings,
    NetworkSettings,
    ConsoleSettings,
):
    """Every setting, flat (``settings.host_lease_ttl``, ``UCLOUD_HOST_LEASE_TTL``), defined
    in groups by the daemon that reads them: a part that needs one group may say so in its
    type (``SchedulerSettings``)."""


# The groups, in the order of Settings' bases (conf/ucloud.env.example follows it).
GROUPS: tuple[type[_Group], ...] = tuple(b for b in Settings.__bases__ if issubclass(b, _Group))


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that gives a daemon these settings (for starting daemons)."""
    return {f"UCLOUD_{name.upper()}": str(value) for name, value in settings.model_dump().items()}


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment and .env files; ``overrides`` win (tests use them).
    Each override is validated (and converted) like the same setting from the environment."""
    files = tuple(f for f in _env_files() if Path(f).is_file())
    return Settings(_env_file=files or None, **overrides)


def example_env() -> str:
    """conf/ucloud.env.example: every setting with its default, by group
    (``python -m ucloud.config > conf/ucloud.env.example``)."""
    lines = [
        "# ucloud settings: every UCLOUD_* variable with its default.",
        "# Copy to /etc/ucloud/ucloud.env (or point UCLOUD_ENV_FILE at a copy) and change what"
        " you need.",
        "# All daemons read the same file; each uses the settings it needs.",
    ]
    for group in GROUPS:
        lines += ["", f"# --- read by {group.read_by} ---"]
        for name in group.__annotations__:
            field = Settings.model_fields.get(name)
            if field is None:
                continue
            if field.description:
                lines += ["# " + line for line in textwrap.wrap(field.description, 94)]
            if name == "hostname":
                default: object = "(this machine's hostname)"
            else:
                default = field.get_default(call_default_factory=True)
            lines.append(f"#UCLOUD_{name.upper()}={default}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(example_env(), end="")
