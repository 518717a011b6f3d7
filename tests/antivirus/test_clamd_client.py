"""The clamd client against a real clamd, and against fake ones that misbehave on purpose."""

from __future__ import annotations

import asyncio
import io
import zipfile
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from frontfilter.antivirus.clamd import MAX_SIGNATURES, ClamdClient, parse_reply
from frontfilter.antivirus.result import ScanResult, ScanStatus
from frontfilter.config import HostPort
from tests.antivirus.clamd_harness import (CLAM_EXE_SIGNATURE, EICAR_SIGNATURE, STREAM_MAX_LENGTH,
                                           ClamdProcess, eicar, require_testfiles)
from tests.content import corpus
from tests.harness import closed_port, free_port

BIG = 64 * 1024 * 1024          # max_size when the test is not about it
SCAN_TIMEOUT = 10.0             # generous: a real clamd answers in milliseconds
SHORT_TIMEOUT = 0.3             # for fakes that never answer


def scan(address: Path | HostPort, data: bytes, *, timeout: float = SCAN_TIMEOUT,
         max_size: int = BIG, concurrency: int = 4) -> ScanResult:
    client = ClamdClient(address, timeout=timeout, max_size=max_size, concurrency=concurrency)

    async def run() -> ScanResult:
        return await client.scan(data)

    return asyncio.run(run())


# ---- a real clamd ---------------------------------------------------------------------------

def test_eicar_in_a_mail_is_infected_and_named(clamd: ClamdProcess) -> None:
    message = corpus.message(corpus.attachment(eicar(), "text/plain", "readme.txt"))
    result = scan(clamd.socket, message)
    assert result.status is ScanStatus.INFECTED
    assert [name.split(".UNOFFICIAL")[0] for name in result.signatures] == [EICAR_SIGNATURE]
    assert result.describe().startswith("infected: Frontfilter.Test.EICAR")


def test_clean_mail_is_clean(clamd: ClamdProcess) -> None:
    message = corpus.message(corpus.attachment(corpus.pdf(), "application/pdf", "invoice.pdf"),
                             corpus.attachment(corpus.docx(), "application/octet-stream", "report.docx"))
    result = scan(clamd.socket, message)
    assert (result.status, result.signatures, result.detail) == (ScanStatus.CLEAN, (), "")


def test_every_clamav_testfile_is_found_as_is(clamd: ClamdProcess) -> None:
    missed = {}
    for path in require_testfiles():
        result = scan(clamd.socket, path.read_bytes())
        if not result.infected:
            missed[path.name] = result.describe()
    assert missed == {}


def test_a_stream_over_clamds_limit_is_too_big_at_once_not_a_hang(clamd: ClamdProcess) -> None:
    # clamd closes the socket while we are still sending; the client must read its answer.
    result = scan(clamd.socket, b"x" * (STREAM_MAX_LENGTH + 3 * 1024 * 1024))
    assert result.status is ScanStatus.TOO_BIG
    assert "StreamMaxLength" in result.detail and "size limit exceeded" in result.detail


def test_a_message_over_max_size_is_not_sent(tmp_path: Path) -> None:
    # Nothing listens there: had the client connected, the result would be an error.
    result = scan(tmp_path / "nothing.sock", b"x" * 2000, max_size=1000)
    assert result.status is ScanStatus.TOO_BIG
    assert "not sent" in result.detail


def test_loopback_tcp_finds_eicar_and_reads_the_answer_past_the_stream_limit() -> None:
    port = free_port()
    address = HostPort("127.0.0.1", port)
    with ClamdProcess(tcp_port=port) as tcp_clamd:
        infected = scan(address, corpus.message(
            corpus.attachment(corpus.zip_of({"notes.txt": eicar()}), "application/zip", "notes.zip")))
        # Over TCP clamd's close turns into a reset: its answer must still be read first.
        too_big = scan(address, b"x" * (STREAM_MAX_LENGTH + 3 * 1024 * 1024))
        assert tcp_clamd.ping()
    assert infected.status is ScanStatus.INFECTED
    assert too_big.status is ScanStatus.TOO_BIG


def test_clamd_stopped_is_an_error_naming_the_socket() -> None:
    with ClamdProcess() as stopped:
        stopped.stop()
        result = scan(stopped.socket, b"Subject: x\r\n\r\nhello\r\n")
    assert result.status is ScanStatus.ERROR
    assert str(stopped.socket) in result.detail


def test_refused_tcp_port_is_an_error() -> None:
    with closed_port() as port:
        result = scan(HostPort("127.0.0.1", port), b"hello")
    assert result.status is ScanStatus.ERROR
    assert "refused" in result.detail.lower()


def test_a_testfile_zipped_renamed_and_declared_as_text_is_found(clamd: ClamdProcess) -> None:
    clam = next(p for p in require_testfiles() if p.name == "clam.exe").read_bytes()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("holiday.jpg", clam)
    message = corpus.message(corpus.attachment(buffer.getvalue(), "text/plain", "minutes.txt"))
    result = scan(clamd.socket, message)
    assert [name.split(".UNOFFICIAL")[0] for name in result.signatures] == [CLAM_EXE_SIGNATURE]


# ---- fake clamds --------------------------------------------------------------------------

Behaviour = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_instream(reader: asyncio.StreamReader) -> int:
    """Read one INSTREAM request as clamd does; the number of bytes streamed."""
    assert await reader.readexactly(len(b"zINSTREAM\0")) == b"zINSTREAM\0"
    total = 0
    while True:
        length = int.from_bytes(await reader.readexactly(4), "big")
        if length == 0:
            return total
        await reader.readexactly(length)
        total += length


def with_fake(tmp_path: Path, behaviour: Behaviour,
              test: Callable[[Path], Awaitable[object]]) -> object:
    path = tmp_path / "fake.sock"

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await behaviour(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def run() -> object:
        server = await asyncio.start_unix_server(handle, path=str(path))
        try:
            return await test(path)
        finally:
            server.close()
            await server.wait_closed()

    return asyncio.run(run())


def test_a_clamd_that_never_answers_times_out(tmp_path: Path) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_instream(reader)
        await reader.read()          # until the client gives up

    async def test(path: Path) -> ScanResult:
        client = ClamdClient(path, timeout=SHORT_TIMEOUT, max_size=BIG, concurrency=1)
        return await client.scan(b"hello")

    result = with_fake(tmp_path, silent, test)
    assert isinstance(result, ScanResult) and result.status is ScanStatus.TIMEOUT
    assert "within 0.3s" in result.detail


def test_a_clamd_that_closes_without_answering_is_an_error(tmp_path: Path) -> None:
    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_instream(reader)

    async def test(path: Path) -> ScanResult:
        return await ClamdClient(path, timeout=SCAN_TIMEOUT, max_size=BIG, concurrency=1).scan(b"hi")

    result = with_fake(tmp_path, mute, test)
    assert isinstance(result, ScanResult) and result.status is ScanStatus.ERROR
    assert result.detail == "clamd closed the connection without an answer"


def test_an_unexpected_answer_is_an_error_not_clean(tmp_path: Path) -> None:
    async def odd(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_instream(reader)
        writer.write(b"UNKNOWN COMMAND\n")
        await writer.drain()

    async def test(path: Path) -> ScanResult:
        return await ClamdClient(path, timeout=SCAN_TIMEOUT, max_size=BIG, concurrency=1).scan(b"hi")

    result = with_fake(tmp_path, odd, test)
    assert isinstance(result, ScanResult) and result.status is ScanStatus.ERROR
    assert "UNKNOWN COMMAND" in result.detail


def test_scans_in_flight_never_exceed_the_concurrency_bound(tmp_path: Path) -> None:
    active, peak = 0, 0

    async def counting(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        try:
            await read_instream(reader)
            await asyncio.sleep(0.05)    # hold the slot so that the others must queue
            writer.write(b"stream: OK\0")
            await writer.drain()
        finally:
            active -= 1

    async def test(path: Path) -> list[ScanResult]:
        client = ClamdClient(path, timeout=SCAN_TIMEOUT, max_size=BIG, concurrency=2)
        return list(await asyncio.gather(*(client.scan(b"mail %d" % i) for i in range(8))))

    results = with_fake(tmp_path, counting, test)
    assert isinstance(results, list) and {r.status for r in results} == {ScanStatus.CLEAN}
    assert peak == 2


def test_waiting_for_a_slot_counts_toward_the_timeout(tmp_path: Path) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_instream(reader)
        await reader.read()

    async def test(path: Path) -> list[ScanResult]:
        client = ClamdClient(path, timeout=SHORT_TIMEOUT, max_size=BIG, concurrency=1)
        return list(await asyncio.gather(client.scan(b"first"), client.scan(b"second")))

    results = with_fake(tmp_path, silent, test)
    assert isinstance(results, list)
    assert [r.status for r in results] == [ScanStatus.TIMEOUT, ScanStatus.TIMEOUT]


# ---- the answer parser -------------------------------------------------------------------------

@pytest.mark.parametrize(("reply", "status", "names"), [
    (b"stream: OK\0", ScanStatus.CLEAN, ()),
    (b"stream: Win.Test.EICAR_HDB-1 FOUND\0", ScanStatus.INFECTED, ("Win.Test.EICAR_HDB-1",)),
    # ExtendedDetectionInfo adds the hash and size: not part of the name the rules see
    (b"stream: Eicar-Signature(44d88612fea8a8f36de82e1278abb02f:68) FOUND\0",
     ScanStatus.INFECTED, ("Eicar-Signature",)),
    # AllMatchScan: one line per signature
    (b"stream: A FOUND\0stream: B FOUND\0stream: A FOUND\0", ScanStatus.INFECTED, ("A", "B")),
    (b"INSTREAM size limit exceeded. ERROR\0", ScanStatus.TOO_BIG, ()),
    (b"stream: OK\0stream: lstat() failed. ERROR\0", ScanStatus.ERROR, ()),
    (b"stream: O", ScanStatus.ERROR, ()),
    (b"", ScanStatus.ERROR, ()),
])
def test_parse_reply(reply: bytes, status: ScanStatus, names: tuple[str, ...]) -> None:
    assert parse_reply(reply)[:2] == (status, names)


def test_parse_reply_keeps_names_printable_and_bounded() -> None:
    reply = b"".join(b"stream: Evil\x1b[31m%d FOUND\0" % i for i in range(40))
    status, names, _ = parse_reply(reply)
    assert status is ScanStatus.INFECTED and len(names) == MAX_SIGNATURES
    assert names[0] == "Evil?[31m0"
