"""The asyncio shell around the SMTP core: one `SmtpSession` protocol per client connection.

It owns what the I/O-free core (`smtp.core`) cannot: the socket, the clock, TLS and the calls
that decide (the `Handler`: policy, rules, delivery). Public asyncio and ssl API only.

Opening a session, in this order: the PROXY header (proxy listeners only, and only from
`proxy.networks`: the real client is what everything after sees), the connection limits
(`421 4.7.0`), the TLS handshake on implicit-TLS listeners, the handler's admission (connect
rules), then the greeting. Then one task per connection takes the core's events in turn and
answers each; every reply leaves through `_send`, which writes it, counts it under the command
it answers and logs it when it refuses or closes.

Bounds, each a reply and a log line: `server.command_timeout` without input (`421 4.4.2`),
`server.data_timeout` for a whole DATA phase, `server.session_timeout` for the connection,
`limits.min_data_rate` for what a client sends between two of our replies (a command, a
message), measured from its first byte once `limits.min_data_rate_grace` has passed,
`HANDSHAKE_TIMEOUT` for TLS, `proxy.timeout` for the PROXY header. Past `limits.tarpit_after`
error replies each error waits `limits.tarpit_delay`. Backpressure: a client that pipelines
faster than it reads our replies stops being read (`pause_reading`) once the transport's write
buffer is full or `PAUSE_READING_AT` octets of its input wait unread.

Shutdown (`shut_down`): a session between transactions is told `421 4.3.2` and closed at once
(RFC 5321 §3.8; a client reads it as the answer to its next command); one inside a transaction
finishes it first, within `server.shutdown_grace`.

Ending: a timeout or the shutdown's cut that comes while a message is being decided waits for
the verdict (a `421` for a message then relayed would have it sent twice). A client that
half-closes still gets the replies to what it pipelined before. A closed session whose last
replies the client does not read is cut after `CLOSE_LINGER` (at once on a timeout), so it does
not keep its slot in the connection limits. The handler hears `forget` and `session_closed`
only once no hook of the session is running any more.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
from typing import Any

from frontfilter import observe, reply
from frontfilter.config import AuthMode, ListenerConfig, ServerConfig, TlsMode
from frontfilter.model import Peer
from frontfilter.mapped import SpilledMessage
from frontfilter.reply import Reply
from frontfilter.smtp.auth import MECHANISMS
from frontfilter.smtp.core import (PAUSE_READING_AT, Answer, Auth, AuthAnswer, BadProxyHeader, CoreLimits, Event,
                                   Hello, Mail, Message, Mode, ProxyHeader, Rcpt, Reset, SmtpCore, StartTls,
                                   data_refusal)
from frontfilter.smtp.data import DataProblem, SpilledBody
from frontfilter.smtp.door import NOWHERE, FrontDoor, peer_from
from frontfilter.smtp.tls import HANDSHAKE_TIMEOUT
from frontfilter.smtp.tls_layer import TlsClosed, TlsLayer

# After the session is closed, how long its last replies may take to reach a client that is
# slow to read them before the connection is cut (its slot in the limits is held till then).
CLOSE_LINGER = 5.0


class SmtpSession(asyncio.Protocol):
    def __init__(self, handler: Any, listener: ListenerConfig, door: FrontDoor, server: ServerConfig):
        self.handler = handler
        self.listener = listener
        self.door = door
        self.server = server
        self.core = SmtpCore(CoreLimits(
            max_line_length=server.max_line_length, max_message_size=server.max_message_size,
            max_commands=server.max_commands, max_errors=server.max_errors, smtputf8=server.smtputf8,
            budget=door.data_budget, spill_size=door.spill_size, spill=door.spill),
            expect_proxy=listener.proxy_protocol)
        self.client: Peer = NOWHERE          # the real client: set at connect, after PROXY
        self.state: Any = None               # the handler's per-connection state, once admitted
        self.transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self._tls: TlsLayer | None = None
        self._handshake: asyncio.Future[None] | None = None
        self._wakeup: asyncio.Future[None] | None = None     # the task waits here for input
        self._writable = True
        self._reading_paused = False
        self._holds_slot = False
        self._stopping = False
        self._lost = False
        self._last_activity = 0.0     # the last input, or the last reply: what idleness counts from
        self._deciding = False        # the handler is deciding a message the client has sent
        self._close_after: tuple[Reply, str] | None = None    # a close held until that decision
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._sending_since: float | None = None    # the client's turn began (its first byte)
        self._sent = 0                              # bytes of that turn so far
        self._task: asyncio.Task[None] | None = None

    # ---- transport callbacks ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport    # type: ignore[assignment]   # uvloop's are not asyncio.Transport subclasses
        self.client = peer_from(transport.get_extra_info("peername"))
        self._last_activity = self._loop.time()
        self._timers["session"] = self._loop.call_later(self.server.session_timeout, self._session_expired)
        self._timers["idle"] = self._loop.call_later(self.server.command_timeout, self._idle_check)
        self._task = self._loop.create_task(self._run())

    def data_received(self, data: bytes) -> None:
        now = self._last_activity = self._loop.time()
        if self._too_slow(now, len(data)):
            self._end(reply.TOO_SLOW, "min_data_rate")
            return
        if self._tls is not None:
            data = self._decrypt(data)
            if not data:
                return
        self.core.receive(data)
        if self.core.buffered > PAUSE_READING_AT and not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()
        self._wake()

    def _too_slow(self, now: float, size: int) -> bool:
        """What the client sent since our last reply, from its first byte: under
        `limits.min_data_rate` once the grace has passed? (Time before the first byte is the
        client thinking, or waiting for us: not counted; command_timeout bounds it.)"""
        if self._sending_since is None:
            self._sending_since, self._sent = now, 0
        self._sent += size
        took = now - self._sending_since
        rate = self.door.min_data_rate
        return rate > 0 and took > self.door.min_data_rate_grace and self._sent < rate * took

    def eof_received(self) -> bool:
        """The client stopped sending: the commands it pipelined before that are still
        answered (keep the transport open for our replies); the session then closes."""
        self.core.end_of_input()
        if self._handshake is not None and not self._handshake.done():
            self._handshake.set_exception(ConnectionResetError("client closed the connection during the handshake"))
        self._wake()
        return True

    def pause_writing(self) -> None:
        self._writable = False

    def resume_writing(self) -> None:
        self._writable = True
        self._wake()

    def connection_lost(self, error: Exception | None) -> None:
        if self._lost:
            return
        self._lost = True
        self.core.close()
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        if self._holds_slot:
            self._holds_slot = False
            self.door.limits.release(self.client.ip)
        if self._handshake is not None and not self._handshake.done():
            self._handshake.set_exception(ConnectionResetError("client closed the connection during the handshake"))
        self._wake()
        self.transport = None

    # ---- the session ------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            if await self._open():
                await self._serve()
        except Exception:    # never a silent hang, never exception text to the client
            queue_id = self.handler.queue_id_of(self)
            observe.internal_error("smtp session", client=str(self.client), listener=self.listener.name,
                                   queue_id=queue_id, stage=self.core.stage)
            self._send(reply.NOT_READY, "internal error")
        finally:
            self._close()
            # Only now, with no hook of this session running any more: a session still
            # deciding a message stays in the handler's set, so shutdown waits for it.
            self.handler.forget(self)
            try:
                if self.state is not None:
                    await self.handler.session_closed(self)
            finally:
                self._task = None        # the task and this protocol would keep each other alive

    async def _open(self) -> bool:
        """PROXY header, limits, implicit TLS, admission. True once the client is greeted."""
        if self.listener.proxy_protocol and not await self._read_proxy_header():
            return False
        limit = self.door.limits.acquire(self.client.ip)
        self._holds_slot = limit is None
        if self.listener.tls is TlsMode.IMPLICIT:
            self._begin_tls()
            early = self.core.unread()      # a ClientHello right behind the PROXY header
            if early:
                self.data_received(early)
            if not await self._handshaken(implicit=True):
                return False
        if limit is not None:
            observe.connection("refused_limit", str(self.client), limit=limit.value, listener=self.listener.name)
            self._send(reply.TOO_MANY_CONNECTIONS)
            return False
        refusal = await self.handler.admit(self)
        if refusal is not None:
            self._send(refusal)
            return False
        self._send(Reply(220, "", f"{self.server.hostname} ESMTP frontfilter"))
        return True

    async def _read_proxy_header(self) -> bool:
        proxy_peer = self.client
        if not self.door.proxy_allowed(proxy_peer):
            problem = "not from proxy.networks"
        else:
            self._timers["proxy"] = self._loop.call_later(self.door.proxy_timeout, self._proxy_expired)
            event = await self._next_event()
            timer = self._timers.pop("proxy", None)
            if timer is not None:
                timer.cancel()
            if isinstance(event, ProxyHeader):
                header = event.header
                if header.source is not None:     # None: LOCAL / UNKNOWN, the proxy itself
                    self.client = Peer(ip=header.source, port=header.source_port)
                return True
            problem = event.reason if isinstance(event, BadProxyHeader) else "connection closed before the PROXY header"
        observe.connection("refused_proxy", str(proxy_peer), reason=problem, listener=self.listener.name)
        self._close()
        return False

    def _proxy_expired(self) -> None:
        if self.core.mode is Mode.PROXY:
            observe.connection("refused_proxy", str(self.client), reason="no PROXY header in time",
                               listener=self.listener.name)
            self._close()

    async def _serve(self) -> None:
        core = self.core
        while True:
            event = await self._next_event()
            if event is None:
                return
            try:
                answer, reason = await self._answer(event)
            except Exception:       # the detail to the log, never to the client
                observe.internal_error("smtp session", queue_id=self.handler.queue_id_of(self),
                                       client=str(self.client), stage=core.stage)
                answer, reason = reply.INTERNAL_ERROR, "internal error"
            if answer is not None:
                await self._reply(answer, reason)
            if self._close_after is not None:      # a timeout or the shutdown came during the decision
                self._send(*self._close_after)
                self._close()
            if core.mode is Mode.CLOSED or self.transport is None:
                return

    async def _next_event(self) -> Event | None:
        """The core's next event, waiting for input (and for a writable transport) as needed;
        None once the session is over."""
        core = self.core
        while True:
            if self.transport is None or core.ended:
                return None
            if self._stopping and not core.in_transaction and core.mode is Mode.COMMAND:
                self._send(reply.SHUTTING_DOWN, "shutting down")
                return None
            if self._writable:
                event = core.next_event()
                if event is not None:
                    return event
            if self._reading_paused and core.buffered <= PAUSE_READING_AT // 2 and self.transport is not None:
                self._reading_paused = False
                self.transport.resume_reading()
            self._wakeup = self._loop.create_future()
            try:
                await self._wakeup
            finally:
                self._wakeup = None

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    async def _answer(self, event: Event) -> tuple[Reply | None, str]:
        """The reply to one event, and the reason to log with it when it refuses."""
        if isinstance(event, Answer):
            if event.reply is reply.BARE_NEWLINE_COMMAND:
                observe.protocol_violation(str(self.client), event.reason)
            elif event.reply.code == 354:
                self._timers["data"] = self._loop.call_later(self.server.data_timeout, self._data_expired)
            elif event.reply.code == 550 and event.reason.startswith(("bare", "NUL")):
                observe.protocol_violation(str(self.client), event.reason)
            if self.core.mode is Mode.DATA:
                self._data_ended()
            return event.reply, event.reason
        if isinstance(event, Hello):
            return await self._hello(event), ""
        if isinstance(event, Mail):
            refusal = self._role_refusal()
            if refusal is not None:
                needs = "TLS" if refusal is reply.TLS_REQUIRED else "AUTH"
                observe.command_refused(str(self.client), "mail", refusal,
                                        f"listener {self.listener.name} requires {needs} before MAIL",
                                        "tls_required" if needs == "TLS" else "auth_required")
                return refusal, ""
            return await self.handler.mail(self, event.address, event.options), ""
        if isinstance(event, Rcpt):
            return await self.handler.rcpt(self, event.address), ""
        if isinstance(event, Message):
            self._data_ended()
            # The client is owed the verdict on its message: a timeout or the shutdown's cut
            # that comes meanwhile waits for it (`_end`), so a message taken is never answered
            # 421 (the client would send it again).
            self._deciding = True
            try:
                content: bytes | SpilledMessage | SpilledBody = event.content
                if isinstance(content, SpilledBody):
                    if not content.reserve():
                        return data_refusal(DataProblem.NO_ROOM)
                    read, problem = await asyncio.get_running_loop().run_in_executor(None, content.map)
                    if read is None:
                        assert problem is not None
                        return data_refusal(problem)
                    content = read
                return await self.handler.data(self, content), ""
            finally:
                self._deciding = False
        if isinstance(event, Reset):
            await self.handler.reset(self)
            return reply.OK, ""
        if isinstance(event, StartTls):
            return await self._starttls(), ""
        if isinstance(event, Auth):
            return await self._auth(event.argument), ""
        if isinstance(event, AuthAnswer):      # only read inside an exchange (_challenge)
            return reply.BAD_SEQUENCE, "AUTH answer outside an exchange"
        return reply.SYNTAX_ERROR, "unexpected input"     # a PROXY header inside a session

    def _data_ended(self) -> None:
        timer = self._timers.pop("data", None)
        if timer is not None:
            timer.cancel()

    # ---- HELO, the listener's role ----------------------------------------------------------

    async def _hello(self, event: Hello) -> Reply:
        if self.core.in_transaction:          # EHLO ends a transaction as RSET does
            await self.handler.reset(self)
        refusal = await self.handler.helo(self, event.name)
        if refusal is not None:
            return refusal
        if not event.extended:
            return Reply(250, "", self.server.hostname)
        return Reply(250, "", self.server.hostname, more=tuple(self._extensions()))

    def _extensions(self) -> list[str]:
        """The EHLO keywords (RFC 5321 §4.1.1.1). PIPELINING is safe: DATA is read in blocks and
        what follows the terminator goes back to the command reader (smtp.data)."""
        lines = [f"SIZE {self.server.max_message_size}", "8BITMIME"]
        if self.server.smtputf8:
            lines.append("SMTPUTF8")
        if self.listener.tls is TlsMode.STARTTLS and not self.core.tls and self.door.certificate:
            lines.append("STARTTLS")
        if self.listener.auth is not AuthMode.NONE and self.core.tls and self.door.authenticator:
            lines.append("AUTH " + " ".join(MECHANISMS))
        return [*lines, "PIPELINING", "ENHANCEDSTATUSCODES", "HELP"]

    def _role_refusal(self) -> Reply | None:
        """What this listener's role says to MAIL: TLS first, AUTH first, or nothing."""
        if self.listener.require_tls and not self.core.tls:
            return reply.TLS_REQUIRED
        if self.listener.auth is AuthMode.REQUIRED and self.core.auth_user is None:
            return reply.AUTH_REQUIRED
        return None

    @property
    def tls_active(self) -> bool:
        return self.core.tls

    # ---- TLS --------------------------------------------------------------------------------

    async def _starttls(self) -> Reply | None:
        if self.core.tls:
            return reply.TLS_ALREADY_ACTIVE
        if self.listener.tls is not TlsMode.STARTTLS or self.door.certificate is None:
            return reply.NOT_IMPLEMENTED
        # The 220 and the switch to TLS in one step: nothing read after it is plaintext.
        self._send(reply.TLS_READY)
        if self.transport is None:
            return None
        self._begin_tls()
        if self.core.discarded:
            observe.protocol_violation(str(self.client), "commands pipelined after STARTTLS discarded")
        if await self._handshaken(implicit=False):
            self.handler.tls_started(self)
        return None

    def _begin_tls(self) -> None:
        assert self.door.certificate is not None
        if self._reading_paused and self.transport is not None:    # the plaintext was discarded
            self._reading_paused = False
            self.transport.resume_reading()
        self._tls = TlsLayer(self.door.certificate.context)
        self._handshake = self._loop.create_future()
        self._timers["handshake"] = self._loop.call_later(HANDSHAKE_TIMEOUT, self._handshake_expired)

    def _decrypt(self, data: bytes) -> bytes:
        tls = self._tls
        assert tls is not None and self.transport is not None
        was_handshaken = tls.handshaken
        try:
            plain = tls.receive(data)
        except (ssl.SSLError, TlsClosed) as error:
            if not was_handshaken and self._handshake is not None and not self._handshake.done():
                self._handshake.set_exception(error)
            else:
                self._close()
            return b""
        finally:
            out = tls.outgoing()
            if out and self.transport is not None:
                self.transport.write(out)
        if tls.handshaken and not was_handshaken:
            self.core.tls_started()        # before the plaintext that came with the Finished
            if self._handshake is not None and not self._handshake.done():
                self._handshake.set_result(None)
        return plain

    async def _handshaken(self, *, implicit: bool) -> bool:
        """Wait for the handshake begun by `_begin_tls`. False (closed, logged, counted) on failure."""
        assert self._handshake is not None and self._tls is not None
        try:
            await self._handshake
        except (OSError, EOFError, TlsClosed) as error:   # ssl.SSLError is an OSError
            observe.connection("tls_failed", str(self.client), reason=_tls_failure(error),
                               listener=self.listener.name, implicit=implicit)
            self._tls = None
            self._close()
            return False
        finally:
            self._handshake = None
            timer = self._timers.pop("handshake", None)
            if timer is not None:
                timer.cancel()
        observe.tls_session("inbound", self._tls.version)
        return True

    def _handshake_expired(self) -> None:
        if self._handshake is not None and not self._handshake.done():
            self._handshake.set_exception(ConnectionAbortedError("handshake timed out"))

    def get_extra_info(self, name: str) -> Any:
        """`ssl_object` of the TLS layer, else the transport's (peername, sockname, ...)."""
        if name == "ssl_object" and self._tls is not None:
            return self._tls.ssl_object
        return self.transport.get_extra_info(name) if self.transport is not None else None

    # ---- AUTH -------------------------------------------------------------------------------

    async def _auth(self, argument: str) -> Reply | None:
        words = argument.split()
        refusal = None
        if self.listener.auth is AuthMode.NONE or self.door.authenticator is None:
            refusal = reply.AUTH_NOT_OFFERED
        elif self.core.helo is None or not self.core.extended:
            refusal = reply.BAD_SEQUENCE.with_text("Send EHLO first")
        elif not self.core.tls:
            refusal = reply.AUTH_NEEDS_TLS
        elif self.core.auth_user is not None:
            refusal = reply.AUTH_ALREADY_DONE
        elif self.core.in_transaction:
            refusal = reply.AUTH_IN_TRANSACTION
        elif not 1 <= len(words) <= 2:
            refusal = reply.SYNTAX_ARGUMENT.with_text("Syntax: AUTH mechanism [initial-response]")
        elif words[0].upper() not in MECHANISMS:
            refusal = reply.AUTH_UNKNOWN_MECHANISM
        if refusal is not None:
            return refusal
        authenticator = self.door.authenticator
        assert authenticator is not None        # AUTH is offered only with an authenticator
        user, answer = await authenticator.authenticate(
            self._challenge, self.client, words[0].upper(), words[1] if len(words) == 2 else None)
        if user is not None:
            self.core.auth_user = user
            self.handler.authenticated(self, user)
        return answer

    async def _challenge(self, text: str) -> str | Reply | None:
        """Send a 334 challenge; the client's answer line, the core's refusal of it (too long,
        bare newline), or None if the client went away."""
        await self._reply(Reply(334, "", base64.b64encode(text.encode()).decode("ascii")))
        event = await self._next_event()
        if isinstance(event, AuthAnswer):
            return event.text
        if isinstance(event, Answer):
            return event.reply
        return None

    # ---- replies ----------------------------------------------------------------------------

    async def _reply(self, answer: Reply, reason: str = "") -> None:
        core = self.core
        if core.is_error(answer) and core.errors >= self.door.tarpit_after and self.door.tarpit_delay > 0:
            await asyncio.sleep(self.door.tarpit_delay)     # a tarpit: a client probing gets slow
        self._send(answer, reason)

    def _send(self, answer: Reply, reason: str = "") -> None:
        """Every reply of the session leaves here: written, counted under the command it
        answers, and logged when it refuses for the core or closes the session."""
        if self.transport is None or self.transport.is_closing():
            return
        stage = self.core.stage
        self._write(self.core.send(answer))
        self._last_activity = self._loop.time()
        self._sending_since = None          # the client's next turn: its rate is measured afresh
        observe.reply_sent(stage, str(answer.code))
        ours = answer is reply.INTERNAL_ERROR or answer is reply.NOT_READY    # our failure, not the client's
        if reason and (answer.code == 421 or (answer.close and answer.code != 221)):
            # (A client refused before its greeting has its own connection_refused line.)
            observe.session_closed(str(self.client), stage, answer, reason,
                                   by_limit=answer.code == 421 and not ours and answer is not reply.SHUTTING_DOWN,
                                   queue_id=self.handler.queue_id_of(self), listener=self.listener.name)
        elif reason and answer.code >= 400:
            observe.command_refused(str(self.client), stage, answer, reason,
                                    "internal" if ours else "protocol", queue_id=self.handler.queue_id_of(self))
        if self.core.mode is Mode.CLOSED:
            self._close()

    def _write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(self._tls.encrypt(data) if self._tls is not None and self._tls.handshaken else data)

    def _close(self) -> None:
        self.core.close()
        transport = self.transport
        if transport is not None and not transport.is_closing():
            if self._tls is not None:
                goodbye = self._tls.close()
                if goodbye:
                    transport.write(goodbye)
            transport.close()
            if transport.get_write_buffer_size():    # asyncio waits for a reader that may never read
                self._timers["linger"] = self._loop.call_later(CLOSE_LINGER, transport.abort)
        self._wake()

    def _end(self, answer: Reply, reason: str, *, force: bool = False) -> None:
        """Close the session for a timeout or the shutdown: now, or once the message being
        decided has its verdict. A client that has stopped reading is cut at once."""
        if self._deciding and not force:
            if self._close_after is None:
                self._close_after = (answer, reason)
            return
        self._send(answer, reason)
        self._close()
        if self.transport is not None and self.transport.get_write_buffer_size():
            self.transport.abort()

    # ---- timers and shutdown ----------------------------------------------------------------

    def _idle_check(self) -> None:
        idle = self._loop.time() - self._last_activity
        waiting = self._wakeup is not None      # for input, not for a decision of ours
        if idle >= self.server.command_timeout and waiting:
            self._end(reply.COMMAND_TIMEOUT, "command_timeout")
            return
        delay = self.server.command_timeout - idle if idle < self.server.command_timeout else self.server.command_timeout
        self._timers["idle"] = self._loop.call_later(delay, self._idle_check)

    def _session_expired(self) -> None:
        self._end(reply.SESSION_TIMEOUT, "session_timeout")

    def _data_expired(self) -> None:
        self._send(reply.DATA_TIMEOUT, "data_timeout")

    def shut_down(self) -> None:
        """The relay is stopping: close now between transactions, else after this one."""
        self._stopping = True
        self._wake()

    def cut(self, *, force: bool = False) -> None:
        """The shutdown grace is over: close whatever is in flight (a message being decided
        gets its verdict first, unless `force`: its time is up too)."""
        self._end(reply.SHUTTING_DOWN, "shutdown grace over", force=force)

    @property
    def live(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    @property
    def deciding(self) -> bool:
        """A message of this session is being decided (and may be spooled) right now."""
        return self._deciding


def _tls_failure(error: BaseException) -> str:
    """A short reason for the log line: the OpenSSL reason code, or what the client did."""
    if isinstance(error, ssl.SSLError):
        return f"tls error: {error.reason or type(error).__name__}"
    if isinstance(error, ConnectionAbortedError):
        return "handshake timed out"
    if isinstance(error, ConnectionResetError | EOFError | BrokenPipeError | TlsClosed):
        return "client closed the connection during the handshake"
    return type(error).__name__
