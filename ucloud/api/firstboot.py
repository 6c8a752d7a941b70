"""What a new VM gets on its first boot: its SSH keys, user-data and hostname, checked and
fixed into the VM's record (``VM.first_boot``), from which every host builds the same seed."""

from __future__ import annotations

from ucloud import seed
from ucloud.api import errors
from ucloud.api.endpoint import Principal, context
from ucloud.api.keys import owned_keys
from ucloud.api.schemas import VMCreate
from ucloud.models import VM, FirstBoot


def for_new_vm(body: VMCreate, user: Principal, vm: VM) -> FirstBoot:
    """The first-boot data ``body`` asks for the new ``vm``, or a 4xx that says what is wrong
    with it."""
    return seed.first_boot(
        hostname=_hostname(body, vm),
        ssh_keys=_keys(body.ssh_keys, user),
        user_data=_user_data(body.user_data),
    )


def _hostname(body: VMCreate, vm: VM) -> str:
    if body.hostname is None:
        return seed.hostname_for(vm.name, vm.uuid)
    try:
        return seed.check_hostname(body.hostname)
    except ValueError as e:
        raise errors.BadRequest(f"hostname: {e}") from e


def _keys(names: list[str] | None, user: Principal) -> list[str]:
    """The public keys of the caller's keys ``names`` (None: all of them), in that order.
    Another user's key name is unknown here like a missing one."""
    mine = {k.name: k.public_key for k in owned_keys(user)}
    if names is None:
        return list(mine.values())
    unknown = [n for n in names if n not in mine]
    if unknown:
        raise errors.BadRequest(
            f"ssh_keys: you have no key named {', '.join(map(repr, unknown))}: see /key/list"
        )
    return list(dict.fromkeys(mine[n] for n in names))


def _user_data(text: str | None) -> str:
    if not text:
        return ""
    limit = context().settings.user_data_max
    try:
        size = len(text.encode())
    except UnicodeEncodeError as e:
        raise errors.BadRequest("user_data: must be UTF-8 text (it holds a lone surrogate)") from e
    if size > limit:
        raise errors.APIError(f"user_data: {size} bytes is over the limit of {limit} bytes", 413)
    if "\0" in text:
        raise errors.BadRequest(
            "user_data: must be text (a #cloud-config or a #! script); it holds NUL bytes"
        )
    return text
