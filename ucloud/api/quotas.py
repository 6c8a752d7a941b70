"""Quota endpoints: a user's limits and usage; administrators set anyone's limits.

Every write that changes what a user holds goes through ``charged`` (ucloud.quota.charge):
the change and the owner's usage in one compare-and-swap transaction.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Annotated, Any

from flask import Blueprint
from pydantic import BeforeValidator, Field

from ucloud import quota
from ucloud.api import errors
from ucloud.api.endpoint import Principal, Reply, context, endpoint, existing_user
from ucloud.api.schemas import Credentials, Name, parse_size
from ucloud.quota import UNLIMITED, Limits, Plan, Quota
from ucloud.store import Conflict

bp = Blueprint("quota", __name__)


def _limit_size(value: object) -> object:
    return value if value is None or value in (-1, "-1") else parse_size(value)


# A limit in GiB: a number or a size such as "512G"; -1: no limit.
LimitSize = Annotated[float | None, BeforeValidator(_limit_size)]


class QuotaRef(Credentials):
    user: Name | None = Field(None, description="whose quota (administrators); default: yours")
    user_realm: Name | None = Field(None, description="that user's realm; default: yours")


class QuotaSet(Credentials):
    """Fields left out stay as they are; null: back to the default; -1: no limit."""

    user: Name = Field(description="the user's name")
    user_realm: Name = Field(description="the user's realm")
    vms: int | None = Field(None, ge=UNLIMITED, description="VMs")
    cpu: int | None = Field(None, ge=UNLIMITED, description="CPUs of running VMs")
    ram: LimitSize = Field(None, ge=UNLIMITED, description="GiB of RAM of running VMs")
    disk: LimitSize = Field(None, ge=UNLIMITED, description="GiB of disk of all VMs")
    networks: int | None = Field(None, ge=UNLIMITED, description="networks")
    images: int | None = Field(None, ge=UNLIMITED, description="images")


# One user's changes in one worker wait for each other here instead of racing in etcd: each
# would read the same usage, and all but one compare-and-swap would fail and be redone (8
# threads creating VMs for one user ran at a sixth of the rate). Other workers still race,
# safely. Locks by a hash of the owner: a bounded number, whoever the users are.
_OWNER_LOCKS = tuple(threading.Lock() for _ in range(64))


def charged(owner: quota.Owner, plan: Callable[[], Plan | None]) -> int | None:
    """quota.charge with this worker's store and settings (QuotaExceeded answers 403)."""
    ctx = context()
    with _OWNER_LOCKS[hash(owner) % len(_OWNER_LOCKS)]:
        return quota.charge(ctx.store, ctx.settings, owner, plan)


@endpoint(
    bp,
    "/quota/show",
    "GET",
    summary="A user's limits and usage (administrators: any user's)",
    responses={200: "done", 403: "another user's", 404: "no such user"},
)
def show(body: QuotaRef, user: Principal) -> Reply:
    owner = (body.user_realm or user.realm, body.user or user.name)
    if owner != (user.realm, user.name):
        if not user.admin:
            raise errors.Forbidden("only administrators may see another user's quota")
        if context().catalog.user(f"{owner[0]}/{owner[1]}") is None:
            raise errors.NotFound(f"no user {owner[0]}/{owner[1]}")
    return answer(owner), 200


@endpoint(
    bp,
    "/quota/set",
    summary="Set a user's limits (administrators)",
    admin=True,
    responses={200: "done", 404: "no such user"},
)
def set_limits(body: QuotaSet, user: Principal) -> Reply:
    ctx = context()
    owner = (body.user_realm, body.user)
    existing_user(body.user_realm, body.user)
    given = {r: getattr(body, r) for r in quota.RESOURCES if r in body.model_fields_set}

    def change(q: Quota) -> bool:
        q.limits = q.limits.model_copy(update=given)
        return True

    if ctx.store.update(Quota, f"{body.user_realm}/{body.user}", change) is None:
        new = Quota(name=body.user, realm=body.user_realm, limits=Limits(**given))
        try:
            ctx.store.create(new)
        except Conflict:  # created meanwhile by another administrator: apply ours over it
            ctx.store.update(Quota, new.id, change)
    return answer(owner), 200


def answer(owner: quota.Owner) -> dict[str, Any]:
    ctx = context()
    limits, used, overrides = quota.show(ctx.store, ctx.settings, owner)
    return {
        "user": owner[1],
        "realm": owner[0],
        "limits": limits.model_dump(),
        "usage": used.model_dump(),
        "overrides": overrides.model_dump(exclude_none=True),
    }
