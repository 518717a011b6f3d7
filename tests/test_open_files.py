"""Open files: the relay raises its own soft limit to what its config needs (systemd gives
services 1024 and asks them to), and says so when even the hard limit is short — a relay out of
descriptors leaves new clients hanging in the listen queue, with no reply and no log line."""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

from tests.harness import REPO, RecordingSink, Relay, send, write_config

MESSAGE = b"From: a@example.net\r\nTo: bob@example.org\r\nSubject: fds\r\n\r\nhello\r\n"


def open_files_limit(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no open files line")


def with_limit(soft: int, hard: int):   # type: ignore[no-untyped-def]
    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_serve_raises_its_soft_limit_to_fit_max_connections(tmp_path: Path, sink: RecordingSink) -> None:
    # 700 sessions in sync mode: 3 descriptors each (a spill file), the queue's 10, 64 more: 2,174.
    config = write_config(tmp_path, [sink.port], limits={"max_connections": 700})
    with Relay(config, prefix=["prlimit", "--nofile=256:4096", "--"]) as relay:
        assert relay.proc is not None
        assert open_files_limit(relay.proc.pid) == (2174, 4096)
        assert send(relay.port, MESSAGE).ok
        assert not [e for e in relay.events("config_warning") if e.get("key") == "limits.max_connections"]


def test_a_hard_limit_below_the_need_is_a_warning_at_start_and_in_check(tmp_path: Path, sink: RecordingSink) -> None:
    config = write_config(tmp_path, [sink.port], limits={"max_connections": 700})
    with Relay(config, prefix=["prlimit", "--nofile=256:1000", "--"]) as relay:
        assert relay.proc is not None
        assert open_files_limit(relay.proc.pid) == (1000, 1000)        # as far as it may go
        warning = relay.wait_event("config_warning", key="limits.max_connections")
        assert "open files limited to 1000, the config may need 2174" in warning["detail"]
    checked = subprocess.run([sys.executable, "-m", "frontfilter", "check", "--config", str(config)],
                             cwd=REPO, capture_output=True, text=True, timeout=60,
                             preexec_fn=with_limit(256, 1000))
    assert checked.returncode == 0, checked.stderr      # a warning, not a refusal
    assert "open files: up to 2174 a worker" in checked.stdout
    assert "limits.max_connections: warning: open files limited to 1000" in checked.stderr


def test_check_counts_a_descriptor_per_delivery_from_a_spill_file_in_queue_mode(tmp_path: Path) -> None:
    """Queue mode: 700 sessions, each a socket and a spill file; the queue's 10 connections,
    and as many big messages delivered from their spill files (each mapping holds its own
    descriptor); 64 more: 1,484. Without the spill, neither the files nor the mappings."""
    def need(**limits: object) -> str:
        config = write_config(tmp_path, [2525], limits={"max_connections": 700, **limits},
                              backend={"mode": "queue"})
        checked = subprocess.run([sys.executable, "-m", "frontfilter", "check", "--config", str(config)],
                                 cwd=REPO, capture_output=True, text=True, timeout=60)
        assert checked.returncode == 0, checked.stderr
        return checked.stdout
    assert "open files: up to 1484 a worker" in need()
    assert "open files: up to 774 a worker" in need(data_spill_size=0)
