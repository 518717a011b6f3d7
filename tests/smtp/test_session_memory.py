"""A relay that runs for months must not keep anything of a session once its connection is gone."""

from __future__ import annotations

import smtplib
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.harness import RecordingSink, Relay, write_config

WARM_UP = 100          # sessions before the first reading: caches, pools and allocator arenas fill
SESSIONS = 1000        # then this many more
# What 1,000 more sessions may add: well under one kilobyte each. Keeping every closed session
# (its protocol, streams, tasks and frames: about 13 KiB) grew the relay by 12 MiB here.
ALLOWED_GROWTH_KIB = 4 * 1024


def resident_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc status")


def run_sessions(port: int, count: int) -> None:
    message = b"Subject: memory\r\n\r\n" + b"hello\r\n" * 20
    for _ in range(count):
        with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=30) as client:
            client.sendmail("alice@example.net", ["bob@example.org"], message)


def test_memory_does_not_grow_with_the_number_of_sessions(tmp_path: Path) -> None:
    with RecordingSink() as sink, Relay(write_config(tmp_path, [sink.port],
                                                     limits={"connection_rate_per_ip": 0})) as relay:
        assert relay.proc is not None
        run_sessions(relay.port, WARM_UP)
        before = resident_kib(relay.proc.pid)
        run_sessions(relay.port, SESSIONS)
        grown = resident_kib(relay.proc.pid) - before
        assert len(sink.messages) == WARM_UP + SESSIONS
        assert grown < ALLOWED_GROWTH_KIB, f"{grown} KiB more after {SESSIONS} sessions"


def collected_by_gc(metrics_port: int) -> float:
    """Objects the cycle collector has freed so far (all generations), from /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return sum(sample.value for family in text_string_to_metric_families(text)
               for sample in family.samples if sample.name == "python_gc_objects_collected_total")


def test_a_closed_session_leaves_nothing_for_the_cycle_collector(tmp_path: Path) -> None:
    """The collector stops the event loop while it runs: sessions freed by reference counting
    keep it idle. Each session was a knot of ~70 objects (bound methods in aiosmtpd's command
    tables, the cancelled task's traceback), which made full collections of 20-36 ms."""
    with RecordingSink() as sink, Relay(write_config(tmp_path, [sink.port], limits={"connection_rate_per_ip": 0},
                                                     metrics={"listen": "127.0.0.1:0"})) as relay:
        port = relay.http_port
        run_sessions(relay.port, WARM_UP)
        before = collected_by_gc(port)
        run_sessions(relay.port, 300)
        collected = collected_by_gc(port) - before
        assert len(sink.messages) == WARM_UP + 300
        assert collected < 300, f"{collected:.0f} objects left to the cycle collector by 300 sessions"
