"""What the pipeline calls: gather the reputation facts a stage's rules need, once, in time.

A check runs only when it is configured AND the active rule set reads its facts (monitor rules
included): a relay without `[dnsbl] lists` or without a rule on `client.dnsbl*` never sends a
DNSBL query. What each stage needs is worked out once per rule set (`RuleSet.reads`).

- DNSBL/DNSWL of the client: started at connect as soon as any rule of the set will read it,
  awaited by the first stage whose rules read it (so its latency overlaps EHLO and MAIL).
  Bounded by `dns.timeout` from connect.
- SPF: started at MAIL when a rule reads `spf.result` (or `[spf] header` wants the field),
  awaited where needed; bounded by `spf.timeout`. Not for authenticated or trusted clients:
  their mail does not come from the sender domain's outbound servers, and they are ours.
- The sender's domain (`[dns] check_sender_domain`): looked up at MAIL when a rule reads
  `sender.domain_exists` (reputation.senderdomain), bounded by `dns.timeout`. Not for
  authenticated or trusted clients, nor for the null sender.
- Greylisting: at RCPT, for the recipient being decided, when a rule reads `greylist.new`.
  Never for authenticated or trusted clients.
- DKIM and ARC (`[dkim] enabled`, or an `[arc]` key: a chain is judged before it is continued), DMARC (`[dmarc] enabled`): at end of DATA, on the message
  as received (reputation.dkimcheck, reputation.dmarc), for every message from a client that is
  not ours, whether or not a rule reads them: the relay's Authentication-Results field carries
  them to the backend. DMARC needs SPF: with `[dmarc]`, SPF is evaluated at DATA too.
- `dns.error` reads the failures of the checks the rule set uses: a stage whose rules read it
  waits for those of them that are known by then.

Facts of a check that did not run are "nothing found" (see reputation.facts). A greylist
database that cannot be opened at all stops the start (ConfigError); an exception later (the
database unwritable) propagates: the pipeline answers 451 4.3.0, never a pass.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from frontfilter import observe
from frontfilter.config import Config, ConfigError
from frontfilter.model import Peer, Stage
from frontfilter.mapped import MessageBytes
from frontfilter.reputation import dnsbl
from frontfilter.reputation.facts import Authenticity, CheckFacts, DkimResult, DmarcResult, DnsCheck, ListingFacts, domain_of, header_of
from frontfilter.reputation.greylist import BUSY_TIMEOUT, Greylist
from frontfilter.reputation import senderdomain
from frontfilter.reputation.resolver import Resolver

if TYPE_CHECKING:
    # Imported where the check is switched on: their libraries (pyspf, dkimpy, the public
    # suffix list) cost a process 3-9 MiB each, for checks that are off by default.
    from frontfilter.reputation.dkimcheck import DkimVerifier, Verified
    from frontfilter.reputation.dmarc import Dmarc, DmarcOutcome
    from frontfilter.reputation.spfcheck import SpfChecker, SpfOutcome

DNSBL_KEYS = frozenset({"client.dnsbl", "client.dnsbl_score", "client.listed_on", "client.dnswl"})
SPF_KEYS = frozenset({"spf.result"})
GREYLIST_KEYS = frozenset({"greylist.new"})
SENDER_DOMAIN_KEYS = frozenset({"sender.domain_exists"})
DNS_ERROR = "dns.error"

DNSBL, SPF, GREYLIST, SENDER_DOMAIN = "dnsbl", "spf", "greylist", "sender_domain"
# One Authentication-Results method: (method, result, {ptype.property: value}); RFC 8601 §2.7.
Method = tuple[str, str, dict[str, str]]


def asks_dns(config: Config) -> bool:
    """Does a configured check ask DNS? (An [arc] key does: incoming chains are verified.)"""
    return bool(config.dnsbl.lists or config.spf.enabled or config.dkim.enabled or config.dmarc.enabled
                or config.arc.key_file is not None or config.dns.check_sender_domain)


@dataclass(frozen=True)
class Found:
    """What one message's signatures and From: domain said (None: that check is off)."""

    dkim: Verified | None = None
    dmarc: DmarcOutcome | None = None

    def facts(self) -> Authenticity:
        dkim, dmarc = self.dkim, self.dmarc
        return Authenticity(dkim=dkim.result if dkim else None, dkim_domains=dkim.passed_domains if dkim else (),
                            arc=dkim.arc if dkim else None, dmarc=dmarc.result if dmarc else None,
                            dmarc_policy=dmarc.policy if dmarc else None)

    def dns_errors(self) -> set[DnsCheck]:
        errors = set()
        if self.dkim is not None and self.dkim.key_lookup_failed:
            errors.add(DnsCheck.DKIM)
        if self.dmarc is not None and self.dmarc.result is DmarcResult.TEMPERROR:
            errors.add(DnsCheck.DMARC)
        return errors

    def log_fields(self) -> dict[str, object]:
        """For the message's log line."""
        fields: dict[str, object] = {}
        if self.dkim is not None:
            fields["dkim"] = self.dkim.result.value
            if self.dkim.passed_domains:
                fields["dkim_domains"] = list(self.dkim.passed_domains)
            fields["arc"] = self.dkim.arc.value
        if self.dmarc is not None:
            fields["dmarc"] = self.dmarc.result.value
            fields["dmarc_policy"] = self.dmarc.policy.value if self.dmarc.policy else None
        return fields


NOT_CHECKED = Found()


@dataclass
class ClientChecks:
    """Per SMTP session: what has been found out about this client and its transactions."""

    trusted: bool = False
    listing: ListingFacts | None = None
    listing_failed: bool = False
    listing_task: asyncio.Task[Any] | None = None
    spf: SpfOutcome | None = None
    spf_for: tuple[str, str | None] | None = None          # (sender, helo) the SPF result is for
    spf_task: asyncio.Task[Any] | None = None
    greylisted: dict[tuple[str, str], bool] = field(default_factory=dict)   # (sender, rcpt) -> new
    sender_domain: senderdomain.SenderDomain | None = None
    sender_domain_task: asyncio.Task[Any] | None = None


@dataclass(frozen=True)
class _Plan:
    now: dict[Stage, frozenset[str]]     # checks to have done before a stage's rules run
    later: dict[Stage, frozenset[str]]   # checks a later stage will need: start them early


class Checks:
    def __init__(self, config: Config):
        self.config = config
        relay = config.relay
        self.own_domains = frozenset(relay.sender_domains or relay.domains)
        self.resolver = Resolver(config.dns)
        self.lists = config.dnsbl.lists
        self.spf: SpfChecker | None = None
        if config.spf.enabled:
            from frontfilter.reputation.spfcheck import SpfChecker
            self.spf = SpfChecker(self.resolver, config.spf, config.server.hostname)
        self.greylist = Greylist(config.greylist) if config.greylist.enabled else None
        if self.greylist is not None:
            _probe(self.greylist, config)
        self._greylist_thread = ThreadPoolExecutor(1, thread_name_prefix="greylist") if self.greylist else None
        # Sealing ([arc]) continues a chain only once it is judged (RFC 8617 §5.1: the seal's cv
        # is the verdict): with a key, chains are verified even without [dkim].
        sealing = config.arc.key_file is not None
        self.dkim: DkimVerifier | None = None
        if config.dkim.enabled or sealing:
            from frontfilter.reputation.dkimcheck import DkimVerifier
            self.dkim = DkimVerifier(self.resolver, config.dkim)
        self.dmarc: Dmarc | None = None
        if config.dmarc.enabled:
            from frontfilter.reputation.dmarc import Dmarc
            self.dmarc = Dmarc(self.resolver, config.dmarc.timeout)
        if asks_dns(config):
            self.resolver.prepare()
        self._plan_cache: tuple[object, _Plan] | None = None

    # ---- what a rule set needs where --------------------------------------------------------

    def _plan(self, rules: object) -> _Plan:
        if self._plan_cache is not None and self._plan_cache[0] is rules:
            return self._plan_cache[1]
        reads_of = getattr(rules, "reads", None)
        reads = {stage: (reads_of(stage) if reads_of else frozenset()) for stage in Stage}
        used = frozenset().union(*reads.values())
        uses_dnsbl = bool(self.lists) and bool(used & DNSBL_KEYS)
        # DMARC reads the SPF result at DATA: no rule need ask for it.
        at_data = self.config.spf.header or self.dmarc is not None
        uses_spf = self.spf is not None and (bool(used & SPF_KEYS) or at_data)
        uses_domain = self.config.dns.check_sender_domain and bool(used & SENDER_DOMAIN_KEYS)
        now: dict[Stage, frozenset[str]] = {}
        for stage in Stage:
            needs = set()
            if uses_dnsbl and (reads[stage] & DNSBL_KEYS or DNS_ERROR in reads[stage]):
                needs.add(DNSBL)
            if uses_spf and stage.order >= Stage.MAIL.order and (
                    reads[stage] & SPF_KEYS or DNS_ERROR in reads[stage]
                    or (stage is Stage.DATA and at_data)):
                needs.add(SPF)
            if uses_domain and stage.order >= Stage.MAIL.order and (
                    reads[stage] & SENDER_DOMAIN_KEYS or DNS_ERROR in reads[stage]):
                needs.add(SENDER_DOMAIN)
            if self.greylist is not None and stage is Stage.RCPT and (
                    (reads[Stage.RCPT] | reads[Stage.DATA]) & GREYLIST_KEYS):
                needs.add(GREYLIST)
            now[stage] = frozenset(needs)
        later = {stage: frozenset().union(*(now[s] for s in Stage if s.order >= stage.order))
                 for stage in Stage}
        plan = _Plan(now, later)
        self._plan_cache = (rules, plan)
        return plan

    # ---- gathering ------------------------------------------------------------------------------

    def open(self, session: ClientChecks, peer: Peer) -> None:
        session.trusted = any(peer.ip in network for network in self.config.relay.trusted_networks)

    async def gather(self, stage: Stage, rules: object, session: ClientChecks, *, peer: Peer,
                     helo: str | None, auth_user: str | None, sender: str | None,
                     recipient: str | None = None) -> None:
        """Start what later stages will need; finish what `stage`'s rules need."""
        plan = self._plan(rules)
        later, now = plan.later[stage], plan.now[stage]
        if DNSBL in later and session.listing is None and session.listing_task is None and not session.trusted:
            session.listing_task = asyncio.ensure_future(self._listing(peer))
        ours = session.trusted or auth_user is not None
        if SPF in later and sender is not None and not ours and session.spf_for != (sender, helo):
            if session.spf_task is not None:
                session.spf_task.cancel()
            assert self.spf is not None
            session.spf, session.spf_for = None, (sender, helo)
            session.spf_task = asyncio.ensure_future(self.spf.check(peer.ip, sender, helo))
        if SENDER_DOMAIN in later and sender and not ours and session.sender_domain_task is None:
            domain = domain_of(sender)
            if domain and (session.sender_domain is None or session.sender_domain.domain != domain):
                session.sender_domain_task = asyncio.ensure_future(self._sender_domain(domain))
        if DNSBL in now:
            await self.settle_listing(session)
        if SPF in now and session.spf_task is not None:
            session.spf = await session.spf_task
            session.spf_task = None
        if SENDER_DOMAIN in now and session.sender_domain_task is not None:
            session.sender_domain = await session.sender_domain_task
            session.sender_domain_task = None
        if GREYLIST in now and recipient is not None and sender is not None and not ours:
            session.greylisted[(sender, recipient)] = await self._greylist(peer, sender, recipient)

    async def authenticate(self, raw: MessageBytes, session: ClientChecks, *, queue_id: str, sender: str,
                           helo: str | None, auth_user: str | None) -> Found:
        """DKIM, ARC and DMARC of a message as received (`gather(Stage.DATA)` first: DMARC reads
        the SPF result). Not for our own clients (trusted or authenticated): nothing to prove."""
        if (self.dkim is None and self.dmarc is None) or session.trusted or auth_user is not None:
            return NOT_CHECKED
        header = header_of(raw)          # read once, for both
        verified = await self.dkim.verify(raw, header, queue_id) if self.dkim is not None else None
        dmarc = None
        if self.dmarc is not None:
            spf = session.spf if session.spf is not None and session.spf_for == (sender, helo) else None
            dmarc = await self.dmarc.evaluate(header, (spf.result, spf.domain) if spf else None,
                                              verified.passed_domains if verified else ())
        return Found(verified, dmarc)

    async def _listing(self, peer: Peer) -> dnsbl.ListingCheck:
        started = time.monotonic()
        result = await dnsbl.check(self.resolver, self.lists, self.config.dnsbl.threshold, peer.ip,
                                   started + self.config.dns.timeout)
        observe.client_listing(str(peer), result.facts.score, result.facts.listed_on,
                               [(a.list.name, a.result.value, a.codes, a.detail) for a in result.answers],
                               time.monotonic() - started)
        return result

    async def _sender_domain(self, domain: str) -> senderdomain.SenderDomain:
        started = time.monotonic()
        found = await senderdomain.look_up(self.resolver, domain, started + self.config.dns.timeout)
        observe.sender_domain_checked(domain, found.exists, found.detail, time.monotonic() - started)
        return found

    async def _greylist(self, peer: Peer, sender: str, recipient: str) -> bool:
        assert self.greylist is not None and self._greylist_thread is not None
        work = asyncio.get_running_loop().run_in_executor(
            self._greylist_thread, self.greylist.check, peer.ip, sender, recipient)
        verdict = await asyncio.wait_for(work, BUSY_TIMEOUT + 1.0)   # past it: 451 4.3.0
        observe.greylist_checked(verdict.value)
        return verdict.is_new

    # ---- what the rules see ---------------------------------------------------------------------

    def facts(self, session: ClientChecks, *, sender: str | None, helo: str | None,
              recipient: str | None = None, recipients: tuple[str, ...] = (),
              found: Found = NOT_CHECKED) -> CheckFacts:
        spf = session.spf if session.spf is not None and session.spf_for == (sender, helo) else None
        if recipient is not None:
            new = session.greylisted.get((sender or "", recipient))
        else:
            seen = [session.greylisted[(sender or "", r)] for r in recipients
                    if (sender or "", r) in session.greylisted]
            new = any(seen) if seen else None
        errors = found.dns_errors()
        if session.listing_failed:
            errors.add(DnsCheck.DNSBL)
        if spf is not None and spf.dns_failed:
            errors.add(DnsCheck.SPF)
        domain = session.sender_domain
        if domain is not None and (not sender or domain_of(sender) != domain.domain):
            domain = None            # about an earlier transaction's sender
        if domain is not None and domain.exists is None:
            errors.add(DnsCheck.SENDER_DOMAIN)
        return CheckFacts(trusted=session.trusted, own_domains=self.own_domains,
                          listing=session.listing, spf=spf.result if spf else None,
                          greylist_new=new, dns_errors=frozenset(errors),
                          sender_domain_exists=domain.exists if domain is not None else None,
                          authenticity=found.facts())

    def trace(self, session: ClientChecks, peer: Peer, sender: str, helo: str | None) -> list[tuple[str, str]]:
        """Trace fields for the forwarded message: Received-SPF, when SPF was evaluated."""
        spf = session.spf
        if self.spf is None or not self.config.spf.header or spf is None or session.spf_for != (sender, helo):
            return []
        from frontfilter.reputation.spfcheck import received_spf     # loaded with self.spf
        return [("Received-SPF", received_spf(spf, self.config.server.hostname, peer.ip, sender, helo))]

    async def settle_listing(self, session: ClientChecks) -> None:
        """The client's DNS lists, once their lookup (started at connect) has answered."""
        if session.listing_task is not None:
            result = await session.listing_task
            session.listing_task = None
            session.listing, session.listing_failed = result.facts, result.failed

    def results(self, session: ClientChecks, sender: str, helo: str | None,
                message: Found = NOT_CHECKED) -> list[Method]:
        """What was found, as Authentication-Results methods (RFC 8601 §2.7): the SPF result of
        this sender, each DKIM signature (RFC 6008's `header.b` tells two of one domain apart),
        the ARC chain, DMARC, and the DNS lists (`dnsbl`: fail when the client's score reached
        the threshold). Only what was evaluated: a check not made says nothing."""
        found: list[Method] = []
        spf = session.spf
        if spf is not None and session.spf_for == (sender, helo):
            found.append(("spf", spf.result.value, {f"smtp.{spf.identity}": spf.domain}))
        if message.dkim is not None:
            found += [("dkim", s.result.value, {"header.d": s.domain, "header.s": s.selector, "header.b": s.prefix}
                       if s.domain else {}) for s in message.dkim.signatures] or [("dkim", DkimResult.NONE.value, {})]
            found.append(("arc", message.dkim.arc.value, {}))
        if message.dmarc is not None:
            dmarc = message.dmarc
            found.append(("dmarc", dmarc.result.value, ({"header.from": dmarc.domain} if dmarc.domain else {})
                          | ({"policy.dmarc": dmarc.policy.value} if dmarc.policy else {})))
        listing = session.listing
        if listing is not None:
            listed = {"policy.listed": ",".join(listing.listed_on)} if listing.listed_on else {}
            found.append(("dnsbl", "fail" if listing.over_threshold else "pass", listed))
        return found

    # ---- lifetime -------------------------------------------------------------------------------

    def end(self, session: ClientChecks) -> None:
        """The session is over: lookups still running for it are not waited for."""
        for task in (session.listing_task, session.spf_task, session.sender_domain_task):
            if task is not None and not task.done():
                task.cancel()
        session.listing_task = session.spf_task = session.sender_domain_task = None

    def close(self) -> None:
        if self.spf is not None:
            self.spf.close()
        if self.dkim is not None:
            self.dkim.close()
        if self._greylist_thread is not None:
            self._greylist_thread.shutdown(wait=True)
        if self.greylist is not None:
            self.greylist.close()


def _probe(greylist: Greylist, config: Config) -> None:
    """A greylist database that cannot be opened is a configuration error, found at start."""
    try:
        greylist.probe()
    except (sqlite3.Error, OSError) as error:
        why = str(error)
        if isinstance(error, OSError) and error.strerror:
            why = f"{error.filename}: {error.strerror}" if error.filename else error.strerror
        raise ConfigError([f"{config.path}: greylist.database: {config.greylist.database}: {why}"]) from None
