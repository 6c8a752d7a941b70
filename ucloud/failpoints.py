"""Fault injection at named points, for tests that must stop a daemon at an exact moment
(etcd's gofail, smaller). Inactive unless ``UCLOUD_FAILPOINTS`` names the point:

    UCLOUD_FAILPOINTS="agent-domain-started=kill"

``kill`` sends the process SIGKILL (a crash at that line), ``stop`` SIGSTOP (a pause: the
process goes on where it was after SIGCONT).
"""

from __future__ import annotations

import logging
import os
import signal

log = logging.getLogger(__name__)

_ACTIONS = {"kill": signal.SIGKILL, "stop": signal.SIGSTOP}


def _parse(spec: str) -> dict[str, signal.Signals]:
    active = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, action = item.partition("=")
        if action not in _ACTIONS:
            raise ValueError(f"UCLOUD_FAILPOINTS: {item!r}: the action must be kill or stop")
        active[name] = _ACTIONS[action]
    return active


_ACTIVE = _parse(os.environ.get("UCLOUD_FAILPOINTS", ""))


def hit(name: str) -> None:
    """Act if the failpoint ``name`` is active; otherwise nothing (a dict lookup)."""
    sig = _ACTIVE.get(name)
    if sig is not None:
        log.warning("failpoint %s: sending myself %s", name, sig.name)
        os.kill(os.getpid(), sig)
