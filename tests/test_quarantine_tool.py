"""`frontfilter quarantine list | show | release | delete | expire`, as an administrator runs it,
against a real relay (two workers, queue mode, and sync mode) and a real backend that keeps the
bytes it received; and the relay's own retention, seen in its log and on its /metrics."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from frontfilter.delivery import safeio
from tests.harness import REPO, RawClient, RecordingSink, Relay, eventually, write_config
from tests.observability.support import http_get

WAIT = 20.0          # bound on each wait for the relay: a pass of its task, a delivery

HOLD_RULE = '''
[[rule]]
name = "hold-invoices"
description = "invoices wait for a person"
subject = ["*invoice*"]
action = "quarantine"
reply = "550 5.7.1 Held for review"
'''

# A message the client sends: an attachment, so the part tree has something to show.
MESSAGE = (b"From: Alice <alice@example.net>\r\n"
           b"To: Bob <bob@example.org>\r\n"
           b"Subject: your invoice 42\r\n"
           b"Message-ID: <invoice-42@test>\r\n"
           b"MIME-Version: 1.0\r\n"
           b"Content-Type: multipart/mixed; boundary=\"b1\"\r\n"
           b"\r\n"
           b"--b1\r\n"
           b"Content-Type: text/plain\r\n"
           b"\r\n"
           b"Please pay.\r\n"
           b"..a line that starts with a dot, to be dot-stuffed on the wire\r\n"
           b"--b1\r\n"
           b"Content-Type: application/pdf; name=\"invoice-42.pdf\"\r\n"
           b"Content-Disposition: attachment; filename=\"invoice-42.pdf\"\r\n"
           b"Content-Transfer-Encoding: base64\r\n"
           b"\r\n"
           b"JVBERi0xLjQKJcOkw7zDtsOfCjEgMCBvYmoKPDwvVHlwZS9DYXRhbG9nPj4KZW5kb2JqCg==\r\n"
           b"--b1--\r\n")
RELEASED = re.compile(rb'^X-Frontfilter-Released: [A-Z][a-z]{2}, \d{1,2} [A-Z][a-z]{2} \d{4} '
                      rb'\d\d:\d\d:\d\d [+-]\d{4}; held by rule "hold-invoices" as ([0-9A-Z]+)\r\n')


def rules_dir(tmp_path: Path, hold: bool = True) -> Path:
    rules = tmp_path / "rules"
    if not rules.exists():
        shutil.copytree(REPO / "rules", rules)
    local = rules / "90-hold.toml"
    if hold:
        local.write_text(HOLD_RULE)
    else:
        local.unlink(missing_ok=True)
    return rules


def config_for(tmp_path: Path, sink: RecordingSink, mode: str, metrics: bool = False,
               workers: int = 1, **quarantine: Any) -> Path:
    sections: dict[str, Any] = {
        "backend": {"mode": mode, "skip_failed_for": "100ms"},
        "spool": {"dir": str(tmp_path / "spool"), "scan_interval": "200ms"},
        "server": {"hostname": "mx.test", "listen": ["127.0.0.1:0"],
                   "max_message_size": "1MiB", "max_recipients": 5, "shutdown_grace": "5s",
                   "workers": workers},
        "quarantine": {"dir": str(tmp_path / "held"), **quarantine},
    }
    if metrics:                  # the relay says which port it got (Relay.http_port)
        sections["metrics"] = {"listen": "127.0.0.1:0"}
    return write_config(tmp_path, [sink.port], rules_dir=rules_dir(tmp_path), **sections)


def quarantine(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The tool as an administrator runs it."""
    return subprocess.run([sys.executable, "-m", "frontfilter", "quarantine", *args, "--config", str(config)],
                          capture_output=True, text=True, cwd=REPO, timeout=60)


def hold(relay: Relay, message: bytes = MESSAGE, recipient: str = "bob@example.org") -> str:
    """Send a message the rule holds; its queue id (the one the client saw)."""
    with RawClient(relay.port) as client:
        client.begin_data(recipient=recipient)
        answer = client.command(_dot_stuffed(message) + b".")
    assert answer.startswith("550 5.7.1 Held for review"), answer
    queue_id = answer.rsplit("[", 1)[1].rstrip("]")
    relay.wait_event("message", queue_id=queue_id, verdict="quarantined")
    return queue_id


def _dot_stuffed(message: bytes) -> bytes:
    return b"\r\n".join(b"." + line if line.startswith(b".") else line for line in message.split(b"\r\n"))


def metric(relay: Relay, sample: str) -> float | None:
    """One sample's value from the relay's /metrics (None while it is absent)."""
    status, body = http_get(relay.http_port, "/metrics")
    assert status == 200
    for line in body.splitlines():
        name, _, value = line.rpartition(" ")
        if name == sample:
            return float(value)
    return None


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    text = (done.stdout + done.stderr).strip()
    assert "Traceback" not in text and len(text.splitlines()) == 1, text
    return text


# ---- queue mode, two workers --------------------------------------------------------------------

def test_held_mail_is_listed_shown_released_byte_identical_and_counted(tmp_path: Path) -> None:
    with RecordingSink() as sink:
        config = config_for(tmp_path, sink, "queue", metrics=True, workers=2)
        with Relay(config) as relay:
            relay.wait_event("workers_ready")
            queue_id = hold(relay)
            assert sink.messages == []

            listed = quarantine(config, "list")
            assert listed.returncode == 0, listed.stderr
            [line] = [l for l in listed.stdout.splitlines() if l.startswith(queue_id)]
            assert "hold-invoices" in line and "<alice@example.net> -> <bob@example.org>" in line
            [item] = json.loads(quarantine(config, "list", "--json").stdout)
            assert (item["id"], item["rule"], item["recipients"]) == (queue_id, "hold-invoices", ["bob@example.org"])

            shown = quarantine(config, "show", queue_id)
            assert shown.returncode == 0, shown.stderr
            assert "rule:          hold-invoices" in shown.stdout
            assert "reply:         550 5.7.1 Held for review" in shown.stdout
            assert re.search(r"hold-invoices \(quarantine, enforce\): .*invoice", shown.stdout), shown.stdout
            assert re.search(r"  2 'invoice-42.pdf' declared=application/pdf detected=application/pdf", shown.stdout)
            assert "  Subject: your invoice 42" in shown.stdout.splitlines()
            document = json.loads(quarantine(config, "show", queue_id, "--json").stdout)
            assert [p["filename"] for p in document["parts"]] == [None, "invoice-42.pdf"]
            assert document["headers"].startswith("From: Alice <alice@example.net>\r\n")

            released = quarantine(config, "release", queue_id)
            assert released.returncode == 0, released.stderr
            assert one_line(released) == (f"{queue_id}: released to <bob@example.org> (rule hold-invoices): "
                                          f"queued as {queue_id}")
            [received] = sink.wait_for(1, WAIT)
            relay.wait_event("delivery", queue_id=queue_id, status="delivered", timeout=WAIT)
            # What the client sent, byte for byte, under exactly one added field.
            field = RELEASED.match(received.data)
            assert field is not None, received.data[:200]
            assert field.group(1).decode() == queue_id
            assert received.data[field.end():] == MESSAGE
            assert (received.sender, received.recipients) == ("alice@example.net", ["bob@example.org"])
            assert quarantine(config, "list").stdout.strip() == "Quarantine is empty."

            # The relay (one of its workers) logs the release and counts it.
            logged = relay.wait_event("quarantine_released", queue_id=queue_id, timeout=WAIT)
            assert (logged["rule"], logged["to"], logged["spool_id"]) == ("hold-invoices", ["bob@example.org"], queue_id)
            assert eventually(lambda: metric(relay, 'frontfilter_quarantine_released_total{rule="hold-invoices"}'),
                              timeout=WAIT) == 1
            assert len(relay.events("quarantine_released")) == 1           # one worker reports it

            # A second message: deleted, and gone for good.
            second = hold(relay)
            deleted = quarantine(config, "delete", second)
            assert (deleted.returncode, one_line(deleted)) == (0, f"{second}: deleted")
            assert not list((tmp_path / "held").glob(f"{second}.*"))
            again = quarantine(config, "delete", second)
            assert again.returncode == 1 and "not in the quarantine" in one_line(again)
            assert eventually(lambda: metric(relay, "frontfilter_quarantine_messages") == 0, timeout=WAIT)
    assert len(sink.messages) == 1


def test_a_release_repeated_after_it_reached_the_spool_is_not_queued_twice(tmp_path: Path) -> None:
    # The crash the release guards against: the message spooled, the quarantine file still
    # there. Made here by copying the file back before the relay starts delivering.
    with RecordingSink() as sink:
        config = config_for(tmp_path, sink, "queue")
        with Relay(config) as relay:
            queue_id = hold(relay)
        kept = next((tmp_path / "held").glob(f"{queue_id}.held")).read_bytes()
        assert quarantine(config, "release", queue_id).returncode == 0
        (tmp_path / "held" / f"{queue_id}.held").write_bytes(kept)
        repeated = quarantine(config, "release", queue_id)
        assert repeated.returncode == 0, repeated.stdout
        assert one_line(repeated).endswith(f"queued as {queue_id} (already queued by an earlier release)")
        assert [p.name for p in (tmp_path / "spool" / "queue").glob("*.msg")] == [f"{queue_id}.msg"]
        with Relay(config) as relay:                         # the relay delivers it once
            relay.wait_event("delivery", queue_id=queue_id, status="delivered", timeout=WAIT)
            relay.wait_event("quarantine_released", queue_id=queue_id, timeout=WAIT)
            eventually(lambda: not list((tmp_path / "held" / ".events").iterdir()), timeout=WAIT)
        assert len(relay.events("quarantine_released")) == 1     # one release, reported once
        assert len(sink.messages) == 1
        assert not (tmp_path / "held" / f"{queue_id}.held").exists()


def test_a_release_drops_a_forged_authentication_results_field_as_the_relay_does(tmp_path: Path) -> None:
    """The backend trusts Authentication-Results fields with the relay's authserv-id: one that
    came with the held message is not released with it; the rest is the message as received."""
    forged = b"Authentication-Results: mx.test; spf=pass smtp.mailfrom=bank.example\r\n"
    with RecordingSink() as sink:
        config = config_for(tmp_path, sink, "queue")
        with Relay(config) as relay:
            queue_id = hold(relay, forged + MESSAGE)
            assert quarantine(config, "release", queue_id).returncode == 0
            [received] = sink.wait_for(1, WAIT)
    field = RELEASED.match(received.data)
    assert field is not None and received.data[field.end():] == MESSAGE


def test_the_relay_expires_old_mail_by_itself_and_counts_it(tmp_path: Path) -> None:
    with RecordingSink() as sink:
        config = config_for(tmp_path, sink, "queue", metrics=True, workers=2, max_age="3s")
        with Relay(config) as relay:
            relay.wait_event("workers_ready")
            queue_id = hold(relay)
            assert (tmp_path / "held" / f"{queue_id}.held").exists()
            expired = relay.wait_event("quarantine_expired", queue_id=queue_id, timeout=WAIT)
            assert (expired["reason"], expired["rule"], expired["by"]) == ("age", "hold-invoices", "relay")
            assert expired["age"] >= 3
            assert not (tmp_path / "held" / f"{queue_id}.held").exists()
            assert eventually(lambda: metric(relay, 'frontfilter_quarantine_expired_total{reason="age"}'),
                              timeout=WAIT) == 1
            assert metric(relay, 'frontfilter_quarantine_expired_total{reason="size"}') == 0
            assert metric(relay, "frontfilter_quarantine_messages") == 0
            assert len(relay.events("quarantine_expired")) == 1            # one worker sweeps
    assert sink.messages == []


def test_expire_by_the_tool_applies_max_size_oldest_first_and_the_relay_counts_it(tmp_path: Path) -> None:
    with RecordingSink() as sink:
        config = config_for(tmp_path, sink, "queue", metrics=True)
        with Relay(config) as relay:
            first, second = hold(relay), hold(relay)
        sizes = {p.stem: p.stat().st_size for p in (tmp_path / "held").glob("*.held")}
        a_minute_ago = time.time() - 60
        os.utime(tmp_path / "held" / f"{first}.held", (a_minute_ago, a_minute_ago))     # surely the older
        # Room for one of them: the older goes.
        config = config_for(tmp_path, sink, "queue", metrics=True, max_size=max(sizes.values()) + 10)
        done = quarantine(config, "expire")
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout.splitlines()[0].startswith(f"{first}: expired (quarantine over quarantine.max_size")
        assert "-- 1 removed; 1 message held" in done.stdout
        assert sorted(p.stem for p in (tmp_path / "held").glob("*.held")) == [second]
        with Relay(config) as relay:              # the tool's record reaches the relay's log and metrics
            logged = relay.wait_event("quarantine_expired", queue_id=first, timeout=WAIT)
            assert (logged["reason"], logged["by"], logged["rule"]) == ("size", "frontfilter quarantine", "hold-invoices")
            assert eventually(lambda: metric(relay, 'frontfilter_quarantine_expired_total{reason="size"}'),
                              timeout=WAIT) == 1
            assert eventually(lambda: metric(relay, "frontfilter_quarantine_messages") == 1, timeout=WAIT)
            assert metric(relay, "frontfilter_quarantine_bytes") == sizes[second]
            assert 0 < (metric(relay, "frontfilter_quarantine_oldest_seconds") or 0) < 120
            assert not list((tmp_path / "held" / ".events").iterdir())


# ---- sync mode, legacy files, refusals -----------------------------------------------------------

LEGACY = (b"X-Frontfilter-Quarantine: rule=old-rule client=192.0.2.7:4711\r\n"
          b"X-Frontfilter-Envelope-From: <mallory@example.net>\r\n"
          b"X-Frontfilter-Envelope-To: <bob@example.org>\r\n"
          b"X-Frontfilter-Envelope-To: <everyone@example.org>\r\n"     # the sender's own: can't tell
          b"Subject: from before\r\n\r\nold body\r\n")


def test_in_sync_mode_a_release_goes_to_the_backend_and_a_refused_one_stays(tmp_path: Path) -> None:
    with RecordingSink() as sink:
        config = config_for(tmp_path, sink, "sync")
        with Relay(config) as relay:
            queue_id = hold(relay)
            refused = quarantine(config, "release", queue_id, "--to", "reject-me@example.org")
            assert refused.returncode == 1
            assert re.fullmatch(rf"{queue_id}: not delivered: <reject-me@example.org>: .*550 5\.1\.1 .*: "
                                r"kept in the quarantine", one_line(refused))
            assert (tmp_path / "held" / f"{queue_id}.held").exists()

            released = quarantine(config, "release", queue_id)
            assert released.returncode == 0, released.stdout
            assert re.fullmatch(rf"{queue_id}: released to <bob@example.org> \(rule hold-invoices\): "
                                r"accepted by 127\.0\.0\.1:\d+", one_line(released))
            [received] = sink.messages                       # accepted before the tool returned
            field = RELEASED.match(received.data)
            assert field is not None and received.data[field.end():] == MESSAGE
            assert not (tmp_path / "held" / f"{queue_id}.held").exists()
            relay.wait_event("quarantine_released", queue_id=queue_id, timeout=WAIT)


def test_a_legacy_file_is_listed_and_released_only_to_the_addresses_given(tmp_path: Path) -> None:
    with RecordingSink() as sink:
        config = config_for(tmp_path, sink, "sync")
        held = tmp_path / "held"
        held.mkdir(mode=0o700)
        (held / "0LEGACY0000000000001.eml").write_bytes(LEGACY)
        listed = quarantine(config, "list")
        assert re.search(r"^0LEGACY0000000000001 .* old-rule \(legacy\) +<mallory@example.net> -> "
                         r"\(legacy: --to needed\)$", listed.stdout, re.M), listed.stdout
        refused = quarantine(config, "release", "0LEGACY0000000000001")
        assert refused.returncode == 1
        assert "legacy" in one_line(refused) and "--to" in one_line(refused)
        assert (held / "0LEGACY0000000000001.eml").exists() and sink.messages == []

        released = quarantine(config, "release", "0LEGACY0000000000001", "--to", "carol@example.org")
        assert released.returncode == 0, released.stdout
        [received] = sink.messages
        assert received.recipients == ["carol@example.org"]
        assert received.data.split(b"\r\n", 1)[1] == b"Subject: from before\r\n\r\nold body\r\n"
        assert received.data.startswith(b'X-Frontfilter-Released: ')
        assert b'held by rule "old-rule" as 0LEGACY0000000000001\r\n' in received.data
        assert not (held / "0LEGACY0000000000001.eml").exists()


def test_bad_ids_and_busy_files_are_one_line_each_and_nothing_changes(tmp_path: Path) -> None:
    with RecordingSink() as sink:
        config = config_for(tmp_path, sink, "sync")
        with Relay(config) as relay:
            queue_id = hold(relay)
        shown = quarantine(config, "show", "../../etc/passwd")
        assert shown.returncode == 2 and one_line(shown) == "frontfilter: '../../etc/passwd': not a quarantine id"
        for action in ("release", "delete"):
            done = quarantine(config, action, "../x")
            assert done.returncode == 1 and one_line(done) == "'../x': not a quarantine id"
        missing = quarantine(config, "show", "0NOSUCHID00000")
        assert missing.returncode == 2 and one_line(missing) == "frontfilter: 0NOSUCHID00000: not in the quarantine"
        no_config = subprocess.run([sys.executable, "-m", "frontfilter", "quarantine", "list"],
                                   capture_output=True, text=True, cwd=REPO, timeout=60)
        assert no_config.returncode == 2 and "--config" in one_line(no_config)

        path = tmp_path / "held" / f"{queue_id}.held"
        with safeio.lock_file(path):             # another process is at it (a release, say)
            for action in ("release", "delete"):
                busy = quarantine(config, action, queue_id)
                assert busy.returncode == 1 and "busy" in one_line(busy) and "skipped" in one_line(busy)
        assert path.exists() and sink.messages == []


def test_a_damaged_file_is_refused_by_name(tmp_path: Path) -> None:
    with RecordingSink() as sink:
        config = config_for(tmp_path, sink, "sync")
        with Relay(config) as relay:
            queue_id = hold(relay)
        path = tmp_path / "held" / f"{queue_id}.held"
        path.write_bytes(path.read_bytes()[:-5])          # cut short: the size no longer agrees
        shown = quarantine(config, "show", queue_id)
        assert shown.returncode == 2
        assert re.fullmatch(rf"frontfilter: {queue_id}: message is \d+ bytes, the metadata says \d+", one_line(shown))
        released = quarantine(config, "release", queue_id)
        assert released.returncode == 1 and "not released" in one_line(released)
        path.write_bytes(b"FRONTFILTER-QUARANTINE 1\n{not json\n")
        listed = quarantine(config, "list")
        assert listed.returncode == 1 and f"unreadable: {queue_id}: metadata unreadable" in listed.stdout
        assert path.exists() and sink.messages == []


def test_rescan_releases_what_the_current_rules_forward_and_keeps_what_they_hold(tmp_path: Path) -> None:
    with RecordingSink() as sink:
        config = config_for(tmp_path, sink, "sync")
        with Relay(config) as relay:
            queue_id = hold(relay)
        still = quarantine(config, "release", "--rescan", queue_id)
        assert still.returncode == 1
        assert one_line(still).startswith(f"{queue_id}: the current rules say quarantined by rule hold-invoices")
        assert (tmp_path / "held" / f"{queue_id}.held").exists()

        rules_dir(tmp_path, hold=False)                     # the rule is gone: the rules pass it
        released = quarantine(config, "release", "--rescan", queue_id)
        assert released.returncode == 0, released.stdout
        assert "rescanned" in one_line(released)
        [received] = sink.messages
        field = RELEASED.match(received.data)
        assert field is not None
        rest = received.data[field.end():]
        # As the relay forwards it now: its own trace on top of the message, nothing else changed.
        assert rest.startswith(b"Authentication-Results: mx.test; none\r\nReceived: from ") and rest.endswith(MESSAGE)
        assert not (tmp_path / "held" / f"{queue_id}.held").exists()


@pytest.mark.parametrize("settings, problem", [
    ({"max_age": "0s"}, "quarantine.max_age: must be more than 0s"),
    ({"max_age": "a while"}, "quarantine.max_age: 'a while' is not a duration"),
    ({"max_size": "lots"}, "quarantine.max_size: 'lots' is not a size"),
    ({"max_sise": "1GiB"}, "quarantine.max_sise: unknown key (did you mean 'max_size'?)"),
])
def test_retention_settings_are_checked_by_file_section_and_key(tmp_path: Path, settings: dict[str, str],
                                                                problem: str) -> None:
    config = write_config(tmp_path, [25], quarantine={"dir": str(tmp_path / "held"), **settings})
    done = subprocess.run([sys.executable, "-m", "frontfilter", "check", "--config", str(config)],
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode == 1
    assert f"{config}: {problem}" in done.stderr, done.stderr
