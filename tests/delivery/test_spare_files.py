"""Spare files (delivery/spares.py): a delivered message's file is kept and written over.

What must hold: the next message written in a spare is exactly that message (nothing of the
bigger one before it), a spare is never a message (it lives in tmp/, unlocked), one removed
meanwhile by another process's recovery is passed over, there are never more than the limit,
and a delivered message's bytes do not stay: a big one's spare is emptied at once, the spares
hold at most their byte bound, and one not written over in time is emptied.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from frontfilter.delivery import safeio
from frontfilter.delivery.spares import SpareFiles
from frontfilter.delivery.spool import (
    Envelope, Layout, open_message, parse_message, recover, remove_delivered, scan, write_message_locked)

from tests.harness import REPO


def envelope(queue_id: str, size: int = 0) -> Envelope:
    return Envelope(id=queue_id, sender="alice@example.net", recipients=("bob@example.org",),
                    arrived=1_700_000_000.5, size=size, client="192.0.2.1:4000", helo="client.test")


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    spool = Layout(tmp_path / "spool")
    spool.create()
    return spool


def deliver(layout: Layout, spares: SpareFiles, *queue_ids: str) -> None:
    messages = [open_message(layout, queue_id) for queue_id in queue_ids]
    assert remove_delivered(layout, messages, spares) == [None] * len(messages)


def test_a_delivered_file_becomes_a_spare_and_the_next_message_is_written_over_it(layout: Layout) -> None:
    spares = SpareFiles(layout.tmp)
    big = b"Subject: big\r\n\r\n" + b"x" * 100_000 + b"\r\n"
    write_message_locked(layout, envelope("2Q3DWAAAAAAAAAAAAAAA1"), big).close()
    inode = layout.msg("2Q3DWAAAAAAAAAAAAAAA1").stat().st_ino
    size = layout.msg("2Q3DWAAAAAAAAAAAAAAA1").stat().st_size
    deliver(layout, spares, "2Q3DWAAAAAAAAAAAAAAA1")

    assert scan(layout) == {}
    (spare,) = layout.tmp.iterdir()
    # It keeps its blocks (and the delivered bytes, until written over) for the next message.
    assert spare.name.startswith("spare.") and spare.stat().st_size == size and spare.stat().st_ino == inode
    assert len(spares) == 1 and spares.bytes_held == size

    small = b"Subject: small\r\n\r\nhi\r\n"
    write_message_locked(layout, envelope("2Q3DWAAAAAAAAAAAAAAA2", len(small)), small, spares=spares).close()
    assert list(layout.tmp.iterdir()) == [] and len(spares) == 0 and spares.bytes_held == 0
    written = layout.msg("2Q3DWAAAAAAAAAAAAAAA2")
    assert written.stat().st_ino == inode           # the same file, not a new one
    # Nothing of the bigger message after it: the file is exactly the new one.
    assert b"x" * 16 not in written.read_bytes()
    assert parse_message(written.read_bytes()) == (envelope("2Q3DWAAAAAAAAAAAAAAA2", len(small)), small)


def test_a_message_bigger_than_its_spare_is_written_whole(layout: Layout) -> None:
    spares = SpareFiles(layout.tmp)
    write_message_locked(layout, envelope("2Q3DWAAAAAAAAAAAAAAA1"), b"Subject: a\r\n\r\na\r\n").close()
    deliver(layout, spares, "2Q3DWAAAAAAAAAAAAAAA1")
    big = b"Subject: big\r\n\r\n" + b"y" * 300_000 + b"\r\n"
    write_message_locked(layout, envelope("2Q3DWAAAAAAAAAAAAAAA2", len(big)), big, spares=spares).close()
    assert len(spares) == 0
    assert parse_message(layout.msg("2Q3DWAAAAAAAAAAAAAAA2").read_bytes()) == (
        envelope("2Q3DWAAAAAAAAAAAAAAA2", len(big)), big)


def test_a_big_message_or_one_past_the_byte_bound_leaves_an_empty_spare(layout: Layout) -> None:
    spares = SpareFiles(layout.tmp, keep_bytes=50_000, keep_total_bytes=70_000)
    sizes = {"2Q3DWAAAAAAAAAAAAAAA1": 60_000, "2Q3DWAAAAAAAAAAAAAAA2": 40_000, "2Q3DWAAAAAAAAAAAAAAA3": 40_000}
    for queue_id, size in sizes.items():
        write_message_locked(layout, envelope(queue_id), b"Subject: a\r\n\r\n" + b"z" * size + b"\r\n").close()
    for queue_id in sizes:                      # one at a time: the order is the test's
        deliver(layout, spares, queue_id)
    held = sorted(path.stat().st_size for path in layout.tmp.iterdir())
    # The first is over keep_bytes, the third over the total once the second is kept.
    assert len(held) == 3 and held[:2] == [0, 0] and 40_000 < held[2] <= 50_000
    assert spares.bytes_held == held[2]


def test_a_spare_not_written_over_in_time_is_emptied_by_the_scan(layout: Layout) -> None:
    now = [1000.0]
    spares = SpareFiles(layout.tmp, keep_seconds=60, clock=lambda: now[0])
    write_message_locked(layout, envelope("2Q3DWAAAAAAAAAAAAAAA1"), b"Subject: a\r\n\r\nold mail\r\n").close()
    deliver(layout, spares, "2Q3DWAAAAAAAAAAAAAAA1")
    now[0] += 30
    write_message_locked(layout, envelope("2Q3DWAAAAAAAAAAAAAAA2"), b"Subject: b\r\n\r\nnewer mail\r\n").close()
    deliver(layout, spares, "2Q3DWAAAAAAAAAAAAAAA2")
    now[0] += 40                                # the first is 70 s old, the second 40
    assert spares.empty_idle() == 1
    contents = sorted(path.read_bytes() for path in layout.tmp.iterdir())
    assert contents[0] == b"" and b"newer mail" in contents[1]
    assert len(spares) == 2 and spares.bytes_held == len(contents[1])
    now[0] += 60
    assert spares.empty_idle() == 1 and spares.bytes_held == 0
    assert all(path.stat().st_size == 0 for path in layout.tmp.iterdir()) and len(spares) == 2
    # An emptied spare is still a spare: the next message is written in it.
    write_message_locked(layout, envelope("2Q3DWAAAAAAAAAAAAAAA3"), b"Subject: c\r\n\r\nc\r\n", spares=spares).close()
    assert len(spares) == 1


def test_a_spare_taken_by_another_process_meanwhile_is_passed_over(layout: Layout) -> None:
    """A worker starting beside this one removes the temporaries nobody holds: spares too. The
    writer then creates a file as before, and the message is written all the same."""
    spares = SpareFiles(layout.tmp)
    for queue_id in ("2Q3DWAAAAAAAAAAAAAAA1", "2Q3DWAAAAAAAAAAAAAAA2"):
        write_message_locked(layout, envelope(queue_id), b"Subject: a\r\n\r\na\r\n").close()
    deliver(layout, spares, "2Q3DWAAAAAAAAAAAAAAA1", "2Q3DWAAAAAAAAAAAAAAA2")
    assert len(spares) == 2
    recover(layout)                   # as another worker's start does
    assert list(layout.tmp.iterdir()) == []

    data = b"Subject: b\r\n\r\nb\r\n"
    write_message_locked(layout, envelope("2Q3DWAAAAAAAAAAAAAAA3", len(data)), data, spares=spares).close()
    assert len(spares) == 0
    assert parse_message(layout.msg("2Q3DWAAAAAAAAAAAAAAA3").read_bytes())[1] == data


def test_a_spare_is_not_taken_while_another_process_holds_it(layout: Layout) -> None:
    spares = SpareFiles(layout.tmp)
    write_message_locked(layout, envelope("2Q3DWAAAAAAAAAAAAAAA1"), b"Subject: a\r\n\r\na\r\n").close()
    deliver(layout, spares, "2Q3DWAAAAAAAAAAAAAAA1")
    (spare,) = layout.tmp.iterdir()
    # Another process's recovery holds it, about to remove it (flock: per open file, so a
    # second descriptor here stands for the other process).
    held = os.open(spare, os.O_RDONLY)
    try:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert spares.take() is None
        # Passed over and let go of by name, not left untracked with a delivered message in it.
        assert list(layout.tmp.iterdir()) == [] and spares.bytes_held == 0
    finally:
        os.close(held)


def test_spares_emptied_and_kept_after_close_leave_nothing_counted(layout: Layout) -> None:
    now = [1000.0]
    spares = SpareFiles(layout.tmp, keep_seconds=0, clock=lambda: now[0])   # a clock that stands still
    for queue_id in ("2Q3DWAAAAAAAAAAAAAAA1", "2Q3DWAAAAAAAAAAAAAAA2"):
        write_message_locked(layout, envelope(queue_id), b"Subject: a\r\n\r\na\r\n").close()
    deliver(layout, spares, "2Q3DWAAAAAAAAAAAAAAA1")
    assert spares.empty_idle() == 1 and spares.empty_idle() == 0     # and returns: each spare once
    message = open_message(layout, "2Q3DWAAAAAAAAAAAAAAA2")
    spares.close()
    assert remove_delivered(layout, [message], spares) == [None]
    assert spares.bytes_held == 0 and len(spares) == 0 and list(layout.tmp.iterdir()) == []


def test_there_are_never_more_spares_than_the_limit(layout: Layout) -> None:
    spares = SpareFiles(layout.tmp, limit=2)
    ids = [f"2Q3DWAAAAAAAAAAAAAAA{n}" for n in range(5)]
    for queue_id in ids:
        write_message_locked(layout, envelope(queue_id), b"Subject: a\r\n\r\na\r\n").close()
    deliver(layout, spares, *ids)
    assert scan(layout) == {}
    assert len(spares) == 2 and len(list(layout.tmp.iterdir())) == 2
    spares.close()
    assert list(layout.tmp.iterdir()) == []


def test_a_message_removed_before_its_delivery_is_not_made_a_spare(layout: Layout) -> None:
    """The queue tool deleted it meanwhile: the removal fails for it, and nothing is kept."""
    spares = SpareFiles(layout.tmp)
    write_message_locked(layout, envelope("2Q3DWAAAAAAAAAAAAAAA1"), b"Subject: a\r\n\r\na\r\n").close()
    message = open_message(layout, "2Q3DWAAAAAAAAAAAAAAA1")
    layout.msg("2Q3DWAAAAAAAAAAAAAAA1").unlink()
    (error,) = remove_delivered(layout, [message], spares)
    assert isinstance(error, FileNotFoundError)
    assert len(spares) == 0 and list(layout.tmp.iterdir()) == []


def test_spares_left_by_a_killed_process_are_removed_at_the_next_start(layout: Layout) -> None:
    """A spare holds no lock between messages: recovery takes it for what it is, a temporary
    whose writer is gone."""
    script = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from frontfilter.delivery.spares import SpareFiles
        from frontfilter.delivery.spool import Envelope, Layout, open_message, remove_delivered, write_message_locked
        layout = Layout(Path({str(layout.root)!r}))
        spares = SpareFiles(layout.tmp)
        e = Envelope(id="2Q3DWAAAAAAAAAAAAAAA1", sender="", recipients=("b@example.org",), arrived=0.0, size=0)
        write_message_locked(layout, e, b"Subject: a\\r\\n\\r\\na\\r\\n").close()
        remove_delivered(layout, [open_message(layout, e.id)], spares)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    killed = subprocess.run([sys.executable, "-c", script], cwd=REPO, timeout=60)
    assert killed.returncode == -9
    assert [p.name.startswith("spare.") for p in layout.tmp.iterdir()] == [True]
    recovery = recover(layout)
    assert recovery.temps_discarded == 1 and list(layout.tmp.iterdir()) == []


def test_a_spare_written_in_and_abandoned_leaves_nothing(layout: Layout) -> None:
    """A write that fails half-way (here: refused by the envelope check) in a spare removes it,
    as it removes a file it created."""
    spares = SpareFiles(layout.tmp)
    write_message_locked(layout, envelope("2Q3DWAAAAAAAAAAAAAAA1"), b"Subject: a\r\n\r\na\r\n").close()
    deliver(layout, spares, "2Q3DWAAAAAAAAAAAAAAA1")
    pending = safeio.begin_write(layout.tmp, layout.msg("2Q3DWAAAAAAAAAAAAAAA2"), [b"partial"], spare=spares.take())
    pending.discard()
    assert list(layout.tmp.iterdir()) == [] and scan(layout) == {}
