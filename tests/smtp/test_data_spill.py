"""`limits.data_spill_size`: DATA past it is received into a file of its own (smtp/data.py), so
messages being received hold disk, not the memory budget; read back for the verdict, they are
charged to it again. The message reaches the backend byte for byte as sent."""

from __future__ import annotations

import os
import random
import tempfile
import threading
from pathlib import Path
from typing import IO, Any

import pytest

from frontfilter.smtp.budget import DataBudget
from frontfilter import reply
from frontfilter.smtp.core import Answer, CoreLimits, Message, SmtpCore, data_refusal
from frontfilter.mapped import SpilledMessage
from frontfilter.smtp.data import DataProblem, SpilledBody
from tests.content import corpus as c
from tests.harness import (WAIT_TIMEOUT, RawClient, RecordingSink, Relay, SinkBehaviour, eventually, send,
                           write_config)
from tests.smtp.core_driver import GREETING, Decider, drive, replies
from tests.smtp.test_data_budget import HELLO, message


class SpillFiles:
    """The spill files the core opened, in a directory of the test's."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.opened: list[IO[bytes]] = []

    def __call__(self) -> IO[bytes]:
        spilled = tempfile.TemporaryFile(dir=self.directory)
        self.opened.append(spilled)
        return spilled


def open_files(pid: int) -> list[str]:
    found = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            found.append(str(fd.readlink()))
        except OSError:
            pass
    return found


def core(budget: DataBudget, files: SpillFiles, spill_size: int = 64 * 1024) -> SmtpCore:
    return SmtpCore(CoreLimits(max_message_size=1024 * 1024, budget=budget, spill_size=spill_size, spill=files))


def test_a_message_being_received_past_the_spill_size_leaves_the_budget(tmp_path: Path) -> None:
    budget, files = DataBudget(150 * 1024), SpillFiles(tmp_path)
    pending = core(budget, files)
    first = message(300 * 1024)
    # In two pieces: the first 60 KiB held in memory (charged), the rest past the spill size.
    drive(pending, [HELLO + b"DATA\r\n" + first[:60 * 1024], first[60 * 1024:-3]])      # all but its end
    assert len(files.opened) == 1 and budget.held == 0       # on disk, not in memory
    # Meanwhile another message, bigger than the budget's room would be without the spill.
    decider = Decider()
    other = drive(core(budget, files), [HELLO + b"DATA\r\n" + message(120 * 1024)], decider)
    assert replies(bytes(other.output))[-1] == "250 2.0.0 OK"
    [taken] = [e for e in decider.events if isinstance(e, Message)]
    assert isinstance(taken.content, SpilledBody)          # the shell reads it back, off the loop
    assert budget.held == 0
    # And one held in memory (no spill), which fits only if the pending message holds none:
    # 120 KiB of a 150 KiB budget, where its 64 KiB kept would leave 86.
    decider = Decider()
    held = drive(core(budget, files, spill_size=0), [HELLO + b"DATA\r\n" + message(120 * 1024)], decider)
    assert replies(bytes(held.output))[-1] == "250 2.0.0 OK"
    [taken] = [e for e in decider.events if isinstance(e, Message)]
    assert not isinstance(taken.content, SpilledBody) and len(files.opened) == 2
    pending.close()                     # the client went away in the middle of its message
    assert budget.held == 0 and files.opened[0].closed


def spilled(budget: DataBudget, files: SpillFiles, wire: bytes) -> SpilledBody:
    """A whole message received into its spill file, as the core hands it over: its verdict
    not sent yet (the core's release on the verdict closes the file)."""
    session = core(budget, files)
    session.send(GREETING)
    session.receive(HELLO + b"DATA\r\n" + wire)
    for _ in range(10):
        event = session.next_event()
        if isinstance(event, Message):
            assert isinstance(event.content, SpilledBody)
            return event.content
        assert event is not None
        session.send(event.reply if isinstance(event, Answer) else reply.OK)
    raise AssertionError("no message")


def test_a_spilled_message_reads_back_byte_for_byte_charged_to_the_budget(tmp_path: Path) -> None:
    budget, files = DataBudget(150 * 1024), SpillFiles(tmp_path)
    body = spilled(budget, files, message(100 * 1024))
    assert body.reserve() and budget.held == body.length
    data, problem = body.read()
    assert problem is None and data == message(100 * 1024)[:-3]     # the terminator aside
    assert files.opened[0].closed
    # No room beside it for another: refused (452 4.3.1 at the shell), its file closed.
    other = spilled(budget, files, message(100 * 1024))
    assert not other.reserve() and files.opened[1].closed
    body.collector.release()
    assert budget.held == 0


def test_a_spilled_message_is_unstuffed_as_one_held_in_memory(tmp_path: Path) -> None:
    dotted = b"Subject: dots\r\n\r\n" + b"..a line that began with a dot\r\n" * 5000 + b".\r\n"
    body = spilled(DataBudget(0), SpillFiles(tmp_path), dotted)
    assert body.reserve()
    data, _ = body.read()
    assert data == dotted[:-3].replace(b"\r\n..", b"\r\n.")


def test_a_spilled_message_is_mapped_in_place_and_not_copied(tmp_path: Path) -> None:
    budget, files = DataBudget(150 * 1024), SpillFiles(tmp_path)
    body = spilled(budget, files, message(100 * 1024))
    assert body.reserve()
    mapped, problem = body.map()
    assert problem is None and isinstance(mapped, SpilledMessage)
    assert mapped[:] == message(100 * 1024)[:-3] and files.opened[0].closed


def test_a_spill_file_cut_short_is_never_passed_on_in_part_and_told_to_come_back(tmp_path: Path) -> None:
    """A file that lost its end (truncated behind the relay's back, a failing disk) is refused
    as an internal error, 451 4.3.0, not as a lack of storage: read back or mapped, no part of
    it goes on."""
    for way in ("read", "map"):
        budget, files = DataBudget(0), SpillFiles(tmp_path)
        body = spilled(budget, files, message(100 * 1024))
        assert body.reserve()
        os.truncate(files.opened[0].fileno(), body.length // 2)
        content, problem = body.read() if way == "read" else body.map()
        assert content is None and problem is DataProblem.UNREADABLE, way
        refusal = data_refusal(problem)[0]
        assert (refusal.code, refusal.enhanced) == (451, "4.3.0"), way
        body.collector.release()


def test_a_message_whose_session_ends_before_it_is_mapped_is_never_mixed_with_another_file(tmp_path: Path) -> None:
    """`reserve` (on the event loop) takes a descriptor of its own for `map` (in a thread): the
    session's end closing the spill file meanwhile, and another file taking its number, cannot
    make the thread map that other file (another client's message) in its place."""
    budget, files = DataBudget(0), SpillFiles(tmp_path)
    body = spilled(budget, files, message(100 * 1024))
    assert body.reserve()
    number = body.file.fileno()
    body.collector.discard()                       # the session ended: its file closed
    other = SpillFiles(tmp_path)()
    other.write(b"Subject: another client's message\r\n\r\n" + b"secret\r\n" * 20_000)
    other.flush()
    assert other.fileno() == number                 # the number is taken again at once
    mapped, problem = body.map()
    assert problem is None and mapped is not None and mapped[:] == message(100 * 1024)[:-3]
    other.close()


def test_through_a_relay_a_big_message_being_received_does_not_crowd_out_another(tmp_path: Path) -> None:
    """The relay test of limits.max_data_in_memory, with the spill on: the second message,
    which would not fit in memory beside the first one being received, is taken at once."""
    half = message(600 * 1024)
    with RecordingSink() as sink:
        config = write_config(tmp_path, [sink.port], server={"max_message_size": "1MiB"},
                              limits={"max_data_in_memory": "1MiB", "data_spill_size": "64KiB",
                                      "connection_rate_per_ip": 0},
                              backend={"mode": "queue"})
        with Relay(config) as relay, RawClient(relay.port) as first, RawClient(relay.port) as second:
            first.begin_data()
            first.send(half[:-len(b".\r\n")])             # all but its end: received into a file
            assert relay.proc is not None
            # ... in the spool's directory, unnamed (O_TMPFILE): a crash leaves nothing there.
            eventually(lambda: any(target.startswith(str(tmp_path / "spool" / "#")) for target in open_files(relay.proc.pid)))
            second.begin_data()
            assert second.command(half[:-2]).startswith("250 2.0.0")
            assert first.command(b".").startswith("250 2.0.0")
        received = sink.wait_for(2)
    body = half[len(b"Subject: big\r\n\r\n"):-3]
    assert all(r.data.endswith(body) for r in received)


class HoldingSink(RecordingSink):
    """A backend slow to answer a message, saying when one is in its hands."""

    def __init__(self) -> None:
        super().__init__(behaviour=SinkBehaviour(data_delay=3.0))
        self.holding = threading.Event()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.holding.set()
        return await super().handle_DATA(server, session, envelope)


def test_a_spilled_message_without_room_to_be_read_back_is_told_to_come_back_later(tmp_path: Path) -> None:
    """Sync mode: the first message, read back, is in memory until the backend answers; the
    second, received into its file beside it, has no room to be read back: 452 4.3.1, and
    nothing of it is forwarded."""
    big = message(900 * 1024)
    with HoldingSink() as sink:
        config = write_config(tmp_path, [sink.port], server={"max_message_size": "1MiB"},
                              limits={"max_data_in_memory": "1MiB", "data_spill_size": "64KiB",
                                      "connection_rate_per_ip": 0})
        with Relay(config) as relay, RawClient(relay.port) as first, RawClient(relay.port) as second:
            first.begin_data()
            first.send(big)
            assert sink.holding.wait(WAIT_TIMEOUT)          # the first is with the backend
            second.begin_data()
            refused = second.command(big[:-2])
            assert refused.startswith("452 4.3.1 Insufficient system storage, try again later"), refused
            assert first.read_reply().startswith("250 2.0.0")
            line = relay.wait_event("refused", stage="data")
            assert line["reply"].startswith("452 4.3.1")
        assert len(sink.messages) == 1


def test_a_spill_that_cannot_be_opened_is_tried_once_and_the_message_kept_in_memory() -> None:
    tries: list[int] = []

    def no_room() -> IO[bytes]:
        tries.append(1)
        raise OSError(28, "No space left on device")

    decider = Decider()
    session = SmtpCore(CoreLimits(max_message_size=8 * 1024 * 1024, budget=DataBudget(16 * 1024 * 1024),
                                  spill_size=64 * 1024, spill=no_room))
    wire = message(3 * 1024 * 1024)
    blocks = [wire[i:i + 65536] for i in range(0, len(wire), 65536)]
    driver = drive(session, [HELLO + b"DATA\r\n", *blocks], decider)
    assert replies(bytes(driver.output))[-1] == "250 2.0.0 OK"
    assert len(tries) == 1
    [taken] = [e for e in decider.events if isinstance(e, Message)]
    assert taken.content == wire[:-3]


# ---- judged and forwarded from the spill file ---------------------------------------------------

def spilling_message(*attachments: Any) -> bytes:
    """A message of 3 MiB on the wire: a 2 MiB block of random bytes, and `attachments`."""
    noise = random.Random(26).randbytes(2 * 1024 * 1024)
    return c.message(c.attachment(noise, "application/octet-stream", "noise.bin"), *attachments)


@pytest.mark.parametrize("mode", ["queue", "sync"])
def test_a_spilled_message_is_judged_and_forwarded_from_its_file(tmp_path: Path, mode: str) -> None:
    """A message past the spill size reaches inspection, the spool and the backend mapped from
    its spill file, and an archive decoded from it is moved to a file of its own while its
    members are read (issue 26): a program in the archive is refused all the same, a macro
    document is stripped, and everything else reaches the backend byte for byte."""
    archive = c.zip_of({"data.bin": random.Random(27).randbytes(1024 * 1024), "setup.exe": c.pe()})
    refused = spilling_message(c.attachment(archive, "application/zip", "data.zip"))
    documents = c.zip_of({"data.bin": random.Random(27).randbytes(1024 * 1024), "report.pdf": c.pdf()})
    clean = spilling_message(c.attachment(documents, "application/zip", "documents.zip"))
    macros = spilling_message(c.attachment(c.docx(macros=True), "application/octet-stream", "budget.docm"))
    with RecordingSink() as sink:
        config = write_config(tmp_path, [sink.port], server={"max_message_size": "8MiB"},
                              limits={"data_spill_size": "64KiB"}, backend={"mode": mode})
        with Relay(config) as relay:
            answer = send(relay.port, refused)
            assert (answer.code, answer.text[:5]) == (554, "5.7.1"), answer
            assert send(relay.port, clean).code == 250
            assert send(relay.port, macros).code == 250
            first, second = sink.wait_for(2)
    assert first.data.endswith(clean[clean.index(b"\r\n\r\n"):])        # our fields on top only
    assert b"X-Frontfilter-Stripped" in second.data
    assert c.attachment(c.docx(macros=True), "application/octet-stream", "budget.docm").get_payload()[:200].encode() \
        not in second.data
    noise_part = c.attachment(random.Random(26).randbytes(2 * 1024 * 1024), "application/octet-stream", "noise.bin")
    assert noise_part.get_payload().encode().replace(b"\n", b"\r\n") in second.data
    assert list((tmp_path / "spool").glob("inspect-*")) == []   # unnamed: nothing left behind


def peak_resident_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc status")


def test_a_big_message_is_delivered_from_its_spill_file_without_a_copy_in_memory(tmp_path: Path) -> None:
    """Queue mode (issue 26): a message past the spill size is inspected, spooled and sent to
    the backend from its spill file, never read back whole. A worker grew 2.1 times the
    message's size when the delivery read it back from the spool; in its file, about once."""
    big = c.message(c.attachment(random.Random(28).randbytes(15 * 1024 * 1024), "application/octet-stream",
                                 "noise.bin"))
    with RecordingSink() as sink:
        config = write_config(tmp_path, [sink.port], server={"max_message_size": "32MiB"},
                              backend={"mode": "queue"})
        with Relay(config) as relay:
            assert relay.proc is not None
            assert send(relay.port, b"Subject: warm\r\n\r\nhello\r\n").code == 250   # pools, caches, arenas
            sink.wait_for(1)
            before = peak_resident_mib(relay.proc.pid)
            assert send(relay.port, big).code == 250
            assert len(sink.wait_for(2)) == 2
            growth = peak_resident_mib(relay.proc.pid) - before
    assert growth < 1.5 * len(big) / (1024 * 1024), f"grew {growth:.1f} MiB for a {len(big) >> 20} MiB message"
