"""`FrontSMTP`: aiosmtpd's SMTP protocol, hardened where aiosmtpd is lenient.

What this class adds, and why:
- Opening a session, in this order: the PROXY header (proxy listeners only, and only from
  `proxy.networks`: the real client is what everything after sees), the connection limits
  (total, per address, rate: `421 4.7.0`), the TLS handshake on implicit-TLS listeners, then
  the handler's admission (connect rules) and the greeting.
- STARTTLS and implicit TLS done here, with the certificate current at handshake time (a reload
  reaches new handshakes, not running sessions); a failed or stalled handshake is one log line
  and `connections_total{result="tls_failed"}`, never a traceback. Commands pipelined after
  STARTTLS are discarded unread (RFC 3207 §4.2, CVE-2011-0411).
- AUTH PLAIN and LOGIN only inside TLS and only where the listener offers it (`smtp.auth`
  checks the credentials off the event loop); the listener's role refuses MAIL without TLS or
  AUTH (`530 5.7.0`).
- DATA is read in blocks (`smtp.data`), refusing bare CR/LF, NUL and over-long lines, draining an
  oversize body without keeping it — aiosmtpd accepts bare CR/LF verbatim (SMTP smuggling).
- A command line ending in a bare LF, or holding a bare CR, is refused and the connection is
  closed (as Postfix's `smtpd_forbid_bare_newline`): `EHLO a\\nNOOP` is not two commands here.
- Commands per session, protocol errors per session and a total session time are bounded;
  crossing one answers `421 4.7.0` and closes. Past `limits.tarpit_after` errors, each error
  reply waits `limits.tarpit_delay` (a tarpit: a client probing the relay gets slow).
- A reply marked `close` closes the connection once it is written.
- No exception text ever reaches the client: `handle_exception` answers `451 4.3.0` and logs.

The hooks themselves (policy, rules, delivery) are the handler's (`smtp.handler`). This module
is longer than the 400-line guide because the session life cycle is one piece: splitting it
would spread aiosmtpd's private state over several files.
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto as sslproto
import re
import ssl
import time
from typing import Any

from aiosmtpd.smtp import SMTP, syntax
from email._header_value_parser import get_addr_spec, get_angle_addr
from email.errors import HeaderParseError

from frontfilter import observe, reply
from frontfilter.config import AuthMode, ListenerConfig, TlsMode
from frontfilter.model import PLAIN_ADDRESS, Peer
from frontfilter.reply import Reply
from frontfilter.smtp import introspect, proxy
from frontfilter.smtp.auth import MECHANISMS
from frontfilter.smtp.data import CHUNK, DataCollector, DataProblem
from frontfilter.smtp.door import NOWHERE, FrontDoor, peer_from
from frontfilter.smtp.tls import HANDSHAKE_TIMEOUT, tls_version


introspect.install()


class BareNewlineInCommand(Exception):
    """A command line with a bare CR or LF: the client is broken or smuggling."""


class FrontSMTP(SMTP):
    def __init__(self, handler: Any, *, listener: ListenerConfig, door: FrontDoor,
                 max_line_length: int, max_commands: int, max_errors: int,
                 data_timeout: float, session_timeout: float, max_message_size: int, **kwargs: Any):
        # aiosmtpd's own TLS, AUTH-required and PROXY handling stay off: this class does them.
        super().__init__(handler, tls_context=None, auth_require_tls=True, **kwargs)
        self.listener = listener
        self.door = door
        self.client: Peer = NOWHERE   # the real client: set at connect, after PROXY
        self._holds_slot = False     # a connection-limit slot to give back
        self._lost = False
        self._overrun = False
        self.max_message_size = max_message_size
        self._max_line = max_line_length
        self._max_commands = max_commands
        self._max_errors = max_errors
        self._data_timeout = data_timeout
        self._session_timeout = session_timeout
        self._commands = 0
        self._errors = 0
        self._close_after_push = False
        self._held_lines: list[str] = []     # lines of a multi-line reply not yet written
        self._session_deadline: asyncio.TimerHandle | None = None
        self.stage = "connect"

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """aiosmtpd's own, with a fast path for the plain `<local@domain>` nearly every client
        sends: the stdlib header parser took 70-90 µs per MAIL and RCPT (11 % of the event loop
        in the bench profile), this regex 1 µs. The fast path answers exactly what the parser
        would (tests/smtp/test_getaddr.py compares them); anything else goes to the parser,
        less the `typing.Protocol` class aiosmtpd defines on every call, and is an unreadable
        address where the parser itself fails."""
        if not arg:
            return "", ""
        simple = _SIMPLE_PATH.match(arg)
        if simple is not None:
            addr, rest = simple.group(1), arg[simple.end():]
        else:
            try:
                if arg.lstrip().startswith("<"):
                    address, rest = get_angle_addr(arg)
                else:
                    address, rest = get_addr_spec(arg)
                addr = address.addr_spec
            except (HeaderParseError, IndexError, AttributeError):
                # The stdlib parser trips over some broken input (`MAIL FROM:<"`): an unreadable
                # address for the client (553 5.1.3), not an internal error (451, a traceback).
                return None, None
        localpart = addr.rpartition("@")[0]
        if self.local_part_limit and len(localpart) > self.local_part_limit:
            return None, None
        return addr, rest

    # ---- connection -----------------------------------------------------------------

    def _cb_client_connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        super()._cb_client_connected(reader, writer)
        plain_readuntil = reader.readuntil

        async def checked_readuntil(separator: bytes = b"\n") -> bytes:
            try:
                line = await plain_readuntil(separator)
            except asyncio.LimitOverrunError:
                if separator == b"\n":
                    self._overrun = True       # aiosmtpd reads on to the end of it, then says 500
                raise
            if separator == b"\n":
                if self._overrun:
                    # The tail of a command line that was too long: aiosmtpd throws it away and
                    # answers "line too long". The cut may fall between its CR and LF, so it is
                    # no evidence of smuggling, and it is not a command.
                    self._overrun = False
                    return line
                self._commands += 1
                if not line.endswith(b"\r\n") or b"\r" in line[:-2]:
                    raise BareNewlineInCommand()
            return line

        reader.readuntil = checked_readuntil  # type: ignore[method-assign]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        previous = self.session
        first = previous is None
        super().connection_made(transport)
        if first:
            self.client = peer_from(transport.get_extra_info("peername"))
            self._session_deadline = self.loop.call_later(self._session_timeout, self._session_expired)
            return
        # The TLS layer came up (STARTTLS or implicit): aiosmtpd made a fresh Session, as
        # RFC 3207 §4.2 asks (forget HELO and anything learnt before TLS). Carry over what
        # is ours: the session state, with TLS now on and HELO to be given again.
        state = getattr(previous, "frontfilter", None)
        if state is not None:
            state.tls, state.helo, state.auth_user, state.txn = True, None, None, None
            self.session.frontfilter = state  # type: ignore[union-attr]

    def connection_lost(self, error: Exception | None) -> None:
        if self._lost:        # a failed handshake calls this itself; the transport may again
            return
        self._lost = True
        if self._session_deadline is not None:
            self._session_deadline.cancel()
        if self._holds_slot:
            self._holds_slot = False
            self.door.limits.release(self.client.ip)
        super().connection_lost(error)
        # The handler keeps live sessions for graceful shutdown; a closed one must leave that
        # set, or every connection's protocol, streams and frames stay in memory for good.
        forget = getattr(self.event_handler, "forget", None)
        if forget is not None:
            forget(self)
        closed = getattr(self.event_handler, "session_closed", None)
        if closed is not None and self.session is not None:
            self.loop.create_task(closed(self.session))
        task = self._handler_coroutine
        if task is None:
            self._release()
        else:
            task.add_done_callback(self._release)    # once it has unwound from its cancellation

    def _release(self, _task: object = None) -> None:
        """Break the reference cycles of a finished session, so that it is freed at once.

        aiosmtpd's command tables and callbacks are bound methods of the session, its stream
        writer and reader point back at it (the reader through our line check), timers call
        it back, and the cancelled task's traceback holds the session's frames. Left to the
        cycle collector, ~70 objects per session made it run every few hundred sessions,
        2-6 ms each and longer full passes, with the event loop stopped (bench/README.md)."""
        self._smtp_methods = {}
        self._auth_methods = {}
        self._handle_hooks = {}
        self._handler_coroutine = None
        self._client_connected_cb = None      # a bound method of the session (StreamReaderProtocol)
        self._timeout_handle = self._session_deadline = None    # cancelled timers, callbacks to us
        reader = getattr(self, "_reader", None)
        if reader is not None:
            reader.__dict__.pop("readuntil", None)
        self._writer = None

    def _session_expired(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write((reply.SESSION_TIMEOUT.wire + "\r\n").encode())
            self.transport.close()

    async def _handle_client(self) -> None:
        try:
            admitted = await self._open()
        except Exception:    # never a silent hang: the client hears 421 4.3.0, the log has why
            observe.internal_error("opening a session", client=str(self.client), listener=self.listener.name)
            if self.transport is not None and not self.transport.is_closing():
                await self.push(reply.NOT_READY)
            return
        if admitted:
            await super()._handle_client()

    async def _open(self) -> bool:
        """PROXY header, limits, implicit TLS, admission. True when the client may be greeted."""
        if self.listener.proxy_protocol:
            client = await self._read_proxy_header()
            if client is None:
                return False
            self.client = client
        limit = self.door.limits.acquire(self.client.ip)
        self._holds_slot = limit is None
        if self.listener.tls is TlsMode.IMPLICIT and not await self._start_tls(implicit=True):
            return False
        if limit is not None:
            observe.connection("refused_limit", str(self.client), limit=limit.value,
                               listener=self.listener.name)
            await self.push(reply.TOO_MANY_CONNECTIONS)
            return False
        admit = getattr(self.event_handler, "admit", None)
        if admit is not None:
            refusal = await admit(self, self.session, self.client)
            if refusal is not None:
                await self.push(refusal)
                return False
        return True

    async def _read_proxy_header(self) -> Peer | None:
        """The client named by the PROXY header, or None (connection closed, logged, counted)."""
        proxy_peer = self.client
        problem = None
        if not self.door.proxy_allowed(proxy_peer):
            problem = "not from proxy.networks"
        else:
            try:
                header = await asyncio.wait_for(proxy.read_header(self._reader), self.door.proxy_timeout)
            except proxy.ProxyError as error:
                problem = str(error)
            except TimeoutError:
                problem = "no PROXY header in time"
            except (asyncio.IncompleteReadError, ConnectionError):
                problem = "connection closed before the PROXY header"
        if problem is not None:
            observe.connection("refused_proxy", str(proxy_peer), reason=problem,
                               listener=self.listener.name)
            if self.transport is not None:
                self.transport.close()
            return None
        if header.source is None:   # LOCAL / UNKNOWN: the proxy itself (a health check)
            return proxy_peer
        return Peer(ip=header.source, port=header.source_port)

    # ---- TLS ------------------------------------------------------------------------------

    @syntax("STARTTLS")
    async def smtp_STARTTLS(self, arg: str) -> None:
        self.stage = "starttls"
        if arg:
            await self.push(Reply(501, "5.5.4", "Syntax: STARTTLS"))
        elif self._tls_protocol is not None:
            await self.push(reply.TLS_ALREADY_ACTIVE)
        elif self.listener.tls is not TlsMode.STARTTLS or self.door.certificate is None:
            await self.push(reply.NOT_IMPLEMENTED)
        else:
            if self._reader._buffer:  # type: ignore[attr-defined]
                # Sent before our 220: plaintext that would be read as if it came over TLS.
                observe.protocol_violation(str(self.client), "commands pipelined after STARTTLS discarded")
                self._reader._buffer.clear()  # type: ignore[attr-defined]
            await self.push(reply.TLS_READY)
            await self._start_tls(implicit=False)

    async def _start_tls(self, *, implicit: bool) -> bool:
        """Put the TLS layer under this protocol. False (closed, logged, counted) on failure."""
        assert self.door.certificate is not None and self.transport is not None
        # Bytes already read belong to the handshake (a ClientHello right behind the PROXY
        # header, or one that raced our 220): hand them to the TLS layer, not to SMTP.
        early = bytes(self._reader._buffer)  # type: ignore[attr-defined]
        self._reader._buffer.clear()  # type: ignore[attr-defined]
        waiter = self.loop.create_future()
        self._tls_protocol = sslproto.SSLProtocol(
            self.loop, self, self.door.certificate.context, waiter, server_side=True,
            ssl_handshake_timeout=HANDSHAKE_TIMEOUT)
        self._original_transport = self.transport
        self._original_transport.set_protocol(self._tls_protocol)
        self.transport = self._tls_protocol._get_app_transport()
        self._tls_protocol.connection_made(self._original_transport)
        if early:
            _feed(self._tls_protocol, early)
        try:
            await waiter
        except (OSError, EOFError) as error:   # ssl.SSLError is an OSError
            observe.connection("tls_failed", str(self.client), reason=_tls_failure(error),
                               listener=self.listener.name, implicit=implicit)
            self._original_transport.close()
            self.connection_lost(None)      # the TLS layer never tells us: see sslproto
            return False
        observe.tls_session("inbound", tls_version(self.transport.get_extra_info("ssl_object")))
        return True

    @property
    def tls_active(self) -> bool:
        return self._tls_protocol is not None

    def extension_lines(self) -> list[str]:
        """The EHLO keywords for TLS and AUTH that this listener offers right now."""
        lines = []
        if self.listener.tls is TlsMode.STARTTLS and not self.tls_active and self.door.certificate:
            lines.append("250-STARTTLS")
        if self.listener.auth is not AuthMode.NONE and self.tls_active and self.door.authenticator:
            lines.append("250-AUTH " + " ".join(MECHANISMS))
        return lines

    # ---- AUTH and the listener's role -------------------------------------------------------

    @syntax("AUTH mechanism [initial-response]")
    async def smtp_AUTH(self, arg: str) -> None:
        self.stage = "auth"
        assert self.session is not None and self.envelope is not None
        words = (arg or "").split()
        refusal = None
        if self.listener.auth is AuthMode.NONE or self.door.authenticator is None:
            refusal = reply.AUTH_NOT_OFFERED
        elif not self.session.host_name or not self.session.extended_smtp:
            refusal = reply.BAD_SEQUENCE.with_text("Send EHLO first")
        elif not self.tls_active:
            refusal = reply.AUTH_NEEDS_TLS
        elif self.session.authenticated:
            refusal = reply.AUTH_ALREADY_DONE
        elif self.envelope.mail_from is not None:
            refusal = reply.AUTH_IN_TRANSACTION
        elif not 1 <= len(words) <= 2:
            refusal = Reply(501, "5.5.4", "Syntax: AUTH mechanism [initial-response]")
        elif words[0].upper() not in MECHANISMS:
            refusal = reply.AUTH_UNKNOWN_MECHANISM
        if refusal is not None:
            await self.push(refusal)
            return
        user, answer = await self.door.authenticator.authenticate(  # type: ignore[union-attr]
            self, self.client, words[0].upper(), words[1] if len(words) == 2 else None)
        if user is not None:
            self.session.authenticated = True
            self.session.auth_data = user
            hook = getattr(self.event_handler, "authenticated", None)
            if hook is not None:
                hook(self.session, user)
        if answer is not None:
            await self.push(answer)

    def role_refusal(self) -> Reply | None:
        """What this listener's role says to MAIL: TLS first, AUTH first, or nothing."""
        if self.listener.require_tls and not self.tls_active:
            return reply.TLS_REQUIRED
        if self.listener.auth is AuthMode.REQUIRED and not (self.session and self.session.authenticated):
            return reply.AUTH_REQUIRED
        return None

    # ---- replies --------------------------------------------------------------------

    def close_after_reply(self) -> None:
        self._close_after_push = True

    async def push(self, status: Any) -> None:
        if isinstance(status, Reply):
            if status.close:
                self._close_after_push = True
            status = status.wire
        text = status.decode("utf-8", "replace") if isinstance(status, bytes) else status
        text = status = with_enhanced_code(text)
        code = text[:3]
        if code.isdigit() and code[0] in "45" and not text.startswith("421"):
            self._errors += 1
            if self._errors > self.door.tarpit_after and self.door.tarpit_delay > 0:
                await asyncio.sleep(self.door.tarpit_delay)
        if text.startswith("421"):
            self._close_after_push = True
        if len(text) > 3 and text[3] == "-" and not self._close_after_push:
            # A line of a multi-line reply (EHLO's seven): held, and written with the last in
            # one send, not one system call per line.
            self._held_lines.append(text)
            return
        if self._held_lines:
            status = "\r\n".join([*self._held_lines, text])
            self._held_lines.clear()
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
            observe.protocol_violation(str(self.client), "bare CR or LF in command")
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
        try:
            await self._data_phase()
        finally:
            self.stage = "mail"      # the transaction is over, however it ended: what follows is MAIL's

    async def _data_phase(self) -> None:
        """354, the message, and the reply to it: all counted under stage `data`."""
        assert self.envelope is not None
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
            if problem in _DATA_VIOLATIONS:
                observe.protocol_violation(str(self.client), _DATA_VIOLATIONS[problem])
            return
        self.envelope.content = message
        self.envelope.original_content = message
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()
        if (status.wire if isinstance(status, Reply) else str(status)).startswith("2"):
            # A message taken forgives the session's earlier errors, as Postfix does: `max_errors`
            # and the tarpit are for clients that err without delivering, not for a relay whose
            # batch holds some refused messages among good ones.
            self._errors = 0
        await self.push(status)


def _tls_failure(error: BaseException) -> str:
    """A short reason for the log line: the OpenSSL reason code, or what the client did."""
    if isinstance(error, ssl.SSLError):
        return f"tls error: {error.reason or type(error).__name__}"
    if isinstance(error, ConnectionAbortedError):
        return "handshake timed out"
    if isinstance(error, ConnectionResetError | EOFError | BrokenPipeError):
        return "client closed the connection during the handshake"
    return type(error).__name__


# `<dot-atom@host.name>`, then the end or blanks before a parameter (the parser drops blanks
# and comments after the `>`; a comment is left to it).
def _feed(protocol: asyncio.BufferedProtocol, data: bytes) -> None:
    """Hand `data` to a buffered protocol as its transport would: through the protocol's own
    public `get_buffer` / `buffer_updated`, as much as each buffer it offers takes."""
    view = memoryview(data)
    while view:
        buffer = memoryview(protocol.get_buffer(len(view)))
        size = min(len(buffer), len(view))
        if not size:
            raise RuntimeError("the TLS layer offered an empty buffer")
        buffer[:size] = view[:size]
        protocol.buffer_updated(size)
        view = view[size:]


_SIMPLE_PATH = re.compile(rf"<({PLAIN_ADDRESS})>(?:$|[ \t]+(?=[^ \t(]|$))")

_DATA_REPLIES = {
    DataProblem.TOO_BIG: reply.MESSAGE_TOO_BIG,
    DataProblem.BARE_NEWLINE: reply.BARE_NEWLINE_DATA,
    DataProblem.LINE_TOO_LONG: reply.LINE_TOO_LONG,
    DataProblem.NUL: reply.NUL_DATA,
}
# The problems that say the client is broken or smuggling, not just over a bound: logged.
_DATA_VIOLATIONS = {
    DataProblem.BARE_NEWLINE: "bare CR or LF in DATA",
    DataProblem.NUL: "NUL in DATA",
}


# aiosmtpd's own replies ("503 Error: need MAIL command", "500 Command line too long", ...)
# carry no enhanced status code, though EHLO advertises ENHANCEDSTATUSCODES (RFC 2034 §3: every
# reply but the greeting and HELO/EHLO's carries one). Ours always do; these get theirs here.
_BARE_REPLY = re.compile(r"^([245]\d\d) (?!\d\.\d{1,3}\.\d{1,3}(?: |$))")
_ENHANCED_FOR_TEXT = {"500 Command line too long": reply.LINE_TOO_LONG.wire, "250 OK": "250 2.0.0 OK"}
_ENHANCED_FOR_CODE = {        # not 250: the last line of an EHLO reply, or HELO's, is a bare 250
    "221": "2.0.0", "252": "2.5.0",
    "500": "5.5.2", "501": "5.5.4", "502": "5.5.1", "503": "5.5.1", "504": "5.5.4",
    "530": "5.7.0", "535": "5.7.8", "538": "5.7.11", "550": "5.0.0", "553": "5.1.3",
    "554": "5.0.0", "555": "5.5.4", "421": "4.3.0", "451": "4.3.0", "452": "4.3.1",
}


def with_enhanced_code(text: str) -> str:
    """A single-line reply with its enhanced status code, added when it has none."""
    if text in _ENHANCED_FOR_TEXT:
        return _ENHANCED_FOR_TEXT[text]
    found = _BARE_REPLY.match(text)
    if found is None or "\n" in text:
        return text
    enhanced = _ENHANCED_FOR_CODE.get(found.group(1))
    return text if enhanced is None else f"{found.group(1)} {enhanced} {text[4:]}"
