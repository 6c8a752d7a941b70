"""User endpoints: administrators create users, who get a TOTP seed."""

from __future__ import annotations

import pyotp
from flask import Blueprint

from ucloud import auth
from ucloud.api import errors, replies
from ucloud.api.endpoint import Principal, Reply, context, endpoint
from ucloud.api.schemas import UserCreate
from ucloud.models import User
from ucloud.store import Conflict, Store

bp = Blueprint("user", __name__)


@endpoint(
    bp,
    "/user/create",
    summary="Create a user (administrators)",
    admin=True,
    responses={201: "created", 409: "exists"},
    reply=replies.UserCredentials,
)
def create(body: UserCreate, user: Principal) -> Reply:
    try:
        new = create_user(context().store, body.user, body.user_realm)
    except Conflict as e:
        raise errors.Conflict(str(e)) from e
    return credentials(new), 201


def create_user(store: Store, name: str, realm: str) -> User:
    """Create a user with a fresh TOTP secret; Conflict if it exists."""
    user = User(name=name, realm=realm, totp_secret=auth.new_secret())
    store.create(user)
    return user


def credentials(user: User) -> dict[str, str]:
    uri = pyotp.TOTP(user.totp_secret).provisioning_uri(name=user.name, issuer_name="ucloud")
    return {"name": user.name, "realm": user.realm, "seed": user.totp_secret, "otpauth": uri}
