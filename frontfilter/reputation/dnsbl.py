"""DNS block and allow lists of the client address, weighted as Postfix's postscreen does.

Each configured list has a weight; a client listed on it adds the weight to its score (allow
lists weigh negative, so a DNSWL listing can cancel a DNSBL one). The score, the names of the
lists that listed the client and whether it reached `dnsbl.threshold` are facts for the rules.

Reply codes (RFC 5782 §2.1): a list answers a listed address with an A record in 127.0.0.0/8.
Only answers among the list's `codes` (default 127.0.0.0/24) count. Public lists also answer
"you may not query me" or "over quota" with codes such as 127.255.255.252/254/255 (Spamhaus):
those are never a listing, whatever `codes` says, and are logged and counted as `refused`, not
as DNS errors (a list refusing us does not get better by retrying the mail later). An answer
outside 127/8 (an ISP resolver rewriting NXDOMAIN to an ad server) is never a listing either.

All lists are asked at once; the whole check ends by its deadline. A list that did not answer
in time or answered SERVFAIL is a DNS error (`dns.error = ["dnsbl"]`), its weight is not added.
"""

from __future__ import annotations

import asyncio
import enum
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from frontfilter import observe
from frontfilter.config import DnsListConfig
from frontfilter.model import IPAddress
from frontfilter.reputation.facts import ListingFacts
from frontfilter.reputation.resolver import Outcome, Resolver

# Answers that mean "error", never "listed" (Spamhaus: typo'd zone, open resolver, over quota).
ERROR_CODES = ipaddress.IPv4Network("127.255.255.0/24")
LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")


class ListResult(enum.Enum):
    LISTED = "listed"
    NOT_LISTED = "not_listed"
    REFUSED = "refused"      # answered with an error code or a code outside the list's codes
    ERROR = "error"          # no answer (timeout, SERVFAIL)


@dataclass(frozen=True)
class ListAnswer:
    list: DnsListConfig
    result: ListResult
    codes: tuple[str, ...] = ()   # the A records it answered
    detail: str = ""


@dataclass(frozen=True)
class ListingCheck:
    facts: ListingFacts
    answers: tuple[ListAnswer, ...]

    @property
    def failed(self) -> bool:
        return any(answer.result is ListResult.ERROR for answer in self.answers)


def query_name(ip: IPAddress, zone: str) -> str:
    """1.2.0.192.zone for 192.0.2.1; 32 reversed nibbles for IPv6 (RFC 5782 §2.1, §2.4)."""
    if ip.version == 4:
        reversed_ip = ".".join(reversed(str(ip).split(".")))
    else:
        reversed_ip = ".".join(reversed(ip.exploded.replace(":", "")))
    return f"{reversed_ip}.{zone}"


def classify(entry: DnsListConfig, addresses: Sequence[str]) -> tuple[ListResult, tuple[str, ...]]:
    """Whether A records answered by a list are a listing under its reply codes."""
    listed, other = [], []
    for text in addresses:
        try:
            address = ipaddress.IPv4Address(text)
        except ValueError:
            other.append(text)
            continue
        if address in LOOPBACK and address not in ERROR_CODES and any(
                code.matches(address) for code in entry.codes):
            listed.append(text)
        else:
            other.append(text)
    if listed:
        return ListResult.LISTED, tuple(listed)
    return (ListResult.REFUSED if other else ListResult.NOT_LISTED), tuple(other)


async def check(resolver: Resolver, lists: Sequence[DnsListConfig], threshold: int,
                ip: IPAddress, deadline: float) -> ListingCheck:
    answers = await asyncio.gather(*(_ask(resolver, entry, ip, deadline) for entry in lists))
    score = sum(answer.list.weight for answer in answers if answer.result is ListResult.LISTED)
    listed = tuple(answer.list.name for answer in answers if answer.result is ListResult.LISTED)
    allowed = any(answer.result is ListResult.LISTED and answer.list.weight < 0 for answer in answers)
    for answer in answers:
        observe.dnsbl_lookup(answer.list.name, answer.result.value)
    facts = ListingFacts(score=score, listed_on=listed, allowlisted=allowed,
                         over_threshold=score >= threshold)
    return ListingCheck(facts, tuple(answers))


async def _ask(resolver: Resolver, entry: DnsListConfig, ip: IPAddress, deadline: float) -> ListAnswer:
    lookup = await resolver.lookup(query_name(ip, entry.zone), "A", deadline)
    if lookup.outcome in (Outcome.NXDOMAIN, Outcome.NODATA):
        return ListAnswer(entry, ListResult.NOT_LISTED)
    if lookup.failed:
        return ListAnswer(entry, ListResult.ERROR, detail=f"{lookup.outcome.value}: {lookup.detail}".rstrip(": "))
    result, codes = classify(entry, [record.address for record in lookup.records])
    return ListAnswer(entry, result, codes)
