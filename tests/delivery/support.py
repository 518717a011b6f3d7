"""Helpers for the queue-mode tests: a relay configured to store and forward, fast retries."""

from __future__ import annotations

import re
import smtplib
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from tests.harness import REPO, RecordingSink, Received, write_config

# Retry timings short enough for tests to see several attempts in a second or two.
FAST = {"retry_min": "100ms", "retry_max": "400ms", "retry_jitter": 0.1, "scan_interval": "200ms"}
DRAIN_TIMEOUT = 30.0      # seconds for a backlog to reach the backend once it is back

_MESSAGE_ID = re.compile(rb"^Message-ID: <([^>]+)>", re.MULTILINE | re.IGNORECASE)


def queue_config(directory: Path, backend_ports: list[int], *, port: int | None = None,
                 backend: dict[str, Any] | None = None, spool: dict[str, Any] | None = None,
                 **sections: dict[str, Any]) -> Path:
    return write_config(
        directory, backend_ports, port=port,
        backend={"mode": "queue", "skip_failed_for": "100ms", "connect_timeout": "1s",
                 **(backend or {})},
        spool={"dir": str(directory / "spool"), **FAST, **(spool or {})}, **sections)


def dead_port() -> int:
    """A loopback port where nothing listens (a backend that is down)."""
    sink = RecordingSink().start()
    port = sink.port
    sink.stop()
    return port


def message(tag: str, body: str = "Hello.\r\n") -> bytes:
    return (f"From: alice@example.net\r\nTo: bob@example.org\r\nSubject: {tag}\r\n"
            f"Message-ID: <{tag}@test>\r\n\r\n{body}").encode()


def send_one(client: smtplib.SMTP, sender: str, recipients: list[str], data: bytes) -> str:
    """One transaction on an open session; returns the queue id from `250 ... queued as ID`."""
    client.ehlo_or_helo_if_needed()
    code, text = client.mail(sender)
    assert code == 250, (code, text)
    for recipient in recipients:
        code, text = client.rcpt(recipient)
        assert code == 250, (code, text)
    code, text = client.data(data)
    assert code == 250, (code, text)
    return text.decode().rsplit(" ", 1)[1]


def message_ids(messages: list[Received]) -> Counter[str]:
    found: Counter[str] = Counter()
    for item in messages:
        match = _MESSAGE_ID.search(item.data)
        if match:
            found[match.group(1).decode()] += 1
    return found


def spooled(directory: Path) -> list[str]:
    return sorted(p.stem for p in (directory / "spool" / "queue").glob("*.msg"))




def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "frontfilter", *args], capture_output=True,
                          text=True, cwd=REPO, timeout=60)
