"""``--wait``: poll a VM until it gets where an action sent it, showing progress on the way."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from ucloud.cli.errors import Refused, Unreachable, VMFailed, WaitTimeout
from ucloud.cli.http import API
from ucloud.cli.output import Output

# What each action aims for: the status that means done, and the desired state it set.
GOALS: dict[str, tuple[str, str]] = {
    "create": ("RUNNING", "running"),
    "start": ("RUNNING", "running"),
    "resume": ("RUNNING", "running"),
    "reboot": ("RUNNING", "running"),
    "stop": ("STOPPED", "stopped"),
    "suspend": ("SUSPENDED", "suspended"),
    "delete": ("", "deleted"),  # done when the VM is gone
}

FIRST_POLL = 0.25
MAX_POLL = 2.0


@dataclass
class Goal:
    action: str
    status: str  # empty: the VM must disappear
    desired: str
    generation: int  # the VM's generation once the action was accepted
    reboot_seq: int
    started_in_error: bool  # an ERROR from before the action is not this action's failure

    @classmethod
    def of(cls, action: str, vm: dict[str, Any]) -> Goal:
        status, desired = GOALS[action]
        return cls(
            action=action,
            status=status,
            desired=desired,
            generation=int(vm.get("generation", 0)),
            reboot_seq=int(vm.get("reboot_seq", 0)),
            started_in_error=vm.get("status") == "ERROR",
        )

    def describe(self) -> str:
        if not self.status:
            return "be deleted"
        if self.action == "reboot":
            return "reboot"
        return f"be {self.status}"

    def reached(self, vm: dict[str, Any]) -> bool:
        if vm.get("status") != self.status:
            return False
        return self.action != "reboot" or int(vm.get("reboot_done", 0)) >= self.reboot_seq

    def failed(self, vm: dict[str, Any]) -> str | None:
        """Why waiting is pointless now, or None."""
        status = vm.get("status")
        if status != "ERROR":
            self.started_in_error = False
        elif not self.started_in_error or int(vm.get("observed_generation", 0)) >= self.generation:
            return f"VM {vm.get('uuid')} went to ERROR: {vm.get('reason') or 'no reason given'}"
        if vm.get("desired") != self.desired:
            return (
                f"VM {vm.get('uuid')} is now wanted {vm.get('desired')}: "
                "another request changed it, so it will not " + self.describe()
            )
        return None


def wait_for(
    api: API, vm: dict[str, Any], goal: Goal, timeout: float, out: Output
) -> dict[str, Any]:
    """Poll until ``goal`` is reached; return the VM's last state (empty once deleted).

    Raises VMFailed (ERROR, or overridden), WaitTimeout, or Unreachable when the API stayed
    unreachable until the deadline (a brief outage, e.g. an API restart, is waited out).
    """
    vmid = vm["uuid"]
    start = time.monotonic()
    deadline = start + timeout
    out.progress(f"waiting for VM {vmid} to {goal.describe()} (up to {timeout:g} s)")
    seen = _newest(vm)
    last_status = vm.get("status")
    lost: Unreachable | None = None
    pause = FIRST_POLL
    while True:
        try:
            vm = api.get("/vm/status", vmid=vmid)
            lost = None
        except Refused as e:
            if e.status != 404:
                raise
            if not goal.status:
                out.progress(f"{time.monotonic() - start:6.1f}s  deleted")
                return {}
            raise VMFailed(
                f"VM {vmid} was deleted while waiting for it to {goal.describe()}"
            ) from None
        except Unreachable as e:
            if lost is None:
                out.progress(f"{time.monotonic() - start:6.1f}s  {e.message}; still trying")
            lost = e
        else:
            seen, last_status = _report(out, vm, seen, last_status, time.monotonic() - start)
            if goal.reached(vm):
                return vm
            reason = goal.failed(vm)
            if reason:
                raise VMFailed(reason, f"see: ucloud vm status {vmid}")

        now = time.monotonic()
        if now >= deadline:
            if lost is not None:
                raise lost
            raise WaitTimeout(
                f"VM {vmid} is still {last_status} after {timeout:g} s",
                f"it may get there later: ucloud vm status {vmid}; or wait longer with --timeout",
            )
        time.sleep(min(pause, deadline - now))
        pause = min(pause * 1.5, MAX_POLL)


def _newest(vm: dict[str, Any]) -> float:
    log = vm.get("log") or []
    return max((float(e.get("time", 0)) for e in log), default=0.0)


def _report(
    out: Output, vm: dict[str, Any], seen: float, last_status: str | None, elapsed: float
) -> tuple[float, str | None]:
    """Print the events newer than ``seen``, or the status if it changed without one."""
    fresh = [e for e in vm.get("log") or [] if float(e.get("time", 0)) > seen]
    status = vm.get("status")
    for event in fresh:
        out.progress(f"{elapsed:6.1f}s  {event.get('by')}: {event.get('message')}")
    if not fresh and status != last_status:
        out.progress(f"{elapsed:6.1f}s  now {status}")
    return max(seen, _newest(vm)), status
