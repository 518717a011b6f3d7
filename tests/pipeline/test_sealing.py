"""Which forwarded messages [arc] seals, decided in `decide` (pipeline/decision.py, the
inspection thread): with seal = "changed" those a rule changed (a part stripped, a field or a
tag added) or whose forged Authentication-Results was removed, not those that only got the
relay's own trace fields; with "always" every forwarded one; never a refused one. A seal comes
last, over the bytes exactly as they are forwarded, and a late one is skipped, not waited for."""

from __future__ import annotations

import ipaddress
import time
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from frontfilter.config import ArcConfig, ArcSeal
from frontfilter.content.arcseal import SealingKey, read_key
from frontfilter.content.limits import InspectionLimits
from frontfilter.model import EnvelopeFacts, Peer, SessionFacts, Stage
from frontfilter.pipeline.decision import Decision, decide
from frontfilter.pipeline.sealing import Sealer
from frontfilter.rules import load_ruleset
from frontfilter.rules.facts import Facts
from tests.content import corpus

AUTHSERV_ID = "mx.test"
TRACE = [("Authentication-Results", "mx.test; spf=pass smtp.mailfrom=example.org"),
         ("Received", "from client.test ([192.0.2.1]) by mx.test (frontfilter) with ESMTP id Q1; "
                      "Mon, 3 Mar 2025 10:00:00 +0000")]
RULES = """
[[rule]]
name = "strip-bin"
attachment.filename = "*.bin"
action = "strip"

[[rule]]
name = "mark-lunch"
subject = "lunch"
action = "add_header"
header = { name = "X-Lunch", value = "yes" }

[[rule]]
name = "tag-soup"
subject = "soup"
action = "tag"
tag = "soup"

[[rule]]
name = "no-exe"
attachment.filename = "*.exe"
action = "reject"
"""


@pytest.fixture(scope="module")
def key() -> SealingKey:
    pem = rsa.generate_private_key(public_exponent=65537, key_size=1024).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return read_key(pem, "seal1", "edge.example.org")


@pytest.fixture(scope="module")
def rules(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201 - a RuleSet
    directory = tmp_path_factory.mktemp("rules")
    (directory / "50-test.toml").write_text(RULES)
    return load_ruleset(directory)


def judged(raw: bytes, rules: object, sealer: Sealer | None, deadline: float | None = None) -> Decision:
    session = SessionFacts(Peer(ipaddress.ip_address("192.0.2.1"), 40000), "client.test")
    facts = Facts(Stage.DATA, session, EnvelopeFacts("alice@example.org", ("bob@example.com",)))
    return decide(raw, facts, rules, InspectionLimits(), TRACE, authserv_id=AUTHSERV_ID,  # type: ignore[arg-type]
                  sealer=sealer, deadline=deadline)


def verified(decision: Decision, key: SealingKey) -> bytes:
    record = key.record.encode()
    cv, sets, reason = dkim.arc_verify(decision.head + decision.message,
                                       dnsfunc=lambda name, timeout=5: record)
    assert cv == dkim.CV_Pass, (reason, sets)
    return decision.head


def with_subject(subject: str, *attachments: object) -> bytes:
    return corpus.message(*attachments).replace(b"Subject: Test message", f"Subject: {subject}".encode())  # type: ignore[arg-type]


def test_a_stripped_part_is_sealed_on_top_of_everything(rules: object, key: SealingKey) -> None:
    raw = corpus.message(corpus.attachment(b"\x00\x01 firmware", "application/octet-stream", "update.bin"))
    decision = judged(raw, rules, Sealer(ArcConfig(), key))
    assert decision.stripped and decision.arc is not None and decision.arc.describe() == "sealed i=1"
    head = verified(decision, key)
    assert head.startswith(b"ARC-Seal: i=1;") and head.index(b"\r\nAuthentication-Results: mx.test;") > 0


@pytest.mark.parametrize("subject", ["lunch", "soup"])
def test_a_field_or_tag_a_rule_adds_is_sealed(rules: object, key: SealingKey, subject: str) -> None:
    decision = judged(with_subject(subject), rules, Sealer(ArcConfig(), key))
    assert decision.arc is not None and decision.arc.sealed
    verified(decision, key)


def test_a_forged_field_of_ours_removed_is_a_change_and_sealed(rules: object, key: SealingKey) -> None:
    raw = b"Authentication-Results: mx.test; dkim=pass header.d=bank.example\r\n" + with_subject("hello")
    decision = judged(raw, rules, Sealer(ArcConfig(), key))
    assert decision.arc is not None and decision.arc.sealed
    assert verified(decision, key).count(b"dkim=pass") == 0      # neither forwarded nor sealed


def test_only_the_trace_fields_added_is_no_change(rules: object, key: SealingKey) -> None:
    raw = with_subject("hello")
    decision = judged(raw, rules, Sealer(ArcConfig(), key))
    assert decision.arc is None and decision.message is raw and b"ARC-" not in decision.head
    always = judged(raw, rules, Sealer(ArcConfig(seal=ArcSeal.ALWAYS), key))
    assert always.arc is not None and always.arc.sealed
    assert verified(always, key).endswith(decision.head[decision.head.index(b"Authentication-Results"):])


def test_a_refused_message_is_not_sealed(rules: object, key: SealingKey) -> None:
    raw = corpus.message(corpus.attachment(b"MZ", "application/octet-stream", "setup.exe"))
    decision = judged(raw, rules, Sealer(ArcConfig(seal=ArcSeal.ALWAYS), key))
    assert decision.verdict.rule == "no-exe" and decision.arc is None


def test_a_seal_past_the_deadline_is_skipped_not_waited_for(rules: object, key: SealingKey) -> None:
    # (The walk itself stops at that deadline too: `always`, as the view then reads no subject.)
    decision = judged(with_subject("lunch"), rules, Sealer(ArcConfig(seal=ArcSeal.ALWAYS), key),
                      deadline=time.monotonic() - 1)
    assert decision.arc is not None and not decision.arc.sealed
    assert decision.arc.describe() == "not sealed: no time left within inspection.timeout"
    assert decision.head.startswith(b"Authentication-Results: ")      # forwarded as without [arc]


def test_without_a_sealer_nothing_changes(rules: object) -> None:
    decision = judged(with_subject("lunch"), rules, None)
    assert decision.arc is None and decision.head.startswith(b"Authentication-Results: ")


def test_the_sealing_key_file_is_read_with_its_problems_named(tmp_path: Path) -> None:
    from frontfilter.config import build_config
    from frontfilter.pipeline.sealing import read_sealing_key, sealing_key_problems

    (tmp_path / "key.pem").write_text("junk\n")
    config = build_config({"backend": {"servers": ["127.0.0.1:25"]},
                           "arc": {"key_file": "key.pem", "selector": "s1", "domain": "example.org"}},
                          tmp_path / "frontfilter.toml")
    problems, loaded = sealing_key_problems(config)
    assert loaded is None and problems == [
        f"{tmp_path / 'frontfilter.toml'}: arc.key_file: {tmp_path / 'key.pem'}: not a private key in "
        f"PEM form (make one with: openssl genrsa 2048)"]
    (tmp_path / "key.pem").unlink()
    with pytest.raises(ValueError, match=r"arc\.key_file: .*key\.pem: cannot read: No such file or directory"):
        read_sealing_key(config)


@pytest.mark.parametrize(("arc", "problem"), [
    ({"key_file": "arc.key", "domain": "example.org"},
     "arc.selector: missing (arc.key_file is set: the key is published at SELECTOR._domainkey.DOMAIN)"),
    ({"key_file": "arc.key", "selector": "s1"}, "arc.domain: missing"),
    ({"selector": "s1", "domain": "example.org"}, "arc.selector: has no effect without arc.key_file"),
    ({"key_file": "arc.key", "selector": "s_1", "domain": "example.org"}, "arc.selector: 's_1' is not a selector"),
    ({"key_file": "arc.key", "selector": "s1", "domain": "localhost"},
     "arc.domain: 'localhost' is not a fully qualified domain name"),
    ({"key_file": "arc.key", "selector": "s1", "domain": "example.org", "seal": "sometimes"},
     "arc.seal: 'sometimes' is not one of 'changed', 'always'"),
    ({"key_file": "arc.key", "selector": ".".join(["a" * 63] * 4), "domain": "example.org"},
     "arc.selector: " + "a" * 63),
])
def test_an_inconsistent_arc_section_is_refused_naming_its_key(tmp_path: Path, arc: dict, problem: str) -> None:
    from frontfilter.config import ConfigError, build_config

    path = tmp_path / "frontfilter.toml"
    with pytest.raises(ConfigError) as refused:
        build_config({"backend": {"servers": ["127.0.0.1:25"]}, "arc": arc}, path)
    assert any(line.startswith(f"{path}: {problem}") for line in refused.value.problems), refused.value.problems


def test_no_arc_section_means_no_sealing_and_a_relative_key_file_is_the_config_folders(tmp_path: Path) -> None:
    from frontfilter.config import build_config

    path = tmp_path / "frontfilter.toml"
    assert build_config({"backend": {"servers": ["127.0.0.1:25"]}}, path).arc == ArcConfig()
    config = build_config({"backend": {"servers": ["127.0.0.1:25"]},
                           "arc": {"key_file": "keys/arc.pem", "selector": "S1", "domain": "Edge.Example.ORG."}}, path)
    assert config.arc == ArcConfig(key_file=tmp_path / "keys" / "arc.pem", selector="S1",
                                   domain="edge.example.org", seal=ArcSeal.CHANGED)
