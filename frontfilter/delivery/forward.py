"""One delivery attempt of a spooled message to the backends, with per-recipient results.

`Forwarder.deliver` tries `backend.servers` in order. A backend that refused the connection,
timed out, failed its greeting/EHLO/STARTTLS, or answered MAIL with 4xx is marked down for
`backend.skip_failed_for` and the next one is tried at once, in the same attempt (Postfix's
dead-host cache); if every backend is down the attempt fails transiently without waiting.

What the backend says is classified where it is understood, once, per recipient:
RCPT 5xx → that recipient PERMANENT; RCPT 4xx → that recipient TRANSIENT; DATA 5xx/4xx → every
recipient it accepted; a lost connection or timeout → TRANSIENT; a 421 or 503 (backend.py's
SESSION_BROKEN) is handled like a lost connection. MAIL 5xx is the backend's policy
about the sender, not its health: PERMANENT for all, no shopping around. Once DATA has been
sent, nothing is retried elsewhere in this attempt: a lost final reply may mean the message
was taken (the one at-least-once duplicate), and the retry schedule decides.

Connections are reused across messages (one transaction after another, RSET after a failed
one), kept idle at most POOL_IDLE_SECONDS; a reused connection the backend closed meanwhile is
replaced by a fresh one without counting a failure. TLS to the backend follows `backend.tls`
through `delivery.tls` (the same code as sync mode: none, opportunistic, or required and
verified); a failed or refused handshake counts as that backend failing (transient).

Bounds: `backend.connect_timeout` per connection, `backend.timeout` per command; at most
`backend.concurrency` idle connections per backend (at least POOL_IDLE_PER_BACKEND); the
caller bounds concurrency.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from frontfilter import observe
from frontfilter.config import BackendConfig, HostPort
from frontfilter.delivery import wire, xforward
from frontfilter.delivery.client import Refused, SmtpClient, SmtpError
from frontfilter.delivery.xforward import ClientFacts
from frontfilter.delivery.backend import (SESSION_BROKEN, BackendReply, Outcome, _connection_failure,
                                          address_encoding, lacks_smtputf8, open_connection, reply_of)
from frontfilter.mapped import MessageBytes

# Postfix keeps a delivered-to connection 2s (smtp_connection_cache_time_limit); a little longer
# here, as a backlog after an outage is exactly when reuse pays.
POOL_IDLE_SECONDS = 5.0
# The pool keeps as many idle connections per backend as deliveries may run at once: with fewer
# (8 for 10 deliveries), a burst at full concurrency closed the surplus after each message and
# opened it again for the next — 240 new connections per 2,000 messages on the 5 KB bench.
POOL_IDLE_PER_BACKEND = 8
QUIT_TIMEOUT = 5.0
# MAIL parameters passed on when the backend supports the extension (RFC 6152, 6531, 1870).
PASSED_ON = {"BODY": "8bitmime", "SMTPUTF8": "smtputf8"}

NO_BACKEND = "no backend available"


@dataclass(frozen=True)
class Attempt:
    """One attempt's answer: a reply per recipient asked (same order) and who answered."""

    backend: str
    results: tuple[BackendReply, ...]


@dataclass(frozen=True)
class _Failover:
    """This backend did not get as far as the message: try the next one."""

    reply: BackendReply
    connection_lost: bool        # the connection died (vs. a 4xx to MAIL)


@dataclass
class _Connection:
    smtp: SmtpClient
    server: HostPort
    name: str
    idle_since: float = 0.0
    reused: bool = False
    bound: bool = False     # XCLIENT sent: it speaks as one client now, never pooled again


class Forwarder:
    """Backends with health and a pool of idle connections; shared by the worker and verify."""

    def __init__(self, config: BackendConfig, helo_name: str,
                 clock: Callable[[], float] = time.monotonic):
        self.config = config
        self.helo_name = config.helo_name or helo_name
        self._clock = clock
        self._down_until: dict[HostPort, float] = {}
        self._last_failure: dict[HostPort, BackendReply] = {}   # why it is being skipped
        self._idle: dict[HostPort, list[_Connection]] = {}
        self._idle_limit = max(POOL_IDLE_PER_BACKEND, config.concurrency)

    # ---- backend health ---------------------------------------------------------------

    def usable(self) -> list[HostPort]:
        """Backends in the administrator's order, minus those that failed a moment ago."""
        now = self._clock()
        return [s for s in self.config.servers if self._down_until.get(s, 0.0) <= now]

    def mark_down(self, server: HostPort, why: BackendReply | None = None) -> None:
        self._down_until[server] = self._clock() + self.config.skip_failed_for
        if why is not None:
            self._last_failure[server] = why

    def skipped_because(self) -> BackendReply:
        """With every backend skipped: the last failure of the first one (what a log should say)."""
        for server in self.config.servers:
            if server in self._last_failure:
                failure = self._last_failure[server]
                return BackendReply(failure.outcome, failure.code, failure.enhanced,
                                    f"skipped after a recent failure: {failure.text}", failure.backend)
        return BackendReply(Outcome.TRANSIENT, 451, "4.4.1", NO_BACKEND, "-")

    def mark_up(self, server: HostPort) -> None:
        self._down_until.pop(server, None)

    # ---- connections ------------------------------------------------------------------

    async def connect(self, server: HostPort) -> _Connection | BackendReply:
        """A fresh connection, TLS as `backend.tls` says, EHLO done; or why not."""
        opened = await open_connection(self.config, server, self.helo_name)
        if isinstance(opened, BackendReply):
            return opened
        return _Connection(opened[0], server, str(server))

    async def acquire(self, server: HostPort) -> _Connection | BackendReply:
        idle = self._idle.get(server, [])
        now = self._clock()
        while idle:
            conn = idle.pop()
            if conn.smtp.idle and now - conn.idle_since < POOL_IDLE_SECONDS:
                conn.reused = True
                return conn
            await self._quit(conn)
        return await self.connect(server)

    async def release(self, conn: _Connection, reusable: bool) -> None:
        idle = self._idle.setdefault(conn.server, [])
        if reusable and not conn.bound and conn.smtp.idle and len(idle) < self._idle_limit:
            conn.idle_since = self._clock()
            idle.append(conn)
        else:
            await self._quit(conn)

    async def prune(self) -> None:
        """Close connections idle too long (called from the worker's scan loop).

        The pool is changed in place before the first await: while a QUIT is under way,
        deliveries take connections from it and put them back, and a list rebuilt after the
        awaits would hand back one that is in use (two transactions on one connection: the
        backend answers "503 nested MAIL command")."""
        now = self._clock()
        stale: list[_Connection] = []
        for idle in self._idle.values():
            keep = [c for c in idle if c.smtp.idle and now - c.idle_since < POOL_IDLE_SECONDS]
            stale += [c for c in idle if c not in keep]
            idle[:] = keep
        for conn in stale:
            await self._quit(conn)

    async def close(self) -> None:
        for idle in self._idle.values():
            while idle:
                await self._quit(idle.pop())

    async def _quit(self, conn: _Connection) -> None:
        await conn.smtp.quit(min(QUIT_TIMEOUT, self.config.timeout))

    # ---- one attempt --------------------------------------------------------------------

    async def deliver(self, sender: str, recipients: Sequence[str], data: MessageBytes,
                      options: Sequence[str], queue_id: str | None = None, head: bytes = b"",
                      every_backend: bool = False, client: ClientFacts | None = None) -> Attempt:
        """`head` + `data` to the first usable backend: header fields on top, then the message.
        `every_backend`: those marked down a moment ago too (a retry the administrator asked for)."""
        last: BackendReply | None = None
        for server in self.config.servers if every_backend else self.usable():
            for _fresh_try in range(2):     # a second go only when a pooled connection had died
                started = self._clock()
                conn = await self.acquire(server)
                if isinstance(conn, BackendReply):
                    last = conn
                    self.mark_down(server, conn)
                    observe.forward_attempt(conn.backend, conn.outcome.value, self._clock() - started,
                                            queue_id=queue_id, detail=conn.describe())
                    break
                try:
                    outcome = await self._transaction(conn, sender, recipients, data, options, head, client)
                except asyncio.CancelledError:
                    conn.smtp.close()       # mid-command: never back into the pool
                    raise
                if isinstance(outcome, Attempt):
                    self.mark_up(server)
                    ok = any(r.ok for r in outcome.results)
                    result = Outcome.OK if ok else _worst(outcome.results)
                    detail = None if ok else outcome.results[0].describe()
                    observe.forward_attempt(conn.name, result.value, self._clock() - started,
                                            queue_id=queue_id, detail=detail)
                    return outcome
                if conn.reused and outcome.connection_lost:
                    continue            # the backend closed an idle connection: not a failure
                last = outcome.reply
                self.mark_down(server, last)
                observe.forward_attempt(conn.name, last.outcome.value, self._clock() - started,
                                        queue_id=queue_id, detail=last.describe())
                break
        reply = last or self.skipped_because()
        return Attempt(reply.backend, tuple(reply for _ in recipients))

    async def _transaction(self, conn: _Connection, sender: str, recipients: Sequence[str], data: MessageBytes,
                           options: Sequence[str], head: bytes = b"",
                           client: ClientFacts | None = None) -> Attempt | _Failover:
        """XFORWARD (to a backend that asks), MAIL, RCPT each and DATA in one write (PIPELINING,
        RFC 2920), then the message once DATA's 354 is in. Returns the attempt, or why the next
        backend should be tried."""
        smtp, name = conn.smtp, conn.name
        encoding = address_encoding(smtp, options)
        try:
            mail = wire.mail_command(sender, self._mail_options(smtp, options, len(head) + len(data)), encoding)
        except UnicodeEncodeError:
            reply = lacks_smtputf8("sender", name)
            await self.release(conn, reusable=True)         # nothing was said on it
            return Attempt(name, tuple(reply for _ in recipients))
        results: list[BackendReply | None] = []      # None: asked (its RCPT's reply decides)
        rcpts: list[bytes] = []
        for recipient in recipients:
            try:
                rcpts.append(wire.rcpt_command(recipient, encoding))
                results.append(None)
            except UnicodeEncodeError:
                results.append(lacks_smtputf8("recipient", name))
        try:
            told: list[bytes] = []
            if self.config.forward_client:
                told = xforward.pipelined(smtp, client)
                if not told and client is not None and xforward.offered(smtp, "xclient"):
                    # Not pipelined: the backend greets anew after it. Bound from the first
                    # line on: refused half-way, it may speak as this client all the same.
                    conn.bound = True
                    conn.bound = await xforward.send(smtp, client, self.config.timeout)
            commands = [*told, mail, *rcpts] + ([b"DATA"] if rcpts else [])
            replies = await smtp.exchange(commands)
        except Refused as error:                                # XCLIENT refused
            return await self._refused_before_mail(conn, reply_of(error.reply, name), recipients)
        except (SmtpError, OSError, TimeoutError) as error:
            await self.release(conn, reusable=False)
            return _Failover(_connection_failure(name, error), connection_lost=True)

        told_replies, mail_reply = replies[:len(told)], replies[len(told)]
        rcpt_replies, data_reply = replies[len(told) + 1:len(told) + 1 + len(rcpts)], replies[-1] if rcpts else None
        # Wherever the message is not sent after a 354 (XFORWARD, MAIL or every RCPT refused),
        # the client leaves the connection rather than say anything more (`SmtpClient.send`).
        for said in [*told_replies, mail_reply]:
            if said.code >= 400:
                return await self._refused_before_mail(conn, reply_of(said, name), recipients)
        asked = iter(rcpt_replies)
        for index, result in enumerate(results):
            if result is not None:
                continue
            answer = reply_of(next(asked), name)
            if answer.code in SESSION_BROKEN:
                await self.release(conn, reusable=False)
                return _Failover(answer, connection_lost=True)
            results[index] = None if answer.ok else answer
        if all(r is not None for r in results) or data_reply is None:
            # Nobody to send to (a backend that said 354 all the same gets no end mark, which
            # would deliver an empty message).
            await self._reset(conn)
            return Attempt(name, tuple(r for r in results if r is not None))

        data_pending = data_reply.code == 354
        reusable = False
        try:
            if data_pending:
                final = await wire.send_message(smtp, data, head)
            else:
                final = wire.refusal_of_data(smtp, data_reply)
            outcome = reply_of(final, name)
            reusable = final.code not in SESSION_BROKEN
        except (SmtpError, OSError, TimeoutError) as error:
            outcome = _connection_failure(name, error)
        if reusable and not data_pending:
            await self._reset(conn)     # DATA refused: the transaction may linger on its side
        else:
            await self.release(conn, reusable=reusable)
        return Attempt(name, tuple(outcome if r is None else r for r in results))

    async def _refused_before_mail(self, conn: _Connection, reply: BackendReply,
                                   recipients: Sequence[str]) -> Attempt | _Failover:
        """XFORWARD, XCLIENT or MAIL refused. A 5xx is the backend's policy about the sender,
        not its health: the answer for every recipient. A 4xx: the next backend is tried."""
        if reply.outcome is Outcome.PERMANENT:
            await self._reset(conn)
            return Attempt(conn.name, tuple(reply for _ in recipients))
        await self.release(conn, reusable=False)
        return _Failover(reply, connection_lost=reply.code in SESSION_BROKEN)

    async def _reset(self, conn: _Connection) -> None:
        try:
            reply = await conn.smtp.command(b"RSET")
        except (SmtpError, OSError, TimeoutError):
            await self.release(conn, reusable=False)
            return
        await self.release(conn, reusable=reply.code == 250)

    @staticmethod
    def _mail_options(smtp: SmtpClient, options: Sequence[str], size: int) -> list[str]:
        wanted = []
        for option in options:
            keyword = option.split("=", 1)[0].upper()
            extension = PASSED_ON.get(keyword)
            if extension is not None and smtp.supports(extension):
                wanted.append(option)
        if smtp.supports("size"):
            wanted.append(f"SIZE={size}")
        return wanted


def _worst(results: Sequence[BackendReply]) -> Outcome:
    if any(r.outcome is Outcome.TRANSIENT for r in results):
        return Outcome.TRANSIENT
    return Outcome.PERMANENT if results else Outcome.TRANSIENT
