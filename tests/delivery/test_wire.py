"""MAIL FROM and RCPT TO to the backend: our paths are the ones aiosmtplib would have sent.

`wire.path` replaces aiosmtplib's `quote_address` (a stdlib header parse per address) for the
addresses our SMTP side accepted (`smtp.paths`); a difference would be an envelope forwarded other
than it came in, or an address that smuggles a parameter onto the backend's command line. And
what we send reads back, by our SMTP side's reading, as the address that came in.
"""

from __future__ import annotations

import asyncio
import mmap
import random
import smtplib
import tempfile
from pathlib import Path

import pytest
from aiosmtplib.email import quote_address

from frontfilter.delivery import wire
from frontfilter.delivery.client import SmtpClient
from frontfilter.model import CrlfText, DotFreeText
from frontfilter.mapped import MappedText, SpilledMessage
from frontfilter.smtp.paths import parse_path
from tests.harness import RecordingSink, relay_with_sink
from tests.smtp.test_getaddr import FIXED, generated


def aiosmtplib_path(address: str, encoding: str) -> bytes | type[Exception]:
    try:
        return quote_address(address).encode(encoding)
    except (ValueError, UnicodeEncodeError) as error:
        return type(error)


def our_path(address: str, encoding: str) -> bytes | type[Exception]:
    try:
        return wire.path(address, encoding)
    except (ValueError, UnicodeEncodeError) as error:
        return type(error)


def atext_addresses(count: int) -> set[str]:
    """Addresses of every character the fast path takes, in odd places (dots at the ends, @@)."""
    chance = random.Random(5321)
    atext = "aZ09!#$%&'*+/=?^_`{|}~.-@"
    return {"".join(chance.choice(atext) for _ in range(chance.randint(1, 12))) + "@" +
            "".join(chance.choice("aZ09.-@") for _ in range(chance.randint(1, 8))) for _ in range(count)}


def addresses_read() -> set[str]:
    """Every address our SMTP side reads in the path corpus, and the kinds it may lack."""
    read = {"", '"john doe"@example.org', '"a\\"b"@example.org', "ünï@exämple.org", "Postmaster"}
    read |= {reading[0] for argument in FIXED + generated(20_000) if (reading := parse_path(argument)) is not None}
    assert len(read) > 1000
    return read


def test_every_address_our_smtp_side_reads_gets_the_path_aiosmtplib_would_send() -> None:
    for address in sorted(addresses_read() | atext_addresses(20_000)):
        for encoding in ("ascii", "utf-8"):
            assert our_path(address, encoding) == aiosmtplib_path(address, encoding), (address, encoding)


def test_the_path_we_send_reads_back_as_the_address_our_smtp_side_read() -> None:
    """The next hop, reading MAIL FROM and RCPT TO as our SMTP side does, gets the address that
    came in: the envelope is forwarded as it came."""
    for address in sorted(addresses_read()):
        for encoding in ("ascii", "utf-8"):
            sent = our_path(address, encoding)
            if isinstance(sent, bytes):
                assert parse_path(sent.decode(encoding)) == (address, ""), (address, sent)


@pytest.mark.parametrize("address", ["a b@example.org", "a@b> SIZE=1@example.org", "a\r\nRSET@example.org"])
def test_an_address_never_ends_the_path_early_on_the_backends_command_line(address: str) -> None:
    try:
        sent = wire.path(address)
    except ValueError:
        return
    assert sent.count(b">") == 1 and not set(sent) & set(b" \t\r\n"), sent


def test_quoted_local_part_and_null_sender_reach_the_backend_as_sent(tmp_path: Path) -> None:
    with relay_with_sink(tmp_path) as (relay, sink):
        with smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as client:
            client.sendmail('"john doe"@example.net', ["bob@example.org"],
                            b"Subject: quoted\r\nMessage-ID: <q@test>\r\n\r\nhello\r\n")
            client.sendmail("<>", ["carol@example.org"],
                            b"Subject: bounce\r\nMessage-ID: <n@test>\r\n\r\nhello\r\n")
    assert [(m.sender, m.recipients) for m in sink.messages] == [
        ('"john doe"@example.net', ["bob@example.org"]), ("<>", ["carol@example.org"])]


@pytest.mark.parametrize("mode", ["sync", "queue"])
def test_a_big_message_with_dot_lines_arrives_whole(tmp_path: Path, mode: str) -> None:
    """Past `CrlfText.MAX_MARKED` a message is not marked CRLF-clean (that would copy it twice)
    and the forwarder counts its line ends in a thread: it must still arrive byte for byte."""
    lines = b"".join(b"." * (n % 3) + b"line %d of a big message\r\n" % n for n in range(90_000))
    body = b"Subject: big\r\nMessage-ID: <big@test>\r\n\r\n" + lines
    assert len(body) > CrlfText.MAX_MARKED
    with relay_with_sink(tmp_path, server={"max_message_size": "8MiB"}, backend={"mode": mode}) as (relay, sink):
        with smtplib.SMTP("127.0.0.1", relay.port, timeout=30) as client:
            client.sendmail("alice@example.net", ["bob@example.org"], body)
        if mode == "queue":
            relay.wait_event("delivery", status="delivered")
    assert len(sink.messages) == 1 and sink.messages[0].data.endswith(body)


@pytest.mark.parametrize("head", [b"", b"Received: from a by b; now\r\n", b".Dotted: field\r\nX: y\r\n"])
@pytest.mark.parametrize("body", ["dot-free", "dotted", "plain", "big"])
def test_head_and_message_reach_the_backend_as_one_message(head: bytes, body: str) -> None:
    """The fields frontfilter adds are sent ahead of the message, never joined to it in memory;
    the backend must get exactly head + message, each piece's dotted lines stuffed."""
    text = {
        "dot-free": DotFreeText(b"Subject: a\r\n\r\nhello\r\n"),
        "dotted": CrlfText(b".starts with a dot\r\n\r\n.\r\n..two\r\n"),
        "plain": b"Subject: plain bytes\r\n\r\n.x\r\n",
        "big": DotFreeText(b"Subject: big\r\n\r\n" + b"y" * 76 + b"\r\n") * (wire.JOIN_BELOW // 90 + 10),
    }[body]

    async def send(port: int) -> None:
        smtp = await opened(port)
        response = await wire.send_data(smtp, text, head)
        assert response.code == 250
        await smtp.quit(10)

    with RecordingSink() as sink:
        asyncio.run(send(sink.port))
        [received] = sink.wait_for(1)
    assert received.data == head + text


async def opened(port: int) -> SmtpClient:
    """A connection to the test backend on `port` with a transaction begun (MAIL, RCPT)."""
    smtp = await SmtpClient.connect("127.0.0.1", port, timeout=10, connect_timeout=10)
    assert (await smtp.ehlo("client.test")).code == 250
    replies = await smtp.exchange([wire.mail_command("a@example.net", [], "ascii"),
                                   wire.rcpt_command("b@example.org", "ascii")])
    assert [r.code for r in replies] == [250, 250]
    return smtp


def mapped(cls: type[MappedText], data: bytes) -> MappedText:
    with tempfile.TemporaryFile() as file:
        file.write(data)
        file.flush()
        return cls(file.fileno(), len(data), access=mmap.ACCESS_READ)


@pytest.mark.parametrize("kind", ["spilled", "other mapping"])
def test_a_message_read_through_a_mapping_reaches_the_backend_as_it_is(kind: str) -> None:
    """A spilled message (DATA checked it: CRLF-clean, no dotted line) is sent as it is, in
    slices; any other mapping is made CRLF and has its dotted lines stuffed."""
    line = b"z" * 76 + b"\r\n"
    text = b"Subject: mapped\r\n\r\n" + line * (3 * wire.WRITE_SLICE // len(line))
    if kind == "other mapping":
        text += b".a dotted line\r\n"
    message = mapped(SpilledMessage if kind == "spilled" else MappedText, text)

    async def send(port: int) -> None:
        smtp = await opened(port)
        assert (await wire.send_data(smtp, message, b"X-Head: 1\r\n")).code == 250
        await smtp.quit(10)

    with RecordingSink() as sink:
        asyncio.run(send(sink.port))
        [received] = sink.wait_for(1)
    assert received.data == b"X-Head: 1\r\n" + text


class EarlyRefusal:
    """A backend that refuses a message in the middle of its DATA (552: too big), as soon as
    it begins, and only later reads on to the end mark and closes: the client's writes back
    up, so the refusal arrives while it is still writing."""

    def __init__(self) -> None:
        self.done = asyncio.Event()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self.converse(reader, writer)
        finally:
            writer.close()
            await writer.wait_closed()
            self.done.set()

    async def converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 early.test ESMTP\r\n")
        while line := await reader.readline():
            verb = line[:4].upper()
            if verb == b"EHLO":
                writer.write(b"250-early.test\r\n250 PIPELINING\r\n")
            elif verb == b"DATA":
                writer.write(b"354 go on\r\n")
                await writer.drain()
                await reader.readexactly(1)          # the message has begun
                writer.write(b"552 5.3.4 Message too big for this test\r\n")
                await writer.drain()
                await asyncio.sleep(0.5)             # busy: the client's writes back up meanwhile
                while not (await reader.readuntil(b"\r\n")).startswith(b".\r\n"):
                    pass
                return
            else:
                writer.write(b"250 ok\r\n")
            await writer.drain()


def test_a_backend_refusing_a_big_message_before_its_end_is_heard() -> None:
    """The backend's 552 comes while the message is still being written: it is the answer
    (a bounce in queue mode), not a lost connection (retried until the message expires)."""
    text = DotFreeText(b"Subject: big\r\n\r\n" + (b"y" * 76 + b"\r\n") * 200_000)   # 15 MiB: past what the sockets hold

    async def run() -> None:
        backend = EarlyRefusal()
        server = await asyncio.start_server(backend.serve, "127.0.0.1", 0)
        try:
            smtp = await opened(server.sockets[0].getsockname()[1])
            refused = await wire.send_data(smtp, text)
            assert refused.code == 552
            assert not smtp.is_connected     # it may answer an end mark too: never used again
            smtp.close()
            await asyncio.wait_for(backend.done.wait(), 10)
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(run())
