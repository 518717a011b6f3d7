"""Content filtering over real SMTP with the shipped rules, the real libmagic and a real backend.

The acceptance of issue 3: disguised executables are refused wherever they hide, macros are
stripped with the rest of the message left byte-identical, ordinary attachments pass untouched,
monitor rules count without acting, bombs and absurd nesting get a clear answer, a broken rule
set on reload leaves the old one working, and `frontfilter scan` agrees with the relay.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from email import message_from_bytes, policy
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from pathlib import Path

import pytest

from tests.content import corpus as c
from tests.content import fail_closed_corpus
from tests.harness import REPO, RecordingSink, Relay, send, write_config
from tests.test_relay import strip_received


@pytest.fixture(scope="module")
def relay(module_sink: RecordingSink, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    directory = tmp_path_factory.mktemp("filtering")
    config = write_config(directory, [module_sink.port], server={"max_message_size": "4MiB"},
                          inspection={"max_depth": 8, "max_parts": 40})
    with Relay(config) as running:
        yield running



def nested(depth: int) -> bytes:
    inner: MIMEMultipart | MIMEText = MIMEText("deep\n")
    for _ in range(depth):
        outer = MIMEMultipart()
        outer.attach(inner)
        inner = outer
    inner["Subject"] = "nested"
    return c.crlf(inner.as_bytes(policy=policy.compat32))


EXECUTABLE_CASES = {
    "pe-as-jpeg": lambda: c.message(c.attachment(c.pe(), "image/jpeg", "photo.jpg")),
    "elf-as-jpeg": lambda: c.message(c.attachment(c.elf(), "image/jpeg", "photo.jpg")),
    "pe-in-zip": lambda: c.message(c.attachment(c.zip_of({"setup.txt": c.pe()}), "application/zip", "files.zip")),
    "pe-in-zip-in-zip": lambda: c.message(c.attachment(
        c.zip_of({"inner.zip": c.zip_of({"readme.txt": c.pe()})}), "application/zip", "outer.zip")),
    "double-extension": lambda: c.message(c.attachment(b"just text\n", "application/pdf", "invoice.pdf.exe")),
    "bidi-name": lambda: c.message(c.attachment(c.png(), "image/png", "photo\u202egnp.exe", rfc2231=True)),
    "rfc2231-only-name": lambda: c.message(c.attachment(b"text\n", "application/octet-stream",
                                                          "r\u00e9sum\u00e9.exe", rfc2231=True)),
}


@pytest.mark.parametrize("case", sorted(EXECUTABLE_CASES))
def test_executables_are_rejected_wherever_they_hide(relay: Relay, sink: RecordingSink, case: str) -> None:
    answer = send(relay.port, EXECUTABLE_CASES[case]())
    assert answer.code == 554 and answer.text.startswith("5.7.1"), answer
    assert "rule" not in answer.text.lower() and ".toml" not in answer.text     # generic text to the client
    assert sink.wait_for(1, timeout=0.3) == []
    line = relay.wait_event("message", queue_id=answer.queue_id)      # the reply names the log line
    assert line["verdict"] == "rejected" and line["decided_by"] and line["rules"]


def test_macro_document_is_stripped_and_the_rest_is_byte_identical(relay: Relay, sink: RecordingSink) -> None:
    original = c.message(c.attachment(c.pdf(), "application/pdf", "report.pdf"),
                         c.attachment(c.docx(macros=True), "application/vnd.ms-word.document.macroEnabled.12",
                                      "budget.docm"))
    answer = send(relay.port, original)
    assert answer.code == 250
    [received] = sink.wait_for(1)
    data = strip_received(received.data)
    assert data.startswith(b"X-Frontfilter-Stripped: ")
    parsed = message_from_bytes(data, policy=policy.default)
    parts = [p for p in parsed.walk() if not p.is_multipart()]
    assert [p.get_content_type() for p in parts] == ["text/plain", "application/pdf", "text/plain"]
    notice = parts[2].get_content()
    assert "budget.docm" in notice and "office-macro" in notice
    # Every byte outside the stripped part is the client's: compare the message with the
    # stripped part cut out of both sides.
    boundary = parsed.get_boundary().encode()
    original_parts = original.split(b"--" + boundary)
    received_parts = data.split(b"--" + boundary)
    assert len(original_parts) == len(received_parts) == 5
    assert original_parts[1:3] == received_parts[1:3] and original_parts[4] == received_parts[4]
    assert received_parts[0].endswith(original_parts[0])        # headers: one field added on top
    line = relay.wait_event("message", queue_id=answer.queue_id)
    assert line["verdict"] == "accepted"
    assert line["stripped"] and line["stripped"][0]["part"] == "3"


ORDINARY = {
    "text": lambda: c.plain(),
    "pdf": lambda: c.message(c.attachment(c.pdf(), "application/pdf", "report.pdf")),
    "png": lambda: c.message(c.attachment(c.png(), "image/png", "logo.png")),
    "docx": lambda: c.message(c.attachment(
        c.docx(), "application/vnd.openxmlformats-officedocument.wordprocessingml.document", "letter.docx")),
    # random bytes libmagic guesses to be a DOS COM program, as ~1 % of encrypted files are
    "encrypted-blob": lambda: c.message(c.attachment(c.com_lookalike(), "application/octet-stream",
                                                     "backup.gpg")),
    "zip-of-pdfs": lambda: c.message(c.attachment(c.zip_of({"a.pdf": c.pdf(), "b.pdf": c.pdf()}),
                                                  "application/zip", "reports.zip")),
}


@pytest.mark.parametrize("case", sorted(ORDINARY))
def test_ordinary_mail_passes_unchanged(relay: Relay, sink: RecordingSink, case: str) -> None:
    original = ORDINARY[case]()
    assert send(relay.port, original).code == 250
    [received] = sink.wait_for(1)
    assert strip_received(received.data) == original


@pytest.mark.parametrize("case", sorted(EXECUTABLE_CASES) + sorted(ORDINARY))
def test_the_same_message_again_gets_the_same_answer_with_its_types_remembered(
        relay: Relay, sink: RecordingSink, case: str) -> None:
    """The second time, every part's type is remembered, and a small message of text and
    pictures is decided on the event loop instead of in an inspection thread (pipeline
    stages.Pipeline._on_loop): the answer and what the backend gets must not change."""
    message = (EXECUTABLE_CASES | ORDINARY)[case]()
    first, again = send(relay.port, message), send(relay.port, message)
    assert (again.code, again.text.split(" ", 1)[0]) == (first.code, first.text.split(" ", 1)[0])
    if case in ORDINARY:
        assert first.code == 250
        assert [strip_received(m.data) for m in sink.wait_for(2)] == [message, message]
    else:
        assert first.code == 554
        assert sink.wait_for(1, timeout=0.3) == []


def test_nesting_past_the_limit_is_refused_without_a_crash(relay: Relay, sink: RecordingSink) -> None:
    answer = send(relay.port, nested(12))
    assert answer.code == 554, answer
    assert send(relay.port, nested(3)).code == 250               # and the relay goes on
    assert len(sink.wait_for(1)) == 1
    line = relay.wait_event("message", queue_id=answer.queue_id)
    assert line["verdict"] == "rejected" and "depth" in line["limits"]


def test_the_log_line_says_why_content_was_not_read(relay: Relay, sink: RecordingSink) -> None:
    """An administrator reading the log sees the reason a message failed closed, not only the
    rule: the parts that were not read to the end, and the readings that disagreed."""
    unsupported = fail_closed_corpus.arj("notes.txt", b"hello\n")   # nothing here opens ARJ
    answer = send(relay.port, c.message(c.attachment(unsupported, "application/octet-stream", "a.arj")))
    line = relay.wait_event("message", queue_id=answer.queue_id)     # a refusal names its queue id
    assert answer.code == 554 and "unsupported" in line["uninspectable"], line
    assert line["ambiguities"] == [] and sink.wait_for(1, timeout=0.5) == []


def test_part_count_past_the_limit_is_refused(relay: Relay, sink: RecordingSink) -> None:
    many = c.message(*[c.attachment(b"x\n", "text/plain", f"note{i}.txt") for i in range(60)])
    assert send(relay.port, many).code == 554
    assert sink.wait_for(1, timeout=0.3) == []


def test_zip_bomb_is_refused_with_bounded_work(relay: Relay, sink: RecordingSink) -> None:
    bomb = c.zip_of({"zeros.bin": bytes(60 * 1024 * 1024)})
    assert len(bomb) < 200 * 1024
    answer = send(relay.port, c.message(c.attachment(bomb, "application/zip", "data.zip")))
    assert answer.code == 554
    assert sink.wait_for(1, timeout=0.3) == []
    line = relay.wait_event("message", queue_id=answer.queue_id)
    assert line["limits"] == ["compression_ratio"]
    assert line["size"] < 1024 * 1024


# ---- rule sets that change under a running relay ---------------------------------------------

SITE_RULE = """
[[rule]]
name = "no-forbidden-subjects"
stage = "data"
subject = "*forbidden*"
action = "reject"
reply = "554 5.7.1 Not here"

[[rule]]
name = "watch-lottery"
stage = "data"
subject = "*lottery*"
action = "reject"
mode = "monitor"
"""


@pytest.fixture()
def site_relay(sink: RecordingSink, tmp_path: Path) -> Iterator[tuple[Relay, Path]]:
    rules = tmp_path / "rules"
    shutil.copytree(REPO / "rules", rules)
    config = write_config(tmp_path, [sink.port], rules_dir=rules)
    with Relay(config) as running:
        yield running, rules


def test_monitor_rule_is_logged_but_does_not_act(site_relay: tuple[Relay, Path], sink: RecordingSink) -> None:
    relay, rules = site_relay
    (rules / "90-site.toml").write_text(SITE_RULE)
    relay.signal(signal.SIGHUP)
    relay.wait_event("rules_loaded", reload=True)
    answer = send(relay.port, c.hand("Subject: win the lottery\n", "now\n"))
    assert answer.code == 250
    line = relay.wait_event("message", queue_id=answer.queue_id)
    assert line["monitor"] == ["watch-lottery"] and line["rules"] == ["watch-lottery"]
    assert len(sink.wait_for(1)) == 1


def test_changed_rules_are_picked_up_and_a_broken_set_keeps_the_old_one(
        site_relay: tuple[Relay, Path], sink: RecordingSink) -> None:
    relay, rules = site_relay
    forbidden = c.hand("Subject: forbidden fruit\n", "body\n")
    assert send(relay.port, forbidden).code == 250                # before: no such rule
    (rules / "90-site.toml").write_text(SITE_RULE)                # the watcher sees the change
    relay.wait_event("rules_loaded", reload=True)
    assert send(relay.port, forbidden).text.startswith("5.7.1 Not here [")
    (rules / "91-broken.toml").write_text('[[rule]]\nname = "oops"\nsubjekt = "x"\naction = "reject"\n')
    refused = relay.wait_event("rules_refused", reload=True)
    assert any("91-broken.toml: rule oops: subjekt" in error for error in refused["errors"])
    assert send(relay.port, forbidden).text.startswith("5.7.1 Not here [")   # the old set still works
    assert send(relay.port, c.plain()).code == 250
    assert len(sink.wait_for(2)) == 2


# ---- the dry run agrees with the relay ----------------------------------------------------------

def scan(path: Path, *extra: str) -> tuple[int, dict]:
    result = subprocess.run([sys.executable, "-m", "frontfilter", "scan", "--json", str(path), *extra],
                            capture_output=True, text=True, cwd=REPO, timeout=60)
    assert "Traceback" not in result.stderr
    return result.returncode, json.loads(result.stdout)


CORPUS = {
    **{f"{name}.eml": (build, "reject", 1) for name, build in EXECUTABLE_CASES.items()},
    **{f"{name}.eml": (build, "accept", 0) for name, build in ORDINARY.items()},
    "macro.eml": (lambda: c.message(c.attachment(c.docx(macros=True), "application/octet-stream", "a.docm")),
                  "accept", 0),
    "nested.eml": (lambda: nested(30), "reject", 1),
}


def test_scan_shows_the_expected_verdict_for_each_corpus_file(tmp_path: Path) -> None:
    for name, (build, verdict, status) in CORPUS.items():
        path = tmp_path / name
        path.write_bytes(build().replace(b"\r\n", b"\n"))        # as saved by a mail client
        code, report = scan(path)
        assert (report["verdict"], code) == (verdict, status), name
    code, report = scan(tmp_path / "macro.eml", "--output", str(tmp_path / "out.eml"))
    assert report["stripped"] and b"X-Frontfilter-Stripped" in (tmp_path / "out.eml").read_bytes()


def test_scan_json_names_the_parts_not_read_and_why(tmp_path: Path) -> None:
    """A message refused because a part could not be read: `scan --json` says which part and
    why, as plain JSON (the reasons are a set inside the relay)."""
    path = tmp_path / "arj.eml"
    unsupported = fail_closed_corpus.arj("notes.txt", b"hello\n")
    path.write_bytes(c.message(c.attachment(unsupported, "application/octet-stream", "a.arj")))
    code, report = scan(path)
    assert (report["verdict"], code) == ("reject", 1)
    assert report["decided_by"] == "uninspectable"
    assert [p["uninspectable"] for p in report["parts"] if p["filename"] == "a.arj"] == [["unsupported"]]


def test_scan_output_carries_the_fields_the_rules_add_on_top(tmp_path: Path) -> None:
    """`scan --output` writes the message as the relay would forward it: its trace fields
    (Authentication-Results, Received) and the added fields (here the shipped mime-sloppy tag,
    for a missing closing boundary) on top."""
    sloppy = (b"From: a@example.net\nTo: b@example.org\nSubject: sloppy\nMIME-Version: 1.0\n"
              b"Content-Type: multipart/mixed; boundary=\"x\"\n\n--x\nContent-Type: text/plain\n\nhi\n")
    (tmp_path / "sloppy.eml").write_bytes(sloppy)
    code, report = scan(tmp_path / "sloppy.eml", "--output", str(tmp_path / "out.eml"))
    written = (tmp_path / "out.eml").read_bytes()
    assert (code, report["verdict"]) == (0, "accept")
    original = sloppy.replace(b"\n", b"\r\n")
    assert written.endswith(original)
    added = written[:-len(original)]
    assert added.startswith(b"Authentication-Results: localhost; none\r\n"        # the relay's trace
                            b"Received: from client.example.net ([192.0.2.1]) by ")
    assert added.endswith(b"X-Frontfilter-Tags: mime-sloppy\r\n")


def test_scan_explains_why(tmp_path: Path) -> None:
    path = tmp_path / "pe.eml"
    path.write_bytes(EXECUTABLE_CASES["pe-as-jpeg"]())
    result = subprocess.run([sys.executable, "-m", "frontfilter", "scan", str(path)],
                            capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 1
    assert "declared=image/jpeg detected=application/vnd.microsoft.portable-executable" in result.stdout
    assert "verdict: reject" in result.stdout


@pytest.mark.parametrize("case", ["bad_regex", "unknown_action", "attachment_at_rcpt", "duplicate_name_across_files"])
def test_check_reports_a_broken_rule_set_in_one_line(tmp_path: Path, case: str) -> None:
    folder = REPO / "tests" / "data" / "rulesets" / case
    config = write_config(tmp_path, [2526], rules_dir=folder)
    result = subprocess.run([sys.executable, "-m", "frontfilter", "check", "--config", str(config)],
                            capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip() == (folder / "expected_error.txt").read_text().strip()
