"""The console page's sessions: server-side records that a logout, a deleted user or a reset TOTP
seed ends at once (docs/design-decisions.md, "Consoles", "The page").

The browser's cookie holds only a random session id (32 bytes). etcd keeps
``<prefix>/web-session/<sha256 of it>`` = {user, a digest of the user's TOTP seed at login,
created, expires}, under a lease of the session's lifetime plus a minute: the lease only cleans
up, ``expires`` is what counts. A request's session is one read of that key (``find``), a
linearizable get: a session ended on one ``ucloud-api`` is refused by every other at once.
The session's CSRF token is derived from its id (``csrf_token``), so it is bound to that
session and never stored.

A login takes each TOTP step once (RFC 6238 §5.2: a code seen by an eavesdropper or a
shoulder-surfer must not log in again while it is valid): ``<prefix>/web-login-step/<realm>/
<name>`` = {the step of the user's last login, a digest of the seed it was a step of}, moved
forward by compare-and-swap (``take_step``), so of two logins with one code exactly one wins.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from typing import ClassVar

from pydantic import Field

from ucloud.models import PerUser, Stored, User, now
from ucloud.store import Conflict, Store, Versioned

SESSION_BYTES = 32
LEASE_SLACK = 60  # seconds the lease outlives `expires`: it only cleans up
MAX_SESSION_ID = 100  # a cookie longer than that is no session id of ours
TAKE_ATTEMPTS = 20  # compare-and-swaps a login tries before it gives up (as Store.update)


class WebSession(Stored):
    kind: ClassVar[str] = "web-session"

    digest: str  # SHA-256 of the session id, hex: the id itself is never stored
    user: str  # realm/name
    seed: str  # SHA-256 of the user's TOTP seed at login: a new seed ends the session
    created: float = Field(default_factory=now)
    expires: float
    address: str = ""  # the client's address at login, for administrators
    agent: str = ""  # its User-Agent at login (shortened), for administrators

    @property
    def id(self) -> str:
        return self.digest

    def public(self) -> dict[str, object]:
        """What an administrator sees of it (the digest's start names it for ending it)."""
        return {
            "session": self.digest[:16],
            "created": self.created,
            "expires": self.expires,
            "address": self.address,
            "agent": self.agent,
        }


class LoginStep(PerUser):
    """The TOTP step of the user's last console-page login: a code of that step or an earlier
    one does not log in again. Deleted with the user (``/user/delete``)."""

    kind: ClassVar[str] = "web-login-step"

    step: int
    seed: str  # SHA-256 of the seed the step was of: a new seed's codes start afresh


def digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def seed_digest(user: User) -> str:
    return hashlib.sha256(user.totp_secret.encode()).hexdigest()


def begin(
    store: Store, user: User, lifetime: int, address: str = "", agent: str = ""
) -> tuple[str, WebSession]:
    """A new session for ``user``: its id (for the cookie, shown only now) and its record."""
    session_id = secrets.token_urlsafe(SESSION_BYTES)
    record = WebSession(
        digest=digest(session_id),
        user=user.id,
        seed=seed_digest(user),
        expires=time.time() + lifetime,
        address=address[:64],
        agent=agent[:200],
    )
    store.create(record, lease=store.lease(lifetime + LEASE_SLACK))
    return session_id, record


def take_step(store: Store, user: User, step: int) -> bool:
    """Record that a code of ``step`` logs ``user`` (as the code was verified against) in;
    False if a login of this step or a later one was recorded for the same seed (the code was
    used already: a replay, or the other of two logins with one code), or the user is no longer
    as verified (deleted, or given a new seed meanwhile). Written only while the user's record
    is as read, so a user's deletion cannot leave a record behind."""
    seed = seed_digest(user)
    for _ in range(TAKE_ATTEMPTS):
        current = store.get(User, user.id)
        if current is None or not hmac.compare_digest(seed_digest(current.value), seed):
            return False
        was = store.get(LoginStep, user.id)
        if was is not None and was.value.seed == seed and was.value.step >= step:
            return False
        taken = LoginStep(name=user.name, realm=user.realm, step=step, seed=seed)
        if store.commit(swap=[(taken, was)], unchanged=[current]) is not None:
            return True
    raise Conflict(f"the login step of {user.id} kept changing; gave up")


def find(store: Store, session_id: str, at: float | None = None) -> WebSession | None:
    """The live session of this id: one read of its record; None if unknown, ended or expired."""
    if not 20 <= len(session_id) <= MAX_SESSION_ID:
        return None
    found = store.get(WebSession, digest(session_id))
    if found is None or found.value.expires <= (time.time() if at is None else at):
        return None
    return found.value


def valid_for(session: WebSession, user: User | None) -> bool:
    """Whether the session still belongs to ``user`` as it is now (None: gone): a reset seed,
    or a user deleted and made again, ends it even if its record was not deleted (a login that
    raced the reset)."""
    return (
        user is not None
        and user.id == session.user
        and hmac.compare_digest(session.seed, seed_digest(user))
    )


def end(store: Store, session_id: str) -> bool:
    """End the session of this id (a logout); False if there was none."""
    if not 20 <= len(session_id) <= MAX_SESSION_ID:
        return False
    return _delete(store, digest(session_id))


def _delete(store: Store, key: str) -> bool:
    while (found := store.get(WebSession, key)) is not None:
        if store.delete(found):
            return True
    return False


def of_user(store: Store, user: str) -> list[Versioned[WebSession]]:
    """Every session of ``user`` (realm/name), oldest first. Reads every session: for
    administrators' requests and for ending them, which are rare."""
    sessions, _ = store.list(WebSession)
    mine = [s for s in sessions.values() if s.value.user == user]
    return sorted(mine, key=lambda s: s.value.created)


def end_all(store: Store, user: str, only: str = "") -> int:
    """End ``user``'s sessions (those whose digest starts with ``only``, if given); how many."""
    ended = 0
    for found in of_user(store, user):
        if found.value.digest.startswith(only) and _delete(store, found.value.digest):
            ended += 1
    return ended


def csrf_token(secret: str, session_id: str) -> str:
    """The session's CSRF token: bound to the session, so another session's is refused."""
    return hmac.new(secret.encode(), b"csrf\0" + session_id.encode(), hashlib.sha256).hexdigest()
