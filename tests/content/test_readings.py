"""Every plausible reading of a message is inspected: where our MIME reading and a lenient
client's could differ, the executable a client would show is still found, and the
disagreement is recorded. Each case is checked against Python's own `email` package, the
lenient reader: the test first proves that `email` extracts the executable, then that the
inspector saw it too."""

from __future__ import annotations

import base64
import email
import email.policy
import quopri

import pytest

from frontfilter.content.inspect import inspect
from frontfilter.content.limits import InspectionLimits
from frontfilter.content.facts import Ambiguity, Uninspectable
from tests.content import corpus

EXE = corpus.pe()
B64 = base64.encodebytes(EXE).decode().replace("\n", "\r\n")
EXE_TYPES = {"application/x-dosexec", "application/vnd.microsoft.portable-executable"}


def _wire(text: str) -> bytes:
    return text.replace("\r\n", "\n").replace("\n", "\r\n").encode()


def _python_extracts_exe(raw: bytes) -> bool:
    """Whether Python's `email`, under either policy, hands out the executable's bytes."""
    for policy in (email.policy.compat32, email.policy.default):
        message = email.message_from_bytes(raw, policy=policy)
        for part in message.walk():
            if part.is_multipart():
                continue
            payload = part.get_payload(decode=True)
            if payload and EXE in payload:
                return True
    return False


def _found_exe(raw: bytes):
    view = inspect(raw, InspectionLimits())
    found = [p for p in view.parts if p.detected_type in EXE_TYPES]
    return view, found


def _multipart(part_headers: str, *, boundary: str = "b1", ctype_boundary: str = '"b1"',
               top: str = "") -> bytes:
    return _wire(
        f"{top}From: a@example.net\nTo: b@example.org\nSubject: x\nMIME-Version: 1.0\n"
        f"Content-Type: multipart/mixed; boundary={ctype_boundary}\n\n"
        f"--{boundary}\nContent-Type: text/plain\n\nhello\n"
        f"--{boundary}\n{part_headers}\n{B64}--{boundary}--\n")


EXE_PART = ('Content-Type: application/octet-stream; name="invoice.exe"\n'
            "Content-Transfer-Encoding: base64\n")


def test_first_line_that_is_a_continuation_is_read_both_ways():
    # After the Received field the relay puts on top, " x" continues it: clients then see the
    # multipart. RFC 5322 alone ends the header block at once and sees one text body.
    raw = _wire(" x\n") + _multipart(EXE_PART)
    assert _python_extracts_exe(_wire("Received: by relay\n") + raw)
    view, found = _found_exe(raw)
    assert found
    assert Ambiguity.HEADER_END in view.ambiguities


@pytest.mark.parametrize("junk", [" x\n", ":x\n", "From someone Thu Jul 31 13:49:50 2008\n",
                                  "this is not a field\n"])
def test_part_header_with_a_junk_line_is_read_both_ways(junk):
    where = "first" if junk.startswith(" ") else "middle"
    headers = junk + EXE_PART if where == "first" else (
        "X-Before: 1\n" + junk + EXE_PART)
    raw = _multipart(headers)
    view, found = _found_exe(raw)
    assert found, junk
    assert Ambiguity.HEADER_END in view.ambiguities


@pytest.mark.parametrize("cte", ["base64 x", "base64;x", "BASE64 (comment)"])
def test_encoding_with_a_trailing_token_is_decoded(cte):
    raw = _multipart('Content-Type: application/octet-stream; name="invoice.bin"\n'
                     f"Content-Transfer-Encoding: {cte}\n")
    view, found = _found_exe(raw)
    assert found
    assert Ambiguity.ENCODING_TOKEN in view.ambiguities


@pytest.mark.parametrize(("written", "used"), [('"abc "', "abc"), ('"a\\b"', "a\\b")],
                         ids=["trailing-blank", "backslash"])
def test_boundary_quoted_so_readers_differ(written, used):
    # Python's `email` strips a boundary's trailing blanks and keeps a lone backslash.
    raw = _multipart(EXE_PART, boundary=used, ctype_boundary=written)
    assert _python_extracts_exe(raw)
    view, found = _found_exe(raw)
    assert found
    assert Ambiguity.BOUNDARY_QUOTING in view.ambiguities


@pytest.mark.parametrize("encoding", ["base64", "quoted-printable"])
def test_transfer_encoding_on_a_multipart_is_decoded_and_split(encoding):
    inner = _wire(f"--in\n{EXE_PART}\n{B64}--in--\n")
    body = (base64.encodebytes(inner) if encoding == "base64" else
            quopri.encodestring(inner.replace(b"\r\n", b"\n"))).decode().replace("\n", "\r\n")
    raw = _wire("From: a@example.net\nMIME-Version: 1.0\n"
                'Content-Type: multipart/mixed; boundary="in"\n'
                f"Content-Transfer-Encoding: {encoding}\n\n") + body.encode()
    view, found = _found_exe(raw)
    assert found
    assert Ambiguity.ENCODED_MULTIPART in view.ambiguities


def test_unquoted_name_with_a_blank_is_read_as_clients_cut_it():
    raw = _multipart("Content-Type: text/plain\nContent-Disposition: attachment; filename=run.js x\n"
                     "Content-Transfer-Encoding: base64\n")
    view = inspect(raw, InspectionLimits())
    assert any(p.filename == "run.js" or p.alt_filename == "run.js" for p in view.parts)


def test_a_corrupt_zip_does_not_hide_the_next_part():
    good = corpus.zip_of({"readme.txt": b"hello " * 200})
    # Spoil the deflate stream of the only member: a reader raises on it.
    data_at = good.index(b"readme.txt") + len("readme.txt")
    broken = good[:data_at] + bytes(b ^ 0x5A for b in good[data_at:data_at + 40]) + good[data_at + 40:]
    zipped = base64.encodebytes(broken).decode().replace("\n", "\r\n")
    raw = _wire("From: a@example.net\nMIME-Version: 1.0\n"
                'Content-Type: multipart/mixed; boundary="b1"\n\n'
                '--b1\nContent-Type: application/zip; name="a.zip"\nContent-Transfer-Encoding: base64\n\n'
                f"{zipped}--b1\n{EXE_PART}\n{B64}--b1--\n")
    view, found = _found_exe(raw)
    assert found, "the part after the corrupt zip was not inspected"
    assert Uninspectable.CORRUPT in view.uninspectable
    assert Ambiguity.UNPARSEABLE not in view.ambiguities


def test_clean_multipart_reads_one_way():
    raw = corpus.message(corpus.attachment(corpus.png(), "image/png", "a.png"))
    view = inspect(raw, InspectionLimits())
    assert not view.ambiguities - {Ambiguity.MISSING_CLOSING_BOUNDARY}
    assert not view.uninspectable
    assert [p.detected_type for p in view.parts if p.filename == "a.png"] == ["image/png"]


def test_junk_line_last_among_the_part_fields_moves_the_body_start():
    # ":x" after the encoding field: no Content-* field hides past our end of the block, but
    # Python's `email` takes ":x" for a field, so its body (and its base64) starts one line
    # later than ours, and decodes to the executable where ours decodes to noise. Found by
    # the differential fuzz.
    raw = _multipart(EXE_PART + ":x\n")
    assert _python_extracts_exe(raw)
    view, found = _found_exe(raw)
    assert found
    assert Ambiguity.HEADER_END in view.ambiguities


def test_text_that_starts_without_an_empty_line_is_no_disagreement():
    # Sloppy but honest: a part with no header fields whose text starts at once. Python's
    # `email` reads it as we do; the second reading is walked, and nothing is refused.
    raw = _wire("From: a@example.net\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=b1\n\n"
                "--b1\nHello Bob,\n\nlunch at noon?\n--b1--\n")
    view = inspect(raw, InspectionLimits())
    assert Ambiguity.HEADER_END not in view.ambiguities
