"""Does the envelope sender's domain exist for mail? Postfix's `reject_unknown_sender_domain`.

A message taken from a sender whose domain cannot receive mail can never be bounced, and such
senders are forged. The domain exists for mail when DNS has an MX for it, or else an A or AAAA
record (RFC 5321 §5.1: the implicit MX). It does not when the name does not exist (NXDOMAIN),
when it has none of those records, or when its only MX is the null MX (`0 .`, RFC 7505: the
domain says it takes no mail). A lookup that fails (timeout, SERVFAIL) decides nothing: the
fact is unknown and `dns.error` says `sender_domain`.

Bounded by the deadline the caller gives (`dns.timeout` from MAIL); answers are cached by the
resolver.
"""

from __future__ import annotations

from dataclasses import dataclass

from frontfilter.reputation.resolver import Lookup, Outcome, Resolver


@dataclass(frozen=True)
class SenderDomain:
    domain: str
    exists: bool | None      # None: the lookup failed
    detail: str = ""


async def look_up(resolver: Resolver, domain: str, deadline: float) -> SenderDomain:
    mx = await resolver.lookup(domain, "MX", deadline)
    if mx.failed:
        return SenderDomain(domain, None, f"MX: {mx.detail or mx.outcome.value}")
    if mx.outcome is Outcome.NXDOMAIN:
        return SenderDomain(domain, False, "no such domain")
    if mx.outcome is Outcome.ANSWER and mx.records:
        if all(_null_mx(record) for record in mx.records):
            return SenderDomain(domain, False, "null MX: the domain takes no mail (RFC 7505)")
        return SenderDomain(domain, True)
    failed: Lookup | None = None
    for rdtype in ("A", "AAAA"):            # no MX: the implicit MX (RFC 5321 §5.1)
        address = await resolver.lookup(domain, rdtype, deadline)
        if address.outcome is Outcome.ANSWER and address.records:
            return SenderDomain(domain, True)
        if address.failed:
            failed = address
    if failed is not None:
        return SenderDomain(domain, None, f"address: {failed.detail or failed.outcome.value}")
    return SenderDomain(domain, False, "no MX, A or AAAA record")


def _null_mx(record: object) -> bool:
    exchange = getattr(record, "exchange", None)
    return getattr(record, "preference", None) == 0 and exchange is not None and exchange.to_text() == "."
