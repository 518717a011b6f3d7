"""frontfilter's SMTP client to the backend: one `asyncio.Protocol`, commands pipelined.

The one client for every backend conversation: the queue's deliveries (`delivery.forward`),
sync mode's mirrored transaction (`delivery.backend`) and the recipient probe
(`delivery.verify`). It replaces aiosmtplib there (aiosmtplib stays the tests' reference
client) for what the bench measured: aiosmtplib waits for each reply before it sends the next
command, under a lock and a `wait_for` per command; a delivery cost four round trips (MAIL,
RCPT, DATA, the message) and four wake-ups of the event loop, 15 % of the relay's CPU on the
5 KB load. With PIPELINING (RFC 2920, offered by every real backend) a delivery is two:
XFORWARD, MAIL, RCPT... and DATA in one write, then the message once DATA's 354 is in.

Replies are read as they come, whether a command waits for them or not, and handed out in
order: a backend that refuses a big message (552) before its end is heard while the message is
still being written. A reply that nobody asked for (a 421 on an idle connection, text injected
after STARTTLS's 220) ends the connection: it could only be paired with the wrong command.

Bounds: `timeout` for each reply (reset by every reply that arrives), REPLY_LINE_MAX per line and
REPLY_MAX per reply (past them the connection is closed); writes wait while the transport holds
more than WRITE_HIGH bytes.
"""

from __future__ import annotations

import asyncio
import collections
import re
import ssl
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import cast

REPLY_LINE_MAX = 8192           # RFC 5321 §4.5.3.1.5 says 512; real servers send longer texts
REPLY_MAX = 4 * REPLY_LINE_MAX  # a whole multi-line reply (an EHLO is a few hundred bytes)
WRITE_HIGH = 1024 * 1024        # what the transport may hold before a writer waits
# A command line must not carry a line end (command injection) nor any other control.
_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class Reply:
    code: int
    message: str                # the lines' texts joined by "\n" (bytes not UTF-8 as surrogates)


class SmtpError(Exception):
    """The conversation cannot go on: the connection was lost, a reply did not come in time,
    or what came was not SMTP. The client is closed."""


class ConnectionLost(SmtpError):
    pass


class ReplyTimeout(SmtpError):
    pass


class BadReply(SmtpError):
    pass


class Refused(Exception):
    """A reply that ends a step (the greeting, EHLO, a MAIL, ...): what the backend said."""

    def __init__(self, reply: Reply):
        super().__init__(f"{reply.code} {reply.message}")
        self.reply = reply
        self.code = reply.code
        self.message = reply.message


def expect(reply: Reply, *codes: int) -> Reply:
    """`reply`, or Refused when its code is not one of `codes`."""
    if reply.code not in codes:
        raise Refused(reply)
    return reply


class SmtpClient(asyncio.Protocol):
    """One connection to a backend. `connect()` makes one, greeted; `ehlo()` learns what the
    backend offers (`extensions`); `send()` writes commands, `read()` takes their replies in
    order; `write()` and `drain()` carry a message's bytes."""

    def __init__(self, timeout: float):
        self.timeout = timeout
        self.extensions: dict[str, str] = {}
        self.tls_version: str | None = None
        self.helo_name = ""                         # the name of the last EHLO
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._lines: list[bytes] = []               # of the reply being read
        self._replies: collections.deque[Reply] = collections.deque()
        self._owed = 0                              # replies the backend owes for what was sent
        self._in_data = False                       # a 354 read, the message not yet written
        self._error: SmtpError | None = None        # why the connection ended
        self._waiter: asyncio.Future[None] | None = None
        self._writable: asyncio.Future[None] | None = None

    @classmethod
    async def connect(cls, host: str, port: int, timeout: float, connect_timeout: float) -> SmtpClient:
        """A connection to `host`:`port` whose greeting was a 220 (else Refused), within
        `connect_timeout`; every later reply within `timeout`."""
        client = cls(timeout)
        loop = asyncio.get_running_loop()
        await asyncio.wait_for(loop.create_connection(lambda: client, host, port), connect_timeout)
        try:
            expect(await client.read(connect_timeout), 220)
        except BaseException:
            client.close()
            raise
        return client

    # ---- state -------------------------------------------------------------------------

    @property
    def is_connected(self) -> bool:
        return self._transport is not None and self._error is None and not self._transport.is_closing()

    @property
    def idle(self) -> bool:
        """Connected, and nothing owed or said that no command has taken: a next command's
        reply can only be its own."""
        return self.is_connected and self._owed == 0 and not (self._replies or self._lines or self._buffer)

    @property
    def has_reply(self) -> bool:
        """A whole reply has come that `read()` has not taken yet."""
        return bool(self._replies)

    def supports(self, extension: str) -> bool:
        return extension.lower() in self.extensions

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def _end(self, error: SmtpError) -> None:
        """The connection is over: every wait ends with `error` (once its replies are read)."""
        if self._error is None:
            self._error = error
        self.close()
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    # ---- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._transport.set_write_buffer_limits(high=WRITE_HIGH)
        self._owed = 1              # the greeting

    def connection_lost(self, exc: Exception | None) -> None:
        lost = ConnectionLost(f"connection lost: {exc}" if exc else "connection closed by the backend")
        self._end(lost)
        self._transport = None

    def eof_received(self) -> bool:
        return False            # the transport closes; connection_lost tells the waiters

    def pause_writing(self) -> None:
        self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        self._writable = None

    def data_received(self, data: bytes) -> None:
        if self._error is not None:
            return              # ended (a timeout, a stray reply): a late reply must not be read
        buffer = self._buffer
        buffer += data
        start = 0
        arrived = False
        while (end := buffer.find(b"\n", start)) >= 0:
            line = bytes(buffer[start:end + 1])
            start = end + 1
            problem = self._take_line(line)
            if problem is not None:
                self._end(problem)
                return
            arrived = arrived or not self._lines
        del buffer[:start]
        if len(buffer) > REPLY_LINE_MAX:
            self._end(BadReply("reply line too long"))
        elif arrived:
            self._wake()

    def _take_line(self, line: bytes) -> SmtpError | None:
        """One reply line; a whole reply joins the queue. What is wrong with it, if anything."""
        if len(line) > REPLY_LINE_MAX:
            return BadReply("reply line too long")
        code, separator = line[:3], line[3:4]
        # RFC 5321 §4.2: a reply's first digit is 2 to 5 (1yz is not used in SMTP).
        if not (code.isdigit() and code[:1] in b"2345" and separator in (b" ", b"-", b"\r", b"\n")):
            return BadReply(f"not an SMTP reply: {line[:80]!r}")
        if self._lines and self._lines[0][:3] != code:
            return BadReply("reply lines with different codes")
        self._lines.append(line)
        if sum(map(len, self._lines)) > REPLY_MAX:
            return BadReply("reply too long")
        if separator == b"-":
            return None
        lines, self._lines = self._lines, []
        if self._owed <= 0:
            return BadReply(f"reply to no command: {line[:80]!r}")
        self._owed -= 1
        self._in_data = code == b"354"
        text = "\n".join(l[4:].strip(b" \t\r\n").decode("utf-8", "surrogateescape") for l in lines)
        self._replies.append(Reply(int(code), text))
        return None

    # ---- commands and replies -----------------------------------------------------------

    def send(self, *commands: bytes) -> None:
        """Write command lines at once (pipelined where the backend offers it); each owes a
        reply, taken in order with `read()`. ValueError for a line with a control character.

        After a 354 whose message is not written, a command would be read as the message's
        first line (a QUIT, an RSET): the connection is ended instead, which the backend takes
        as the transaction abandoned; SmtpError."""
        if self._in_data:
            self._end(ConnectionLost("left in the middle of DATA"))
        for command in commands:
            if _CONTROL.search(command):
                raise ValueError("a command line with a control character")
        self.write(b"".join(command + b"\r\n" for command in commands))
        self._owed += len(commands)

    async def read(self, timeout: float | None = None) -> Reply:
        """The next reply, waiting `timeout` (the client's) at most for each that arrives."""
        while not self._replies:
            if self._error is not None:
                raise self._error
            loop = asyncio.get_running_loop()
            waiter = self._waiter = loop.create_future()
            alarm = loop.call_later(self.timeout if timeout is None else timeout, self._time_out, waiter)
            try:
                await waiter
            finally:
                alarm.cancel()
                self._waiter = None
        return self._replies.popleft()

    def _time_out(self, waiter: asyncio.Future[None]) -> None:
        if not waiter.done():       # a half-read reply must never pair with the next command
            self._end(ReplyTimeout("no reply from the backend in time"))

    async def replies(self, count: int) -> list[Reply]:
        return [await self.read() for _ in range(count)]

    async def command(self, line: bytes, timeout: float | None = None) -> Reply:
        self.send(line)
        return await self.read(timeout)

    async def exchange(self, commands: Sequence[bytes]) -> list[Reply]:
        """`commands` and their replies: in one write when the backend offers PIPELINING, else
        one at a time."""
        if self.supports("pipelining"):
            self.send(*commands)
            return await self.replies(len(commands))
        return [await self.command(command) for command in commands]

    async def ehlo(self, name: str) -> Reply:
        """EHLO; a 250 replaces what the backend is known to offer."""
        self.helo_name = name
        reply = await self.command(b"EHLO " + name.encode("ascii", "surrogateescape"))
        if reply.code == 250:
            self.extensions = _extensions(reply.message.split("\n")[1:])
        return reply

    async def starttls(self, context: ssl.SSLContext, server_hostname: str) -> Reply:
        """STARTTLS; after a 220 the TLS handshake (its errors raised: ssl.SSLError,
        ConnectionError). What was learnt before TLS is forgotten (RFC 3207 §4.2)."""
        reply = await self.command(b"STARTTLS")
        if reply.code != 220:
            return reply
        transport = self._transport
        if transport is None or self._error is not None:
            raise self._error or ConnectionLost("connection closed by the backend")
        if not self.idle:
            # Anything after the 220, even half a line, came in the clear and would be read as
            # said inside TLS (RFC 3207 §4.2: an injected extension, or a refusal).
            self._end(BadReply("text after STARTTLS's 220, before TLS"))
            raise cast(SmtpError, self._error)
        loop = asyncio.get_running_loop()
        secured = await loop.start_tls(transport, self, context, server_hostname=server_hostname,
                                       ssl_handshake_timeout=self.timeout)
        if secured is None:
            raise ConnectionLost("connection closed during the TLS handshake")
        self._transport = secured
        self.extensions = {}
        ssl_object = secured.get_extra_info("ssl_object")
        self.tls_version = str(ssl_object.version()) if ssl_object is not None else "unknown"
        return reply

    async def quit(self, timeout: float) -> None:
        """QUIT, its reply awaited `timeout` at most, and the connection closed; never raises
        for a backend that is already gone."""
        try:
            if self.is_connected:
                await self.command(b"QUIT", timeout)
        except (SmtpError, OSError):
            pass
        finally:
            self.close()

    # ---- a message's bytes ------------------------------------------------------------

    def write(self, data: bytes | memoryview) -> None:
        if self._error is not None:
            raise self._error
        if self._transport is None or self._transport.is_closing():
            raise ConnectionLost("connection closed")
        self._transport.write(data)

    def expect_reply(self) -> None:
        """What is written from now on (a message and its end mark) owes a reply."""
        self._owed += 1
        self._in_data = False

    async def drain(self) -> None:
        """Wait, `timeout` at most, while the transport holds more than WRITE_HIGH bytes."""
        writable = self._writable
        if writable is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(writable), self.timeout)
        except TimeoutError:
            self._end(ReplyTimeout("the backend took no more of the message in time"))
        if self._error is not None:
            raise self._error


def _extensions(lines: Iterable[str]) -> dict[str, str]:
    """EHLO's lines after the first: {keyword (lower case): its parameters}."""
    offered = {}
    for line in lines:
        keyword, _, parameters = line.strip().partition(" ")
        if keyword:
            offered[keyword.lower()] = parameters.strip()
    return offered
