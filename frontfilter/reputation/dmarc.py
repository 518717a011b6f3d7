"""DMARC (RFC 7489) of the From: domain: its published policy, and whether SPF or DKIM aligned.

A message passes when the SPF result of its envelope sender (or HELO name, for the null sender)
is `pass` for a domain aligned with the From: domain, or a DKIM signature of an aligned domain
verified (reputation.dkimcheck). Aligned is "the same organizational domain" (relaxed, the
default) or "the same domain" (`adkim=s`, `aspf=s`). The organizational domain comes from the
public suffix list as the `publicsuffixlist` package ships it: never fetched at run time.

The result is a fact for rules (`dmarc.result`, `dmarc.policy`) and for Authentication-Results;
this module enforces nothing: a rule does (rules/README.md shows the `p=reject` one). `pct=`
is reported, not sampled: a rule that honours it would have to draw at random, which makes the
relay's decisions unrepeatable (the dry run, the test corpus).

Record discovery (RFC 7489 §6.6.3): `_dmarc.<From domain>`, else `_dmarc.<organizational
domain>`, whose `sp=` then applies to subdomains. A name with no DMARC record, or with more
than one, has none. A lookup that fails is `temperror`; a message without exactly one From:
domain is `permerror` (§6.6.1: which domain's policy would apply is not clear).
"""

from __future__ import annotations

import email.utils
import re
import time
from dataclasses import dataclass

from publicsuffixlist import PublicSuffixList

from frontfilter import observe
from frontfilter.reputation.facts import DmarcPolicy, DmarcResult, SpfResult, normalise_domain
from frontfilter.reputation.resolver import Outcome, Resolver

_FROM = re.compile(rb"(?im)^from[ \t]*:(.*(?:\r?\n[ \t].*)*)")


@dataclass(frozen=True)
class Record:
    policy: DmarcPolicy
    subdomain_policy: DmarcPolicy
    strict_dkim: bool = False
    strict_spf: bool = False
    percent: int = 100


@dataclass(frozen=True)
class DmarcOutcome:
    result: DmarcResult
    domain: str                         # the From: domain ("" when there was no single one)
    policy: DmarcPolicy | None = None   # the policy that applies to it; None: no record
    percent: int = 100
    detail: str = ""


class Dmarc:
    def __init__(self, resolver: Resolver, timeout: float):
        self.resolver = resolver
        self.timeout = timeout
        self._suffixes = PublicSuffixList()      # the list as shipped: 0.25 s and 2 MB, once

    def organizational(self, domain: str) -> str:
        """RFC 7489 §3.2: the registrable domain (a public suffix is its own)."""
        return self._suffixes.privatesuffix(domain) or domain

    def aligned(self, domain: str, from_domain: str, strict: bool) -> bool:
        if strict:
            return domain == from_domain
        return self.organizational(domain) == self.organizational(from_domain)

    async def evaluate(self, header: bytes, spf: tuple[SpfResult, str] | None,
                       dkim_domains: tuple[str, ...]) -> DmarcOutcome:
        """`header`: the message's header block (facts.header_of); `spf`: the SPF result and
        the domain it is for; `dkim_domains`: d= of each signature that verified."""
        started = time.monotonic()
        outcome = await self._evaluate(header, spf, dkim_domains, started + self.timeout)
        observe.dmarc_evaluated(outcome.result.value, outcome.policy.value if outcome.policy else None,
                                time.monotonic() - started)
        return outcome

    async def _evaluate(self, header: bytes, spf: tuple[SpfResult, str] | None,
                        dkim_domains: tuple[str, ...], deadline: float) -> DmarcOutcome:
        domain, why = from_domain(header)
        if not domain:
            return DmarcOutcome(DmarcResult.PERMERROR, "", detail=why)
        organizational = self.organizational(domain)
        found = await self._record(domain, deadline)
        if isinstance(found, str):
            return DmarcOutcome(DmarcResult.TEMPERROR, domain, detail=found)
        policy_of = "p"
        if found is None and organizational != domain:
            found = await self._record(organizational, deadline)
            if isinstance(found, str):
                return DmarcOutcome(DmarcResult.TEMPERROR, domain, detail=found)
            policy_of = "sp"
        if found is None:
            return DmarcOutcome(DmarcResult.NONE, domain, detail="no DMARC record")
        policy = found.subdomain_policy if policy_of == "sp" else found.policy
        if spf is not None and spf[0] is SpfResult.PASS and self.aligned(spf[1], domain, found.strict_spf):
            return DmarcOutcome(DmarcResult.PASS, domain, policy, found.percent, f"spf aligned: {spf[1]}")
        signer = next((d for d in dkim_domains if self.aligned(d, domain, found.strict_dkim)), None)
        if signer is not None:
            return DmarcOutcome(DmarcResult.PASS, domain, policy, found.percent, f"dkim aligned: {signer}")
        return DmarcOutcome(DmarcResult.FAIL, domain, policy, found.percent, "neither SPF nor DKIM aligned")

    async def _record(self, domain: str, deadline: float) -> Record | None | str:
        """The DMARC record published for `domain`, None when there is none, or why the lookup
        failed."""
        lookup = await self.resolver.lookup(f"_dmarc.{domain}", "TXT", deadline)
        if lookup.failed:
            return f"_dmarc.{domain}: {lookup.detail or lookup.outcome.value}"
        if lookup.outcome is not Outcome.ANSWER:
            return None
        texts = [b"".join(record.strings) for record in lookup.records]
        records = [text for text in texts if re.match(rb"v\s*=\s*DMARC1\s*(;|$)", text)]
        if len(records) != 1:
            return None              # §6.6.3 step 3: none, or more than one, is no record
        return parse_record(records[0].decode("ascii", "replace"))


def parse_record(text: str) -> Record | None:
    """The tags that decide; None when the record is not usable (no valid p= and no rua=:
    RFC 7489 §6.6.3 step 6 treats a record with rua= and a bad p= as p=none)."""
    tags: dict[str, str] = {}
    for item in text.split(";"):
        name, equals, value = item.partition("=")
        if equals:
            tags.setdefault(name.strip().lower(), value.strip())
    policy = _policy(tags.get("p", ""))
    if policy is None:
        if "rua" not in tags:
            return None
        policy = DmarcPolicy.NONE
    percent = tags.get("pct", "100")
    return Record(policy=policy, subdomain_policy=_policy(tags.get("sp", "")) or policy,
                  strict_dkim=tags.get("adkim", "r").lower() == "s",
                  strict_spf=tags.get("aspf", "r").lower() == "s",
                  percent=min(100, int(percent)) if percent.isdigit() else 100)


def _policy(word: str) -> DmarcPolicy | None:
    try:
        return DmarcPolicy(word.lower())
    except ValueError:
        return None


def from_domain(header: bytes) -> tuple[str, str]:
    """The one domain of the From: field(s) of a header block, or "" and why there is none."""
    values = [match.group(1).decode("utf-8", "replace") for match in _FROM.finditer(header)]
    if not values:
        return "", "no From: field"
    addresses = [address for _name, address in email.utils.getaddresses(values)]
    domains = {normalise_domain(address.rpartition("@")[2]) for address in addresses if "@" in address}
    if len(values) > 1 or len(domains) != 1 or "" in domains:
        return "", "not exactly one From: domain"
    return domains.pop(), ""
