"""The resolver, the DNS lists, SPF and the check planner in-process, against a real DNS server
on loopback (tests/reputation/dnsserver.py)."""

from __future__ import annotations

import asyncio
import ipaddress
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from frontfilter import metrics
from frontfilter.config import DnsConfig, HostPort, SpfConfig, load_config, parse_dns_list
from frontfilter.model import Peer, Stage
from frontfilter.reputation import dnsbl
from frontfilter.reputation.checks import Checks, ClientChecks
from frontfilter.reputation.facts import DnsCheck, SpfResult
from frontfilter.reputation.resolver import Outcome, Resolver
from frontfilter.reputation.spfcheck import SpfChecker, SpfOutcome, received_spf
from frontfilter.rules import load_ruleset
from tests.harness import REPO, write_config
from tests.reputation.dnsserver import DnsServer, dead_resolver

LOCAL = ipaddress.ip_address("127.0.0.1")


@pytest.fixture(scope="module")
def dns() -> Iterator[DnsServer]:
    with DnsServer() as server:
        server.add("listed.example", "A", "127.0.0.2")
        server.add("1.0.0.127.bl.example", "A", "127.0.0.2", "127.0.0.11")
        server.add("1.0.0.127.refusing.example", "A", "127.255.255.254")
        server.add("1.0.0.127.hijacked.example", "A", "198.51.100.80")
        server.servfail.add("broken.example")
        server.txt("spf-include.example", "v=spf1 include:_spf.spf-include.example -all")
        server.txt("_spf.spf-include.example", "v=spf1 ip4:127.0.0.0/24 -all")
        server.txt("spf-mx.example", "v=spf1 mx -all")
        server.add("spf-mx.example", "MX", "10 mx1.spf-mx.example.")
        server.add("mx1.spf-mx.example", "A", "127.0.0.1")
        server.txt("spf-neutral.example", "v=spf1 ?all")
        server.txt("spf-broken.example", "v=spf1 ip4:not-an-address -all")
        yield server


def resolver_for(server: DnsServer, clock: object = time.monotonic, **kw: object) -> Resolver:
    return Resolver(DnsConfig(resolvers=(HostPort("127.0.0.1", server.port),), **kw), clock)  # type: ignore[arg-type]


def sample(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


# ---- the resolver ----------------------------------------------------------------------------

def test_answers_are_cached_for_their_ttl_and_failures_are_not(dns: DnsServer) -> None:
    now = [1000.0]
    resolver = resolver_for(dns, clock=lambda: now[0])

    async def run() -> list[Outcome]:
        deadline = time.monotonic() + 5       # the fake clock never reaches it
        outcomes = []
        for name in ("listed.example", "listed.example", "missing.example", "missing.example",
                     "broken.example", "broken.example"):
            outcomes.append((await resolver.lookup(name, "A", deadline + now[0])).outcome)
        now[0] += 61                          # past the answer's TTL (60 s)
        outcomes.append((await resolver.lookup("listed.example", "A", deadline + now[0])).outcome)
        return outcomes

    cached_before = sample("frontfilter_dns_queries_total", result="cached")
    before = len(dns.asked())
    assert asyncio.run(run()) == [Outcome.ANSWER, Outcome.ANSWER, Outcome.NXDOMAIN, Outcome.NXDOMAIN,
                                  Outcome.ERROR, Outcome.ERROR, Outcome.ANSWER]
    asked = [name for name, _type in dns.asked()[before:]]
    assert asked == ["listed.example", "missing.example", "broken.example", "broken.example", "listed.example"]
    assert sample("frontfilter_dns_queries_total", result="cached") == cached_before + 2


def test_concurrent_lookups_of_one_name_share_one_query(dns: DnsServer) -> None:
    resolver = resolver_for(dns)

    async def run() -> list[Outcome]:
        deadline = time.monotonic() + 5
        found = await asyncio.gather(*(resolver.lookup("shared.listed.example", "A", deadline) for _ in range(5)))
        return [result.outcome for result in found]

    before = len(dns.asked())
    assert asyncio.run(run()) == [Outcome.NXDOMAIN] * 5
    assert dns.asked()[before:] == [("shared.listed.example", "A")]


def test_a_dead_resolver_times_out_by_the_deadline() -> None:
    with dead_resolver() as dead:
        resolver = resolver_for(dead)

        async def run() -> Outcome:
            return (await resolver.lookup("anything.example", "A", time.monotonic() + 0.5)).outcome

        timeouts = sample("frontfilter_dns_queries_total", result="timeout")
        assert asyncio.run(run()) is Outcome.TIMEOUT
        assert dead.asked() == [("anything.example", "A")]
        assert sample("frontfilter_dns_queries_total", result="timeout") == timeouts + 1


# ---- DNS lists ---------------------------------------------------------------------------------

def test_query_names_follow_rfc_5782() -> None:
    assert dnsbl.query_name(ipaddress.ip_address("192.0.2.99"), "zen.example") == "99.2.0.192.zen.example"
    v6 = dnsbl.query_name(ipaddress.ip_address("2001:db8::1"), "zen.example")
    assert v6 == "1." + "0." * 23 + "8.b.d.0.1.0.0.2.zen.example"


@pytest.mark.parametrize("spec, answers, result", [
    ("bl.example", ["127.0.0.2"], dnsbl.ListResult.LISTED),
    ("bl.example", ["127.255.255.254"], dnsbl.ListResult.REFUSED),       # Spamhaus: open resolver
    ("bl.example", ["127.255.255.255"], dnsbl.ListResult.REFUSED),       # Spamhaus: over quota
    ("bl.example=127.0.0.0/8", ["127.255.255.252"], dnsbl.ListResult.REFUSED),   # never, whatever codes say
    ("bl.example", ["127.0.1.2"], dnsbl.ListResult.REFUSED),             # outside 127.0.0.x
    ("bl.example", ["198.51.100.80"], dnsbl.ListResult.REFUSED),         # NXDOMAIN rewritten by an ISP
    ("bl.example=127.0.0.[2..3]", ["127.0.0.4"], dnsbl.ListResult.REFUSED),
    ("bl.example=127.0.0.[2..3]", ["127.0.0.4", "127.0.0.3"], dnsbl.ListResult.LISTED),
    ("wl.example=127.0.[0..255].[1..3]*-2", ["127.0.15.2"], dnsbl.ListResult.LISTED),
    ("bl.example", [], dnsbl.ListResult.NOT_LISTED),
])
def test_only_the_configured_reply_codes_are_listings(spec: str, answers: list[str],
                                                      result: dnsbl.ListResult) -> None:
    assert dnsbl.classify(parse_dns_list(spec), answers)[0] is result


def test_weighted_score_over_real_dns(dns: DnsServer) -> None:
    lists = [parse_dns_list(s) for s in ("bl.example*3", "refusing.example*3", "hijacked.example*3",
                                         "broken.example*3", "clean.example*3")]

    async def run() -> dnsbl.ListingCheck:
        return await dnsbl.check(resolver_for(dns), lists, 3, LOCAL, time.monotonic() + 3)

    listed_before = sample("frontfilter_dnsbl_lookups_total", list="bl.example", result="listed")
    found = asyncio.run(run())
    assert (found.facts.score, found.facts.listed_on, found.facts.over_threshold) == (3, ("bl.example",), True)
    assert {a.list.name: a.result.value for a in found.answers} == {
        "bl.example": "listed", "refusing.example": "refused", "hijacked.example": "refused",
        "broken.example": "not_listed", "clean.example": "not_listed"}   # "broken" is only a parent
    assert not found.failed
    assert sample("frontfilter_dnsbl_lookups_total", list="bl.example", result="listed") == listed_before + 1


# ---- SPF ---------------------------------------------------------------------------------------

def spf(server: DnsServer, sender: str, helo: str = "client.example", timeout: float = 3) -> SpfOutcome:
    async def run() -> SpfOutcome:
        checker = SpfChecker(resolver_for(server), SpfConfig(enabled=True, timeout=timeout), "mx.example")
        try:
            return await checker.check(LOCAL, sender, helo)
        finally:
            checker.close()
    return asyncio.run(run())


@pytest.mark.parametrize("sender, result", [
    ("a@spf-include.example", SpfResult.PASS),     # include: through our resolver
    ("a@spf-mx.example", SpfResult.PASS),          # mx: MX then A records
    ("a@spf-neutral.example", SpfResult.NEUTRAL),
    ("a@spf-broken.example", SpfResult.PERMERROR),
    ("a@no-record.example", SpfResult.NONE),
    ("a@broken.example", SpfResult.TEMPERROR),     # SERVFAIL
])
def test_spf_results_over_real_dns(dns: DnsServer, sender: str, result: SpfResult) -> None:
    counted = sample("frontfilter_spf_results_total", result=result.value)
    outcome = spf(dns, sender)
    assert (outcome.result, outcome.identity) == (result, "mailfrom")
    assert outcome.dns_failed is (result is SpfResult.TEMPERROR)
    assert sample("frontfilter_spf_results_total", result=result.value) == counted + 1


def test_spf_of_the_null_sender_uses_the_helo_name(dns: DnsServer) -> None:
    outcome = spf(dns, "", helo="spf-include.example")
    assert (outcome.result, outcome.identity, outcome.domain) == (SpfResult.PASS, "helo", "spf-include.example")


def test_spf_with_a_dead_resolver_is_temperror_by_its_timeout() -> None:
    with dead_resolver() as dead:
        outcome = spf(dead, "a@spf-include.example", timeout=0.5)
    assert outcome.result is SpfResult.TEMPERROR


def test_received_spf_cannot_be_forged_through_sender_or_helo() -> None:
    outcome = SpfOutcome(SpfResult.FAIL, "mailfrom", "example.net")
    value = received_spf(outcome, "mx.example", LOCAL, '"x; client-ip=192.0.2.1 (pass)"@example.net',
                         "evil; client-ip=192.0.2.1 (pass)")
    comment, _, pairs = value.partition(") ")
    assert comment.startswith("fail (mx.example: domain of ") and "(" not in comment[6:]
    assert pairs.startswith("client-ip=127.0.0.1; envelope-from=")
    assert 'helo="evil; client-ip=192.0.2.1 (pass)";' in pairs
    assert 'envelope-from="\\"x; client-ip=192.0.2.1 (pass)\\"@example.net";' in pairs


# ---- the planner: what is looked up, when --------------------------------------------------

RCPT_DNSBL = '''
[[rule]]
name = "listed"
stage = "rcpt"
client.dnsbl = true
action = "reject"

[[rule]]
name = "dns-down"
stage = "connect"
dns.error = true
action = "tempfail"
'''


def test_lookups_start_at_connect_and_dns_error_waits_for_them(dns: DnsServer, tmp_path: Path) -> None:
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    (rules_dir / "50-test.toml").write_text(RCPT_DNSBL)
    rules = load_ruleset(rules_dir)
    config = load_config(write_config(tmp_path, [25], dns={"resolvers": [f"127.0.0.1:{dns.port}"]},
                                      dnsbl={"lists": ["bl.example*2", "broken-zone.example"]}))
    dns.servfail.add("1.0.0.127.broken-zone.example")
    peer = Peer(LOCAL, 4000)

    async def run() -> tuple[object, object]:
        checks = Checks(config)
        session = ClientChecks()
        checks.open(session, peer)
        try:
            await checks.gather(Stage.CONNECT, rules, session, peer=peer, helo=None, auth_user=None, sender=None)
            at_connect = checks.facts(session, sender=None, helo=None)
            await checks.gather(Stage.RCPT, rules, session, peer=peer, helo="h", auth_user=None,
                                sender="a@example.net", recipient="b@example.org")
            return at_connect, checks.facts(session, sender="a@example.net", helo="h", recipient="b@example.org")
        finally:
            checks.end(session)
            checks.close()

    at_connect, at_rcpt = asyncio.run(run())
    # dns.error at connect waited for the lookups that a later stage's rule needs.
    assert at_connect.dns_errors == {DnsCheck.DNSBL}                   # type: ignore[attr-defined]
    assert at_rcpt.listing.score == 2 and at_rcpt.listing.over_threshold  # type: ignore[attr-defined]
    assert rules.evaluate(__import__("dataclasses").replace(
        _facts(Stage.RCPT), checks=at_rcpt)).rule == "listed"


def _facts(stage: Stage) -> object:
    from frontfilter.model import EnvelopeFacts, SessionFacts
    from frontfilter.rules import Facts

    return Facts(stage, SessionFacts(Peer(LOCAL, 4000)), EnvelopeFacts(sender="a@example.net"),
                 recipient="b@example.org")


def test_trusted_and_authenticated_clients_are_not_looked_up(dns: DnsServer, tmp_path: Path) -> None:
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    (rules_dir / "50-test.toml").write_text(RCPT_DNSBL + '\n[[rule]]\nname = "spf"\nstage = "mail"\n'
                                            'spf.result = "fail"\naction = "reject"\n')
    config = load_config(write_config(
        tmp_path, [25], dns={"resolvers": [f"127.0.0.1:{dns.port}"]}, dnsbl={"lists": ["trusted-bl.example"]},
        spf={"enabled": True}, relay={"domains": ["example.org"], "trusted_networks": ["127.0.0.0/8"]}))
    rules = load_ruleset(rules_dir)
    peer = Peer(LOCAL, 4000)

    async def run() -> object:
        checks = Checks(config)
        session = ClientChecks()
        checks.open(session, peer)
        try:
            for stage in (Stage.CONNECT, Stage.MAIL, Stage.RCPT):
                await checks.gather(stage, rules, session, peer=peer, helo="h", auth_user=None,
                                    sender="a@spf-include.example", recipient="b@example.org")
            return checks.facts(session, sender="a@spf-include.example", helo="h")
        finally:
            checks.end(session)
            checks.close()

    before = len(dns.asked())
    found = asyncio.run(run())
    assert dns.asked()[before:] == []
    assert found.trusted and found.listing is None and found.spf is None   # type: ignore[attr-defined]


def test_check_says_when_a_configured_resolver_does_not_answer(tmp_path: Path) -> None:
    with DnsServer() as answering, DnsServer(silent=True) as dead:
        for resolver, warned in ((answering, False), (dead, True)):
            path = tmp_path / "frontfilter.toml"
            path.write_text(f'[backend]\nservers = ["127.0.0.1:2526"]\nmode = "sync"\n'
                            f'[rules]\ndir = "{REPO / "rules"}"\n'
                            f'[dns]\nresolvers = ["{resolver.address}"]\n'
                            f'[dnsbl]\nlists = ["zen.example"]\n')
            done = subprocess.run([sys.executable, "-m", "frontfilter", "check", "--config", str(path)],
                                  capture_output=True, text=True, cwd=REPO, timeout=60, check=False)
            assert done.returncode == 0, done.stderr
            line = f"{path}: dns.resolvers: warning: {resolver.address}: no answer within 2s"
            assert (line in done.stderr) is warned, done.stderr
        assert ("2.0.0.127.zen.example", "A") in answering.asked()
