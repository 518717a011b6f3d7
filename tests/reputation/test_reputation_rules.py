"""The reputation facts as rule conditions: loading, stage checks, evaluation, and the shipped
rules, with hand-built facts (here any number of clients can be simulated, and any DNS answer)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from frontfilter.content.facts import MessageView
from frontfilter.model import Stage
from frontfilter.reputation.facts import CheckFacts, DnsCheck, ListingFacts, SpfResult
from frontfilter.rules import Action, Mode, RuleSetError, load_ruleset

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "rules"))
from rules_helpers import SHIPPED_RULES, facts, ruleset, view  # noqa: E402

OURS = frozenset({"example.org"})
RULES = load_ruleset(SHIPPED_RULES)


def with_checks(stage: Stage, checks: CheckFacts, **kw: object) -> object:
    import dataclasses

    return dataclasses.replace(facts(stage, **kw), checks=checks)   # type: ignore[arg-type]


def listed(score: int, *lists: str, allow: bool = False, threshold: int = 2) -> ListingFacts:
    return ListingFacts(score=score, listed_on=lists, allowlisted=allow, over_threshold=score >= threshold)


# ---- loading -----------------------------------------------------------------------------

def test_conditions_load_and_the_rule_set_says_which_facts_it_reads(tmp_path: Path) -> None:
    rules = ruleset(tmp_path, '''
[[rule]]
name = "listed"
stage = "connect"
any = [ { client.dnsbl = true }, { client.dnsbl_score = { over = 4 } }, { client.listed_on = "zen.*" } ]
not = { client.dnswl = true }
action = "reject"

[[rule]]
name = "spf"
stage = "mail"
spf.result = ["fail", "permerror"]
dns.error = ["spf"]
sender.own_domain = true
client.trusted = false
action = "reject"

[[rule]]
name = "grey"
stage = "rcpt"
greylist.new = true
action = "tempfail"

[[rule]]
name = "from"
from.own_domain = true
from.domain = "*.example.org"
from.address = { regex = "^ceo@" }
action = "tag"
tag = "x"
''')
    assert rules.reads(Stage.CONNECT) == {"client.dnsbl", "client.dnsbl_score", "client.listed_on", "client.dnswl"}
    assert rules.reads(Stage.MAIL) == {"spf.result", "dns.error", "sender.own_domain", "client.trusted"}
    assert rules.reads(Stage.RCPT) == {"greylist.new"}
    assert rules.reads(Stage.HELO) == frozenset()


@pytest.mark.parametrize("text, error", [
    ('stage = "mail"\ngreylist.new = true', "greylist.new: not known at stage mail (known from stage rcpt)"),
    ('stage = "helo"\nspf.result = "fail"', "spf.result: not known at stage helo (known from stage mail)"),
    ('stage = "rcpt"\nfrom.own_domain = true', "from.own_domain: not known at stage rcpt (known from stage data)"),
    ('spf.result = ["fail", "hardfail"]', "spf.result: unknown name 'hardfail' (one of pass, fail, softfail"),
    ('dns.error = ["dnsbl", "mx"]', "dns.error: unknown name 'mx' (one of dnsbl, spf, sender_domain, dkim, dmarc)"),
    ('client.dnsbl_score = { over = "three" }', "client.dnsbl_score.over: must be a whole number"),
    ('client.dnswl = "yes"', "client.dnswl: must be true or false"),
    ('client.blacklisted = true', "client.blacklisted: unknown condition"),
    ('greylist.old = true', "greylist.old: unknown condition"),
])
def test_bad_conditions_are_load_errors(tmp_path: Path, text: str, error: str) -> None:
    with pytest.raises(RuleSetError) as raised:
        ruleset(tmp_path, f'[[rule]]\nname = "bad"\n{text}\naction = "reject"\n')
    assert any(error in line for line in raised.value.errors), raised.value.errors


# ---- evaluation: several clients, any answer ---------------------------------------------

SCORING = '''
[[rule]]
name = "score"
stage = "connect"
client.dnsbl_score = { over = 0, under = 5 }
action = "tag"
tag = "grey-area"

[[rule]]
name = "allow-listed"
stage = "connect"
client.dnswl = true
action = "accept"

[[rule]]
name = "on-zen"
stage = "connect"
client.listed_on = "zen.*"
action = "reject"
'''


@pytest.mark.parametrize("ip, listing, expected", [
    ("192.0.2.1", None, None),                                   # not looked up: nothing found
    ("192.0.2.2", listed(0), None),                              # clean
    ("192.0.2.3", listed(3, "bl.example"), "score"),             # tagged, not refused
    ("192.0.2.4", listed(-2, "list.dnswl.org", allow=True), "allow-listed"),
    ("2001:db8::5", listed(5, "zen.spamhaus.org"), "on-zen"),
])
def test_rules_see_each_clients_listing(tmp_path: Path, ip: str, listing: ListingFacts | None,
                                        expected: str | None) -> None:
    rules = ruleset(tmp_path, SCORING)
    verdict = rules.evaluate(with_checks(Stage.CONNECT, CheckFacts(listing=listing), ip=ip))
    assert [m.rule for m in verdict.matches][-1:] == ([expected] if expected else [])


def test_dns_error_names_the_failed_checks(tmp_path: Path) -> None:
    rules = ruleset(tmp_path, '''
[[rule]]
name = "dnsbl-down"
stage = "mail"
dns.error = "dnsbl"
action = "tempfail"

[[rule]]
name = "any-down"
stage = "mail"
dns.error = true
action = "tag"
tag = "dns"
''')
    assert rules.evaluate(with_checks(Stage.MAIL, CheckFacts())).matches == ()
    spf_down = rules.evaluate(with_checks(Stage.MAIL, CheckFacts(dns_errors=frozenset({DnsCheck.SPF}))))
    assert [m.rule for m in spf_down.matches] == ["any-down"]
    both = rules.evaluate(with_checks(Stage.MAIL, CheckFacts(dns_errors=frozenset(DnsCheck))))
    assert both.action is Action.TEMPFAIL and both.rule == "dnsbl-down"


# ---- the shipped rules ---------------------------------------------------------------------

def test_shipped_dnsbl_rule_refuses_past_the_threshold_but_not_for_postmaster() -> None:
    checks = CheckFacts(listing=listed(2, "bl.example"))
    verdict = RULES.evaluate(with_checks(Stage.RCPT, checks, recipient="bob@example.org"))
    assert (verdict.action, verdict.rule) == (Action.REJECT, "dnsbl")
    assert verdict.reply is not None and verdict.reply.wire.startswith("554 5.7.1")
    postmaster = RULES.evaluate(with_checks(Stage.RCPT, checks, recipient="postmaster@example.org"))
    assert postmaster.action is None
    below = RULES.evaluate(with_checks(Stage.RCPT, CheckFacts(listing=listed(1, "bl.example")),
                                       recipient="bob@example.org"))
    assert below.action is None


@pytest.mark.parametrize("result, action, reply", [
    (SpfResult.FAIL, Action.REJECT, "550 5.7.23 SPF validation failed"),
    (SpfResult.SOFTFAIL, None, None),           # tagged
    (SpfResult.TEMPERROR, None, None),          # monitor by default
    (SpfResult.PASS, None, None),
    (SpfResult.NONE, None, None),
    (None, None, None),                         # not evaluated (authenticated, trusted, off)
])
def test_shipped_spf_rules(result: SpfResult | None, action: Action | None, reply: str | None) -> None:
    verdict = RULES.evaluate(with_checks(Stage.MAIL, CheckFacts(spf=result), sender="a@example.net"))
    assert verdict.action is action
    assert (verdict.reply.wire if verdict.reply else None) == reply
    if result is SpfResult.SOFTFAIL:
        assert verdict.tags == ("spf-softfail",)
    if result is SpfResult.TEMPERROR:
        assert [(m.rule, m.mode) for m in verdict.matches] == [("spf-temperror", Mode.MONITOR)]


def test_shipped_greylist_rule_spares_allow_listed_clients() -> None:
    new = RULES.evaluate(with_checks(Stage.RCPT, CheckFacts(greylist_new=True), recipient="bob@example.org"))
    assert (new.action, new.reply.wire if new.reply else None) == (
        Action.TEMPFAIL, "451 4.7.1 Greylisted, please try again later")
    allowed = CheckFacts(greylist_new=True, listing=listed(-2, "list.dnswl.org", allow=True))
    assert RULES.evaluate(with_checks(Stage.RCPT, allowed, recipient="bob@example.org")).action is None


@pytest.mark.parametrize("sender, auth_user, trusted, spf, matched", [
    ("ceo@example.org", None, False, None, True),           # from outside, claiming our domain
    ("CEO@Example.ORG.", None, False, None, True),          # case and trailing dot change nothing
    ("ceo@example.org", "ceo", False, None, False),         # authenticated: ours
    ("ceo@example.org", None, True, None, False),           # a trusted network: ours
    ("ceo@example.org", None, False, SpfResult.PASS, False),   # a host our SPF authorises
    ("ceo@sub.example.org", None, False, None, False),      # another domain (not listed as ours)
    ("", None, False, None, False),                         # bounces
])
def test_shipped_anti_spoofing_rule_for_the_envelope(sender: str, auth_user: str | None, trusted: bool,
                                                     spf: SpfResult | None, matched: bool) -> None:
    checks = CheckFacts(own_domains=OURS, trusted=trusted, spf=spf)
    verdict = RULES.evaluate(with_checks(Stage.MAIL, checks, sender=sender, auth_user=auth_user))
    monitored = [(m.rule, m.mode) for m in verdict.matches]
    assert (("spoofed-envelope-sender", Mode.MONITOR) in monitored) is matched
    assert verdict.action is None           # monitor mode: never acts


def _from(*values: str) -> MessageView:
    return view(headers=tuple(("From", value) for value in values))


@pytest.mark.parametrize("froms, matched", [
    (("Alice <alice@example.org>",), True),
    (('"Boss, The" <boss@EXAMPLE.org>',), True),
    (("news@partner.example", "ceo@example.org"), True),    # a second From: cannot hide ours
    (("Example Org <info@example.org.evil.example>",), False),
    (("alice@example.org <mallory@evil.example>",), True),     # unquoted: read as two mailboxes
    (('"alice@example.org" <mallory@evil.example>',), False),  # a display name is not an address
])
def test_shipped_anti_spoofing_rule_for_the_from_header(froms: tuple[str, ...], matched: bool) -> None:
    checks = CheckFacts(own_domains=OURS)
    verdict = RULES.evaluate(with_checks(Stage.DATA, checks, message=_from(*froms)))
    assert ("spoofed-from-header" in [m.rule for m in verdict.matches]) is matched
    assert verdict.action is None
