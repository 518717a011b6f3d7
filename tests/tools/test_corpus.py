"""`frontfilter test`: the administrator's rule regression tests, and the dry run they stand on
(`frontfilter.pipeline.dryrun`, shared with `scan`) agreeing with the live relay on every test corpus."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from xml.etree import ElementTree

import pytest

from frontfilter.pipeline import dryrun
from frontfilter.cli import as_crlf
from frontfilter.config import load_config
from frontfilter.rules.loader import load_ruleset
from tests.content import corpus as c
from tests.content import fail_closed_corpus
from tests.harness import REPO, RecordingSink, Relay, send, write_config
from tests.test_filtering import CORPUS as FILTERING_CORPUS, EXECUTABLE_CASES, ORDINARY
from tests.test_relay import strip_received

SHIPPED = REPO / "corpus"
DEV_CONFIG = REPO / "dev" / "frontfilter.toml"


def frontfilter_test(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "frontfilter", "test", *args], capture_output=True,
                          text=True, cwd=REPO, timeout=120, check=False)


def test_the_shipped_corpus_passes_the_shipped_rules(tmp_path: Path) -> None:
    report = tmp_path / "junit.xml"
    done = frontfilter_test(str(SHIPPED), "--config", str(DEV_CONFIG), "--junit", str(report))
    assert done.returncode == 0, done.stdout + done.stderr
    count = len(list(SHIPPED.glob("*.eml")))
    assert done.stdout.strip().endswith(f"{count} messages: {count} as expected, 0 not")
    suite = ElementTree.parse(report).getroot()
    assert (suite.get("tests"), suite.get("failures")) == (str(count), "0")


def test_a_rule_edit_is_named_with_the_message_it_changes(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    shutil.copytree(REPO / "rules", rules)
    office = rules / "20-office.toml"
    edited = re.sub(r'(name = "office-macros"\n(?:(?!\[\[rule\]\]).*\n)*?action = )"strip"', r'\1"reject"',
                    office.read_text())
    assert edited != office.read_text()
    office.write_text(edited)
    report = tmp_path / "junit.xml"
    done = frontfilter_test(str(SHIPPED), "--config", str(DEV_CONFIG), "--rules", str(rules), "--junit", str(report))
    assert done.returncode == 1
    [line] = [l for l in done.stdout.splitlines() if l.startswith("macro-document.eml: ")]
    assert "expected accept, got reject by office-macros" in line
    assert "rules fired: office-macros" in line
    assert done.stdout.strip().endswith("as expected, 1 not")
    failed = [case.get("name") for case in ElementTree.parse(report).getroot() if case.find("failure") is not None]
    assert failed == ["macro-document.eml"]


def test_a_corpus_that_cannot_be_read_is_one_line_per_problem(tmp_path: Path) -> None:
    (tmp_path / "a.eml").write_bytes(c.plain())
    (tmp_path / "a.toml").write_text('verdict = "accept"\nrulez = ["x"]\n')
    (tmp_path / "b.eml").write_bytes(c.plain())
    (tmp_path / "c.eml").write_bytes(c.plain())
    (tmp_path / "c.toml").write_text('verdict = "maybe"\n')
    done = frontfilter_test(str(tmp_path))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines == [f"frontfilter: {tmp_path / 'a.toml'}: rulez: unknown key (known: verdict, rules, stripped, "
                     "sender, recipient, client_ip, helo, auth_user)",
                     f"frontfilter: {tmp_path / 'b.toml'}: missing: each .eml needs its expected outcome "
                     "(verdict = \"accept\", ...)",
                     f"frontfilter: {tmp_path / 'c.toml'}: verdict: 'maybe' is not one of accept, reject, "
                     "tempfail, discard, quarantine"]


def test_dns_lookups_need_the_config_that_names_the_resolvers(tmp_path: Path) -> None:
    done = frontfilter_test(str(SHIPPED), "--dns")
    assert (done.returncode, done.stderr.strip()) == (
        2, "frontfilter: --dns needs --config (the resolvers, lists and SPF settings are there)")


def test_expected_strips_and_envelopes_are_checked(tmp_path: Path) -> None:
    macro = c.message(c.attachment(c.docx(macros=True), "application/octet-stream", "invoice.docm"))
    (tmp_path / "m.eml").write_bytes(macro)
    (tmp_path / "m.toml").write_text('verdict = "accept"\nstripped = ["other.docm"]\n')
    (tmp_path / "p.eml").write_bytes(c.plain())
    (tmp_path / "p.toml").write_text('verdict = "accept"\nrecipient = "x@elsewhere.example"\n')
    done = frontfilter_test(str(tmp_path), "--config", str(DEV_CONFIG))
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    assert any(l.startswith("m.eml: expected stripped other.docm, got invoice.docm (") for l in lines), lines
    assert any(l.startswith("p.eml: expected accept, got reject by relay denied for 'x@elsewhere.example'")
               for l in lines), lines


# ---- the dry run agrees with the live relay ----------------------------------------------------

def corpora() -> Iterator[tuple[str, bytes, dryrun.DryEnvelope]]:
    """Every message of the test corpora, with the envelope it is sent with."""
    for path in sorted(SHIPPED.glob("*.eml")):
        table = tomllib.loads(path.with_suffix(".toml").read_text())
        recipients = table.get("recipient", "bob@example.org")
        yield path.name, as_crlf(path.read_bytes()), dryrun.DryEnvelope(
            sender="alice@example.net", recipients=(recipients,) if isinstance(recipients, str) else tuple(recipients),
            client_ip="127.0.0.1")
    envelope = dryrun.DryEnvelope(sender="alice@example.net", recipients=("bob@example.org",), client_ip="127.0.0.1")
    builders = {**{k: v for k, (v, _verdict, _code) in FILTERING_CORPUS.items()},
                **{f"exe-{k}": v for k, v in EXECUTABLE_CASES.items()},
                **{f"ordinary-{k}": v for k, v in ORDINARY.items()},
                **{f"clean-{k}": v for k, v in fail_closed_corpus.CLEAN.items()}}
    for name, build in builders.items():
        yield name, as_crlf(build()), envelope
    for name, make in fail_closed_corpus.CASES.items():
        case = make()
        yield f"trick-{name}", case.attack, envelope
        yield f"trick-{name}-control", case.control, envelope


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Relay, RecordingSink, Path]]:
    directory = tmp_path_factory.mktemp("agreement")
    with RecordingSink() as sink:
        config = write_config(directory, [sink.port], server={"max_message_size": "4MiB"},
                              inspection={"max_depth": 8, "max_parts": 40})
        with Relay(config) as relay:
            yield relay, sink, config




def test_scan_decides_every_corpus_message_as_the_live_relay(live: tuple[Relay, RecordingSink, Path]) -> None:
    relay, sink, path = live
    config = dryrun.dry_config(load_config(path), lookups=False)
    rules = load_ruleset(config.rules.dir)
    compared = 0
    for name, raw, envelope in corpora():
        dry = dryrun.run(config, rules, raw, envelope)
        sink.messages.clear()
        answer = send(relay.port, raw, sender=envelope.sender, recipients=envelope.recipients, helo=envelope.helo,
                      timeout=60)
        assert (answer.code, answer.text.split(" ", 1)[0]) == (dry.reply.code, dry.reply.enhanced), (name, answer)
        queue_id = answer.queue_id
        if queue_id is None:         # refused before the content rules: a RCPT, or DATA's size bound
            assert dry.decision is None and dry.stage.value in ("rcpt", "data"), name
            continue
        line = relay.wait_event("message", queue_id=queue_id)
        assert (dry.verdict, dry.decided_by) == (line["verdict"], line.get("decided_by")), name
        assert dry.decision is not None and [m.rule for m in dry.decision.verdict.matches] == line["rules"], name
        assert [s["part"] for s in line["stripped"]] == [o.mime_path for o in dry.decision.stripped], name
        if line["verdict"] == "accepted":
            [delivered] = sink.wait_for(1)
            assert dry.forwarded is not None
            assert strip_received(delivered.data) == strip_received(dry.forwarded), name
        compared += 1
    assert compared > 100
