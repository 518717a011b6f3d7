"""Bounds crossed and parser differentials: recorded as facts, never an exception or a pass."""

from __future__ import annotations

import io
import os
import random
import zipfile

import pytest

from frontfilter.content.inspect import inspect
from frontfilter.content.limits import InspectionLimits
from frontfilter.content.facts import Ambiguity, Limit, MessageView
from tests.content import corpus as c

LIMITS = InspectionLimits()
PE = "application/vnd.microsoft.portable-executable"
PE_B64 = __import__("base64").b64encode(c.pe()).decode()


def test_zip_bomb_stops_at_ratio_without_inflating():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("zeros.bin", bytes(50 * 1024 * 1024))
    bomb = buffer.getvalue()
    assert len(bomb) < 100_000
    view = inspect(c.message(c.attachment(bomb, "application/zip", "bomb.zip")), LIMITS)
    assert Limit.COMPRESSION_RATIO in view.limits_exceeded
    member = next(p for p in view.parts if p.in_archive)
    assert member.size <= LIMITS.max_compression_ratio * len(bomb)


def test_expanded_size_and_member_count_bounds():
    limits = InspectionLimits(max_expanded_size=1000, max_archive_members=3)
    data = c.zip_of({f"f{i}.txt": os.urandom(600) for i in range(5)})
    view = inspect(c.message(c.attachment(data, "application/zip", "a.zip")), limits)
    assert {Limit.EXPANDED_SIZE, Limit.ARCHIVE_MEMBERS} <= view.limits_exceeded


def test_archive_depth_bound():
    data = c.pe()
    for level in range(5):
        data = c.zip_of({f"l{level}.zip" if level else "evil.exe": data})
    view = inspect(c.message(c.attachment(data, "application/zip", "deep.zip")), LIMITS)
    assert Limit.ARCHIVE_DEPTH in view.limits_exceeded
    assert max(p.archive_depth for p in view.parts) == LIMITS.max_archive_depth


def test_deep_nesting_stops_at_depth():
    headers, body = "Content-Type: multipart/mixed; boundary=b0", ""
    for level in range(1, 40):
        body += f"--b{level - 1}\nContent-Type: multipart/mixed; boundary=b{level}\n\n"
    body += "--b39\n\nleaf\n"
    view = inspect(c.hand(headers, body), LIMITS)
    assert Limit.DEPTH in view.limits_exceeded


def test_many_parts_stop_at_max_parts():
    body = "".join(f"--B\n\npart {i}\n" for i in range(600)) + "--B--\n"
    view = inspect(c.hand("Content-Type: multipart/mixed; boundary=B", body), LIMITS)
    assert Limit.PARTS in view.limits_exceeded and len(view.parts) == LIMITS.max_parts - 1


def test_decoded_bytes_bound_stops_decoding():
    limits = InspectionLimits(max_decoded_bytes=300)
    view = inspect(c.message(c.attachment(c.pe(), "image/png", "a.png")), limits)
    assert Limit.DECODED_BYTES in view.limits_exceeded
    assert view.parts[-1].detected_type == "" and view.parts[-1].filename == "a.png"


def test_header_block_bound():
    raw = c.hand("Subject: x\nX-Pad: " + "a" * 2000, "body")
    assert Limit.HEADER_BYTES in inspect(raw, InspectionLimits(max_header_bytes=1000)).limits_exceeded


def test_two_content_types_both_readings_inspected():
    raw = c.hand("Content-Type: text/plain\nContent-Type: multipart/mixed; boundary=B",
                 f"--B\nContent-Type: image/png\nContent-Transfer-Encoding: base64\n\n{PE_B64}\n--B--\n")
    view = inspect(raw, LIMITS)
    assert Ambiguity.DUPLICATE_CONTENT_TYPE in view.ambiguities
    assert any(p.detected_type == PE for p in view.parts)


def test_two_boundaries_both_walked():
    raw = c.hand("Content-Type: multipart/mixed; boundary=A; boundary=B",
                 "--A\n\nplain\n--A--\n"
                 f"--B\nContent-Type: image/png\nContent-Transfer-Encoding: base64\n\n{PE_B64}\n--B--\n")
    view = inspect(raw, LIMITS)
    assert Ambiguity.DUPLICATE_BOUNDARY in view.ambiguities
    assert any(p.detected_type == PE for p in view.parts)


def test_two_transfer_encodings_decode_the_dangerous_way():
    raw = c.hand("Content-Type: application/octet-stream\nContent-Transfer-Encoding: 7bit\n"
                 "Content-Transfer-Encoding: base64", PE_B64 + "\n")
    view = inspect(raw, LIMITS)
    assert Ambiguity.DUPLICATE_ENCODING in view.ambiguities and view.parts[0].detected_type == PE


def test_base64_junk_is_skipped_and_recorded():
    junky = "!".join(PE_B64[i:i + 10] for i in range(0, len(PE_B64), 10))
    raw = c.hand("Content-Type: image/png\nContent-Transfer-Encoding: base64", junky + "\n")
    view = inspect(raw, LIMITS)
    assert Ambiguity.BASE64_JUNK in view.ambiguities and view.parts[0].detected_type == PE


def test_missing_closing_boundary_last_part_runs_to_end():
    raw = c.hand("Content-Type: multipart/mixed; boundary=B",
                 f"--B\n\nhi\n--B\nContent-Type: image/png\nContent-Transfer-Encoding: base64\n\n{PE_B64}\n")
    view = inspect(raw, LIMITS)
    assert Ambiguity.MISSING_CLOSING_BOUNDARY in view.ambiguities
    assert view.parts[1].detected_type == PE


def test_multipart_without_boundary_is_one_text_part():
    view = inspect(c.hand("Content-Type: multipart/mixed", "hello\n"), LIMITS)
    assert Ambiguity.MULTIPART_WITHOUT_BOUNDARY in view.ambiguities
    assert len(view.parts) == 1 and "hello" in view.text[0]


def test_filename_and_name_disagree_report_the_riskier():
    raw = c.hand("Content-Type: multipart/mixed; boundary=B",
                 "--B\nContent-Type: application/octet-stream; name=\"report.exe\"\n"
                 "Content-Disposition: attachment; filename=\"report.pdf\"\n\nMZ\n--B--\n")
    view = inspect(raw, LIMITS)
    assert Ambiguity.DUPLICATE_FILENAME in view.ambiguities
    assert view.parts[0].filename == "report.exe" and view.parts[0].alt_filename == "report.pdf"


def test_part_without_header_separator_is_body():
    raw = c.hand("Content-Type: multipart/mixed; boundary=B", "--B\nthis is not a header\n--B--\n")
    view = inspect(raw, LIMITS)
    assert "this is not a header" in view.text[0]


@pytest.mark.parametrize("seed", range(30))
def test_hostile_input_always_gives_a_view(seed):
    rng = random.Random(seed)
    good = c.message(c.attachment(c.zip_of({"a.exe": c.pe()}), "application/zip", "a.zip"),
                     c.attachment(c.pdf(), "application/pdf", "p.pdf"))
    choice = seed % 3
    if choice == 0:
        raw = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 4000)))
    elif choice == 1:
        raw = good[: rng.randrange(len(good))]
    else:
        data = bytearray(good)
        for _ in range(50):
            data[rng.randrange(len(data))] = rng.randrange(256)
        raw = bytes(data)
    assert isinstance(inspect(raw, LIMITS), MessageView)


def test_empty_message():
    view = inspect(b"", LIMITS)
    assert view.size == 0 and len(view.parts) == 1


def test_deadline_in_the_past_records_time():
    view = inspect(c.plain(), LIMITS, deadline=0.0)
    assert Limit.TIME in view.limits_exceeded


def test_huge_header_block_is_linear_and_bounded():
    import time
    raw = c.hand("Subject: x\n" + "X-A: b\n" * 2_000_000, "body\n")
    started = time.perf_counter()
    view = inspect(raw, LIMITS)
    assert time.perf_counter() - started < 2.0
    assert Limit.HEADER_BYTES in view.limits_exceeded and view.text == ("body\r\n",)


def test_uuencode_begin_line_with_long_padding_is_linear():
    import time
    raw = c.hand("Subject: uu", "begin 644 a" + " " * 200_000 + "x\nend\n")
    started = time.perf_counter()
    inspect(raw, LIMITS)
    assert time.perf_counter() - started < 1.0
