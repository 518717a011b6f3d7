"""Objects hidden inside documents (`embedded`) and the active content `active` finds in them.

Documents are built in code (RTF, PDF, HTML) or by tests/data/documents/make_documents.py
(OLE2: olefile cannot write), plus ClamAV's test files where the machine has them.
"""

from __future__ import annotations

import base64
import binascii
import importlib.util
import random
import struct
import time
import zlib
from pathlib import Path

import pytest

from frontfilter.content import active, archives, embedded, sniff
from frontfilter.content.limits import InspectionLimits
from frontfilter.content.facts import Limit, Uninspectable

from tests.content import corpus as c
from tests.requires import installed

DOCUMENTS = Path(__file__).resolve().parent.parent / "data" / "documents"
CLAMAV = Path("/usr/share/clamav-testfiles")
PE = "application/vnd.microsoft.portable-executable"
EXECUTABLES = {PE, "application/x-dosexec"}

_spec = importlib.util.spec_from_file_location("make_documents", DOCUMENTS / "make_documents.py")
make = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make)


def budget(**limits) -> archives.Budget:
    return archives.Budget(InspectionLimits(**limits))


def read(payload: bytes, detected: str | None = None, **limits):
    spent = budget(**limits)
    document = embedded.read(payload, sniff.detect(payload) if detected is None else detected, spent)
    return document, spent


def members(payload: bytes, detected: str | None = None, **limits):
    document, _ = read(payload, detected, **limits)
    assert document is not None
    return document.listing.members


def executables_within(payload: bytes, depth: int = 3) -> list[str]:
    """The names of executables found in `payload`'s members, opened recursively as the
    caller does (each member typed by libmagic, then read again)."""
    found: list[str] = []
    listing = embedded.embedded(payload, sniff.detect(payload), budget())
    for member in listing.members if listing else ():
        if member.data is None:
            continue
        if sniff.detect(member.data) in EXECUTABLES:
            found.append(member.name)
        elif depth > 1:
            found += executables_within(member.data, depth - 1)
    return found


def fixture(name: str) -> bytes:
    return (DOCUMENTS / name).read_bytes()


# --- fixtures and ClamAV's test files ---------------------------------------------------------

def test_fixtures_are_what_the_script_makes():
    for name, build in make.FIXTURES.items():
        assert fixture(name) == build(), name


@installed(CLAMAV.is_dir(), "ClamAV's test files (clamav-testfiles) are not installed")
@pytest.mark.parametrize("name, member_name", [
    ("clam.ole.doc", "Clam.exe"),       # OLE Package in ObjectPool/_…/\x01Ole10Native
    ("clam.ppt", "clam.exe"),           # compressed ExOleObjStg holding an OLE Package
    ("clam.exe.rtf", "Clam.exe"),       # \objdata, OLE1 Package
    ("clam.pdf", "clam.exe"),           # uncompressed /EmbeddedFile named by its file spec
    ("clam.exe.html", ""),              # data: URI
])
def test_clamav_test_pe_comes_out_as_a_member(name, member_name):
    assert member_name in executables_within((CLAMAV / name).read_bytes())


# --- OLE2 -------------------------------------------------------------------------------------

def test_ole_package_gives_the_packaged_file_and_its_name():
    found = members(fixture("package.doc"))
    assert [(m.name, sniff.detect(m.data)) for m in found] == [("invoice.exe", PE)]


def test_ole_stream_with_an_executable_signature_is_a_member():
    found = members(fixture("exe-stream.doc"))
    assert len(found) == 1 and found[0].data.startswith(b"MZ") and found[0].name == "Data"


def test_powerpoint_compressed_object_is_a_member_and_opens_in_turn():
    (inner,) = members(fixture("object.ppt"))
    assert inner.data.startswith(active.OLE_MAGIC)
    assert executables_within(fixture("object.ppt")) == ["invoice.exe"]


def test_clean_ole_documents_have_no_members_and_no_macros():
    for name in ("clean.doc", "package.doc", "exe-stream.doc"):
        assert not active.ole_has_macros(fixture(name)), name
    document, _ = read(fixture("clean.doc"))
    assert document.listing.members == () and document.listing.problems == frozenset()


def test_macros_found_by_structure_by_xlm_sheet_and_by_olevba():
    assert active.ole_has_macros(fixture("macro.doc"))
    assert active.ole_has_macros(fixture("vbaProject.bin"))
    assert active.ole_has_macros(fixture("xlm.xls"))   # BOUNDSHEET of an Excel 4 macro sheet
    # Names in another case: not the byte search's UTF-16 "_VBA_PROJECT", still a VBA storage.
    renamed = make.compound_file({"WordDocument": make.WORD_DOCUMENT, "macros/vba/dir": b"x",
                                  "macros/vba/_vba_project": b"x", "macros/project": b"x"})
    assert active._vba_names(renamed) is False and active.ole_has_macros(renamed)
    # Compressed VBA source in a stream of its own, no project structure: olevba's find.
    orphan = make.compound_file({"WordDocument": make.WORD_DOCUMENT,
                                 "Data": b"\x01\x20\xb0\x00Attribut\x00e VB_Name = \"Module1\""})
    assert active.ole_has_macros(orphan)


def test_ole_that_its_readers_cannot_read_is_corrupt_and_not_ruled_out_for_macros():
    broken = active.OLE_MAGIC + bytes(600)
    document, _ = read(broken)
    assert document.listing.problems == {Uninspectable.CORRUPT}
    assert active.ole_has_macros(broken)
    assert not active.ole_has_macros(b"PK\x03\x04" + bytes(600))


def test_encrypted_office_documents_are_reported():
    for streams in ({"EncryptionInfo": bytes(64), "EncryptedPackage": bytes(64)},
                    {"WordDocument": make.WORD_DOCUMENT[:11] + b"\x01" + make.WORD_DOCUMENT[12:]}):
        document, _ = read(make.compound_file(streams))
        assert Uninspectable.ENCRYPTED in document.listing.problems, streams
    filepass = struct.pack("<HH", 0x0809, 16) + bytes(16) + struct.pack("<HH", 0x002F, 4) + bytes(4)
    workbook = make.compound_file({"Workbook": filepass.ljust(4096, b"\0")})
    assert Uninspectable.ENCRYPTED in read(workbook)[0].listing.problems
    assert active.ole_has_macros(workbook)   # sheet types are encrypted: XLM not ruled out


def test_streams_sharing_sectors_stop_the_reading():
    # Forty directory entries claim the one 100 KB stream: a reader would read it forty times.
    streams = {"S00": b"MZ" + bytes(100_000), **{f"S{i:02}": b"x" for i in range(1, 40)}}
    data = bytearray(make.compound_file(streams))
    first = data.find("S00".encode("utf-16-le"))
    for i in range(1, 40):
        at = data.find(f"S{i:02}".encode("utf-16-le"))
        data[at + 116:at + 128] = data[first + 116:first + 128]   # start sector and size
    document, _ = read(bytes(data))
    assert Uninspectable.CORRUPT in document.listing.problems
    assert len(document.listing.members) < 5
    assert active.ole_has_macros(bytes(data))   # not ruled out



def test_compound_file_with_too_many_directory_entries_is_not_opened():
    # Counted from the header and FAT before olefile, whose reading is quadratic in entries.
    entries = active.MAX_OLEVBA_DIRECTORY_ENTRIES + 8
    data = make.compound_file({f"S{i:05}": b"x" for i in range(entries)})
    assert active.directory_entries(data) > active.MAX_OLEVBA_DIRECTORY_ENTRIES
    document, _ = read(data)
    assert Uninspectable.LIMIT in document.listing.problems
    assert not document.listing.members
    assert active.ole_has_macros(data)   # not ruled out
    small = make.compound_file({"Package": b"MZ" + bytes(10)})
    assert active.directory_entries(small) <= 8
    assert Uninspectable.LIMIT not in read(small)[0].listing.problems

# --- RTF --------------------------------------------------------------------------------------

def ole1(class_name: bytes, native: bytes) -> bytes:
    """An OLE1 embedded object ([MS-OLEDS] §2.2.4-2.2.5) as \\objdata carries it."""
    name = class_name + b"\0"
    return (struct.pack("<II", 0x00000501, 2) + struct.pack("<I", len(name)) + name
            + struct.pack("<II", 0, 0) + struct.pack("<I", len(native)) + native)


def rtf_with(objects: list[bytes], text: bytes = b"Hello") -> bytes:
    body = b"".join(b"{\\object\\objemb{\\*\\objdata " + binascii.hexlify(o) + b"}}" for o in objects)
    return b"{\\rtf1\\ansi " + text + body + b"}"


def test_rtf_package_gives_the_file_and_its_name():
    package = make.ole_native("report.exe", c.pe())[4:]   # a Package object has no size field
    found = members(rtf_with([ole1(b"Package", package)]))
    assert [(m.name, sniff.detect(m.data)) for m in found] == [("report.exe", PE)]


def test_rtf_other_object_gives_its_native_data_which_opens_in_turn():
    (found,) = members(rtf_with([ole1(b"Word.Document.8", fixture("package.doc"))]))
    assert found.data == fixture("package.doc")
    assert executables_within(rtf_with([ole1(b"Word.Document.8", fixture("package.doc"))])) == ["invoice.exe"]


def test_rtf_word_quirks_hex_split_by_controls_and_odd_digit():
    hexed = binascii.hexlify(ole1(b"Package", make.ole_native("a.exe", c.pe())[4:]))
    # Word drops an odd hex digit before \'hh, and ignores blanks and control words inside.
    split = hexed[:10] + b"\n\\par " + hexed[10:20] + b"f\\'41" + hexed[20:]
    payload = b"{\\rtf1{\\object{\\*\\objdata " + split + b"}}}"
    (found,) = members(payload)
    assert found.name == "a.exe" and found.data == c.pe()


def test_rtf_without_objects_has_no_members():
    document, _ = read(b"{\\rtf1\\ansi{\\fonttbl{\\f0 Arial;}}\\f0 Hello {\\b world}\\par}")
    assert document.listing.members == () and document.listing.problems == frozenset()


def test_rtf_is_read_in_linear_time():
    # oletools' own parser takes ~20 s on 4 MB (it grows one bytes object per text run).
    payload = rtf_with([ole1(b"Package", make.ole_native("a.exe", c.pe())[4:])],
                       text=b"{\\b hello} world \\par " * 100_000)
    started = time.monotonic()
    (found,) = members(payload)
    assert found.name == "a.exe" and time.monotonic() - started < 5


def test_rtf_past_the_deadline_stops_with_time():
    payload = rtf_with([ole1(b"Package", make.ole_native("a.exe", c.pe())[4:])],
                       text=b"{\\b x}" * 50_000)
    spent = budget()
    listing = embedded.embedded(payload, "text/rtf", spent, deadline=time.monotonic() - 1)
    assert Uninspectable.TIME in listing.problems and Limit.TIME in spent.exceeded


# --- PDF --------------------------------------------------------------------------------------

PAGES = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
         b"<< /Type /Page /Parent 2 0 R /Contents 4 0 R >>"]
CONTENT = (b"<< /Filter /FlateDecode >>", zlib.compress(b"BT /F1 12 Tf 72 712 Td (Hello) Tj ET\n" * 50))


def pdf(*objects, trailer: bytes = b"") -> bytes:
    """A PDF of `objects` (numbered from 1); a (dictionary, data) pair is a stream."""
    out = bytearray(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        if isinstance(body, tuple):
            dictionary, data = body
            body = dictionary[:-2] + b" /Length %d >>\nstream\n" % len(data) + data + b"\nendstream"
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R %s>>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, trailer, xref)
    return bytes(out)


def test_clean_pdf_with_compressed_streams_has_no_members_and_no_flag():
    font = (b"<< /Length1 4000 /Filter /FlateDecode >>", zlib.compress(b"\x00\x01\x00\x00" + bytes(4000)))
    image = (b"<< /Subtype /Image /Filter /DCTDecode >>", b"\xff\xd8\xff\xe0" + bytes(500) + b"\xff\xd9")
    document, _ = read(pdf(*PAGES, CONTENT, font, image))
    assert document.listing.members == () and document.listing.problems == frozenset()
    assert not document.pdf_active_content


def test_pdf_javascript_only_inside_a_compressed_object_stream_is_flagged():
    objects = b"5 0 6 30 << /S /JavaScript /JS 6 0 R >> (app.alert(1))"
    for dictionary in (b"<< /Type /ObjStm /N 2 /First 9 /Filter /FlateDecode >>",
                       b"<< /Type /Obj#53tm /N 2 /First 9 /Filter /Fl >>",     # escaped name
                       b"<< /N 2 /First 9 /X (stream\n) /Filter /FlateDecode >>"):  # fake keyword
        payload = pdf(*PAGES, CONTENT, (dictionary, zlib.compress(objects)))
        assert not active.pdf_active_content(payload)   # the old byte search's blind spot
        document, _ = read(payload)
        assert document.pdf_active_content, dictionary
        assert active.pdf_active_content(payload, [zlib.decompress(zlib.compress(objects))])


def test_pdf_object_stream_found_by_its_content_when_its_dictionary_is_unreadable():
    # No /Type, /N or /First in sight: the decoded start, integer pairs then an object, tells.
    payload = pdf(*PAGES, (b"<< /Filter /FlateDecode >>", zlib.compress(b"7 0 << /S /Launch >>")))
    assert read(payload)[0].pdf_active_content


def test_pdf_embedded_files_compressed_chained_or_by_reference():
    exe = c.pe()
    cases = {
        "typed": (b"<< /Type /EmbeddedFile /Filter /FlateDecode >>", zlib.compress(exe)),
        "hex then flate": (b"<< /Filter [/AHx /Fl] >>", binascii.hexlify(zlib.compress(exe)) + b">"),
        "ascii85": (b"<< /Type /EmbeddedFile /Filter /A85 >>", base64.a85encode(exe) + b"~>"),
        "signature only": (b"<< /Filter /FlateDecode >>", zlib.compress(exe)),
    }
    for label, stream in cases.items():
        found = members(pdf(*PAGES, CONTENT, stream))
        assert [sniff.detect(m.data) for m in found] == [PE], label
    # An attachment annotation's file spec points at an untyped stream: named by its /UF.
    spec = b"<< /Type /Annot /Subtype /FileAttachment /FS << /F (a.txt) /UF (run.js) /EF << /F 6 0 R >> >> >>"
    payload = pdf(*PAGES, CONTENT, spec, (b"<< /Filter /FlateDecode >>", zlib.compress(b"WScript.Shell")))
    document, _ = read(payload)
    assert [(m.name, m.data) for m in document.listing.members] == [("run.js", b"WScript.Shell")]
    assert document.pdf_active_content   # /EF is an embedded file


def test_pdf_bomb_stops_at_the_compression_ratio():
    bomb = zlib.compress(bytes(64 * 1024 * 1024), 9)
    for dictionary in (b"<< /Type /EmbeddedFile /Filter /FlateDecode >>", b"<< /Type /ObjStm /Filter /FlateDecode >>"):
        document, spent = read(pdf(*PAGES, (dictionary, bomb)))
        assert Limit.COMPRESSION_RATIO in spent.exceeded
        ratio_cap = max(100 * len(bomb), embedded.RATIO_FLOOR_BYTES)
        assert spent.expanded_bytes <= ratio_cap + embedded.CHUNK_BYTES + 4096
        problems = {m.problem for m in document.listing.members} | document.listing.problems
        assert Uninspectable.LIMIT in problems
    # A bomb in an ordinary stream is only peeked at.
    document, spent = read(pdf(*PAGES, (b"<< /Filter /FlateDecode >>", bomb)))
    assert spent.expanded_bytes < 1024 and document.listing.problems == frozenset()


def test_pdf_expanded_size_and_member_count_bounds():
    stream = (b"<< /Type /EmbeddedFile /Filter /FlateDecode >>", zlib.compress(c.pe() + bytes(200_000)))
    document, spent = read(pdf(*PAGES, stream, stream), max_expanded_size=100_000)
    assert Limit.EXPANDED_SIZE in spent.exceeded and spent.expanded_bytes <= 100_000
    assert document.listing.members[0].truncated and document.listing.members[0].problem is Uninspectable.LIMIT
    document, spent = read(pdf(*PAGES, stream, stream), max_archive_members=1)
    assert len(document.listing.members) == 1 and Limit.ARCHIVE_MEMBERS in spent.exceeded
    assert Uninspectable.LIMIT in document.listing.problems


def test_pdf_broken_streams_fail_closed_only_where_they_matter():
    broken = bytearray(zlib.compress(c.pe()))
    broken[20:30] = b"\xff" * 10
    (member,) = members(pdf(*PAGES, (b"<< /Type /EmbeddedFile /Filter /FlateDecode >>", bytes(broken))))
    assert member.problem is Uninspectable.CORRUPT
    content = bytearray(CONTENT[1])
    content[20:40] = b"\xff" * 20
    document, _ = read(pdf(*PAGES, (CONTENT[0], bytes(content))))
    assert document.listing.members == () and document.listing.problems == frozenset()


def test_pdf_what_cannot_be_decoded_is_reported():
    lzw = (b"<< /Type /EmbeddedFile /Filter /LZWDecode >>", b"\x80\x0b\x60\x50\x22\x0c\x0c\x85\x01")
    (member,) = members(pdf(*PAGES, lzw))
    assert member.data is None and member.problem is Uninspectable.UNSUPPORTED
    ciphertext = bytes(random.Random(5).getrandbits(8) for _ in range(300))
    encrypted = pdf(*PAGES, (b"<< /Type /ObjStm /N 1 /First 4 /Filter /FlateDecode >>", ciphertext),
                    trailer=b"/Encrypt 9 0 R ")
    assert Uninspectable.ENCRYPTED in read(encrypted)[0].listing.problems
    plain = pdf(*PAGES, (b"<< /Filter /FlateDecode >>", ciphertext), trailer=b"/Encr#79pt 9 0 R ")
    assert read(plain)[0].listing.problems == frozenset()   # nothing hidden there


# --- HTML -------------------------------------------------------------------------------------

PE64 = base64.b64encode(c.pe())


def test_html_data_uri_is_decoded_and_named_by_download():
    page = b'<a download="invoice.pdf.exe" href="data:application/octet-stream;base64,' + PE64 + b'">get</a>'
    assert [(m.name, sniff.detect(m.data)) for m in members(page)] == [("invoice.pdf.exe", PE)]
    # An entity for the colon, base64 broken over lines, UTF-16 with a BOM.
    spread = PE64[:40] + b"\n  " + PE64[40:]
    for page in (b'<a href="data&colon;application/x;base64,' + spread + b'">x</a>',
                 ('\ufeff<a href="data:;base64,' + PE64.decode() + '">x</a>').encode("utf-16-le")):
        assert [sniff.detect(m.data) for m in members(page, "text/html")] == [PE]


def test_html_data_uris_are_bounded():
    page = b'<img src="data:image/gif;base64,R0lGODlhAQABAAAAACw=">' * (embedded.MAX_DATA_URIS + 5)
    document, spent = read(page, "text/html")
    assert len(document.listing.members) == embedded.MAX_DATA_URIS
    assert Uninspectable.LIMIT in document.listing.problems and Limit.ARCHIVE_MEMBERS in spent.exceeded


def test_html_without_data_uris_has_no_members_and_other_text_is_no_document():
    assert members(b"<p>hello</p>", "text/html") == ()
    assert embedded.embedded(b"just text", "text/plain", budget()) is None
    assert embedded.embedded(c.pe(), PE, budget()) is None


def test_html_script_in_utf16_and_utf32_is_flagged():
    script = "<p>hi</p><script>alert(1)</script>"
    for encoded in (script.encode("utf-16"), "\ufeff".encode("utf-16-be") + script.encode("utf-16-be"),
                    script.encode("utf-16-le"), script.encode("utf-32")):   # BOM, BOM, none, BOM
        assert active.html_script(encoded), encoded[:8]
    assert not active.html_script("<p>just <b>bold</b> text</p>".encode("utf-16"))


# --- never raises -----------------------------------------------------------------------------

def test_mangled_documents_never_raise():
    generator = random.Random(20260)
    seeds = [fixture(name) for name in make.FIXTURES] + [
        rtf_with([ole1(b"Package", make.ole_native("a.exe", c.pe())[4:])]),
        pdf(*PAGES, CONTENT, (b"<< /Type /EmbeddedFile /Filter /FlateDecode >>", zlib.compress(c.pe()))),
    ]
    for seed in seeds:
        for _ in range(40):
            data = bytearray(seed)
            for _ in range(generator.randint(1, 8)):
                data[generator.randrange(len(data))] = generator.randrange(256)
            data = bytes(data[: generator.randint(len(data) // 2, len(data))])
            document = embedded.read(data, "application/octet-stream", budget())
            assert document is None or isinstance(document.listing.problems, frozenset)
            active.ole_has_macros(data)
