"""ucloud-console's metrics, their pure part: what the parent makes of its children's events
(counters, the table of open sessions, children gone without a word) and the events' socket.
(The real proxy, scraped while consoles open and close: tests/test_consoles.py.)"""

from __future__ import annotations

import os

from prometheus_client import REGISTRY

from tests.unit.scrape import scrape
from ucloud.console.metrics import Events, Meter, sessions_gauge


def count(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_children_events_count_connections_and_sessions():
    meter = Meter()
    accepted = count("ucloud_console_connections_total", console="vnc", result="accepted")
    used = count("ucloud_console_connections_total", console="unknown", result="unknown_token")
    ended = count("ucloud_console_session_duration_seconds_count", console="vnc")
    took = count("ucloud_console_session_duration_seconds_sum", console="vnc")

    meter.handle(b"connection vnc accepted", 10.0)
    meter.handle(b"opened 101 vnc node1", 10.0)
    meter.handle(b"connection unknown unknown_token", 11.0)
    meter.handle(b"connection serial accepted", 12.0)
    meter.handle(b"opened 102 serial node2", 12.0)
    assert count("ucloud_console_connections_total", console="vnc", result="accepted") == (
        accepted + 1
    )
    assert count("ucloud_console_connections_total", console="unknown", result="unknown_token") == (
        used + 1
    )
    sessions = scrape(meter.collector)
    assert sessions[("ucloud_console_sessions", (("console", "vnc"), ("host", "node1")))] == 1
    assert sessions[("ucloud_console_sessions", (("console", "serial"), ("host", "node1")))] == 0
    assert sessions[("ucloud_console_sessions", (("console", "serial"), ("host", "node2")))] == 1

    meter.handle(b"closed 101", 40.0)
    assert count("ucloud_console_session_duration_seconds_count", console="vnc") == ended + 1
    assert count("ucloud_console_session_duration_seconds_sum", console="vnc") == took + 30
    # Back to 0, not gone: a host that had consoles keeps its series.
    sessions = scrape(meter.collector)
    assert sessions[("ucloud_console_sessions", (("console", "vnc"), ("host", "node1")))] == 0


def test_a_child_gone_without_a_word_ends_its_session():
    meter = Meter()
    meter.handle(b"opened 201 vnc node1", 0.0)
    meter.handle(b"opened 202 vnc node1", 0.0)
    meter.forget_gone({202}, 5.0)  # 201 was killed: it never said "closed"
    assert set(meter.sessions) == {202}
    meter.handle(b"closed 201", 6.0)  # late or repeated: nothing to end
    assert set(meter.sessions) == {202}


def test_unreadable_events_count_nothing():
    meter = Meter()
    for junk in (b"", b"opened x vnc node1", b"closed", b"\xff\xfe", b"connection vnc"):
        meter.handle(junk, 0.0)
    assert meter.sessions == {}


def test_sessions_gauge_has_every_kind_of_every_host():
    family = sessions_gauge("g", "doc", [("vnc", "a"), ("vnc", "a")], ["b"])
    values = {tuple(s.labels.values()): s.value for s in family.samples}
    assert values == {("vnc", "a"): 2, ("serial", "a"): 0, ("vnc", "b"): 0, ("serial", "b"): 0}


def test_events_reach_the_parent_from_a_forked_child():
    meter = Meter()
    events = Events(meter)
    pid = os.fork()
    if pid == 0:  # the child: what a connection's process does
        events.opened("serial", "node1")
        os._exit(0)
    os.waitpid(pid, 0)
    events.drain(lambda: {pid})
    assert meter.sessions[pid].console == "serial"
    events.drain(lambda: set())  # the child is gone
    assert meter.sessions == {}
