"""A real Prometheus server (Debian's ``prometheus``) for the tests: it scrapes the daemons the
test started, on loopback, every second, and evaluates ucloud's shipped alert rules."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import requests

from tests.servers import free_port, wait_for

REPO = Path(__file__).resolve().parent.parent
RULES = REPO / "conf" / "prometheus" / "ucloud-alerts.yml"


def rules_without_waits(target: Path) -> Path:
    """conf's alert rules with every ``for:`` set to 0s: the same expressions, firing at the
    first evaluation that finds them true (the shipped waits are minutes)."""
    target.write_text(re.sub(r"(?m)^(\s*)for: \S+$", r"\1for: 0s", RULES.read_text()))
    return target


class Prometheus:
    def __init__(self, workdir: Path, jobs: dict[str, list[str]], rules: Path | None) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        workdir.mkdir(parents=True, exist_ok=True)
        lines = [
            "global:",
            "  scrape_interval: 1s",
            "  scrape_timeout: 1s",
            "  evaluation_interval: 1s",
        ]
        if rules is not None:
            lines += ["rule_files:", f"  - {rules}"]
        lines.append("scrape_configs:")
        for job, targets in jobs.items():
            lines += [
                f"  - job_name: {job}",
                "    static_configs:",
                f"      - targets: [{', '.join(repr(t) for t in targets)}]",
            ]
        self.config = workdir / "prometheus.yml"
        self.config.write_text("\n".join(lines) + "\n")
        subprocess.run(
            ["promtool", "check", "config", str(self.config)], check=True, capture_output=True
        )
        self.log = workdir / "prometheus.log"
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [
                    "prometheus",
                    f"--config.file={self.config}",
                    f"--storage.tsdb.path={workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_for(self._ready, 60, f"Prometheus to be ready (log: {self.log})", interval=0.2)

    def _ready(self) -> bool:
        try:
            return requests.get(f"{self.url}/-/ready", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result vector: [{"metric": {labels}, "value": [t, "v"]}, ...]."""
        reply = requests.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        body = reply.json()
        assert body["status"] == "success", body
        return body["data"]["result"]

    def value(self, expr: str) -> float | None:
        """The value of a query that has one series (None: no series)."""
        result = self.query(expr)
        assert len(result) <= 1, result
        return float(result[0]["value"][1]) if result else None

    def wait_value(self, expr: str, timeout: float = 30) -> float:
        """Wait until ``expr`` has a series (a comparison such as ``x == 1`` has one once it
        holds); return its value."""
        (series,) = wait_for(lambda: self.query(expr), timeout, f"Prometheus to answer {expr!r}")
        return float(series["value"][1])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
