"""An in-memory driver for the SMTP session core (`smtp.core`): the shell's part, without a loop.

It does what `smtp.session` does around the core, and nothing else: greets (after the PROXY
header on a proxy listener), feeds each chunk of input to `receive`, takes the core's events in
turn and answers each — the core's own `Answer` as it is, the others with a `Decider` — and keeps
every byte `send` gives back to write. Each reply is also recorded with the event it answered,
the stage the core named for it and how far the input had been read, so a test can say which
reply answered which line.

Loops are bounded (`MAX_EVENTS`): a core that kept giving events without reading input fails the
test instead of hanging it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from frontfilter import reply
from frontfilter.reply import Reply
from frontfilter.smtp.core import (Answer, Auth, AuthAnswer, BadProxyHeader, Event, Hello, Mail, Message, Mode,
                                   ProxyHeader, Rcpt, Reset, SmtpCore, StartTls)

GREETING = Reply(220, "", "mx.test ESMTP")
EHLO_KEYWORDS = ("SIZE 10485760", "8BITMIME", "SMTPUTF8", "PIPELINING", "ENHANCEDSTATUSCODES", "HELP")
CHALLENGE = Reply(334, "", "VXNlcm5hbWU6")      # base64 "Username:"
MAX_EVENTS = 100_000        # per chunk: far more than any test session holds

Decide = Callable[[Event], Reply]


@dataclass
class Decider:
    """The shell's decisions as a test scripts them. Each list is taken in order, one reply per
    event of its kind, then the default (250 2.1.0, 250 2.1.5, 250 2.0.0). AUTH is refused as
    not offered unless `auth_challenges` is set: then AUTH and its answers get that many 334
    challenges, then 235 (`*` aborts, 501). `events` keeps every event decided, in order."""

    mail: list[Reply] = field(default_factory=list)
    rcpt: list[Reply] = field(default_factory=list)
    message: list[Reply] = field(default_factory=list)
    hello: list[Reply] = field(default_factory=list)
    starttls: Reply = reply.NOT_IMPLEMENTED
    auth_challenges: int | None = None
    events: list[Event] = field(default_factory=list)
    _challenges_left: int | None = field(default=None, init=False, repr=False)

    def __call__(self, event: Event) -> Reply:
        self.events.append(event)
        if isinstance(event, Hello):
            if self.hello:
                return self.hello.pop(0)
            return Reply(250, "", "mx.test", more=EHLO_KEYWORDS) if event.extended else Reply(250, "", "mx.test")
        if isinstance(event, Mail):
            return self.mail.pop(0) if self.mail else reply.SENDER_OK
        if isinstance(event, Rcpt):
            return self.rcpt.pop(0) if self.rcpt else reply.RECIPIENT_OK
        if isinstance(event, Message):
            return self.message.pop(0) if self.message else reply.OK
        if isinstance(event, Reset):
            return reply.OK
        if isinstance(event, StartTls):
            return self.starttls
        if isinstance(event, Auth):
            if self.auth_challenges is None:
                return reply.AUTH_NOT_OFFERED
            self._challenges_left = self.auth_challenges
            return self._auth_step()
        if isinstance(event, AuthAnswer):
            if self._challenges_left is None:
                return reply.BAD_SEQUENCE          # as the shell: an answer outside an exchange
            if event.text == "*":
                self._challenges_left = None
                return reply.AUTH_ABORTED
            return self._auth_step()
        raise AssertionError(f"the driver has no decision for {event!r}")

    def _auth_step(self) -> Reply:
        assert self._challenges_left is not None
        if self._challenges_left > 0:
            self._challenges_left -= 1
            return CHALLENGE
        self._challenges_left = None
        return reply.AUTH_OK


@dataclass(frozen=True)
class Exchange:
    """One reply written: the event it answered (None: unprompted, the greeting), the stage the
    core named for it, and how many input octets the core had read when the event came: the
    input between two exchanges' `read` is what the second answers (a line, or a message)."""

    event: Event | None
    reply: Reply
    stage: str
    read: int


@dataclass
class Driver:
    core: SmtpCore
    decide: Decide = field(default_factory=Decider)
    greeting: Reply = GREETING
    output: bytearray = field(default_factory=bytearray)
    exchanges: list[Exchange] = field(default_factory=list)
    received: int = 0

    def greet(self) -> None:
        self._send(None, self.greeting)

    def feed(self, chunk: bytes) -> None:
        self.core.receive(chunk)
        self.received += len(chunk)
        self.drain()

    def end(self) -> None:
        """The client's input ended (the shell's `eof_received`)."""
        self.core.end_of_input()
        self.drain()

    def drain(self) -> None:
        """Answer events until the core needs more input."""
        for _ in range(MAX_EVENTS):
            event = self.core.next_event()
            if event is None:
                return
            if isinstance(event, ProxyHeader):
                self._send(event, self.greeting)    # the shell greets the real client now
            elif isinstance(event, BadProxyHeader):
                self.core.close()                   # the shell closes without a word
                return
            elif isinstance(event, Answer):
                self._send(event, event.reply)
            else:
                self._send(event, self.decide(event))
        raise AssertionError(f"the core gave more than {MAX_EVENTS} events without needing input")

    def _send(self, event: Event | None, answer: Reply) -> None:
        stage = self.core.stage                      # read before send, as the shell counts it
        read = self.received - self.core.buffered    # before send: a 354 hands the rest to DATA
        self.output += self.core.send(answer)
        self.exchanges.append(Exchange(event, answer, stage, read))


def run(core: SmtpCore, chunks: Iterable[bytes], decide: Decide | None = None, *, eof: bool = False) -> bytes:
    """Every byte the core writes for a client that sends `chunks`: greeted first (on a proxy
    listener, once the header is read), each event answered as it comes."""
    return bytes(drive(core, chunks, decide, eof=eof).output)


def drive(core: SmtpCore, chunks: Iterable[bytes], decide: Decide | None = None, *, eof: bool = False) -> Driver:
    driver = Driver(core, decide if decide is not None else Decider())
    if core.mode is Mode.GREETING:
        driver.greet()
    for chunk in chunks:
        driver.feed(chunk)
    if eof:
        driver.end()
    return driver


_REPLY_LINE = re.compile(rb"([2-5]\d\d)([ -])[^\r\n]*\r\n")


def reply_codes(wire: bytes) -> list[int]:
    """The code of each complete reply in `wire` (a multi-line reply counts once)."""
    codes = []
    at = 0
    while True:
        line = _REPLY_LINE.match(wire, at)
        if line is None:
            assert wire[at:] == b"" or b"\r\n" not in wire[at:], f"not a reply line: {wire[at:at + 80]!r}"
            return codes
        if line.group(2) == b" ":
            codes.append(int(line.group(1)))
        at = line.end()


def replies(wire: bytes) -> list[str]:
    """Each complete reply in `wire` as text, its lines joined by CRLF, without the last CRLF."""
    found: list[str] = []
    current: list[str] = []
    for line in wire.decode("utf-8").split("\r\n")[:-1]:
        current.append(line)
        if line[3:4] != "-":
            found.append("\r\n".join(current))
            current = []
    assert not current, f"an unfinished multi-line reply: {current}"
    return found
