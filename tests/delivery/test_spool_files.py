"""The spool's files without a relay: atomic writes, locks, format, recovery."""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
from pathlib import Path

import pytest

from frontfilter.delivery import safeio
from frontfilter.delivery.spool import (
    MAGIC, DeliveryState, Envelope, Layout, SpoolFormatError, Status, open_message,
    parse_message, recover, scan, write_message)

QUEUE_ID = "2Q3DWAAAAAAAAAAAAAAAA"


def envelope(queue_id: str = QUEUE_ID, size: int = 0) -> Envelope:
    return Envelope(id=queue_id, sender="alice@example.net",
                    recipients=("bob@example.org", "ünï@example.org"), arrived=1_700_000_000.5,
                    size=size, options=("SMTPUTF8",), client="192.0.2.1:4000", helo="client.test")


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    spool = Layout(tmp_path / "spool")
    spool.create()
    return spool


def test_a_spool_file_is_a_text_header_and_the_message_bytes(layout: Layout) -> None:
    data = b"Subject: hi\r\n\r\nbody\r\n"
    write_message(layout, envelope(size=len(data)), data)
    raw = layout.msg(QUEUE_ID).read_bytes()
    first, second, rest = raw.split(b"\n", 2)
    assert first + b"\n" == MAGIC and rest == data
    assert b'"recipients": ["bob@example.org", "\xc3\xbcn\xc3\xaf@example.org"]' in second
    assert parse_message(raw) == (envelope(size=len(data)), data)
    assert os.stat(layout.msg(QUEUE_ID)).st_mode & 0o777 == 0o600
    assert list(layout.tmp.iterdir()) == []


def test_a_truncated_or_foreign_file_is_a_format_error(layout: Layout) -> None:
    data = b"Subject: hi\r\n\r\nbody\r\n"
    write_message(layout, envelope(size=len(data)), data)
    raw = layout.msg(QUEUE_ID).read_bytes()
    with pytest.raises(SpoolFormatError, match="the envelope says"):
        parse_message(raw[:-3])
    with pytest.raises(SpoolFormatError, match="bad first line"):
        parse_message(b"From: x\r\n\r\n")


def test_state_is_absent_until_the_first_attempt_then_replaced_whole(layout: Layout) -> None:
    write_message(layout, envelope(), b"")
    with open_message(layout, QUEUE_ID) as message:
        assert message.state == DeliveryState.initial(envelope())
        assert message.state is not None
        message.state.recipients[0].status = Status.DELIVERED
        message.state.attempts = 1
        message.save(message.state)
    with open_message(layout, QUEUE_ID) as message:
        assert message.state is not None and message.state.pending() == [1]
    assert sorted(scan(layout)) == [QUEUE_ID]


def test_a_locked_message_is_busy_for_others_and_gone_once_removed(layout: Layout) -> None:
    write_message(layout, envelope(), b"")
    with open_message(layout, QUEUE_ID) as message:
        with pytest.raises(safeio.Busy):
            open_message(layout, QUEUE_ID)
        message.remove()
    with pytest.raises(safeio.Gone):
        open_message(layout, QUEUE_ID)
    assert list(layout.queue.iterdir()) == []


def test_dead_letters_keep_message_and_state_together(layout: Layout) -> None:
    write_message(layout, envelope(), b"")
    with open_message(layout, QUEUE_ID) as message:
        assert message.state is not None
        message.save(message.state)
        message.move_to_dead_letters()
    assert sorted(p.name for p in layout.dead.iterdir()) == [f"{QUEUE_ID}.msg", f"{QUEUE_ID}.state"]
    assert scan(layout) == {}


def test_recovery_drops_unlocked_temps_keeps_locked_ones_and_orphan_states(layout: Layout) -> None:
    stale = layout.tmp / "X.msg.abc.tmp"
    stale.write_bytes(b"half")
    live = layout.tmp / "Y.msg.def.tmp"
    live.write_bytes(b"being written")
    (layout.queue / "2Q3DWBBBBBBBBBBBBBBBB.state").write_text("{}")
    fd = os.open(live, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)        # another process is writing it right now
        result = recover(layout)
    finally:
        os.close(fd)
    assert (result.temps_discarded, result.orphan_states, result.messages) == (1, 1, 0)
    assert not stale.exists() and live.exists()
    assert list(layout.queue.iterdir()) == []


def test_a_failed_write_leaves_no_temp_and_no_final_file(layout: Layout) -> None:
    def chunks():
        yield b"start"
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        safeio.write_atomically(layout.tmp, layout.msg(QUEUE_ID), chunks())
    assert list(layout.tmp.iterdir()) == [] and not layout.msg(QUEUE_ID).exists()


def test_a_short_write_still_writes_every_chunk_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The spool writes a message's pieces with one writev; where the kernel takes less (a
    signal, a full disk's last blocks), the rest follows, in order: a spool file missing its
    tail is lost mail. A regular file never takes less here, so writev is made to take one
    page at most (the short write is the one thing not real in this test)."""
    real_writev = os.writev
    calls = []

    def one_page(fd: int, buffers: list[bytes]) -> int:
        calls.append(len(buffers))
        return real_writev(fd, [b"".join(buffers)[:4096]])

    monkeypatch.setattr(os, "writev", one_page)
    chunks = [b"a" * 3000, b"b" * 5000, b"", b"c" * 10000, b"\n"]
    target = tmp_path / "message"
    fd = os.open(target, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        safeio._write_all(fd, chunks)
    finally:
        os.close(fd)
    assert calls == [5] and target.read_bytes() == b"".join(chunks)


def test_the_envelope_line_carries_every_field_and_reads_back_the_same() -> None:
    """A field added to Envelope and forgotten in to_json (written field by field) or in
    `received` would be lost on disk or between end of DATA and the spool."""
    # The HELO name as read with surrogateescape (it was not UTF-8): kept as the client sent it.
    full = dataclasses.replace(envelope(), login="alice", dsn_for="2Q3DWBBBBBBBBBBBBBBBB", helo="h\udcff.example")
    assert all(getattr(full, f.name) != f.default for f in dataclasses.fields(Envelope))
    assert set(json.loads(full.to_json())) == {f.name for f in dataclasses.fields(Envelope)}
    assert Envelope.from_json(full.to_json()) == full
    assert full.received(42, 1_800_000_000.25) == dataclasses.replace(full, size=42, arrived=1_800_000_000.25)


def test_a_backend_answer_that_is_not_utf8_is_saved_in_the_state_and_read_back(layout: Layout) -> None:
    """aiosmtplib reads replies with surrogateescape; a state that could not be saved made the
    delivered recipients get the message again on every retry."""
    write_message(layout, envelope(), b"")
    latin1 = "451 4.3.0 R\udce9essayez plus tard"
    with open_message(layout, QUEUE_ID) as message:
        assert message.state is not None
        message.state.recipients[0].status = Status.DELIVERED
        message.state.recipients[1].detail = latin1
        message.state.attempts = 1
        message.save(message.state)
    with open_message(layout, QUEUE_ID) as message:
        assert message.state is not None and message.state.recipients[1].detail == latin1
        assert message.state.pending() == [1] and message.state.attempts == 1


def test_a_new_file_taken_for_a_stale_one_before_it_is_locked_is_made_again(
        layout: Layout, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker starting beside this one removes the temporaries nobody holds; one created
    here a moment before its lock is one of them. The write makes another file and succeeds,
    where it used to write into the removed one and fail at the rename (a 4xx to the client).
    The race is made here by removing the first file as soon as it is created."""
    create = safeio._create_temp
    made: list[Path] = []

    def create_then_lose_the_first(temp_dir: Path, name: str) -> tuple[int, Path]:
        fd, temp = create(temp_dir, name)
        if not made:
            temp.unlink()             # what recovery's discard_stale_temps does to it
        made.append(temp)
        return fd, temp

    monkeypatch.setattr(safeio, "_create_temp", create_then_lose_the_first)
    data = b"Subject: hi\r\n\r\nbody\r\n"
    write_message(layout, envelope(size=len(data)), data)
    assert len(made) == 2
    assert parse_message(layout.msg(QUEUE_ID).read_bytes()) == (envelope(size=len(data)), data)
    assert list(layout.tmp.iterdir()) == []
