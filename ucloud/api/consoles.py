"""``/vm/console``: a short-lived, single-use URL to a VM's console (see ucloud.consoles)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from flask import Blueprint
from pydantic import Field

from ucloud import consoles
from ucloud.api import errors, replies
from ucloud.api.endpoint import Principal, Reply, context, endpoint
from ucloud.api.schemas import VMRef
from ucloud.api.vms import owned_vm
from ucloud.config import Settings
from ucloud.models import VM

bp = Blueprint("console", __name__)


class VMConsole(VMRef):
    serial: bool = Field(False, description="the serial console instead of the display")


class ConsoleOpened(replies.Reply):
    vm: str = Field(description="the VM's uuid")
    console: consoles.Console
    url: str = Field(description="the console page showing it; works once, until expires")
    websocket: str = Field(description="the WebSocket to open for it (noVNC, a terminal)")
    expires: float = Field(description="when the token expires unused (Unix time)")


@endpoint(
    bp,
    "/vm/console",
    summary="A single-use URL to a VM's console, and when it expires",
    responses={200: "the URL", 404: "no such VM of yours", 409: "the VM is not running"},
    reply=ConsoleOpened,
)
def console(body: VMConsole, user: Principal) -> Reply:
    vm = owned_vm(body.vmid, user).value
    kind = consoles.Console.SERIAL if body.serial else consoles.Console.VNC
    return open_console(vm, kind), 200


def open_console(vm: VM, kind: consoles.Console) -> dict[str, Any]:
    """A new token for ``vm``'s console, with the URLs that use it (the API's and the web
    page's one way to open a console)."""
    ctx = context()
    s = ctx.settings
    if vm.status not in consoles.OPEN_STATUSES:
        raise errors.Conflict(f"VM {vm.name} is {vm.status}: it has a console only while it runs")
    issued = consoles.issue(ctx.store, vm, kind, s.console_token_ttl)
    base = s.console_url.rstrip("/")
    websocket = websocket_base(s)
    return {
        "vm": vm.uuid,
        "console": str(kind),
        # The token rides in the fragment: browsers never send it to the page's server or logs.
        "url": f"{base}/console/{kind}#" + urlencode({"token": issued.token}),
        "websocket": f"{websocket}?" + urlencode({"token": issued.token}),
        "expires": issued.expires,
    }


def websocket_base(settings: Settings) -> str:
    """Where browsers and the CLI open console WebSockets."""
    if settings.console_websocket_url:
        return settings.console_websocket_url
    scheme, _, rest = settings.console_url.rstrip("/").partition("://")
    return f"{'wss' if scheme == 'https' else 'ws'}://{rest}/websockify"
