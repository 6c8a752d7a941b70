"""Servers the tests start themselves, on free loopback ports, and stop by pid."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import etcd3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):
    """Poll ``predicate`` until it returns a true value; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


class Etcd:
    """One etcd member with its own data directory; restartable on the same ports and data.

    Alone it is a cluster of one; EtcdCluster makes several of them one cluster."""

    def __init__(
        self, workdir: Path, name: str = "test", host: str = "127.0.0.1", netns: str | None = None
    ) -> None:
        self.workdir = workdir
        self.name = name
        self.host = host  # the test bed's etcd listens on its switch bridge's address
        self.netns = netns  # a network namespace to run in (a member to cut off from its peers)
        self.port = free_port()
        self.peer_port = free_port()
        self.initial_cluster = f"{name}={self.peer_url}"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def peer_url(self) -> str:
        return f"http://{self.host}:{self.peer_port}"

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, wait: bool = True) -> None:
        """Start the member (on its data, if it has some); ``wait``: until it answers. A member
        of a new cluster cannot answer before a quorum of its peers runs: start them all first."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        url = f"http://{self.endpoint}"
        with open(self.workdir / "etcd.log", "ab") as out:
            # `ip netns exec` execs etcd: the pid is still etcd's.
            netns = ["ip", "netns", "exec", self.netns] if self.netns else []
            self.proc = subprocess.Popen(
                [
                    *netns,
                    "etcd",
                    f"--name={self.name}",
                    f"--data-dir={self.workdir / 'data'}",
                    f"--listen-client-urls={url}",
                    f"--advertise-client-urls={url}",
                    f"--listen-peer-urls={self.peer_url}",
                    f"--initial-advertise-peer-urls={self.peer_url}",
                    f"--initial-cluster={self.initial_cluster}",
                    "--initial-cluster-state=new",  # ignored once the data directory exists
                    "--log-level=error",
                    "--logger=zap",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        if wait:
            self.wait_ready()

    def wait_ready(self) -> None:
        wait_for(
            lambda: _answers(self.host, self.port), 20, f"etcd {self.name} answer", interval=0.2
        )

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


class EtcdCluster:
    """Several etcd members on loopback, one cluster; any one can be killed and restarted.

    ``places``: each member's (address, network namespace or None), instead of loopback."""

    def __init__(
        self, workdir: Path, size: int = 3, places: list[tuple[str, str | None]] | None = None
    ) -> None:
        places = places or [("127.0.0.1", None)] * size
        self.members = [
            Etcd(workdir / f"m{i}", name=f"m{i}", host=host, netns=netns)
            for i, (host, netns) in enumerate(places)
        ]
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        for m in self.members:
            m.initial_cluster = initial

    @property
    def endpoints(self) -> str:
        """What UCLOUD_ETCD_ENDPOINTS names: every member."""
        return ",".join(m.endpoint for m in self.members)

    def start(self) -> None:
        for m in self.members:
            m.start(wait=False)
        for m in self.members:
            m.wait_ready()
        self.leader()

    def kill(self, index: int) -> None:
        """SIGKILL one member: no goodbye to its peers or clients."""
        self.members[index].stop(signal.SIGKILL)

    def restart(self, index: int) -> None:
        """Start a stopped member again on its ports and data; return once it answers."""
        self.members[index].start()

    def leader(self, timeout: float = 20) -> int:
        """The index of the member every running member calls leader (waits for one)."""

        def agreed() -> str | None:
            seen = {_leader_name(m.host, m.port) for m in self.members if m.running()}
            return seen.pop() if len(seen) == 1 else None

        name = wait_for(agreed, timeout, "the etcd members to agree on a leader", interval=0.1)
        return next(i for i, m in enumerate(self.members) if m.name == name)

    def stop(self) -> None:
        for m in self.members:
            m.stop()


def _answers(host: str, port: int) -> bool:
    # A fresh client each time: python-etcd3 holds on to an endpoint it saw fail.
    client = etcd3.client(host=host, port=port, timeout=1)
    try:
        client.status()
        return True
    except Exception:
        return False
    finally:
        client.close()


def leader_of(member: Etcd) -> str | None:
    """The name of the member ``member`` takes for leader; None if it knows of none."""
    return _leader_name(member.host, member.port)


def _leader_name(host: str, port: int) -> str | None:
    client = etcd3.client(host=host, port=port, timeout=1)
    try:
        leader = client.status().leader
        return leader.name if leader is not None else None
    except Exception:
        return None
    finally:
        client.close()


class Daemon:
    """A ucloud daemon in its own process, with its environment and log file."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                argv,
                env={**os.environ, **env},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def output(self) -> str:
        return self.log.read_text(errors="replace")
