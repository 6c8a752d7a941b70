"""``ucloud``: the command line, its wiring to the handlers, and errors as exit codes."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import ucloud
from ucloud.cli import admin, console, images, keys, migrate, networks, quota, ssh, upload, vms
from ucloud.cli import config as client_config
from ucloud.cli.errors import EXIT_CODES_HELP, CLIError, ExitCode
from ucloud.cli.http import API
from ucloud.cli.output import Output
from ucloud.cli.session import Handler, Session

DESCRIPTION = "Manage your VMs, images and files on a ucloud cluster."

CONFIG_HELP = f"""\
configuration (the environment wins over the file):
  {client_config.API_URL}   the API's address (default {client_config.DEFAULT_API_URL})
  {client_config.USER}      your user name
  {client_config.REALM}     your realm
  {client_config.SEED}      your TOTP seed, as your administrator gave it
  in a KEY=VALUE file: --config PATH, else ${client_config.CONFIG_FILE},
  else ~/.config/ucloud/client.env (keep it chmod 600: it holds your seed)"""

OUTPUT_HELP = """\
output:
  results go to stdout: tables, or with --json one JSON document;
  progress (--wait), warnings and errors go to stderr"""

ACTIONS = ("start", "stop", "suspend", "resume", "reboot", "delete")
ACTION_HELP = {
    "start": "start a stopped VM (or retry one in ERROR)",
    "stop": "stop a VM (its disk is kept)",
    "suspend": "pause a running VM in memory",
    "resume": "resume a suspended VM",
    "reboot": "reboot a running VM",
    "delete": "delete a VM and its disk",
}


def _common() -> argparse.ArgumentParser:
    """Options every command takes, before or after the subcommand. Their default is SUPPRESS so
    that a subcommand's parser does not reset what the top level parsed; each call makes new
    actions because parsers share their parents' actions, defaults included."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print JSON for scripts"
    )
    common.add_argument(
        "--config", metavar="PATH", default=argparse.SUPPRESS, help="the client config file"
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    waiting = argparse.ArgumentParser(add_help=False)
    waiting.add_argument(
        "--wait", action="store_true", help="wait until done, showing progress on stderr"
    )
    waiting.add_argument(
        "--timeout",
        type=_seconds,
        default=300.0,
        metavar="SECONDS",
        help="how long --wait waits (default: %(default)g)",
    )

    parser = argparse.ArgumentParser(
        prog="ucloud",
        description=DESCRIPTION,
        epilog=f"{CONFIG_HELP}\n\n{OUTPUT_HELP}\n\n{EXIT_CODES_HELP}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[_common()],
    )
    parser.set_defaults(json=False, config=None)
    parser.add_argument("--version", action="version", version=f"ucloud {ucloud.__version__}")
    groups = parser.add_subparsers(dest="group", metavar="COMMAND", required=True)

    def command(
        sub: argparse._SubParsersAction,  # type: ignore[type-arg]
        name: str,
        help: str,
        handler: Handler,
        *parents: argparse.ArgumentParser,
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, parents=[common, *parents])
        p.set_defaults(handler=handler)
        return p

    # vm
    vm = groups.add_parser("vm", help="virtual machines").add_subparsers(
        dest="command", metavar="ACTION", required=True
    )
    p = command(vm, "create", "create a VM (it starts once placed)", vms.create, waiting)
    p.add_argument("name", nargs="?", help="a name for the VM (default: a generated one)")
    p.add_argument(
        "--image", help="an image's name or uuid (see: image list; default: the cluster's)"
    )
    p.add_argument("--cpu", type=int, required=True, help="virtual CPUs")
    p.add_argument("--ram", required=True, metavar="SIZE", help="memory: 2 (GiB), 2G, 512M")
    p.add_argument("--ssd", metavar="SIZE", help="system disk (default: the API's, 10G)")
    p.add_argument(
        "--hdd", metavar="SIZE", help="a second, empty disk (vdb) of this size (default: none)"
    )
    p.add_argument(
        "--network",
        action="append",
        metavar="NETWORK",
        help="a network (name or uuid) to attach, one NIC each (repeatable)",
    )
    key_choice = p.add_mutually_exclusive_group()
    key_choice.add_argument(
        "--ssh-key",
        action="append",
        metavar="NAME",
        help="one of your SSH keys to put in the VM (repeatable; default: all of them)",
    )
    key_choice.add_argument(
        "--no-ssh-keys", action="store_true", help="put none of your SSH keys in the VM"
    )
    p.add_argument(
        "--user-data",
        metavar="FILE",
        help="run at first boot: a #cloud-config or a #! script ('-': stdin)",
    )
    p.add_argument("--hostname", help="the guest's hostname (default: the VM's name)")
    command(vm, "list", "your VMs (every VM for administrators)", vms.list_vms)
    p = command(vm, "resize", "change a stopped VM's CPUs and memory, grow its disks", vms.resize)
    p.add_argument("vm", help="the VM's uuid or name")
    p.add_argument("--cpu", type=int, help="virtual CPUs")
    p.add_argument("--ram", metavar="SIZE", help="memory: 2 (GiB), 2G, 512M")
    p.add_argument("--ssd", metavar="SIZE", help="system disk: it may only grow")
    p.add_argument("--hdd", metavar="SIZE", help="the second (HDD) disk: it may only grow")
    p = command(vm, "status", "a VM's state and recent events", vms.status)
    p.add_argument("vm", help="the VM's uuid or name")
    for action in ACTIONS:
        p = command(vm, action, ACTION_HELP[action], vms.act, waiting)
        p.add_argument("vm", help="the VM's uuid or name")
        p.set_defaults(action=action)
    p = command(
        vm,
        "migrate",
        "live-migrate a running or suspended VM to another host (administrators)",
        migrate.migrate,
        waiting,
    )
    p.add_argument("vm", help="the VM's uuid or name")
    p.add_argument("--to", metavar="HOST", help="the host to move it to (default: any that fits)")
    p.add_argument(
        "--abort", action="store_true", help="abort its migration: it stays where it runs"
    )
    p = command(
        vm, "console", "a VM's console: a URL for a browser, or --serial here", console.console
    )
    p.add_argument("vm", help="the VM's uuid or name")
    p.add_argument(
        "--serial",
        action="store_true",
        help=f"the serial console in this terminal (leave with {console.ESCAPE_NAME})",
    )

    p = command(vm, "ssh", "log into a VM over its network address (runs ssh)", ssh.ssh)
    p.add_argument(
        "vm", metavar="[USER@]VM", help="the VM's uuid or name, and the user to log in as"
    )
    p.add_argument("-l", dest="login", metavar="USER", help="the user to log in as")
    p.add_argument("-i", dest="identity", metavar="KEY", help="the private key file to use")
    p.add_argument(
        "-o", dest="option", action="append", metavar="OPTION", help="an ssh option (repeatable)"
    )
    p.add_argument("-4", dest="ipv4", action="store_true", help="its IPv4 address, not IPv6")
    # What follows "--" is the command: main() takes it off before argparse, which does not
    # handle "--" after a subcommand's options.
    p.set_defaults(command=[], takes_command=True)
    p.epilog = "-- COMMAND [ARG...]: run COMMAND in the VM instead of a shell"

    # token
    command(
        groups, "token", "your current TOTP code (to log in on the console page)", console.token
    )

    nic = vm.add_parser("network", help="attach a VM to a network, or detach it")
    nic_actions = nic.add_subparsers(dest="nic_action", metavar="ACTION", required=True)
    for name, handler, help in (
        ("attach", networks.attach, "attach a VM to a network (hot-plugged if it runs)"),
        ("detach", networks.detach, "detach a VM from a network (unplugged if it runs)"),
    ):
        p = command(nic_actions, name, help, handler)
        p.add_argument("vm", help="the VM's uuid or name")
        p.add_argument("network", help="the network's uuid or name")

    # network
    network = groups.add_parser("network", help="your networks").add_subparsers(
        dest="command", metavar="ACTION", required=True
    )
    p = command(network, "create", "create a network (IPv6, optionally IPv4)", networks.create)
    p.add_argument("name", help="a name for the network")
    p.add_argument("--ipv4", metavar="SUBNET", help="an IPv4 subnet too, e.g. 10.0.0.0/24")
    p.add_argument("--mtu", type=int, help="default: the cluster's")
    p.add_argument("--shared", action="store_true", help="usable by all (administrators)")
    p.add_argument(
        "--router",
        metavar="HOST",
        help="the host that routes it (administrators); default: the scheduler chooses",
    )
    command(network, "list", "your networks and the shared ones", networks.list_networks)
    p = command(
        network,
        "router",
        "name the host that routes a network (administrators)",
        networks.set_router,
    )
    p.add_argument("network", help="the network's uuid or name")
    p.add_argument("host", help="a host that offers to route (network_router) and is UP")
    p = command(network, "delete", "delete a network (no VM may be attached)", networks.delete)
    p.add_argument("network", help="the network's uuid or name")
    # key
    key = groups.add_parser("key", help="your SSH public keys").add_subparsers(
        dest="command", metavar="ACTION", required=True
    )
    p = command(key, "add", "add an SSH public key", keys.add_key)
    p.add_argument("name", help="a name for the key")
    p.add_argument(
        "--file",
        required=True,
        metavar="PATH",
        help="the public key file, e.g. ~/.ssh/id_ed25519.pub",
    )
    command(key, "list", "your SSH keys", keys.list_keys)
    p = command(key, "delete", "delete an SSH key", keys.delete_key)
    p.add_argument("name", help="the key's name")

    # file
    file = groups.add_parser("file", help="your uploaded files").add_subparsers(
        dest="command", metavar="ACTION", required=True
    )
    command(file, "list", "your uploaded files, to make images from", images.list_files)
    p = command(file, "upload", "upload a file into your upload directory", upload.upload)
    p.add_argument("path", help="the file to upload")
    p.add_argument("--name", help="its name there (default: the file's own name)")

    # image
    image = groups.add_parser("image", help="disk images").add_subparsers(
        dest="command", metavar="ACTION", required=True
    )
    p = command(image, "create", "make an image from an uploaded file", images.create_image)
    p.add_argument("name", help="a name for the image")
    p.add_argument("--file", required=True, metavar="UUID", help="the file's uuid (file list)")
    p.add_argument("--store", help="the image store to keep it in (default: the API's)")
    p = command(image, "import", "make an image from an http(s) URL", images.create_image)
    p.add_argument("name", help="a name for the image")
    p.add_argument("--url", required=True, help="where the image scanner fetches it from")
    p.add_argument("--store", help="the image store to keep it in (default: the API's)")
    command(image, "list", "images you can use", images.list_images)
    p = command(image, "delete", "delete an image", images.delete_image)
    p.add_argument("uuid", help="the image's uuid or name")

    # host
    host = groups.add_parser("host", help="hypervisor hosts (administrators)").add_subparsers(
        dest="command", metavar="ACTION", required=True
    )
    command(host, "list", "every host with its state", admin.list_hosts)
    p = command(host, "create", "register a hypervisor host", admin.create_host)
    p.add_argument("name", help="the host's name, as its agent is configured")
    p.add_argument("--cpu", type=int, required=True, help="CPUs it offers")
    p.add_argument("--ram", required=True, metavar="SIZE", help="memory it offers: 64G, 65536M")
    p.add_argument("--ssd", metavar="SIZE", help="SSD space it offers")
    p.add_argument("--hdd", metavar="SIZE", help="HDD space it offers")
    p = command(host, "maintenance", "put a host in or out of maintenance", admin.maintenance)
    p.add_argument("name", help="the host's name")
    p.add_argument(
        "state", choices=("on", "off"), help="on: place no new VMs on it, drain it (live)"
    )
    p = command(
        host,
        "evacuate",
        "a host gone for good: fence its VMs and start them elsewhere now (no grace)",
        admin.evacuate,
    )
    p.add_argument("name", help="the host's name (refused while its agent is alive)")
    p = command(
        host,
        "delete",
        "delete a host that runs no VM and is DEAD or in maintenance",
        admin.delete_host,
    )
    p.add_argument("name", help="the host's name")

    # quota
    p = groups.add_parser(
        "quota",
        help="your limits and usage (administrators: anyone's; quota set)",
        description="your limits and usage (administrators: anyone's, and quota set)",
        parents=[common],
    )
    p.set_defaults(handler=quota.show)
    p.add_argument("--user", help="whose quota (administrators); default: yours")
    p.add_argument("--realm", help="that user's realm; default: yours")
    quota_sub = p.add_subparsers(dest="command", metavar="ACTION")
    p = command(quota_sub, "set", "set a user's limits (administrators)", quota.set_limits)
    p.add_argument("name", help="the user's name")
    p.add_argument("--realm", required=True, help="the user's realm")
    for resource, what in (
        ("vms", "VMs"),
        ("cpu", "CPUs of VMs that should run"),
        ("ram", "memory of VMs that should run: 64G"),
        ("disk", "disk of all VMs: 2T"),
        ("networks", "networks"),
        ("images", "images"),
    ):
        p.add_argument(
            f"--{resource}",
            metavar="LIMIT",
            help=f"{what}; 'none': no limit, 'default': the cluster's default",
        )

    # user
    user = groups.add_parser("user", help="users (administrators)").add_subparsers(
        dest="command", metavar="ACTION", required=True
    )
    p = command(user, "create", "create a user and print its TOTP seed", admin.create_user)
    p.add_argument("name", help="the new user's name")
    p.add_argument("--realm", required=True, help="the new user's realm")
    command(user, "list", "every user, with what they own", admin.list_users)
    p = command(
        user, "delete", "delete a user (refused while they own anything)", admin.delete_user
    )
    p.add_argument("name", help="the user's name")
    p.add_argument("--realm", required=True, help="the user's realm")
    p.add_argument(
        "--delete-owned",
        action="store_true",
        help="also delete the user's VMs, images, files, SSH keys and networks (normal paths)",
    )
    p = command(user, "reset-totp", "give a user a new TOTP seed, print it", admin.reset_totp)
    p.add_argument("name", help="the user's name")
    p.add_argument("--realm", required=True, help="the user's realm")
    p = command(user, "sessions", "a user's console-page sessions", admin.list_sessions)
    p.add_argument("name", help="the user's name")
    p.add_argument("--realm", required=True, help="the user's realm")
    p = command(user, "end-sessions", "end a user's console-page sessions", admin.end_sessions)
    p.add_argument("name", help="the user's name")
    p.add_argument("--realm", required=True, help="the user's realm")
    p.add_argument("--session", default="", help="only this one (as `user sessions` shows it)")
    return parser


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be more than 0 seconds")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    command: list[str] = []
    if "--" in argv:
        at = argv.index("--")
        argv, command = argv[:at], argv[at + 1 :]
    try:
        args = parser.parse_args(argv)
        if command and not getattr(args, "takes_command", False):
            parser.error(f"unrecognized arguments: -- {' '.join(command)}")
        if command:
            args.command = command
    except SystemExit as e:  # --help, --version, or a usage error argparse has printed
        return e.code if isinstance(e.code, int) else ExitCode.USAGE
    out = Output(json=args.json)
    try:
        config = client_config.load(args.config)
        for warning in config.warnings:
            out.progress(f"ucloud: warning: {warning}")
        return args.handler(Session(config, API(config), out), args)
    except CLIError as e:
        out.progress(f"ucloud: {e.message}")
        if e.hint:
            out.progress("".join(f"  {line}\n" for line in e.hint.splitlines()).rstrip("\n"))
        return e.exit_code
    except KeyboardInterrupt:
        out.progress("ucloud: interrupted (a request already accepted goes on)")
        return ExitCode.INTERRUPTED
    except BrokenPipeError:
        # `ucloud vm list | head`: the reader is gone, which is not an error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
