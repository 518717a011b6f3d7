"""One SMTP conversation with the internal backend, with failover across `backend.servers`.

Every failure is classified where it is understood, once, into a type: `Outcome.TRANSIENT` for a
refused or lost connection, a timeout or a 4xx; `Outcome.PERMANENT` for a 5xx. That field alone
decides the client's reply class in sync mode and retry versus bounce in queue mode.

In sync mode a `BackendSession` mirrors the client's transaction (before-queue proxy, like
Postfix's `smtpd_proxy_filter`): MAIL is opened at the first accepted RCPT, each RCPT is asked of
the backend while the client waits, so a recipient the backend refuses is refused to the client
at RCPT with the backend's code — never accepted and then silently dropped — and DATA is sent
only after the rules accepted the message. The connection is reused for the client's next
transaction (RSET) and closed with the client's session.

Bounds: `connect_timeout` per connection attempt, `timeout` per command; one connection per
client session at most.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from frontfilter import observe
from frontfilter.config import BackendConfig, HostPort
from frontfilter.delivery import tls as backend_tls, wire, xforward
from frontfilter.delivery.client import Refused, Reply, SmtpClient, SmtpError
from frontfilter.delivery.xforward import ClientFacts
from frontfilter.mapped import MessageBytes


class Outcome(enum.Enum):
    OK = "ok"
    TRANSIENT = "transient"
    PERMANENT = "permanent"


@dataclass(frozen=True)
class BackendReply:
    outcome: Outcome
    code: int
    enhanced: str | None
    text: str
    backend: str

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.OK

    def describe(self) -> str:
        return f"{self.backend}: {self.code} {self.enhanced or ''} {self.text}".replace("  ", " ")


# Replies after which the connection is good for nothing more: 421, the backend is closing it;
# 503, "bad sequence of commands", its idea of the session is not ours. Neither says anything
# about the message, so a 503 is TRANSIENT (tried again on a fresh connection), never a refusal
# that would bounce it, refuse it at RCPT or pass a 5xx on to the client.
SESSION_BROKEN = frozenset({421, 503})


def _classify(code: int) -> Outcome:
    # Only a 2xx completes a step. A 3xx is never the answer to a command we classify (DATA's
    # 354 is taken where it is sent): a backend out of step, as for a 503.
    if code < 300:
        return Outcome.OK
    return Outcome.TRANSIENT if code < 500 or code in SESSION_BROKEN else Outcome.PERMANENT


def _split_enhanced(message: str) -> tuple[str | None, str]:
    head, _, rest = message.partition(" ")
    parts = head.split(".")
    if len(parts) == 3 and all(p.isdigit() for p in parts):
        return head, rest
    return None, message


def _from_response(code: int, message: str, backend: str) -> BackendReply:
    enhanced, text = _split_enhanced(message.replace("\r", " ").replace("\n", " ").strip())
    return BackendReply(_classify(code), code, enhanced, text, backend)


def _connection_failure(backend: str, error: BaseException) -> BackendReply:
    detail = f"{type(error).__name__}: {error}".replace("\n", " ")
    return BackendReply(Outcome.TRANSIENT, 451, "4.4.1", detail, backend)


async def open_connection(config: BackendConfig, server: HostPort, helo_name: str
                          ) -> tuple[SmtpClient, BackendReply] | BackendReply:
    """A connection to `server`, TLS as `backend.tls` says, EHLO done: (client, EHLO's reply);
    or, when none could be had, why not, as a reply. For sync mode's session and the queue's
    pool alike."""
    name = str(server)
    try:
        smtp, tls_version, response = await backend_tls.connect(config, server, helo_name)
    except Refused as error:
        return _from_response(error.code, error.message, name)
    except (SmtpError, backend_tls.BackendTlsError, OSError, TimeoutError) as error:
        return _connection_failure(name, error)      # OSError: ssl.SSLError included
    if tls_version is not None:
        observe.tls_session("outbound", tls_version)
    return smtp, _from_response(response.code, response.message, name)


def reply_of(reply: Reply, backend: str) -> BackendReply:
    return _from_response(reply.code, reply.message, backend)


def address_encoding(smtp: SmtpClient | None, options: Sequence[str]) -> str:
    """UTF-8 for a transaction's addresses when the client asked for SMTPUTF8 and the backend
    offers it; else ASCII (an address that needs more is refused: `lacks_smtputf8`)."""
    utf8 = any(o.upper() == "SMTPUTF8" for o in options)
    return "utf-8" if utf8 and smtp is not None and smtp.supports("smtputf8") else "ascii"


def lacks_smtputf8(what: str, backend: str) -> BackendReply:
    """The refusal of a non-ASCII `what` ("sender", "recipient", "address") that the backend
    could not be given: it does not offer SMTPUTF8 (RFC 6531 §3.4)."""
    return BackendReply(Outcome.PERMANENT, 553, "5.6.7", f"non-ASCII {what} and the backend lacks SMTPUTF8", backend)


class BackendSession:
    """A connection to the first backend that answers, for one client session."""

    def __init__(self, config: BackendConfig, helo_name: str):
        self._config = config
        self._helo_name = config.helo_name or helo_name
        self._smtp: SmtpClient | None = None
        self.backend: str | None = None
        self._in_transaction = False
        self._encoding = "ascii"        # of this transaction's addresses: UTF-8 with SMTPUTF8

    @property
    def connected(self) -> bool:
        return self._smtp is not None and self._smtp.is_connected

    async def _connect(self, server: HostPort) -> BackendReply:
        opened = await open_connection(self._config, server, self._helo_name)
        if isinstance(opened, BackendReply):
            return opened
        self._smtp, greeting = opened
        self.backend = greeting.backend
        return greeting

    async def begin(self, sender: str, options: Sequence[str], client: ClientFacts | None = None) -> BackendReply:
        """Open a transaction (MAIL FROM) on the first backend that takes it; first, to a backend
        that asks, who the client was (XFORWARD)."""
        if self.connected and self._in_transaction:
            await self.reset()
        last: BackendReply | None = None
        candidates = [None] if self.connected else list(self._config.servers)
        for server in candidates:
            started = time.monotonic()
            if server is not None:
                last = await self._connect(server)
                if not last.ok:
                    observe.forward_attempt(last.backend, last.outcome.value,
                                            time.monotonic() - started, detail=last.describe())
                    continue
            told = None
            if client is not None and self._config.forward_client:    # to a backend that asks
                told = await self._command(lambda smtp: self._tell(smtp, client))
            if told is None or told.ok:
                self._encoding = address_encoding(self._smtp, options)
                reply = await self._command(lambda smtp: smtp.command(
                    wire.mail_command(sender, self._mail_options(options), self._encoding)))
            else:
                reply = told
            if reply.ok:
                self._in_transaction = True
                return reply
            last = reply
            if reply.outcome is Outcome.PERMANENT:
                return reply      # the backend's policy, not its health: do not shop around
            await self.close()
        assert last is not None or not candidates
        return last or BackendReply(Outcome.TRANSIENT, 451, "4.4.1", "no backend", "-")

    async def _tell(self, smtp: SmtpClient, client: ClientFacts) -> None:
        # This connection is this session's alone: an XCLIENT binding it to its client is right.
        await xforward.send(smtp, client, self._config.timeout)

    def _mail_options(self, options: Sequence[str]) -> list[str]:
        assert self._smtp is not None
        wanted = []
        for option in options:
            keyword = option.split("=", 1)[0].upper()
            if keyword == "BODY" and self._smtp.supports("8bitmime"):
                wanted.append(option)
            elif keyword == "SMTPUTF8" and self._smtp.supports("smtputf8"):
                wanted.append(option)
            elif keyword == "SIZE" and self._smtp.supports("size"):
                wanted.append(option)
        return wanted

    async def add_recipient(self, recipient: str) -> BackendReply:
        return await self._command(lambda smtp: smtp.command(wire.rcpt_command(recipient, self._encoding)))

    async def send(self, message: MessageBytes, head: bytes = b"") -> BackendReply:
        """Send the message of the open transaction, `head` on top. The transaction ends either way."""
        started = time.monotonic()
        reply = await self._command(lambda smtp: wire.send_data(smtp, message, head))
        self._in_transaction = False
        observe.forward_attempt(reply.backend, reply.outcome.value, time.monotonic() - started,
                                detail=None if reply.ok else reply.describe())
        return reply

    async def reset(self) -> None:
        if self.connected and self._in_transaction:
            reply = await self._command(lambda smtp: smtp.command(b"RSET"))
            if not reply.ok:
                await self.close()
        self._in_transaction = False

    async def close(self) -> None:
        smtp, self._smtp = self._smtp, None
        self._in_transaction = False
        if smtp is None:
            return
        await smtp.quit(min(5.0, self._config.timeout))

    async def _command(self, step: Callable[[SmtpClient], Awaitable[Reply | None]]) -> BackendReply:
        """One step of the conversation on the open connection, its answer classified; a step
        with no answer of its own (XFORWARD: its lines are checked as they go) is OK once done."""
        name = self.backend or "-"
        if self._smtp is None or not self._smtp.is_connected:
            self._smtp = None
            return BackendReply(Outcome.TRANSIENT, 451, "4.4.1", "not connected", name)
        try:
            response = await step(self._smtp)
            if response is None:
                return BackendReply(Outcome.OK, 250, None, "", name)
        except Refused as error:
            response = Reply(error.code, error.message)
        except UnicodeEncodeError:
            return lacks_smtputf8("address", name)
        except (SmtpError, OSError, TimeoutError) as error:
            await self.close()
            return _connection_failure(name, error)
        if response.code in SESSION_BROKEN:
            await self.close()
        return _from_response(response.code, response.message, name)
