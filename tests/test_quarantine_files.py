"""The quarantine's files without a relay: the format and its bounds, legacy files, one
retention pass (delivery/quarantine/store.py, delivery/quarantine/retention.py, delivery/quarantine/ledger.py)."""

from __future__ import annotations

import json
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from frontfilter.delivery import safeio
from frontfilter.delivery.spool import Envelope
from frontfilter.delivery.quarantine import ledger, retention, store

RAW = b"Subject: hello\r\n\r\nbody\r\n"


@dataclass(frozen=True)
class FakePart:
    path: str
    filename: str | None
    declared_type: str = "application/octet-stream"
    detected_type: str = "application/x-dosexec"
    size: int = 10
    in_archive: bool = False


def held(queue_id: str = "0TESTID00001", parts: tuple[FakePart, ...] = (), **changes: object) -> store.Held:
    envelope = Envelope(id=queue_id, sender="alice@example.net", recipients=("bob@example.org",),
                        arrived=0, size=0, options=("BODY=8BITMIME",), client="192.0.2.1:25", helo="c.test")
    meta = store.held(envelope, arrived=1_800_000_000.0, auth_user=None, tls=False, rule="hold",
                      reasons=["hold (quarantine, enforce): yes"], reply="550 5.7.1 Held", size=0, parts=parts)
    return meta if not changes else store.Held(**{**meta.__dict__, **changes})


def test_a_held_file_round_trips_and_is_private(tmp_path: Path) -> None:
    root = tmp_path / "held"
    store.write(root, held(parts=(FakePart("2", "a.exe"),)), RAW)
    path = root / "0TESTID00001.held"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(root.stat().st_mode) == 0o700
    meta, body = store.read(path, "0TESTID00001")
    assert body == RAW and meta.size == len(RAW)
    assert (meta.sender, meta.recipients, meta.options) == ("alice@example.net", ("bob@example.org",), ("BODY=8BITMIME",))
    assert meta.parts == (store.PartSummary("2", "a.exe", "application/octet-stream", "application/x-dosexec", 10),)
    with pytest.raises(store.QuarantineFormatError, match="file says it is 0TESTID00001"):
        store.read(path, "0OTHERID0001")


def test_a_part_tree_too_big_for_the_metadata_line_is_cut_not_the_message(tmp_path: Path) -> None:
    # A crafted message: thousands of parts with long names. The file is still written, the
    # envelope whole, the tree summarised.
    parts = tuple(FakePart(f"1.{i}", "x" * 5000) for i in range(3000))
    store.write(tmp_path, held(parts=parts), RAW)
    raw = (tmp_path / "0TESTID00001.held").read_bytes()
    assert len(raw.split(b"\n", 2)[1]) <= store.MAX_METADATA_BYTES
    meta, body = store.read(tmp_path / "0TESTID00001.held", "0TESTID00001")
    assert body == RAW and meta.recipients == ("bob@example.org",)
    assert 0 < len(meta.parts) < 3000 and len(meta.parts) + meta.parts_omitted == 3000
    assert all(len(p.filename or "") <= store.MAX_TEXT_CHARS + 1 for p in meta.parts)


def test_an_envelope_that_cannot_fit_is_refused_by_name(tmp_path: Path) -> None:
    many = tuple(f"{'r' * 60}{i}@example.org" for i in range(20000))
    with pytest.raises(store.QuarantineFormatError, match="metadata of .* bytes: over"):
        store.write(tmp_path, held(recipients=many), RAW)
    assert not list(tmp_path.glob("*.held"))


@pytest.mark.parametrize("content, problem", [
    (b"FRONTFILTER-SPOOL 1\n{}\n", "bad first line"),
    (b"FRONTFILTER-QUARANTINE 1\n{\"id\": 1\n", "metadata unreadable"),
    (b"FRONTFILTER-QUARANTINE 1\n" + b"x" * (store.MAX_METADATA_BYTES + 10), "metadata line missing or too long"),
])
def test_a_damaged_file_says_what_is_wrong(tmp_path: Path, content: bytes, problem: str) -> None:
    (tmp_path / "0TESTID00001.held").write_bytes(content)
    with pytest.raises(store.QuarantineFormatError, match=problem):
        store.read(tmp_path / "0TESTID00001.held", "0TESTID00001")


def test_a_legacy_file_keeps_the_relay_lines_apart_from_the_message_but_trusts_no_recipient() -> None:
    raw = (b"X-Frontfilter-Quarantine: rule=old client=192.0.2.7:25\r\n"
           b"X-Frontfilter-Envelope-From: <a@example.net>\r\n"
           b"X-Frontfilter-Envelope-To: <b@example.org>\r\n"
           b"X-Frontfilter-Envelope-To: <forged@example.org>\r\n"
           b"Subject: s\r\n\r\nbody\r\n")
    meta, body = store.parse_legacy(raw, "0LEGACY00001", 1.0)
    assert meta.legacy and (meta.rule, meta.sender, meta.client) == ("old", "a@example.net", "192.0.2.7:25")
    assert body == b"Subject: s\r\n\r\nbody\r\n" and meta.size == len(body)
    from frontfilter.tools.release import ReleaseError, recipients_for

    with pytest.raises(ReleaseError, match="legacy .* --to"):
        recipients_for(meta, [])
    assert recipients_for(meta, ["<Carol@Example.ORG>"]) == ("Carol@example.org",)


def test_the_released_field_is_one_line_and_names_rule_and_id() -> None:
    from frontfilter.tools.release import released_field

    field = released_field(held(rule='a"b\r\nInjected: x'), 0.0)
    assert field.count(b"\r\n") == 1 and field.endswith(b"\r\n")
    assert b'held by rule "a?b??Injected??x" as 0TESTID00001' in field


def age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_retention_removes_the_old_then_the_oldest_past_the_size_and_skips_a_locked_file(tmp_path: Path) -> None:
    for n, seconds in enumerate((500, 400, 300, 20, 10)):
        store.write(tmp_path, held(f"0TESTID0000{n}"), RAW)
        age(tmp_path / f"0TESTID0000{n}.held", seconds)
    [size] = {p.stat().st_size for p in tmp_path.glob("*.held")}       # all alike
    with safeio.lock_file(tmp_path / "0TESTID00001.held"):        # being released right now
        swept = retention.sweep(tmp_path, max_age=350, max_size=2 * size, now=time.time())
    assert [(r.id, r.reason, r.rule) for r in swept.removed] == [
        ("0TESTID00000", "age", "hold"), ("0TESTID00002", "size", "hold")]
    assert swept.busy == ["0TESTID00001"]
    assert sorted(p.stem for p in tmp_path.glob("*.held")) == ["0TESTID00001", "0TESTID00003", "0TESTID00004"]
    assert (swept.messages, swept.bytes) == (3, 3 * size) and 399 < swept.oldest_age < 420
    # The lock is gone: the next pass takes it (age), then the size is met.
    swept = retention.sweep(tmp_path, max_age=350, max_size=2 * size, now=time.time())
    assert [(r.id, r.reason) for r in swept.removed] == [("0TESTID00001", "age")]
    assert swept.messages == 2 and retention.sweep(tmp_path, 350, 0, time.time()).removed == []


def test_no_quarantine_directory_is_an_empty_quarantine(tmp_path: Path) -> None:
    swept = retention.sweep(tmp_path / "never-made", 60, 0, time.time())
    assert (swept.removed, swept.messages, swept.bytes, swept.oldest_age) == ([], 0, 0, 0.0)
    assert ledger.take(tmp_path / "never-made") == []


def test_ledger_records_are_read_in_order_and_a_bad_one_is_reported(tmp_path: Path) -> None:
    ledger.record(tmp_path, "released", "0TESTID00001", rule="hold", to=["b@example.org"])
    ledger.record(tmp_path, "expired", "0TESTID00002", reason="age")
    (tmp_path / ".events" / "garbage-0-9.json").write_text("[")
    taken = ledger.take(tmp_path)
    good = [r.fields for r in taken if r.fields is not None]
    assert [(f["event"], f["id"]) for f in good] == [("released", "0TESTID00001"), ("expired", "0TESTID00002")]
    assert [r.problem != "" for r in taken if r.fields is None] == [True]
    assert ledger.waiting(tmp_path, "released", "0TESTID00001")
    ledger.remove(taken)
    assert ledger.take(tmp_path) == [] and not ledger.waiting(tmp_path, "released", "0TESTID00001")
    assert json.loads(json.dumps(good))          # plain JSON values, ready for a log line


def test_retention_clears_event_records_a_killed_tool_left_half_written(tmp_path: Path) -> None:
    ledger.record(tmp_path, "released", "0TESTID00001", rule="hold", to=["b@example.org"])
    events = tmp_path / ".events"
    killed = events / f"released-0TESTID00002-1.json.{os.getpid()}{safeio.TEMP_SUFFIX}"
    killed.write_text('{"ev')
    old = time.time() - retention.STALE_TEMP_AGE - 1
    os.utime(killed, (old, old))
    being_written = events / f"released-0TESTID00003-1.json.1{safeio.TEMP_SUFFIX}"
    being_written.write_text("")
    os.utime(being_written, (old, old))
    with safeio.lock_file(being_written):                       # a tool writing it right now
        retention.sweep(tmp_path, max_age=3600, max_size=0, now=time.time())
        assert sorted(p.name for p in events.iterdir()) == sorted(
            [being_written.name, *(p.name for p in events.glob("*.json"))])
    assert [r.fields["id"] for r in ledger.take(tmp_path) if r.fields] == ["0TESTID00001"]


def test_retention_leaves_a_temporary_not_locked_yet(tmp_path: Path) -> None:
    """A writer creates its temporary, then locks it: a pass in between must not take the new
    file for one a crash left. In CI a held message was answered 451 (internal error) because
    the relay's retention, run at start, removed the quarantine file being written."""
    store.write(tmp_path, held("0TESTID00001"), b"Subject: x\r\n\r\nbody\r\n")
    fresh = tmp_path / f"0TESTID00002.eml.{os.getpid()}{safeio.TEMP_SUFFIX}"
    fresh.write_bytes(b"being written")                          # created, not locked yet
    left = tmp_path / f"0TESTID00003.eml.1{safeio.TEMP_SUFFIX}"
    left.write_bytes(b"half")
    old = time.time() - retention.STALE_TEMP_AGE - 1
    os.utime(left, (old, old))                                   # a crash, ten minutes ago
    retention.sweep(tmp_path, max_age=3600, max_size=0, now=time.time())
    assert fresh.exists() and not left.exists()


def test_the_relay_reports_each_record_once_and_a_record_cannot_forge_the_line(tmp_path: Path,
                                                                                caplog: pytest.LogCaptureFixture) -> None:
    import asyncio
    import logging

    from frontfilter.config import QuarantineConfig
    from frontfilter.delivery.quarantine.expiry import Expiry

    ledger.record(tmp_path, "released", "0TESTID00001", rule="hold", to=["b@example.org"],
                  worker="x", by="someone")
    ledger.record(tmp_path, "expired", "0TESTID00002", reason="age", rule="gone-rule")
    hostile = next((tmp_path / ".events").glob("released-*"))      # edited by hand, say
    hostile.write_text(json.dumps({**json.loads(hostile.read_text()), "queue_id": "0FORGED00001"}))
    expiry = Expiry(QuarantineConfig(dir=tmp_path), lambda: ["hold"])
    with caplog.at_level(logging.INFO, logger="frontfilter"):
        assert asyncio.run(expiry.report_ledger()) == 2
        assert asyncio.run(expiry.report_ledger()) == 0            # removed once reported
    lines = [r.fields for r in caplog.records if getattr(r, "fields", {}).get("event", "").startswith("quarantine_")]
    assert [(l["event"], l["queue_id"], l["by"]) for l in lines] == [
        ("quarantine_released", "0TESTID00001", "frontfilter quarantine"),
        ("quarantine_expired", "0TESTID00002", "frontfilter quarantine")]
    assert lines[0]["rule"] == "hold" and lines[1]["reason"] == "age" and lines[1]["rule"] == "gone-rule"
