"""The seed ISOs of the VMs a host runs: built from each VM's record when it starts
(ucloud.seed: the same bytes on every host), kept in ``<state_dir>/seed/<vm uuid>.iso`` where
QEMU reads them as a read-only CD-ROM, and removed when the VM leaves the host."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ucloud import seed
from ucloud.models import VM


class Seeds:
    def __init__(self, directory: Path) -> None:
        self.dir = directory

    def path(self, vm: str) -> Path:
        return self.dir / f"{vm}.iso"

    def write(self, vm: VM) -> str:
        """The seed's path, written (atomically) unless it holds the same bytes already;
        "" for a VM without first-boot data (created before seeds: it boots as it did)."""
        if vm.first_boot is None:
            self.remove(vm.uuid)
            return ""
        data = seed.iso(vm)
        path = self.path(vm.uuid)
        try:
            if path.read_bytes() == data:
                return str(path)
        except FileNotFoundError:
            pass
        self.dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=f".{vm.uuid}.")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            # QEMU may run as another user than the agent (libvirt's qemu.conf): it must read it.
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return str(path)

    def remove(self, vm: str) -> None:
        self.path(vm).unlink(missing_ok=True)
