"""``ucloud vm migrate``: live-migrate a running or suspended VM (administrators), follow it,
or abort it."""

from __future__ import annotations

import argparse
import time
from typing import Any

from ucloud.cli.errors import ExitCode, Refused, VMFailed, WaitTimeout
from ucloud.cli.output import Output
from ucloud.cli.session import Session
from ucloud.cli.vms import describe_migration, resolve
from ucloud.cli.wait import MAX_POLL, _newest, _report


def migrate(s: Session, args: argparse.Namespace) -> int:
    vmid = resolve(s.api, args.vm)
    if args.abort:
        reply = s.api.post("/vm/migrate/abort", vmid=vmid)
        s.out.text(f"{reply.get('message', 'queued')}: VM {vmid}")
        s.out.data(reply["vm"])
        return ExitCode.OK
    fields = {"to": args.to} if args.to else {}
    vm = s.api.post("/vm/migrate", vmid=vmid, **fields)["vm"]
    if not args.wait:
        s.out.text(f"migration of VM {vmid} from {vm['hostname']} queued")
        s.out.data(vm)
        return ExitCode.OK
    final = wait_migrated(s, vm, args.timeout, s.out)
    s.out.text(f"VM {vmid} migrated: it runs on {final['hostname']}")
    s.out.data(final)
    return ExitCode.OK


def wait_migrated(s: Session, vm: dict[str, Any], timeout: float, out: Output) -> dict[str, Any]:
    """Poll until the migration is over; its phases and progress on stderr. A migration that
    ended with the VM still on its source (failed, aborted) is a VMFailed."""
    vmid, source = vm["uuid"], vm["hostname"]
    start = time.monotonic()
    out.progress(f"waiting for VM {vmid} to leave {source} (up to {timeout:g} s)")
    seen, status, shown = _newest(vm), vm.get("status"), ""
    while True:
        elapsed = time.monotonic() - start
        try:
            vm = s.api.get("/vm/status", vmid=vmid)
        except Refused as e:
            if e.status == 404:
                raise VMFailed(f"VM {vmid} was deleted while it migrated") from None
            raise
        seen, status = _report(out, vm, seen, status, elapsed)
        migration = vm.get("migration")
        if migration is None:
            if vm.get("hostname") and vm["hostname"] != source:
                return vm
            last = (vm.get("log") or [{}])[-1].get("message", "no reason given")
            raise VMFailed(
                f"VM {vmid} did not migrate; it runs on {vm.get('hostname') or '-'}: {last}",
                f"see: ucloud vm status {vmid}",
            )
        now = describe_migration(migration)
        if now != shown:
            out.progress(f"{elapsed:6.1f}s  {now}")
            shown = now
        if elapsed >= timeout:
            raise WaitTimeout(
                f"VM {vmid} is still migrating after {timeout:g} s ({now})",
                f"follow it with: ucloud vm status {vmid}; abort with: ucloud vm migrate "
                f"{vmid} --abort",
            )
        time.sleep(min(MAX_POLL / 2, max(timeout - elapsed, 0.05)))
