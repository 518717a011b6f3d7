"""Small messages are spooled by the group commit (written on the event loop, made durable by one
thread for many at once): every one acknowledged is on disk, whole and handed on locked; one
that cannot be committed is refused and leaves nothing behind."""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
from pathlib import Path

import pytest

from frontfilter.config import SpoolConfig
from frontfilter.delivery import safeio
from frontfilter.delivery.spool import (GROUPED_WRITE_MAX, Admission, Envelope, Message, Reservation, Spool,
                                        open_message,
                                        parse_message)
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


def test_messages_spooled_at_once_are_each_durable_whole_and_handed_on_locked(tmp_path: Path) -> None:
    async def main() -> None:
        spool, handed = await open_spool(tmp_path)
        envelopes = [envelope(len(body(n))) for n in range(MESSAGES)]
        try:
            results = await asyncio.gather(*(spool.submit(e, body(n)) for n, e in enumerate(envelopes)))
            assert [r.result for r in results] == [Admission.OK] * MESSAGES
            assert sorted(m.id for m in handed) == sorted(e.id for e in envelopes)
            for n, sent in enumerate(envelopes):
                assert parse_message(spool.layout.msg(sent.id).read_bytes()) == (sent, body(n))
                with pytest.raises(safeio.Busy):          # the worker holds it: nobody else may
                    open_message(spool.layout, sent.id)
            assert list(spool.layout.tmp.iterdir()) == []
            assert spool.count == MESSAGES
        finally:
            for message in handed:
                message.close()
            await asyncio.to_thread(spool.shutdown)

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


def test_an_unsynced_directory_refuses_the_whole_group_and_removes_its_files(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failing disk cannot be made here: the directory fsync is made to fail (EIO)."""
    def failing_fsync_dir(directory: Path) -> None:
        raise OSError(errno.EIO, "injected I/O error")

    async def main() -> None:
        spool, handed = await open_spool(tmp_path)
        monkeypatch.setattr(safeio, "fsync_dir", failing_fsync_dir)
        try:
            results = await asyncio.gather(*(spool.submit(envelope(len(body(n))), body(n)) for n in range(5)))
            assert {r.result for r in results} == {Admission.FAILED}
            assert handed == [] and os.listdir(spool.layout.queue) == [] and os.listdir(spool.layout.tmp) == []
        finally:
            await asyncio.to_thread(spool.shutdown)

    asyncio.run(main())


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
        spool, handed = await open_spool(tmp_path)
        large = b"Subject: big\r\n\r\n" + b"y" * (GROUPED_WRITE_MAX * 2) + b"\r\n"
        try:
            big = envelope(len(large))
            results = await asyncio.gather(spool.submit(big, large),
                                           *(spool.submit(envelope(len(body(n))), body(n)) for n in range(5)))
            assert {r.result for r in results} == {Admission.OK} and len(handed) == 6
            assert parse_message(spool.layout.msg(big.id).read_bytes()) == (big, large)
        finally:
            for message in handed:
                message.close()
            await asyncio.to_thread(spool.shutdown)

    asyncio.run(main())
