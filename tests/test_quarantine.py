"""The quarantine, end to end: a message a rule quarantines is kept whole and private, and a copy
that could not be kept is never answered as if it had been (issue 22)."""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from tests.harness import REPO, RawClient, RecordingSink, Relay, write_config

QUARANTINE_RULE = '''
[[rule]]
name = "hold-invoices"
subject = ["*invoice*"]
action = "quarantine"
reply = "550 5.7.1 Held for review"
'''


def rules_with_quarantine(tmp_path: Path) -> Path:
    rules = tmp_path / "rules"
    shutil.copytree(REPO / "rules", rules)
    (rules / "90-quarantine-test.toml").write_text(QUARANTINE_RULE)
    return rules


def send(port: int, subject: str) -> str:
    with RawClient(port) as client:
        client.begin_data()
        return client.command(f"Subject: {subject}\r\n\r\nplease pay\r\n.".encode())


def test_a_quarantined_message_is_kept_whole_and_private(tmp_path: Path) -> None:
    quarantine = tmp_path / "held"          # not there yet: the relay creates it, private
    with RecordingSink() as sink:
        config = write_config(tmp_path, [sink.port], rules_dir=rules_with_quarantine(tmp_path),
                              quarantine={"dir": str(quarantine)})
        with Relay(config) as relay:
            answer = send(relay.port, "your invoice")
            line = relay.wait_event("message", verdict="quarantined")
    assert answer.startswith("550 5.7.1 Held for review")
    [kept] = list(quarantine.iterdir())
    assert kept.name == f"{line['queue_id']}.held"
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    assert stat.S_IMODE(quarantine.stat().st_mode) == 0o700
    magic, metadata, message = kept.read_bytes().split(b"\n", 2)
    assert magic == b"FRONTFILTER-QUARANTINE 1"
    held = json.loads(metadata)          # the envelope, apart from what the sender wrote
    assert (held["id"], held["rule"], held["recipients"]) == (line["queue_id"], "hold-invoices", ["bob@example.org"])
    assert message == b"Subject: your invoice\r\n\r\nplease pay\r\n"      # whole, as received
    assert held["size"] == len(message)
    assert sink.messages == []


def test_a_copy_that_cannot_be_kept_is_a_temporary_failure_even_where_quarantine_accepts(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    with RecordingSink() as sink:
        config = write_config(tmp_path, [sink.port], rules_dir=rules_with_quarantine(tmp_path),
                              quarantine={"dir": str(blocker / "held"), "then": "accept"})
        with Relay(config) as relay:
            answer = send(relay.port, "your invoice")
            line = relay.wait_event("message", verdict="tempfailed")
    assert answer.startswith("451 4.3.0 ")      # never a 250 for a copy that was not kept
    assert line["decided_by"] == "hold-invoices" and "quarantine write failed" in line["delivery"]
    assert sink.messages == []


def can_mount_a_private_tmpfs() -> bool:
    try:
        return subprocess.run(["unshare", "-m", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.skipif(not can_mount_a_private_tmpfs(), reason="needs unshare -m (root with CAP_SYS_ADMIN)")
def test_a_full_quarantine_disk_answers_452_and_keeps_nothing(tmp_path: Path) -> None:
    # A real full file system: the relay runs in its own mount namespace, where the quarantine
    # is a 16 KiB tmpfs; the message is bigger.
    quarantine = tmp_path / "held"
    quarantine.mkdir()
    mount = f"mount -t tmpfs -o size=16k,mode=0700 tmpfs {quarantine} && exec \"$0\" \"$@\""
    with RecordingSink() as sink:
        config = write_config(tmp_path, [sink.port], rules_dir=rules_with_quarantine(tmp_path),
                              quarantine={"dir": str(quarantine), "then": "accept"})
        with Relay(config, prefix=["unshare", "-m", "sh", "-c", mount]) as relay:
            with RawClient(relay.port) as client:
                client.begin_data()
                answer = client.command(b"Subject: your invoice\r\n\r\n" + b"pay now\r\n" * 8000 + b".")
            line = relay.wait_event("message", verdict="tempfailed")
    assert answer.startswith("452 4.3.1 ")
    assert line["delivery"] == "quarantine write failed: disk full"
    assert sink.messages == []
