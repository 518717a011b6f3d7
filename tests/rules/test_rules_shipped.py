"""The shipped rules/ load clean, refuse what they promise and leave ordinary mail alone."""

from __future__ import annotations

import pytest
from rules_helpers import SHIPPED_RULES, body_part, facts, part, view

from frontfilter.content.facts import Ambiguity, Limit, MessageView
from frontfilter.rules import Action, load_ruleset

RULES = load_ruleset(SHIPPED_RULES)
PDF, ZIP = "application/pdf", "application/zip"
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
XLSM = "application/vnd.ms-excel.sheet.macroenabled.12"


def test_shipped_rules_load_clean_and_only_at_data() -> None:
    assert len(RULES) > 0
    assert {rule.name for rule in RULES} >= {"executable-by-type", "encrypted-archive", "office-macros"}


ORDINARY = {
    "plain text": view(body_part()),
    "html body with script": view(body_part(), body_part("text/html", path="2", html_script=True)),
    "pdf": view(body_part(), part("2", name="Invoice 2024.pdf", declared=PDF)),
    "png": view(body_part(), part("2", name="photo.png", declared="image/png")),
    "docx": view(body_part(), part("2", name="report.docx", declared=DOCX, detected=DOCX)),
    "domain-like name": view(body_part(), part("2", name="www.example.com.pdf", declared=PDF)),
    "zip of pdfs": view(body_part(), part("2", name="scans.zip", declared=ZIP, is_archive=True),
                        part("2/scans.zip/a.pdf", name="a.pdf", declared=PDF, in_archive=True, archive_depth=1),
                        part("2/scans.zip/b.pdf", name="b.pdf", declared=PDF, in_archive=True, archive_depth=1)),
}


@pytest.mark.parametrize("case", ORDINARY)
def test_ordinary_mail_passes_untouched(case: str) -> None:
    verdict = RULES.evaluate(facts(message=ORDINARY[case]))
    assert (verdict.action, verdict.strip, verdict.matches) == (None, (), ())


REJECTED: dict[str, tuple[MessageView, str]] = {
    "exe by type": (view(part("2", name="setup.bin", detected="application/x-dosexec")), "executable-by-type"),
    "disguised exe": (view(part("2", name="invoice.pdf", declared=PDF, detected="application/x-dosexec",
                               type_mismatch=True)), "disguised-executable"),
    "double extension": (view(part("2", name="invoice.pdf.exe", declared=PDF)), "executable-by-name"),
    "script by name": (view(part("2", name="Update.JS", declared="text/plain")), "executable-by-name"),
    "exe in zip": (view(part("2", name="a.zip", declared=ZIP, is_archive=True),
                        part("2/a.zip/evil.exe", name="evil.exe", detected="application/x-dosexec", in_archive=True)),
                   "executable-by-type"),
    "lnk in nested zip": (view(part("2/a.zip/b.zip/c.lnk", name="c.lnk", in_archive=True, archive_depth=2)),
                          "executable-by-name"),
    "bidi name": (view(part("2", name="invoiceexe.pdf", bidi_control=True)), "bidi-filename"),
    "encrypted zip": (view(part("2", name="a.zip", declared=ZIP, is_archive=True, encrypted=True)), "encrypted-archive"),
    "zip bomb": (view(body_part(), limits_exceeded=frozenset({Limit.COMPRESSION_RATIO})), "inspection-limits"),
    "too many parts": (view(body_part(), limits_exceeded=frozenset({Limit.PARTS})), "inspection-limits"),
    "two content types": (view(body_part(), ambiguities=frozenset({Ambiguity.DUPLICATE_CONTENT_TYPE})), "mime-ambiguity"),
}


@pytest.mark.parametrize("case", REJECTED)
def test_malicious_mail_is_rejected(case: str) -> None:
    message, rule = REJECTED[case]
    verdict = RULES.evaluate(facts(message=message))
    assert (verdict.action, verdict.rule) == (Action.REJECT, rule)
    assert verdict.reply is not None and verdict.reply.code == 554


def test_inspection_timeout_is_a_tempfail() -> None:
    verdict = RULES.evaluate(facts(message=view(body_part(), limits_exceeded=frozenset({Limit.TIME}))))
    assert verdict.action is Action.TEMPFAIL and verdict.reply is not None and verdict.reply.code == 451


STRIPPED = {
    "macro docx": (part("2", name="report.docx", declared=DOCX, has_macros=True), "office-macros"),
    "xlsm by name": (part("2", name="budget.xlsm", declared=XLSM), "office-macro-names"),
    "pdf with javascript": (part("2", name="form.pdf", declared=PDF, pdf_active_content=True), "pdf-active-content"),
    "html attachment with script": (part("2", name="login.html", declared="text/html", html_script=True),
                                    "html-attachment-script"),
}


@pytest.mark.parametrize("case", STRIPPED)
def test_active_documents_are_stripped_and_the_rest_kept(case: str) -> None:
    bad, rule = STRIPPED[case]
    keep = part("3", name="photo.png", declared="image/png")
    verdict = RULES.evaluate(facts(message=view(body_part(), bad, keep)))
    assert verdict.action is None
    assert [(s.mime_path, s.rule) for s in verdict.strip] == [("2", rule)]


def test_sloppy_encoding_is_tagged_not_refused() -> None:
    verdict = RULES.evaluate(facts(message=view(body_part(), ambiguities=frozenset({Ambiguity.BASE64_JUNK}))))
    assert verdict.action is None and verdict.tags == ("mime-sloppy",)


def test_readme_examples_load(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import re

    readme = (SHIPPED_RULES / "README.md").read_text()
    blocks = [b for b in re.findall(r"```toml\n(.*?)```", readme, re.S) if b.lstrip().startswith("[[rule]]")]
    assert blocks
    (tmp_path / "lists").mkdir()
    for name in ("partners.txt", "our-networks.txt"):
        (tmp_path / "lists" / name).write_text("# stub\n192.0.2.0/24\n" if "net" in name else "partner.example\n")
    for index, block in enumerate(blocks):
        (tmp_path / f"{index:02d}.toml").write_text(block)
    assert len(load_ruleset(tmp_path)) >= 5
