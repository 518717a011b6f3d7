"""The backend client (`delivery.client`) seen from a backend that says exactly what each test
needs, over loopback: a delivery pipelines its commands where the backend offers PIPELINING and
only there, and what a backend says out of turn or out of SMTP never passes for a reply."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from frontfilter.delivery.backend import BackendSession, Outcome
from frontfilter.delivery.forward import Attempt, Forwarder
from frontfilter.delivery.xforward import ClientFacts
from tests.delivery.test_worker_inprocess import config_for

MESSAGE = b"Subject: scripted\r\n\r\nhello\r\n"
PIPELINING = (b"PIPELINING", b"XFORWARD ADDR HELO")
ENOUGH = 5.0        # no test waits this long unless the client is wrong


class Scripted:
    """A backend that offers `offers` and answers each command line with `answer(verb)` (None:
    the usual). It records every line read, and for each reply it wrote, how many lines had
    been read by then."""

    def __init__(self, offers: tuple[bytes, ...] = PIPELINING,
                 answer: Callable[[bytes], bytes | None] = lambda verb: None,
                 hold_until_data: bool = False, check_one_at_a_time: bool = False, dribble: bool = False):
        self.offers = offers
        self.answer = answer
        self.hold_until_data = hold_until_data            # answer nothing before DATA is read
        self.check_one_at_a_time = check_one_at_a_time    # note a command that came unasked
        self.dribble = dribble                            # each reply written a byte at a time
        self.lines: list[bytes] = []
        self.lines_by_connection: list[list[bytes]] = []
        self.cut_short: list[bytes] = []                  # what came of a DATA the client left
        self.read_before_reply: list[int] = []
        self.messages: list[bytes] = []
        self.connections = 0
        self.came_early = 0
        self.closed_by_client = asyncio.Event()
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        self.server = await asyncio.start_server(self.serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        self.server.close()
        for writer in self.writers:
            writer.close()
        await self.server.wait_closed()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        writer.write(b"220 scripted.test ESMTP\r\n")
        held: list[bytes] = []
        mine: list[bytes] = []
        self.lines_by_connection.append(mine)
        try:
            while line := await reader.readline():
                self.lines.append(line.rstrip(b"\r\n"))
                mine.append(line.rstrip(b"\r\n"))
                verb = line[:4].upper()
                said = self.answer(verb)
                reply = self._usual(verb) if said is None else said
                if self.check_one_at_a_time and await self._another_line_waits(reader):
                    self.came_early += 1
                if self.hold_until_data and verb not in (b"EHLO", b"DATA", b"QUIT"):
                    held.append(reply)
                    continue
                for one in [*held, reply]:
                    self.read_before_reply.append(len(self.lines))
                    await self._write(writer, one)
                held = []
                await writer.drain()
                if verb == b"DATA" and reply.startswith(b"354"):
                    body = b""
                    while (text := await reader.readline()) != b".\r\n":
                        if not text:
                            self.cut_short.append(body)
                            raise ConnectionResetError("closed in the middle of DATA")
                        body += text
                    self.messages.append(body)          # a lone "." would be an empty message
                    writer.write(b"250 2.0.0 queued\r\n")
                if verb == b"QUIT":
                    break
            else:
                self.closed_by_client.set()
        except ConnectionError:
            self.closed_by_client.set()
        finally:
            writer.close()

    async def _write(self, writer: asyncio.StreamWriter, reply: bytes) -> None:
        if not self.dribble:
            writer.write(reply)
            return
        for at in range(len(reply)):
            writer.write(reply[at:at + 1])
            await writer.drain()
            await asyncio.sleep(0)

    async def _another_line_waits(self, reader: asyncio.StreamReader) -> bool:
        try:
            line = await asyncio.wait_for(reader.readline(), 0.05)
        except TimeoutError:
            return False
        self.lines.append(line.rstrip(b"\r\n"))     # kept, though out of turn
        return True

    def _usual(self, verb: bytes) -> bytes:
        if verb == b"EHLO":
            return b"250-scripted.test\r\n" + b"".join(b"250-" + o + b"\r\n" for o in self.offers[:-1]) + \
                b"250 " + self.offers[-1] + b"\r\n" if self.offers else b"250 scripted.test\r\n"
        return {b"DATA": b"354 go on\r\n", b"QUIT": b"221 bye\r\n"}.get(verb, b"250 2.0.0 ok\r\n")

    def verbs(self) -> list[bytes]:
        return [line.split(b" ")[0].split(b":")[0].upper() for line in self.lines]


def deliver(tmp_path: Path, backend: Scripted, recipients: list[str], times: int = 1,
            between: Callable[[Scripted], object] | None = None, until_closed: bool = False,
            sender: str = "alice@example.net", options: tuple[str, ...] = (), **config: object) -> list[Attempt]:
    async def run() -> list[Attempt]:
        port = await backend.start()
        forwarder = Forwarder(config_for(tmp_path, port, **config).backend, "mx.test")
        client = ClientFacts("192.0.2.7", 4321, "client.example")
        try:
            attempts = []
            for _ in range(times):
                attempts.append(await forwarder.deliver(sender, recipients, MESSAGE, options, client=client))
                if between is not None:
                    between(backend)
                    await asyncio.sleep(0.1)        # the client has read what was said
            if until_closed:                        # the client closes: the backend sees it
                await asyncio.wait_for(backend.closed_by_client.wait(), ENOUGH)
            return attempts
        finally:
            await forwarder.close()
            await backend.stop()

    return asyncio.run(run())


def test_a_delivery_sends_xforward_mail_rcpt_and_data_in_one_go_to_a_pipelining_backend(tmp_path: Path) -> None:
    """This backend answers nothing before it has read DATA: a client that waited for each
    reply would wait in vain (and fail after `backend.timeout`)."""
    backend = Scripted(hold_until_data=True)
    [attempt] = deliver(tmp_path, backend, ["bob@example.org", "carol@example.org"], timeout="3s")
    assert [r.code for r in attempt.results] == [250, 250]
    assert backend.messages == [MESSAGE]
    begun = backend.verbs().index(b"XFORWARD")                   # after the EHLOs
    assert backend.verbs()[begun:begun + 5] == [b"XFORWARD", b"MAIL", b"RCPT", b"RCPT", b"DATA"]
    assert backend.read_before_reply[begun:begun + 5] == [begun + 5] * 5     # all read, then answered


def test_a_backend_without_pipelining_gets_one_command_at_a_time(tmp_path: Path) -> None:
    backend = Scripted(offers=(b"XFORWARD ADDR HELO", b"8BITMIME"), check_one_at_a_time=True)
    [attempt] = deliver(tmp_path, backend, ["bob@example.org", "carol@example.org"])
    assert [r.code for r in attempt.results] == [250, 250]
    assert backend.messages == [MESSAGE]
    assert backend.came_early == 0
    assert b"MAIL" in backend.verbs() and backend.verbs().count(b"RCPT") == 2


def test_every_recipient_refused_and_data_answered_354_all_the_same_sends_no_message(tmp_path: Path) -> None:
    """RFC 2920 wants DATA refused then; a backend that says 354 instead must not get an end
    mark (that would deliver an empty message): the connection is dropped."""
    backend = Scripted(answer=lambda verb: b"550 5.1.1 no such user\r\n" if verb == b"RCPT" else None)
    [attempt] = deliver(tmp_path, backend, ["nobody@example.org", "none@example.org"], until_closed=True)
    assert [(r.outcome, r.code, r.enhanced) for r in attempt.results] == [(Outcome.PERMANENT, 550, "5.1.1")] * 2
    assert backend.messages == []
    assert b"QUIT" not in backend.verbs()


def test_a_refused_mail_is_every_recipients_answer_not_the_rcpts_503s(tmp_path: Path) -> None:
    def answer(verb: bytes) -> bytes | None:
        return {b"MAIL": b"553 5.7.1 sender not welcome\r\n", b"RCPT": b"503 5.5.1 need MAIL\r\n",
                b"DATA": b"503 5.5.1 no valid recipients\r\n"}.get(verb)
    backend = Scripted(answer=answer)
    [attempt] = deliver(tmp_path, backend, ["bob@example.org", "carol@example.org"])
    assert [(r.outcome, r.code, r.text) for r in attempt.results] == \
        [(Outcome.PERMANENT, 553, "sender not welcome")] * 2
    assert backend.messages == []


def test_a_reply_nobody_asked_for_retires_the_connection(tmp_path: Path) -> None:
    """A backend that says something between transactions (here a 421, the connection kept
    open): what it said cannot be the answer to the next command, so the next message goes
    on a new connection."""
    heard_by_then: list[int] = []

    def say_out_of_turn(backend: Scripted) -> None:
        backend.writers[-1].write(b"421 4.4.2 idle too long\r\n")
        heard_by_then.append(len(backend.lines_by_connection[0]))
    backend = Scripted()
    attempts = deliver(tmp_path, backend, ["bob@example.org"], times=2, between=say_out_of_turn)
    assert [[r.code for r in a.results] for a in attempts] == [[250], [250]]
    assert len(backend.messages) == 2 and backend.connections == 2
    assert len(backend.lines_by_connection[0]) == heard_by_then[0]     # not a word more on it


@pytest.mark.parametrize("said", [
    b"HTTP/1.1 400 Bad Request\r\n",
    b"250 " + b"x" * 9000 + b"\r\n",
    b"250-first line\r\n251 a second line with another code\r\n",
    b"250 ok\r\n250 and one more nobody asked for\r\n",
])
def test_what_is_not_an_smtp_reply_is_a_transient_failure_never_a_delivery(tmp_path: Path, said: bytes) -> None:
    backend = Scripted(answer=lambda verb: said if verb == b"MAIL" else None)
    [attempt] = deliver(tmp_path, backend, ["bob@example.org"])
    assert [(r.outcome, r.code) for r in attempt.results] == [(Outcome.TRANSIENT, 451)]
    assert backend.messages == []


@pytest.mark.parametrize("injected", [
    b"250-injected\r\n250 AUTH PLAIN\r\n",             # a whole reply
    b"250-PIPELINING\r\n250-XCLIENT ADDR LOGIN\r\n",      # lines that would join the EHLO's
    b"550 5.7.1 go away",                                # half a line: a refusal, once TLS is up
])
def test_text_injected_after_starttls_220_is_never_taken_for_a_reply(tmp_path: Path, injected: bytes) -> None:
    """RFC 3207 §4.2: what follows the 220 in the clear could be an attacker's; read as said
    inside TLS, it would add extensions or refuse. The connection is dropped instead (no
    handshake, no plaintext fallback with an injected session)."""
    backend = Scripted(offers=(b"PIPELINING", b"STARTTLS"),
                       answer=lambda verb: b"220 2.0.0 go ahead\r\n" + injected if verb == b"STAR" else None)
    [attempt] = deliver(tmp_path, backend, ["bob@example.org"], tls="opportunistic")
    assert [(r.outcome, r.code) for r in attempt.results] == [(Outcome.TRANSIENT, 451)]
    assert backend.messages == [] and b"MAIL" not in backend.verbs()


def test_a_backend_that_never_answers_is_a_transient_failure_after_the_timeout(tmp_path: Path) -> None:
    backend = Scripted(answer=lambda verb: b"" if verb == b"DATA" else None)   # DATA: nothing said
    [attempt] = deliver(tmp_path, backend, ["bob@example.org"], timeout="300ms")
    [result] = attempt.results
    assert (result.outcome, result.code) == (Outcome.TRANSIENT, 451) and "ReplyTimeout" in result.text
    assert backend.messages == [] and b"DATA" in backend.verbs()       # it was DATA's reply that never came


def test_replies_that_come_a_byte_at_a_time_are_each_read_whole(tmp_path: Path) -> None:
    backend = Scripted(dribble=True, hold_until_data=True)
    [attempt] = deliver(tmp_path, backend, ["bob@example.org", "carol@example.org"], timeout="3s")
    assert [r.code for r in attempt.results] == [250, 250]
    assert backend.messages == [MESSAGE]


def test_a_recipient_refused_with_421_after_data_was_answered_354_leaves_nothing_in_the_message(
        tmp_path: Path) -> None:
    """The backend is closing (421) yet said 354: the client leaves at once, without a QUIT
    that would be read as the message's first line; the mail is tried again later."""
    backend = Scripted(answer=lambda verb: b"421 4.3.2 shutting down\r\n" if verb == b"RCPT" else None)
    [attempt] = deliver(tmp_path, backend, ["bob@example.org"], until_closed=True)
    assert [(r.outcome, r.code) for r in attempt.results] == [(Outcome.TRANSIENT, 421)]
    assert backend.messages == [] and backend.cut_short == [b""]


def test_a_non_ascii_recipient_the_backend_cannot_take_is_refused_alone(tmp_path: Path) -> None:
    """SMTPUTF8 mail to a backend that does not offer SMTPUTF8: the recipient that needs it
    is refused for good (553 5.6.7, a bounce), the others get the message."""
    backend = Scripted()
    [attempt] = deliver(tmp_path, backend, ["bob@example.org", "jörg@example.org"], options=("SMTPUTF8",))
    assert [(r.outcome, r.code, r.enhanced) for r in attempt.results] == \
        [(Outcome.OK, 250, "2.0.0"), (Outcome.PERMANENT, 553, "5.6.7")]
    assert backend.messages == [MESSAGE] and backend.verbs().count(b"RCPT") == 1


def test_a_non_ascii_sender_the_backend_cannot_take_is_refused_and_the_connection_kept(tmp_path: Path) -> None:
    backend = Scripted()
    attempts = deliver(tmp_path, backend, ["bob@example.org"], times=2, sender="jörg@example.net",
                       options=("SMTPUTF8",))
    assert [[(r.outcome, r.code, r.enhanced) for r in a.results] for a in attempts] == \
        [[(Outcome.PERMANENT, 553, "5.6.7")]] * 2
    assert b"MAIL" not in backend.verbs() and backend.connections == 1      # nothing said on it: reused


def test_sync_mode_refuses_a_non_ascii_address_the_backend_cannot_take(tmp_path: Path) -> None:
    """Sync mode mirrors the client's transaction: the client hears 553 5.6.7 at RCPT, and the
    backend is never sent an address it could misread."""
    async def run() -> tuple[list[tuple[int, str | None]], list[bytes]]:
        backend = Scripted()
        port = await backend.start()
        session = BackendSession(config_for(tmp_path, port, mode="sync").backend, "mx.test")
        try:
            replies = [await session.begin("alice@example.net", ["SMTPUTF8"]),
                       await session.add_recipient("jörg@example.org"),
                       await session.add_recipient("bob@example.org")]
            return [(r.code, r.enhanced) for r in replies], backend.verbs()
        finally:
            await session.close()
            await backend.stop()

    codes, verbs = asyncio.run(run())
    assert codes == [(250, "2.0.0"), (553, "5.6.7"), (250, "2.0.0")]
    assert verbs.count(b"RCPT") == 1
