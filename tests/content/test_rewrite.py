"""`strip_parts`, `render_notice`, `header_fields`: exact bytes elsewhere, valid output."""

from __future__ import annotations

import email
from email import policy

import pytest

from frontfilter.content.inspect import inspect
from frontfilter.content.limits import InspectionLimits
from frontfilter.content.rewrite import (
    DEFAULT_NOTICE, NOTICE_FIELDS, StripOrder, header_fields, render_notice, strip_parts, validate_notice,
)
from tests.content import corpus as c

LIMITS = InspectionLimits()


def three_part_message() -> bytes:
    return c.message(c.attachment(c.pe(), "image/jpeg", "photo.jpg"),
                     c.attachment(c.pdf(), "application/pdf", "doc.pdf"))


def order(view, path, rule="strip-exe"):
    part = next(p for p in view.parts if p.path == path)
    return StripOrder(path, rule, render_notice(DEFAULT_NOTICE, part, rule))


def test_strip_one_part_leaves_every_other_byte_identical():
    raw = three_part_message()
    view = inspect(raw, LIMITS)
    stripped = next(p for p in view.parts if p.path == "2")
    out = strip_parts(raw, view, [order(view, "2")])
    header, _, rest = out.partition(b"\r\n")
    assert header.startswith(b"X-Frontfilter-Stripped: 1 part; 2 photo.jpg (rule strip-exe)")
    assert rest.startswith(raw[:stripped.raw_start])
    assert rest.endswith(raw[stripped.raw_end:])
    again = inspect(rest, LIMITS)
    for before, after in zip(view.parts, again.parts):
        if before.path != "2":
            assert raw[before.raw_start:before.raw_end] == rest[after.raw_start:after.raw_end]
    parsed = email.message_from_bytes(out, policy=policy.default)
    payloads = list(parsed.iter_parts())
    assert len(payloads) == 3
    notice = payloads[1]
    assert notice.get_content_type() == "text/plain"
    assert "photo.jpg" in notice.get_content() and stripped.sha256 in notice.get_content()
    assert payloads[2].get_filename() == "doc.pdf"
    assert not parsed.defects and not any(p.defects for p in payloads)


def test_strip_two_parts_and_archive_member_maps_to_its_leaf():
    raw = c.message(c.attachment(c.zip_of({"evil.exe": c.pe()}), "application/zip", "a.zip"),
                    c.attachment(c.docx(macros=True), "application/octet-stream", "i.docm"))
    view = inspect(raw, LIMITS)
    member = next(p for p in view.parts if p.path == "2/evil.exe")
    out = strip_parts(raw, view, [order(view, member.mime_path, "exe"), order(view, "3", "macros")])
    assert out.startswith(b"X-Frontfilter-Stripped: 2 parts; 2 a.zip (rule exe); 3 i.docm")
    parsed = email.message_from_bytes(out, policy=policy.default)
    assert [p.get_content_type() for p in parsed.iter_parts()] == ["text/plain"] * 3
    assert not inspect(out, LIMITS).ambiguities


def test_strip_single_leaf_message_keeps_its_headers():
    raw = c.hand("From: a@example.org\nSubject: hi\nContent-Type: application/octet-stream; name=x.exe\n"
                 "Content-Transfer-Encoding: base64", "TVqQAAMAAAAEAAAA//8AALgAAAAA\n")
    view = inspect(raw, LIMITS)
    out = strip_parts(raw, view, [order(view, "1")])
    parsed = email.message_from_bytes(out, policy=policy.default)
    assert parsed["Subject"] == "hi" and parsed["From"] == "a@example.org"
    assert parsed.get_content_type() == "text/plain" and "x.exe" in parsed.get_content()
    assert len(parsed.get_all("Content-Type")) == 1 and parsed["X-Frontfilter-Stripped"]


def test_strip_inside_rfc822_and_non_ascii_name_summary():
    inner = c.message(c.attachment(c.pe(), "image/png", "fa\u0301cture\u202egpj.exe", rfc2231=True))
    raw = c.hand("From: a@example.org\nContent-Type: multipart/mixed; boundary=B",
                 "--B\n\nhi\n--B\nContent-Type: message/rfc822\n\n") + inner + b"\r\n--B--\r\n"
    view = inspect(raw, LIMITS)
    out = strip_parts(raw, view, [order(view, "2.2", "r" * 300)])
    summary = out.split(b"\r\n\r\n", 1)[0].split(b"\r\nFrom:")[0]
    assert summary.isascii() and b"2.2 f\\xe1cturegpj.exe (rule" in summary
    assert all(len(line) <= 78 for line in summary.split(b"\r\n"))
    parsed = email.message_from_bytes(out, policy=policy.default)
    inner_parsed = list(parsed.iter_parts())[1].get_content()
    assert [p.get_content_type() for p in inner_parsed.iter_parts()] == ["text/plain", "text/plain"]
    assert out.endswith(raw[next(p for p in view.parts if p.path == "2.2").raw_end:])


def test_unknown_path_is_an_error():
    raw = three_part_message()
    view = inspect(raw, LIMITS)
    with pytest.raises(ValueError):
        strip_parts(raw, view, [StripOrder("9", "r", "n")])
    assert strip_parts(raw, view, []) is raw


def test_render_notice_fields_and_validation():
    raw = c.message(c.attachment(c.pe(), "image/jpeg", "a\u202eb.jpg"))
    part = inspect(raw, LIMITS).parts[1]
    text = render_notice("{filename} {declared_type} {detected_type} {size} {sha256} {rule}", part, "r1")
    assert "\u202e" not in text and "image/jpeg" in text and str(part.size) in text and part.sha256 in text
    assert NOTICE_FIELDS == {"filename", "declared_type", "detected_type", "size", "sha256", "rule"}
    validate_notice(DEFAULT_NOTICE)
    for bad in ("{nope}", "{filename.__class__}", "{size:>10}", "{filename!r}", "{", "{0}"):
        with pytest.raises(ValueError):
            validate_notice(bad)


def test_header_fields_validate_and_fold():
    raw = c.plain()
    head = header_fields([("Received", "from a (b [192.0.2.1]) by c with ESMTP id X; " + "x " * 100),
                          ("X-Tag", "grüß")])
    out = head + raw
    assert head.endswith(b"\r\n") and b"\r\n\r\n" not in head
    assert all(len(line) <= 78 for line in head.split(b"\r\n")) and head.isascii()
    parsed = email.message_from_bytes(out, policy=policy.default)
    assert parsed["X-Tag"] == "grüß"
    for name, value in (("Bad Name", "v"), ("X-A", "a\r\nBcc: x"), ("X:A", "v"), ("X-A", "b\nc")):
        with pytest.raises(ValueError):
            header_fields([(name, value)])
