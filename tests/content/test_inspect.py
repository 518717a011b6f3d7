"""Facts found by `inspect` on corpus messages built in code."""

from __future__ import annotations

import gzip
import io
import random
import re
import tarfile

from frontfilter.content import active, sniff
from frontfilter.content.inspect import inspect
from frontfilter.content.limits import InspectionLimits

from tests.content import corpus as c

LIMITS = InspectionLimits()
PE = "application/vnd.microsoft.portable-executable"


def by_path(view):
    return {p.path: p for p in view.parts}


def test_libmagic_types_of_corpus_payloads():
    assert sniff.detect(c.pe()) == PE
    assert sniff.detect(b"MZ" + bytes(200)) == "application/x-dosexec"
    # libmagic's one-byte DOS COM guess on random data is not taken for a program
    assert sniff.detect(c.com_lookalike()) == "application/octet-stream"
    assert sniff.detect(c.elf()) == "application/x-executable"
    assert sniff.detect(c.png()) == "image/png"
    assert sniff.detect(c.pdf()) == "application/pdf"
    assert sniff.detect(c.docx()) == "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
    assert sniff.detect(c.zip_of({"a.exe": c.pe()})) == "application/zip"


def test_plain_text_mail_is_one_clean_leaf():
    view = inspect(c.plain(), LIMITS)
    (part,) = view.parts
    assert (part.path, part.declared_type, part.detected_type) == ("1", "text/plain", "text/plain")
    assert view.subject == "Grüße" and view.from_header.startswith("Alice")
    assert view.text == ("Hello Bob,\nlunch at noon?\n",)
    assert not view.limits_exceeded and not view.ambiguities
    assert part.raw_start == 0 and part.raw_end == view.size


def test_executable_disguised_as_jpeg_is_a_mismatch():
    parts = by_path(inspect(c.message(c.attachment(c.pe(), "image/jpeg", "photo.jpg")), LIMITS))
    assert parts["2"].detected_type == PE and parts["2"].type_mismatch
    assert parts["2"].filename == "photo.jpg" and parts["2"].disposition == "attachment"


def test_elf_and_png_pdf_are_typed():
    view = inspect(c.message(c.attachment(c.elf(), "application/octet-stream", "run"),
                             c.attachment(c.png(), "image/png", "a.png"),
                             c.attachment(c.pdf(), "application/pdf", "a.pdf")), LIMITS)
    parts = by_path(view)
    assert parts["2"].detected_type == "application/x-executable" and not parts["2"].type_mismatch
    assert parts["3"].detected_type == "image/png" and not parts["3"].type_mismatch
    assert parts["4"].detected_type == "application/pdf" and not parts["4"].pdf_active_content


def test_double_extension_and_bidi_and_rfc2231_name():
    view = inspect(c.message(c.attachment(c.pe(), "application/pdf", "invoice.pdf.exe"),
                             c.attachment(c.pe(), "image/jpeg", "photo\u202egpj.exe", rfc2231=True)), LIMITS)
    parts = by_path(view)
    assert parts["2"].extensions == ("pdf", "exe") and parts["2"].type_mismatch
    assert parts["3"].bidi_control and parts["3"].filename == "photogpj.exe"
    assert parts["3"].extensions == ("exe",)


def test_rfc2047_and_rfc2231_continuations_and_trailing_dots():
    raw = c.hand(
        "From: a@example.org\nContent-Type: multipart/mixed; boundary=XX",
        "--XX\nContent-Type: application/octet-stream; name=\"=?utf-8?q?r=C3=A9sum=C3=A9.exe?=\"\n"
        "Content-Transfer-Encoding: base64\n\nTVo=\n"
        "--XX\nContent-Type: application/octet-stream\nContent-Disposition: attachment;\n"
        " filename*0*=utf-8''%EF%BD%85vil; filename*1=\".exe. .\"\n\nMZ\n--XX--\n")
    parts = by_path(inspect(raw, LIMITS))
    assert parts["1"].filename == "résumé.exe"
    assert parts["2"].filename == "evil.exe"   # full-width e folded by NFKC, trailing ". ." cut


def test_zip_and_zip_in_zip_members_are_parts():
    inner = c.zip_of({"evil.exe": c.pe()})
    view = inspect(c.message(c.attachment(c.zip_of({"inner.zip": inner, "a.txt": b"hi"}), "application/zip", "x.zip")), LIMITS)
    parts = by_path(view)
    assert parts["2"].is_archive
    member = parts["2/inner.zip/evil.exe"]
    assert member.in_archive and member.archive_depth == 2 and member.mime_path == "2"
    assert member.detected_type == PE and member.extensions == ("exe",)
    assert parts["2/inner.zip"].is_archive and parts["2/inner.zip"].archive_depth == 1


def test_encrypted_member_marks_member_and_archive():
    data = c.zip_of({"a.txt": b"x", "b.exe": c.pe()}, encrypt=frozenset({"b.exe"}))
    parts = by_path(inspect(c.message(c.attachment(data, "application/zip", "e.zip")), LIMITS))
    assert parts["2"].encrypted and parts["2/b.exe"].encrypted and not parts["2/a.txt"].encrypted


def test_gzip_and_tar_members():
    tar_buffer = io.BytesIO()
    with tarfile.open(fileobj=tar_buffer, mode="w") as archive:
        info = tarfile.TarInfo("bin/tool")
        info.size = len(c.elf())
        archive.addfile(info, io.BytesIO(c.elf()))
    tgz = gzip.compress(tar_buffer.getvalue())
    parts = by_path(inspect(c.message(c.attachment(tgz, "application/gzip", "t.tar.gz")), LIMITS))
    elf = [p for p in parts.values() if p.detected_type == "application/x-executable"]
    # libarchive reads a compressed tar as one archive (the compressor is a filter on it), as
    # tar itself does: its members sit one level down, not two.
    assert len(elf) == 1 and elf[0].archive_depth == 1 and elf[0].filename == "tool"


def test_office_macros_ooxml_and_ole():
    view = inspect(c.message(c.attachment(c.docx(macros=True), "application/vnd.ms-word.document.macroEnabled.12", "invoice.docm"),
                             c.attachment(c.docx(), "application/vnd.openxmlformats-officedocument.wordprocessingml.document", "plain.docx"),
                             c.attachment(c.ole_with_vba(), "application/msword", "old.doc")), LIMITS)
    parts = by_path(view)
    assert parts["2"].has_macros and not parts["2"].type_mismatch
    assert not parts["3"].has_macros and not parts["3"].type_mismatch
    assert parts["4"].has_macros and not parts["4"].type_mismatch


def test_pdf_active_content_plain_and_hex_escaped():
    for extra in (b"/OpenAction << /S /JavaScript /JS (app.alert(1)) >>", b"/OpenAction << /S /J#61vaScript >>",
                  b"/OpenAction << /S /Launch /F (cmd.exe) >>"):
        parts = by_path(inspect(c.message(c.attachment(c.pdf(extra), "application/pdf", "a.pdf")), LIMITS))
        assert parts["2"].pdf_active_content, extra


def test_html_script_and_handlers():
    raw = c.hand("Content-Type: text/html", "<p onclick =\"x()\">hi</p>")
    assert inspect(raw, LIMITS).parts[0].html_script
    raw = c.hand("Content-Type: text/html", "<p>just <b>bold</b> text about onions</p>")
    assert not inspect(raw, LIMITS).parts[0].html_script
    raw = c.message(c.attachment(b"<a href='javascript:alert(1)'>x</a>", "application/octet-stream", "page.htm"))
    assert by_path(inspect(raw, LIMITS))["2"].html_script


def test_uuencoded_block_in_text_becomes_a_part():
    import binascii
    lines = [binascii.b2a_uu(c.pe()[i:i + 45]).decode() for i in range(0, len(c.pe()), 45)]
    body = "see below\nbegin 644 tool.exe\n" + "".join(lines) + "`\nend\n"
    view = inspect(c.hand("Subject: uu", body), LIMITS)
    parts = by_path(view)
    assert parts["1/tool.exe"].uuencoded and parts["1/tool.exe"].detected_type == PE
    assert parts["1/tool.exe"].mime_path == "1"


def test_message_rfc822_is_walked_into():
    inner = c.message(c.attachment(c.pe(), "image/png", "x.png"))
    raw = c.hand("Content-Type: multipart/mixed; boundary=B", "--B\n\nhi\n--B\nContent-Type: message/rfc822\n\n") \
        + inner + b"\r\n--B--\r\n"
    parts = by_path(inspect(raw, LIMITS))
    assert parts["2.2"].detected_type == PE and parts["2.2"].type_mismatch


def test_base64_encoded_message_rfc822_is_walked_into():
    import base64
    inner = c.message(c.attachment(c.pe(), "image/png", "x.png"))
    raw = c.hand("Content-Type: multipart/mixed; boundary=B",
                 "--B\nContent-Type: message/rfc822\nContent-Transfer-Encoding: base64\n\n"
                 + base64.encodebytes(inner).decode() + "--B--\n")
    view = inspect(raw, LIMITS)
    exe = [p for p in view.parts if p.detected_type == PE]
    assert exe and exe[0].mime_path == "1"


def test_pdf_names_found_in_one_pass_as_in_two() -> None:
    """The one-pass scan answers what a search for plain names, then for escaped ones, does."""
    plain = re.compile(rb"/(JavaScript|JS|Launch|EmbeddedFiles?|RichMedia|XFA)(?![A-Za-z0-9#])")
    escaped = re.compile(rb"/[A-Za-z0-9]*#[0-9A-Fa-f]{2}[A-Za-z0-9#]*")

    def two_passes(payload: bytes) -> bool:
        if plain.search(payload):
            return True
        return any(re.sub(rb"#([0-9A-Fa-f]{2})", lambda m: bytes([int(m.group(1), 16)]), found.group(0))[1:].lower()
                   in {b"javascript", b"js", b"launch", b"embeddedfile", b"embeddedfiles", b"richmedia", b"xfa"}
                   for found in escaped.finditer(payload))

    tokens = [b"/", b"JavaScript", b"JS", b"J#61vaScript", b"#4A#53", b"#", b"#zz", b"S", b" ", b"<<",
              b"Launch", b"EmbeddedFile", b"s", b"X", b"FA", b"a", b"#6a#73", b"\x00"]
    generator = random.Random(3207)
    answers = set()
    for _ in range(4000):
        payload = b"".join(generator.choice(tokens) for _ in range(generator.randint(0, 8)))
        answers.add(two_passes(payload))
        assert active.pdf_active_content(payload) == two_passes(payload), payload
    assert answers == {True, False}
