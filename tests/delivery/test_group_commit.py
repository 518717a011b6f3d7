"""Small messages are spooled by the group commit (written on the event loop, made durable by
the spool's commit process for many at once): every one acknowledged is on disk, whole and handed on locked; one
that cannot be committed is refused and leaves nothing behind."""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import sys
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from frontfilter.config import SpoolConfig, build_config
from frontfilter.delivery import committer, safeio
from frontfilter.delivery.queue import StartError, StoreAndForward
from frontfilter.delivery.spool import (GROUPED_WRITE_MAX, Admission, Envelope, Message, Reservation, Spool,
                                        Spooled, open_message, parse_message)
from frontfilter.model import new_queue_id

MESSAGES = 40


def envelope(size: int) -> Envelope:
    return Envelope(id=new_queue_id(), sender="alice@example.net", recipients=("bob@example.org",),
                    arrived=1_700_000_000.0, size=size)


def body(n: int) -> bytes:
    return b"Subject: %d\r\n\r\n" % n + b"x" * (4000 + n) + b"\r\n"


async def open_spool(tmp_path: Path, **config: object) -> tuple[Spool, list[Message]]:
    spool = Spool(SpoolConfig(dir=tmp_path / "spool", min_free_space=0, **config))   # type: ignore[arg-type]
    await spool.open()
    handed: list[Message] = []
    spool.on_spooled = handed.append
    return spool, handed


@asynccontextmanager
async def spool_in(tmp_path: Path) -> AsyncIterator[tuple[Spool, list[Message]]]:
    """`open_spool`; at the end, the messages handed on let go and the spool shut down."""
    spool, handed = await open_spool(tmp_path)
    try:
        yield spool, handed
    finally:
        for message in handed:
            message.close()
        await asyncio.to_thread(spool.shutdown)


def test_messages_spooled_at_once_are_each_durable_whole_and_handed_on_locked(tmp_path: Path) -> None:
    async def main() -> None:
        async with spool_in(tmp_path) as (spool, handed):
            envelopes = [envelope(len(body(n))) for n in range(MESSAGES)]
            results = await asyncio.gather(*(spool.submit(e, body(n)) for n, e in enumerate(envelopes)))
            assert [r.result for r in results] == [Admission.OK] * MESSAGES
            assert sorted(m.id for m in handed) == sorted(e.id for e in envelopes)
            for n, sent in enumerate(envelopes):
                assert parse_message(spool.layout.msg(sent.id).read_bytes()) == (sent, body(n))
                with pytest.raises(safeio.Busy):          # the worker holds it: nobody else may
                    open_message(spool.layout, sent.id)
            assert list(spool.layout.tmp.iterdir()) == []
            assert spool.count == MESSAGES

    asyncio.run(main())


def test_a_message_that_cannot_be_committed_is_refused_and_leaves_no_file(tmp_path: Path) -> None:
    async def main() -> None:
        spool, handed = await open_spool(tmp_path)
        try:
            shutil.rmtree(spool.layout.queue)        # the rename into queue/ fails: ENOENT
            spooled = await spool.submit(envelope(len(body(1))), body(1))
            assert spooled.result is Admission.FAILED and "FileNotFoundError" in spooled.reason
            assert handed == [] and list(spool.layout.tmp.iterdir()) == []
            assert spool.admit() is Admission.OK and spool.count == 0    # its room given back
        finally:
            await asyncio.to_thread(spool.shutdown)

    asyncio.run(main())


FAULTY = [sys.executable, str(Path(__file__).with_name("faulty_committer.py"))]


def faulty(monkeypatch: pytest.MonkeyPatch, fault: str, groups: Path) -> None:
    """The spools opened from here on commit in tests/delivery/faulty_committer.py."""
    monkeypatch.setattr(committer, "PROGRAM", FAULTY)
    monkeypatch.setenv("COMMIT_FAULT", fault)
    monkeypatch.setenv("COMMIT_GROUPS", str(groups))


def test_an_unsynced_directory_refuses_its_whole_group_and_only_that_group(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The commit process's first directory fsync fails (EIO). Every message renamed in that
    group is refused and removed; those committed after it are not touched."""
    record = tmp_path / "groups"
    faulty(monkeypatch, "dir-fsync-once", record)

    async def main() -> None:
        async with spool_in(tmp_path) as (spool, handed):
            envelopes = [envelope(len(body(n))) for n in range(12)]
            results = await asyncio.gather(*(spool.submit(e, body(n)) for n, e in enumerate(envelopes)))
            groups = [line.split() for line in record.read_text().splitlines()]
            outcome = {e.id: r.result for e, r in zip(envelopes, results, strict=True)}
            assert sorted(outcome) == sorted(queue_id for group in groups for queue_id in group)
            assert {outcome[queue_id] for queue_id in groups[0]} == {Admission.FAILED}
            assert {outcome[queue_id] for group in groups[1:] for queue_id in group} <= {Admission.OK}
            assert sorted(os.listdir(spool.layout.queue)) == sorted(
                f"{queue_id}.msg" for group in groups[1:] for queue_id in group)
            assert os.listdir(spool.layout.tmp) == [] and len(handed) == 12 - len(groups[0])
            assert spool.count == len(handed)

    asyncio.run(main())


def test_a_commit_process_that_dies_refuses_what_it_did_not_answer_and_the_next_message_starts_another(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """It exits once its first group is renamed into queue/, before answering: those messages
    were never acknowledged, so they are refused (4xx) and removed from queue/ (the client sends
    them again: none is delivered twice, none lost). The next message starts a new process."""
    record = tmp_path / "groups"
    faulty(monkeypatch, "die-after-rename", record)

    async def main() -> None:
        async with spool_in(tmp_path) as (spool, handed):
            envelopes = [envelope(len(body(n))) for n in range(6)]
            results = await asyncio.gather(*(spool.submit(e, body(n)) for n, e in enumerate(envelopes)))
            assert {r.result for r in results} == {Admission.FAILED}
            assert "commit process ended" in results[0].reason
            assert len(record.read_text().splitlines()) >= 1        # it did rename, then died
            assert os.listdir(spool.layout.queue) == [] and os.listdir(spool.layout.tmp) == []
            assert handed == [] and spool.count == 0 and spool.admit() is Admission.OK
            lost = [r.__dict__["fields"] for r in caplog.records if r.getMessage() == "spool_commit_process_lost"]
            # Logged each time (the six may have reached two processes, each dying the same way).
            assert lost and sum(f["refused"] for f in lost) == 6
            monkeypatch.setenv("COMMIT_FAULT", "")                  # the next process is sound
            after = envelope(len(body(7)))
            spooled = await asyncio.wait_for(spool.submit(after, body(7)), 30)
            assert spooled.result is Admission.OK and [m.id for m in handed] == [after.id]
            assert parse_message(spool.layout.msg(after.id).read_bytes()) == (after, body(7))

    asyncio.run(main())


def test_a_spool_closed_beside_a_commit_process_that_never_answers_refuses_its_messages_and_ends(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Shutdown waits for the answers still due, committer.CLOSE_WAIT at most (shortened here);
    then the process is killed and its messages are refused, their files removed."""
    faulty(monkeypatch, "hang", tmp_path / "groups")
    monkeypatch.setattr(committer, "CLOSE_WAIT", 1.0)

    async def main() -> None:
        spool, handed = await open_spool(tmp_path)
        writes = [asyncio.ensure_future(spool.submit(envelope(len(body(n))), body(n))) for n in range(3)]
        await asyncio.sleep(0.2)                   # sent, taken, never answered
        await asyncio.wait_for(asyncio.to_thread(spool.shutdown), 60)
        results = await asyncio.wait_for(asyncio.gather(*writes), 10)
        assert {r.result for r in results} == {Admission.FAILED} and handed == []
        assert os.listdir(spool.layout.queue) == [] and os.listdir(spool.layout.tmp) == []

    asyncio.run(main())


def test_a_refused_message_that_cannot_be_removed_stays_locked_so_it_is_not_delivered(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its directory cannot be synced and its file cannot be removed (a file system gone
    read-only): the client is refused, so the file must not be delivered either — the worker
    keeps its lock, and the delivery side cannot take it."""
    faulty(monkeypatch, "read-only", tmp_path / "groups")

    async def main() -> None:
        spool, handed = await open_spool(tmp_path)
        sent = envelope(len(body(1)))
        try:
            spooled = await spool.submit(sent, body(1))
            assert spooled.result is Admission.FAILED and handed == []
            assert os.listdir(spool.layout.queue) == [f"{sent.id}.msg"]      # renamed, left there
            with pytest.raises(safeio.Busy):
                open_message(spool.layout, sent.id)
        finally:
            await asyncio.to_thread(spool.shutdown)

    asyncio.run(main())


def test_a_large_message_whose_commit_failed_and_cannot_be_removed_stays_locked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same for a write made whole in a spool thread (`write_locked`, large messages): the
    lock outlives the failed removal (`Pending.held`), so nobody else can take the file."""
    (tmp_path / "tmp").mkdir()

    def failing(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EROFS, "injected read-only file system")

    monkeypatch.setattr(safeio, "fsync_dir", failing)
    monkeypatch.setattr(Path, "unlink", failing)
    with pytest.raises(OSError, match="read-only"):
        safeio.write_locked(tmp_path / "tmp", tmp_path / "ID.msg", (b"new",))
    monkeypatch.undo()
    assert (tmp_path / "ID.msg").read_bytes() == b"new"
    with pytest.raises(safeio.Busy):
        safeio.lock_file(tmp_path / "ID.msg")


def test_a_service_whose_commit_process_cannot_start_does_not_start_and_says_why(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(committer, "PROGRAM", [str(tmp_path / "missing-python")])
    config = build_config({"backend": {"servers": ["127.0.0.1:9"], "mode": "queue"},
                           "spool": {"dir": str(tmp_path / "spool")}, "rules": {"dir": str(tmp_path)}},
                          tmp_path / "frontfilter.toml")

    async def main() -> None:
        queue = StoreAndForward(config)
        with pytest.raises(StartError, match="commit process cannot start.*spool.dir"):
            await queue.start()
        await queue.close()

    asyncio.run(main())


def test_requests_in_flight_are_bounded_and_every_message_is_still_taken(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """At most committer.IN_FLIGHT_MAX requests (2 here) are with the process at once (each
    carries a descriptor, counted against the user's open-file limit); the rest wait in the
    worker and go as answers come back, in order."""
    record = tmp_path / "groups"
    faulty(monkeypatch, "", record)
    monkeypatch.setattr(committer, "IN_FLIGHT_MAX", 2)

    async def main() -> None:
        async with spool_in(tmp_path) as (spool, handed):
            envelopes = [envelope(len(body(n))) for n in range(12)]
            results = await asyncio.gather(*(spool.submit(e, body(n)) for n, e in enumerate(envelopes)))
            assert [r.result for r in results] == [Admission.OK] * 12 and len(handed) == 12
            groups = [line.split() for line in record.read_text().splitlines()]
            assert max(len(group) for group in groups) <= 2
            assert [queue_id for group in groups for queue_id in group] == [e.id for e in envelopes]

    asyncio.run(main())


def test_a_commit_process_that_cannot_start_refuses_that_message_and_the_next_one_starts_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A program that cannot be run (as when the process limit is reached): the message is
    refused and leaves nothing behind; once it can run again, the next message is taken."""
    monkeypatch.setattr(committer, "PROGRAM", [str(tmp_path / "missing-python")])

    async def main() -> None:
        async with spool_in(tmp_path) as (spool, handed):
            first = await spool.submit(envelope(len(body(1))), body(1))
            assert first.result is Admission.FAILED and "commit process cannot start" in first.reason
            assert os.listdir(spool.layout.tmp) == [] and os.listdir(spool.layout.queue) == []
            monkeypatch.undo()
            second = await asyncio.wait_for(spool.submit(envelope(len(body(2))), body(2)), 30)
            assert second.result is Admission.OK and len(handed) == 1
            assert os.listdir(spool.layout.tmp) == [] and spool.admit() is Admission.OK

    asyncio.run(main())


@pytest.mark.parametrize("size", [4000, GROUPED_WRITE_MAX + 1])
def test_a_session_cancelled_while_its_message_is_written_leaves_it_to_the_worker(tmp_path: Path, size: int) -> None:
    """The case the callers meet: the task awaiting the write (a session that timed out or was
    closed) is cancelled; the write, shielded, goes on. The message is settled and handed to
    the worker, durable and whole (the client may have been told nothing: it sends it again,
    at least once as ever)."""
    async def main() -> None:
        async with spool_in(tmp_path) as (spool, handed):
            sent = envelope(size)
            task = asyncio.ensure_future(spool.submit(sent, b"c" * size))
            await asyncio.sleep(0)                   # the write begun (small: on this loop)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            for _ in range(200):                     # bounded: 10 s
                if handed:
                    break
                await asyncio.sleep(0.05)
            assert [m.id for m in handed] == [sent.id] and handed[0].body == b"c" * size
            assert spool.admit() is Admission.OK and os.listdir(spool.layout.tmp) == []

    asyncio.run(main())


@pytest.mark.parametrize("size", [4000, GROUPED_WRITE_MAX + 1])
def test_a_write_whose_caller_gave_up_leaves_the_message_for_the_worker(tmp_path: Path, size: int) -> None:
    """Its future cancelled while the write goes on: the message is spooled (it may have been
    answered 250 by the time) and not left locked, so the worker's scan can take it."""
    async def main() -> None:
        spool, handed = await open_spool(tmp_path)
        sent = envelope(size)
        started = threading.Event()
        whole_write = spool.write

        def write(*args: Any) -> Spooled:
            started.set()
            return whole_write(*args)

        setattr(spool, "write", write)          # the same write, telling when it has begun
        try:
            reservation = spool.reserve(size)
            assert isinstance(reservation, Reservation)
            job = spool.write_soon(reservation, sent, b"z" * size)
            if size > GROUPED_WRITE_MAX:
                # Cancelled before a thread took it, it is simply never written (nothing to
                # let go): wait until the write is under way, the case this test is about.
                assert await asyncio.to_thread(started.wait, 10)
            job.cancel()
            for _ in range(200):                   # bounded: 10 s
                await asyncio.sleep(0.05)
                try:
                    with open_message(spool.layout, sent.id) as message:
                        assert message.body == b"z" * size
                    break
                except (safeio.Gone, safeio.Busy):
                    continue
            else:
                pytest.fail("the message never became free for the worker")
            assert reservation.settled and handed == []
        finally:
            await asyncio.to_thread(spool.shutdown)

    asyncio.run(main())


def test_a_replaced_file_is_kept_when_its_directory_cannot_be_synced_a_new_one_is_not(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """write_atomically over a state file: removing the new one would lose both (the old is
    replaced already), and the next attempt would deliver again to every recipient."""
    def failing_fsync_dir(directory: Path) -> None:
        raise OSError(errno.EIO, "injected I/O error")

    (tmp_path / "tmp").mkdir()
    state = tmp_path / "ID.state"
    state.write_bytes(b"old")
    monkeypatch.setattr(safeio, "fsync_dir", failing_fsync_dir)
    for final in (state, tmp_path / "ID.msg"):
        with pytest.raises(OSError, match="injected"):
            safeio.write_atomically(tmp_path / "tmp", final, (b"new",))
    assert state.read_bytes() == b"new" and not (tmp_path / "ID.msg").exists()
    assert os.listdir(tmp_path / "tmp") == []


def test_space_that_ran_out_since_the_reservation_is_452_without_a_write(tmp_path: Path) -> None:
    async def main() -> None:
        spool, handed = await open_spool(tmp_path)
        try:
            reservation = spool.reserve(len(body(1)))          # at end of DATA, before the verdict
            assert isinstance(reservation, Reservation)
            spool.config = SpoolConfig(dir=spool.config.dir, min_free_space=2 ** 62)   # meanwhile
            spooled = await spool.write_soon(reservation, envelope(len(body(1))), body(1))
            assert spooled.result is Admission.FULL and spooled.reason == "disk nearly full"
            await asyncio.sleep(0)                             # the settling callback's turn
            assert handed == [] and os.listdir(spool.layout.tmp) == [] and reservation.settled
        finally:
            await asyncio.to_thread(spool.shutdown)

    asyncio.run(main())


def test_small_and_large_messages_alike_once_the_spool_is_closed_are_refused(tmp_path: Path) -> None:
    async def main() -> None:
        spool, handed = await open_spool(tmp_path)
        await asyncio.to_thread(spool.shutdown)
        spooled = await spool.submit(envelope(len(body(1))), body(1))
        assert spooled.result is Admission.FAILED and handed == []
        spooled = await spool.submit(envelope(GROUPED_WRITE_MAX + 1), b"x" * (GROUPED_WRITE_MAX + 1))
        assert spooled.result is Admission.FAILED and spool.admit() is Admission.OK
        assert os.listdir(spool.layout.queue) == [] and os.listdir(spool.layout.tmp) == []

    asyncio.run(main())


def test_a_large_message_is_spooled_whole_beside_small_ones(tmp_path: Path) -> None:
    async def main() -> None:
        async with spool_in(tmp_path) as (spool, handed):
            large = b"Subject: big\r\n\r\n" + b"y" * (GROUPED_WRITE_MAX * 2) + b"\r\n"
            big = envelope(len(large))
            results = await asyncio.gather(spool.submit(big, large),
                                           *(spool.submit(envelope(len(body(n))), body(n)) for n in range(5)))
            assert {r.result for r in results} == {Admission.OK} and len(handed) == 6
            assert parse_message(spool.layout.msg(big.id).read_bytes()) == (big, large)

    asyncio.run(main())
