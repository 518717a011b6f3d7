"""The reputation facts a rule can read, as plain immutable values. Pure: no I/O, no asyncio.

`CheckFacts` rides on `rules.Facts.checks`. Each field says what a check found, or that it did
not run (`None`): no list configured, no rule needing it, an authenticated client. A check that
did not run never makes a condition on it hold, except the "not" forms: `client.dnswl = false`
holds when no allow list said otherwise.

Names here are a contract with rule files (rules/README.md): the values of `SpfResult` are the
words of RFC 7208 §2.6, those of `DkimResult`, `DmarcResult` and `ArcResult` the words of
RFC 8601 for each method, the values of `DnsCheck` the words of `dns.error = [...]`.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass

from frontfilter.memo import remembered
from frontfilter.mapped import MessageBytes


class SpfResult(enum.Enum):
    """RFC 7208 §2.6: the result of check_host() for the envelope sender (or the HELO name)."""

    PASS = "pass"
    FAIL = "fail"
    SOFTFAIL = "softfail"
    NEUTRAL = "neutral"
    NONE = "none"
    TEMPERROR = "temperror"
    PERMERROR = "permerror"


class DkimResult(enum.Enum):
    """RFC 8601 §2.7.1: the message's DKIM result, the best of its signatures' (a pass wins)."""

    PASS = "pass"
    FAIL = "fail"            # a signature that does not verify (body or header hash, signature)
    NONE = "none"            # not signed
    TEMPERROR = "temperror"  # a signing key could not be looked up (timeout, SERVFAIL)
    PERMERROR = "permerror"  # malformed signature, no key published, key unusable or too small


class DmarcResult(enum.Enum):
    """RFC 7489 §11.2 (through RFC 8601): the From: domain's DMARC evaluation."""

    PASS = "pass"            # an aligned SPF or DKIM pass
    FAIL = "fail"            # the domain publishes DMARC and nothing aligned passed
    NONE = "none"            # the domain publishes no DMARC record
    TEMPERROR = "temperror"  # its record could not be looked up
    PERMERROR = "permerror"  # no single From: domain to evaluate (RFC 7489 §6.6.1)


class DmarcPolicy(enum.Enum):
    """What the From: domain asks receivers to do with mail that fails (p=, or sp=)."""

    NONE = "none"
    QUARANTINE = "quarantine"
    REJECT = "reject"


class ArcResult(enum.Enum):
    """RFC 8617 §4.4: the chain validation status of an ARC chain the message arrived with."""

    PASS = "pass"
    FAIL = "fail"
    NONE = "none"            # no ARC chain


class DnsCheck(enum.Enum):
    """Which DNS-based check could not be completed (timeout, SERVFAIL, no resolver answered)."""

    DNSBL = "dnsbl"   # a block or allow list lookup of the client address
    SPF = "spf"       # the SPF evaluation (its result is then temperror)
    SENDER_DOMAIN = "sender_domain"   # the lookup of the envelope sender's domain
    DKIM = "dkim"     # a signing key lookup (its result is then temperror)
    DMARC = "dmarc"   # the lookup of the From: domain's DMARC record


@dataclass(frozen=True)
class ListingFacts:
    """DNSBL/DNSWL of the client: the weighted score (postscreen style) and where it is listed."""

    score: int = 0
    listed_on: tuple[str, ...] = ()   # names of the lists that listed the client, config order
    allowlisted: bool = False         # listed on a list of negative weight (a DNSWL)
    over_threshold: bool = False      # score >= dnsbl.threshold


@dataclass(frozen=True)
class Authenticity:
    """What the message's own signatures and its From: domain say, checked before any change
    (reputation.dkimcheck, reputation.dmarc). None in a field: that check was not made."""

    dkim: DkimResult | None = None
    dkim_domains: tuple[str, ...] = ()          # d= of each signature that verified
    arc: ArcResult | None = None
    dmarc: DmarcResult | None = None
    dmarc_policy: DmarcPolicy | None = None     # None: no record (or not evaluated)


@dataclass(frozen=True)
class CheckFacts:
    trusted: bool = False                      # client in relay.trusted_networks
    own_domains: frozenset[str] = frozenset()  # relay.sender_domains (or relay.domains), A-labels
    listing: ListingFacts | None = None        # None: not looked up
    spf: SpfResult | None = None               # None: not evaluated
    greylist_new: bool | None = None           # None: greylisting not consulted
    sender_domain_exists: bool | None = None   # None: not looked up, or the lookup failed
    dns_errors: frozenset[DnsCheck] = frozenset()
    authenticity: Authenticity = Authenticity()   # at DATA: DKIM, ARC, DMARC


NO_CHECKS = CheckFacts()


# What of a message's header block the DKIM and DMARC checks read on the event loop: the key
# names and the From: field. A message without an empty line would otherwise be all header
# (25 MB scanned on the loop); signatures and From: fields past this are not looked for.
MAX_HEADER_SCAN = 256 * 1024


def header_of(raw: MessageBytes) -> bytes:
    """The header block of a message as received (CRLF-only: DATA refuses bare line ends), at
    most MAX_HEADER_SCAN bytes of it."""
    end = raw.find(b"\r\n\r\n", 0, MAX_HEADER_SCAN)
    return raw[:end] if end >= 0 else raw[:MAX_HEADER_SCAN]


@remembered(maxsize=4096, longest=300)
def normalise_domain(domain: str) -> str:
    """Lower case, no trailing dot, A-label form; "" when it cannot be a domain.

    Kept for the 4,096 most recent: the IP test and the IDNA codec cost 15-30 µs, several
    times per message (HELO, sender, From), for the same few domains again and again. Only
    names that can be domains (253 octets) are kept: a From: field may carry a 250 KB one."""
    domain = domain.strip().rstrip(".").lower()
    if not domain:
        return ""
    if domain.startswith("[") or _is_ip(domain):
        return ""
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError:
        return domain if domain.isascii() else ""


def domain_of(address: str) -> str:
    """The normalised domain of an address (`local@domain`); "" for the null sender."""
    local, at, domain = address.rpartition("@")
    return normalise_domain(domain) if at else ""


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
