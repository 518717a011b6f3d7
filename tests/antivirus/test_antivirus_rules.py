"""`virus` conditions, the shipped rule, `[antivirus]` config and on_error: pure, no clamd."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from frontfilter import reply
from frontfilter.antivirus.result import ScanResult, ScanStatus
from frontfilter.config import ConfigError, HostPort, OnError, load_config
from frontfilter.content.limits import InspectionLimits
from frontfilter.pipeline.decision import ON_ERROR, decide
from frontfilter.model import EnvelopeFacts, Peer, SessionFacts, Stage
from frontfilter.rules import Action, RuleSetError, load_ruleset
from frontfilter.rules.facts import Facts
from tests.content import corpus

SHIPPED = Path(__file__).resolve().parents[2] / "rules"

CLEAN = ScanResult(ScanStatus.CLEAN)
INFECTED = ScanResult(ScanStatus.INFECTED, ("Win.Trojan.Agent-1", "Eicar-Signature"))
FAILED = {status: ScanResult(status, detail="why") for status in
          (ScanStatus.ERROR, ScanStatus.TIMEOUT, ScanStatus.TOO_BIG)}


def facts(scan: ScanResult | None, message: bytes | None = None) -> Facts:
    from frontfilter.content.inspect import inspect

    session = SessionFacts(Peer(ipaddress.ip_address("198.51.100.7"), 40000), "mx.example.net")
    envelope = EnvelopeFacts("alice@example.net", ("bob@example.org",))
    view = inspect(message or corpus.plain(), InspectionLimits())
    return Facts(Stage.DATA, session, envelope, message=view, antivirus=scan)


def rules(tmp_path: Path, text: str):  # noqa: ANN201 - a RuleSet
    (tmp_path / "50-test.toml").write_text(text)
    return load_ruleset(tmp_path)


def matched(tmp_path: Path, condition: str, scan: ScanResult | None) -> bool:
    ruleset = rules(tmp_path, f'[[rule]]\nname = "r"\n{condition}\naction = "reject"\n')
    return ruleset.evaluate(facts(scan)).action is Action.REJECT


# ---- conditions -------------------------------------------------------------------------------

@pytest.mark.parametrize(("scan", "expected"), [
    (INFECTED, True), (CLEAN, False), (None, False), *[(f, False) for f in FAILED.values()]])
def test_virus_true_holds_only_when_clamd_found_something(tmp_path: Path, scan: ScanResult | None,
                                                          expected: bool) -> None:
    assert matched(tmp_path, "virus = true", scan) is expected


@pytest.mark.parametrize(("scan", "expected"), [
    (CLEAN, True), (INFECTED, False), (None, False), *[(f, False) for f in FAILED.values()]])
def test_virus_false_holds_only_after_a_clean_scan_never_for_an_unscanned_message(
        tmp_path: Path, scan: ScanResult | None, expected: bool) -> None:
    assert matched(tmp_path, "virus = false", scan) is expected


@pytest.mark.parametrize(("condition", "expected"), [
    ('virus.name = "Win.Trojan.*"', True),
    ('virus.name = "eicar-signature"', True),            # globs are case-insensitive
    ('virus.name = ["Heuristics.*", "Doc.*"]', False),
    ('virus.name = { regex = "^Win\\\\." }', True),
])
def test_virus_name_globs_and_regexes(tmp_path: Path, condition: str, expected: bool) -> None:
    assert matched(tmp_path, condition, INFECTED) is expected


def test_virus_name_holds_for_no_clean_or_failed_scan(tmp_path: Path) -> None:
    for scan in (CLEAN, None, *FAILED.values()):
        assert not matched(tmp_path, 'virus.name = "*"', scan)


def test_the_reason_names_the_signature_for_frontfilter_scan(tmp_path: Path) -> None:
    ruleset = rules(tmp_path, '[[rule]]\nname = "r"\nvirus.name = "Win.*"\naction = "reject"\n')
    [match] = ruleset.evaluate(facts(INFECTED)).matches
    assert match.reasons == ("virus.name Win.Trojan.Agent-1 matches Win.*",)


@pytest.mark.parametrize(("condition", "error"), [
    ('stage = "rcpt"\nvirus = true', "50-test.toml: rule r: virus: not known at stage rcpt (known from stage data)"),
    ('stage = "mail"\nvirus.name = "x"', "50-test.toml: rule r: virus.name: not known at stage mail (known from stage data)"),
    ('virus.nmae = "x"', "50-test.toml: rule r: virus.nmae: unknown condition"),
    ('virus = "yes"', "50-test.toml: rule r: virus: must be true, false or a table { name = ... }, not a string"),
])
def test_virus_condition_errors(tmp_path: Path, condition: str, error: str) -> None:
    with pytest.raises(RuleSetError) as raised:
        rules(tmp_path, f'[[rule]]\nname = "r"\n{condition}\naction = "reject"\n')
    assert raised.value.errors == [error]


# ---- the shipped rule and on_error ------------------------------------------------------------

SHIPPED_RULES = load_ruleset(SHIPPED)


def test_shipped_rule_rejects_a_virus_with_a_generic_reply() -> None:
    verdict = SHIPPED_RULES.evaluate(facts(INFECTED))
    assert (verdict.action, verdict.rule) == (Action.REJECT, "virus")
    assert verdict.reply == reply.Reply(554, "5.7.1", "Message content rejected")
    assert not any(name.lower() in verdict.reply.wire.lower() for name in INFECTED.signatures)


def test_shipped_rules_without_a_scan_leave_plain_mail_alone() -> None:
    verdict = SHIPPED_RULES.evaluate(facts(None))
    assert (verdict.action, verdict.matches) == (None, ())


def run_decide(scan: ScanResult | None, on_error: OnError, message: bytes | None = None):  # noqa: ANN201
    raw = message or corpus.plain()
    base = facts(None, raw)
    return decide(raw, Facts(base.stage, base.session, base.envelope), SHIPPED_RULES,
                  InspectionLimits(), antivirus=scan, on_error=on_error)


@pytest.mark.parametrize("status", list(FAILED))
def test_a_failed_scan_tempfails_by_default(status: ScanStatus) -> None:
    decision = run_decide(FAILED[status], OnError.TEMPFAIL)
    verdict = decision.verdict
    assert (verdict.action, verdict.rule, decision.unscanned) == (Action.TEMPFAIL, ON_ERROR, True)
    expected = reply.INSPECTION_TIMEOUT if status is ScanStatus.TIMEOUT else reply.SCAN_UNAVAILABLE
    assert verdict.reply == expected and verdict.reply.code == 451


@pytest.mark.parametrize("status", list(FAILED))
def test_a_failed_scan_passes_with_on_error_accept(status: ScanStatus) -> None:
    decision = run_decide(FAILED[status], OnError.ACCEPT)
    assert (decision.verdict.action, decision.unscanned) == (None, False)
    assert decision.antivirus is FAILED[status]


def test_a_rule_refusal_stands_over_on_error() -> None:
    # An executable is refused for good (5xx) even though clamd was down: no pointless retry.
    message = corpus.message(corpus.attachment(corpus.pe(), "application/octet-stream", "setup.exe"))
    decision = run_decide(FAILED[ScanStatus.ERROR], OnError.TEMPFAIL, message)
    assert decision.verdict.action is Action.REJECT and decision.verdict.rule != ON_ERROR
    assert not decision.unscanned


def test_an_infected_message_is_rejected_by_the_virus_rule() -> None:
    decision = run_decide(INFECTED, OnError.TEMPFAIL)
    assert (decision.verdict.action, decision.verdict.rule) == (Action.REJECT, "virus")


def test_a_clean_scan_changes_nothing() -> None:
    decision = run_decide(CLEAN, OnError.TEMPFAIL)
    assert decision.verdict.action is None
    assert decision.message == corpus.plain()


# ---- [antivirus] config -----------------------------------------------------------------------

def config(tmp_path: Path, antivirus: str | None, server: str = "") -> Path:
    path = tmp_path / "frontfilter.toml"
    text = f'[server]\n{server}\n[backend]\nservers = ["127.0.0.1:2526"]\n'
    if antivirus is not None:
        text += f"[antivirus]\n{antivirus}\n"
    path.write_text(text)
    return path


def test_no_antivirus_section_means_no_scanning(tmp_path: Path) -> None:
    assert load_config(config(tmp_path, None)).antivirus is None


def test_antivirus_defaults(tmp_path: Path) -> None:
    antivirus = load_config(config(tmp_path, "", 'max_message_size = "10MiB"')).antivirus
    assert antivirus is not None
    assert antivirus.address == Path("/run/clamav/clamd.ctl")
    assert antivirus.on_error is OnError.TEMPFAIL
    assert antivirus.max_size == 10 * 1024 * 1024        # the server's: every message is scanned
    assert antivirus.timeout == 30 and antivirus.concurrency == 8


def test_antivirus_address_forms(tmp_path: Path) -> None:
    relative = load_config(config(tmp_path, 'address = "run/clamd.sock"')).antivirus
    assert relative is not None and relative.address == tmp_path.resolve() / "run" / "clamd.sock"
    tcp = load_config(config(tmp_path, 'address = "127.0.0.1:3310"\non_error = "accept"\nmax_size = "4MiB"')).antivirus
    assert tcp is not None and tcp.address == HostPort("127.0.0.1", 3310)
    assert (tcp.on_error, tcp.max_size) == (OnError.ACCEPT, 4 * 1024 * 1024)


@pytest.mark.parametrize(("lines", "problem"), [
    ('on_error = "pass"', "antivirus.on_error: 'pass' is not one of 'tempfail', 'accept'"),
    ('address = "clamd"', "antivirus.address: 'clamd' is neither a unix socket path"),
    ('timeout = "soon"', "antivirus.timeout: 'soon' is not a duration"),
    ('concurrency = 0', "antivirus.concurrency: must be at least 1"),
    ('timeout = 0', "antivirus.timeout: must be more than 0s"),
    ('adress = "/x"', "antivirus.adress: unknown key (did you mean 'address'?)"),
])
def test_antivirus_config_errors(tmp_path: Path, lines: str, problem: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(config(tmp_path, lines))
    assert len(raised.value.problems) == 1
    assert raised.value.problems[0].startswith(f"{tmp_path / 'frontfilter.toml'}: {problem}")


def test_clamd_running_out_of_time_is_tempfailed_not_rejected() -> None:
    # Heuristics.Limits.Exceeded.MaxScanTime depends on clamd's load: the retry may succeed.
    scan = ScanResult(ScanStatus.INFECTED, ("Heuristics.Limits.Exceeded.MaxScanTime",))
    verdict = SHIPPED_RULES.evaluate(facts(scan))
    assert (verdict.action, verdict.rule, verdict.reply.code) == (Action.TEMPFAIL, "virus-scan-time", 451)
    deep = ScanResult(ScanStatus.INFECTED, ("Heuristics.Limits.Exceeded.MaxRecursion",))
    assert SHIPPED_RULES.evaluate(facts(deep)).rule == "virus"


def test_the_antivirus_value_type_is_pure_so_the_rules_engine_stays_pure() -> None:
    # rules/facts.py imports frontfilter.antivirus: it must not bring the asyncio client along.
    import ast
    import subprocess
    import sys

    code = "import sys, frontfilter.antivirus; print('asyncio' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    for module in (Path(__file__).resolve().parents[2] / "frontfilter" / "antivirus").glob("*.py"):
        assert ast.get_docstring(ast.parse(module.read_text())), f"{module.name} has no docstring"
