"""The reputation side of `frontfilter scan`: which facts a dry run sees, and the early stages.

A dry run knows our own domains and trusted networks from the config. With `--dns` it also asks
the configured resolvers what the relay would ask: the DNS lists of `--client-ip` and the SPF of
`--sender` (a real lookup, so run it where the relay runs). Greylisting is never consulted: a
dry run must not record triplets. The rules of connect, HELO, MAIL and RCPT are evaluated with
these facts too, so a message the relay would refuse before DATA is shown as refused.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

from frontfilter import policy
from frontfilter.config import Config
from frontfilter.model import IPAddress, Stage
from frontfilter.reputation import dnsbl
from frontfilter.reputation.facts import CheckFacts, DnsCheck
from frontfilter.reputation.resolver import Resolver
from frontfilter.reputation.spfcheck import SpfChecker
from frontfilter.rules.facts import Facts
from frontfilter.rules.model import Verdict

EARLY_STAGES = (Stage.CONNECT, Stage.HELO, Stage.MAIL, Stage.RCPT)


def scan_checks(config: Config | None, ip: IPAddress, sender: str, helo: str | None,
                auth_user: str | None, lookups: bool) -> tuple[CheckFacts, list[str]]:
    """The facts, and one line per fact for the administrator."""
    if config is None:
        return CheckFacts(), ["checks: none (no --config: own domains and DNS checks unknown)"]
    trusted = any(ip in network for network in config.relay.trusted_networks)
    checks = CheckFacts(trusted=trusted, own_domains=policy.own_domains(config))
    lines = [f"client {ip}: {'trusted' if trusted else 'not trusted'}; own domains: "
             f"{', '.join(sorted(checks.own_domains)) or 'none'}"]
    if not lookups:
        lines.append("dns checks: not made (add --dns to ask the configured resolvers)")
        return checks, lines
    ours = trusted or auth_user is not None
    listing, spf = asyncio.run(_lookups(config, ip, sender, helo, trusted, ours))
    errors = set()
    if listing is not None:
        checks = dataclasses.replace(checks, listing=listing.facts)
        if listing.failed:
            errors.add(DnsCheck.DNSBL)
        answers = ", ".join(f"{a.list.name}={' '.join((a.result.value, *a.codes))}" for a in listing.answers)
        lines.append(f"dnsbl: score {listing.facts.score}"
                     f"{' (threshold reached)' if listing.facts.over_threshold else ''}: {answers}")
    else:
        lines.append("dnsbl: not looked up (no [dnsbl] lists" + (", or a trusted client)" if trusted else ")"))
    if spf is not None:
        checks = dataclasses.replace(checks, spf=spf.result)
        if spf.dns_failed:
            errors.add(DnsCheck.SPF)
        lines.append(f"spf: {spf.result.value} ({spf.identity} {spf.domain}) {spf.explanation}".rstrip())
    else:
        lines.append("spf: not evaluated ([spf] enabled = false" + (", or a client of ours)" if ours else ")"))
    return dataclasses.replace(checks, dns_errors=frozenset(errors)), lines


async def _lookups(config: Config, ip: IPAddress, sender: str, helo: str | None, trusted: bool,
                   ours: bool) -> Any:
    """As the relay does: DNS lists unless trusted; SPF unless trusted or authenticated."""
    resolver = Resolver(config.dns)
    listing = spf = None
    if config.dnsbl.lists and not trusted:
        listing = await dnsbl.check(resolver, config.dnsbl.lists, config.dnsbl.threshold, ip,
                                    time.monotonic() + config.dns.timeout)
    if config.spf.enabled and not ours:
        checker = SpfChecker(resolver, config.spf, config.server.hostname)
        try:
            spf = await checker.check(ip, sender, helo)
        finally:
            checker.close()
    return listing, spf


def early_stages(rules: Any, facts: Facts) -> list[tuple[Stage, Verdict]]:
    """Each early stage's verdict, up to the first that ends the transaction (for every
    recipient at RCPT); `facts` is the DATA-stage facts, without the message."""
    verdicts = []
    for stage in EARLY_STAGES:
        if stage not in rules.stages:
            continue
        recipients = facts.envelope.recipients if stage is Stage.RCPT else (None,)
        for recipient in recipients:
            envelope = facts.envelope
            if stage.order < Stage.MAIL.order:
                envelope = dataclasses.replace(envelope, sender=None, recipients=())
            elif stage is Stage.MAIL or stage is Stage.RCPT:
                envelope = dataclasses.replace(envelope, recipients=())
            verdict = rules.evaluate(dataclasses.replace(facts, stage=stage, envelope=envelope,
                                                         recipient=recipient, message=None))
            if verdict.matches:
                verdicts.append((stage, verdict))
            # At RCPT an accept ends evaluation for that recipient only (as in the relay).
            if verdict.action is not None and not (stage is Stage.RCPT and verdict.action.value == "accept"):
                return verdicts
    return verdicts
