"""`FrontSMTP`: aiosmtpd's SMTP protocol, hardened where aiosmtpd is lenient.

What this class adds, and why:
- DATA is read in blocks (`smtp.data`), refusing bare CR/LF and over-long lines, draining an
  oversize body without keeping it — aiosmtpd accepts bare CR/LF verbatim (SMTP smuggling).
- A command line ending in a bare LF, or holding a bare CR, is refused and the connection is
  closed (as Postfix's `smtpd_forbid_bare_newline`): `EHLO a\\nNOOP` is not two commands here.
- Commands per session, protocol errors per session and a total session time are bounded;
  crossing one answers `421 4.7.0` and closes.
- A reply marked `close` closes the connection once it is written.
- No exception text ever reaches the client: `handle_exception` answers `451 4.3.0` and logs.

The hooks themselves (policy, rules, delivery) are the handler's (`smtp.handler`).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiosmtpd.smtp import SMTP, syntax

from frontfilter import observe, reply
from frontfilter.reply import Reply
from frontfilter.smtp.data import CHUNK, DataCollector, DataProblem


class BareNewlineInCommand(Exception):
    """A command line with a bare CR or LF: the client is broken or smuggling."""


class FrontSMTP(SMTP):
    def __init__(self, handler: Any, *, max_line_length: int, max_commands: int, max_errors: int,
                 data_timeout: float, session_timeout: float, max_message_size: int, **kwargs: Any):
        super().__init__(handler, **kwargs)
        self.max_message_size = max_message_size
        self._max_line = max_line_length
        self._max_commands = max_commands
        self._max_errors = max_errors
        self._data_timeout = data_timeout
        self._session_timeout = session_timeout
        self._commands = 0
        self._errors = 0
        self._close_after_push = False
        self._session_deadline: asyncio.TimerHandle | None = None
        self.stage = "connect"

    # ---- connection -----------------------------------------------------------------

    def _cb_client_connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        super()._cb_client_connected(reader, writer)
        plain_readuntil = reader.readuntil

        async def checked_readuntil(separator: bytes = b"\n") -> bytes:
            line = await plain_readuntil(separator)
            if separator == b"\n":
                self._commands += 1
                if not line.endswith(b"\r\n") or b"\r" in line[:-2]:
                    raise BareNewlineInCommand()
            return line

        reader.readuntil = checked_readuntil  # type: ignore[method-assign]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self.transport is None
        super().connection_made(transport)
        if first:
            self._session_deadline = self.loop.call_later(self._session_timeout, self._session_expired)

    def connection_lost(self, error: Exception | None) -> None:
        if self._session_deadline is not None:
            self._session_deadline.cancel()
        super().connection_lost(error)
        closed = getattr(self.event_handler, "session_closed", None)
        if closed is not None and self.session is not None:
            self.loop.create_task(closed(self.session))

    def _session_expired(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write((reply.SESSION_TIMEOUT.wire + "\r\n").encode())
            self.transport.close()

    async def _handle_client(self) -> None:
        admit = getattr(self.event_handler, "admit", None)
        if admit is not None and self._proxy_timeout is None:
            refusal = await admit(self, self.session)
            if refusal is not None:
                await self.push(refusal)
                return
        await super()._handle_client()

    # ---- replies --------------------------------------------------------------------

    def close_after_reply(self) -> None:
        self._close_after_push = True

    async def push(self, status: Any) -> None:
        if isinstance(status, Reply):
            if status.close:
                self._close_after_push = True
            status = status.wire
        text = status.decode("utf-8", "replace") if isinstance(status, bytes) else status
        code = text[:3]
        if code.isdigit() and code[0] in "45" and not text.startswith("421"):
            self._errors += 1
        if text.startswith("421"):
            self._close_after_push = True
        await super().push(status)
        if len(text) < 4 or text[3] != "-":   # a multi-line reply counts once
            observe.reply_sent(self.stage, code if code.isdigit() else "500")
        if self._close_after_push and self.transport is not None:
            self.transport.close()
            return
        if self._errors >= self._max_errors and self.transport is not None:
            self._close_after_push = True
            await super().push(reply.TOO_MANY_ERRORS.wire)
            observe.reply_sent(self.stage, "421")
            self.transport.close()
        elif self._commands > self._max_commands and self.transport is not None:
            self._close_after_push = True
            await super().push(reply.TOO_MANY_COMMANDS.wire)
            observe.reply_sent(self.stage, "421")
            self.transport.close()

    async def handle_exception(self, error: Exception) -> str:
        if isinstance(error, BareNewlineInCommand):
            observe.protocol_violation(str(self.session.peer if self.session else "-"),
                                       "bare CR or LF in command")
            self._close_after_push = True
            return reply.BARE_NEWLINE_COMMAND.wire
        queue_id = getattr(self.event_handler, "queue_id_of", lambda s: None)(self.session)
        try:
            raise error
        except Exception:
            observe.internal_error("smtp session", queue_id=queue_id, stage=self.stage)
        return reply.INTERNAL_ERROR.wire

    # ---- DATA -------------------------------------------------------------------------

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push(reply.BAD_SEQUENCE.with_text("Need RCPT command"))
            return
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        self.stage = "data"
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        collector = DataCollector(max_size=self.max_message_size, max_line=self._max_line)
        deadline = time.monotonic() + self._data_timeout
        leftover: bytes | None = None
        while leftover is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                await self.push(Reply(421, "4.4.2", "DATA phase too long, closing connection", close=True))
                return
            try:
                block = await asyncio.wait_for(self._reader.read(CHUNK), remaining)
            except TimeoutError:
                continue
            if not block:          # EOF: the client went away; nothing was acknowledged
                return
            self._reset_timeout()
            leftover = collector.feed(block)
        if leftover:
            # Hand back what follows the terminator: it is commands, never data.
            self._reader._buffer[0:0] = leftover  # type: ignore[attr-defined]
        message, problem = collector.result()
        if problem is not None:
            self._set_post_data_state()
            await self.push(_DATA_REPLIES[problem])
            if problem is DataProblem.BARE_NEWLINE:
                observe.protocol_violation(str(self.session.peer if self.session else "-"),
                                           "bare CR or LF in DATA")
            return
        self.envelope.content = message
        self.envelope.original_content = message
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()
        await self.push(status)


_DATA_REPLIES = {
    DataProblem.TOO_BIG: reply.MESSAGE_TOO_BIG,
    DataProblem.BARE_NEWLINE: reply.BARE_NEWLINE_DATA,
    DataProblem.LINE_TOO_LONG: reply.LINE_TOO_LONG,
}
