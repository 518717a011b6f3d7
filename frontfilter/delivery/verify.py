"""Recipient verification at RCPT time in queue mode (Postfix `reject_unverified_recipient`).

Queue mode answers 250 before the backend has seen the message, so an unknown user would only
be found at delivery — and bounced to a sender who may be forged (backscatter). With
`backend.verify_recipients`, each new recipient is probed on the backend while the client waits:
`MAIL FROM:<>`, `RCPT TO:<address>`, `RSET`, on a pooled connection (the forwarder's, with its
failover). The answer is cached: valid for `verify_positive_ttl`, invalid for
`verify_negative_ttl`; a backend that cannot answer is not cached.

Result classes (decided by the reply's class alone, never its text): VALID → accept; INVALID (5xx) → the pipeline refuses the
recipient with the backend's code; UNAVAILABLE (4xx, no backend) → the pipeline answers 4xx and
the client retries, as Postfix's default `unverified_recipient_tempfail_action`.

Concurrent probes of one address share one probe. Bounds: CACHE_ENTRIES addresses (least
recently used dropped first); one probe costs at most a connect and three commands, each under
the backend timeouts.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from frontfilter import observe
from frontfilter.config import BackendConfig
from frontfilter.delivery import wire
from frontfilter.delivery.backend import BackendReply, Outcome, _connection_failure, lacks_smtputf8, reply_of
from frontfilter.delivery.client import Refused, SmtpClient, SmtpError
from frontfilter.delivery.forward import Forwarder

# Addresses remembered. An edge relay for a few domains sees a bounded set of real recipients;
# a dictionary attack is what this bound is for.
CACHE_ENTRIES = 50_000


class Verdict(enum.Enum):
    VALID = "valid"
    INVALID = "invalid"
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True)
class Verification:
    verdict: Verdict
    reply: BackendReply | None
    cached: bool


class RecipientVerifier:
    def __init__(self, config: BackendConfig, forwarder: Forwarder,
                 clock: Callable[[], float] = time.monotonic):
        self.config = config
        self.forwarder = forwarder
        self._clock = clock
        self._cache: OrderedDict[str, tuple[float, Verification]] = OrderedDict()
        self._inflight: dict[str, asyncio.Future[Verification]] = {}

    async def verify(self, address: str) -> Verification:
        key = address.lower()   # the cache may be case-blind; the probe keeps the case sent
        hit = self._cache.get(key)
        if hit is not None:
            expires, verification = hit
            if expires > self._clock():
                self._cache.move_to_end(key)
                observe.recipient_verified(verification.verdict.value, cached=True)
                return Verification(verification.verdict, verification.reply, cached=True)
            del self._cache[key]
        pending = self._inflight.get(key)
        if pending is not None:
            try:
                return await asyncio.shield(pending)
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise                   # this session went away
                # The session that was probing went away: probe for ourselves.
        future: asyncio.Future[Verification] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            verification = await self._probe(address)
            future.set_result(verification)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as error:
            future.set_exception(error)
            future.exception()      # retrieved: nobody else may be waiting
            raise
        finally:
            if self._inflight.get(key) is future:
                del self._inflight[key]
        ttl = {Verdict.VALID: self.config.verify_positive_ttl,
               Verdict.INVALID: self.config.verify_negative_ttl}.get(verification.verdict)
        if ttl:
            self._cache[key] = (self._clock() + ttl, verification)
            while len(self._cache) > CACHE_ENTRIES:
                self._cache.popitem(last=False)
        observe.recipient_verified(verification.verdict.value, cached=False)
        return verification

    async def _probe(self, address: str) -> Verification:
        last: BackendReply | None = None
        for server in self.forwarder.usable():
            for _fresh_try in range(2):     # a second go only when a pooled connection had died
                conn = await self.forwarder.acquire(server)
                if isinstance(conn, BackendReply):
                    self.forwarder.mark_down(server, conn)
                    last = conn
                    break
                try:
                    reply = await self._ask(conn.smtp, conn.name, address)
                except asyncio.CancelledError:
                    conn.smtp.close()       # mid-command: never back into the pool
                    raise
                except Refused as error:                             # MAIL or RSET refused
                    await self.forwarder.release(conn, reusable=False)
                    last = reply_of(error.reply, conn.name)
                    break
                except (SmtpError, OSError, TimeoutError) as error:
                    await self.forwarder.release(conn, reusable=False)
                    if conn.reused:
                        continue
                    last = _connection_failure(conn.name, error)
                    self.forwarder.mark_down(server, last)
                    break
                await self.forwarder.release(conn, reusable=True)
                if reply.outcome is Outcome.OK:
                    return Verification(Verdict.VALID, reply, cached=False)
                if reply.outcome is Outcome.PERMANENT:
                    return Verification(Verdict.INVALID, reply, cached=False)
                return Verification(Verdict.UNAVAILABLE, reply, cached=False)
        return Verification(Verdict.UNAVAILABLE, last or self.forwarder.skipped_because(), cached=False)

    @staticmethod
    async def _ask(smtp: SmtpClient, name: str, address: str) -> BackendReply:
        """MAIL FROM:<>, RCPT TO:<address> and RSET, in one write where the backend pipelines:
        the RCPT's reply. Refused when MAIL or RSET was."""
        utf8 = not address.isascii()
        if utf8 and not smtp.supports("smtputf8"):
            return lacks_smtputf8("recipient", name)
        mail = wire.mail_command("", ["SMTPUTF8"] if utf8 else [], "ascii")
        mail_reply, rcpt_reply, rset_reply = await smtp.exchange(
            [mail, wire.rcpt_command(address, "utf-8" if utf8 else "ascii"), b"RSET"])
        for reply in (mail_reply, rset_reply):
            if reply.code != 250:
                raise Refused(reply)
        return reply_of(rcpt_reply, name)
