"""`archives`: which reader opens a container, and what each lists, under the budget.

Real libarchive, real tnefparse; test data made here by the field's writers (libarchive's,
zipfile's, the stdlib compressors'), patched byte by byte where an attacker would. Files from
the Debian package clamav-testdata (installed by the Makefile) are used where no writer can
make them (deflate64, implode, ARJ, SZDD, cab, TNEF); those tests skip when it is absent.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import struct
import tarfile
import time
import types
import zipfile
import zlib
from pathlib import Path

import libarchive
import pytest

from tests.requires import missing

from frontfilter.content import archives, sniff
from frontfilter.content.limits import InspectionLimits
from frontfilter.content.facts import Limit, Uninspectable

CLAMAV = Path("/usr/share/clamav-testfiles")
PE = b"MZ" + b"\x90" * 3000 + b"PE\0\0" + bytes(range(256)) * 4


def budget(**limits) -> archives.Budget:
    return archives.Budget(InspectionLimits(**limits))


def listing(payload: bytes, deadline: float | None = None, **limits):
    """(listing, budget) for `payload`, its kind found by content as `inspect` does."""
    spent = budget(**limits)
    found = archives.kind(payload, sniff.detect(payload))
    assert found is not None, "not recognised as a container"
    return archives.members(payload, found, spent, deadline), spent


def by_name(found) -> dict[str, list]:
    named: dict[str, list] = {}
    for member in found.members:
        named.setdefault(member.name, []).append(member)
    return named


def clamav(name: str) -> bytes:
    path = CLAMAV / name
    if not path.exists():
        missing(f"{path} is absent: the Debian package clamav-testfiles has it (make test installs it)")
    return path.read_bytes()


# --- test data -------------------------------------------------------------------------------

def written(fmt: str, files: list[tuple[str, bytes]], filter_name: str | None = None,
            **options) -> bytes:
    """An archive from libarchive's writer."""
    out = io.BytesIO()
    with libarchive.custom_writer(out.write, fmt, filter_name=filter_name, **options) as archive:
        for name, data in files:
            archive.add_file_from_memory(name, len(data), data)
    return out.getvalue()


def zipped(files: list[tuple[str, bytes]], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", method) as archive:
        for name, data in files:
            archive.writestr(name, data)
    return out.getvalue()


def signatures(payload: bytes | bytearray, signature: bytes) -> list[int]:
    found, at = [], payload.find(signature)
    while at != -1:
        found.append(at)
        at = payload.find(signature, at + 1)
    return found


CENTRAL, LOCAL = b"PK\x01\x02", b"PK\x03\x04"


def patch_flags(payload: bytes, where: bytes, clear: int = 0, set_: int = 0) -> bytes:
    """Change the general purpose flags of every central (offset 8) or local (6) header."""
    patched = bytearray(payload)
    at = 8 if where == CENTRAL else 6
    for start in signatures(patched, where):
        flags = struct.unpack_from("<H", patched, start + at)[0]
        struct.pack_into("<H", patched, start + at, (flags & ~clear) | set_)
    return bytes(patched)


def patch_method(payload: bytes, method: int) -> bytes:
    patched = bytearray(payload)
    for start in signatures(patched, CENTRAL):
        struct.pack_into("<H", patched, start + 10, method)
    for start in signatures(patched, LOCAL):
        struct.pack_into("<H", patched, start + 8, method)
    return bytes(patched)


# --- kind ------------------------------------------------------------------------------------

FORMATS = [
    ("7zip", None), ("ar_bsd", None), ("ar_svr4", None), ("cpio", None), ("cpio_newc", None),
    ("gnutar", None), ("iso9660", None), ("pax", None), ("ustar", None), ("v7tar", None),
    ("xar", None), ("pax", "gzip"), ("pax", "bzip2"), ("pax", "xz"), ("pax", "lzma"),
    ("pax", "zstd"), ("pax", "lz4"), ("pax", "compress"), ("pax", "lzip"),
    ("cpio_newc", "gzip"), ("cpio", "xz"),
]


@pytest.mark.parametrize("fmt,filter_name", FORMATS)
def test_each_libarchive_format_lists_its_members_bytes(fmt, filter_name):
    payload = written(fmt, [("docs/invoice.exe", PE), ("readme.txt", b"hello\n")], filter_name)
    found, spent = listing(payload)
    assert archives.kind(payload, sniff.detect(payload)) == "libarchive"
    files = {m.name.rsplit("/", 1)[-1]: m for m in found.members if m.data}   # ar keeps no dirs
    assert files["invoice.exe"].data == PE
    if fmt == "xar":   # libarchive 3.6.2 reads a second xar member past its end (zeros)
        assert files["readme.txt"].data.startswith(b"hello\n")
    else:
        assert files["readme.txt"].data == b"hello\n"
    assert not found.problems and not found.disagreement
    assert all(m.problem is None for m in found.members)
    assert spent.expanded_bytes >= len(PE) + 6


@pytest.mark.parametrize("compress", [gzip.compress, bz2.compress, lzma.compress,
                                      lambda data: lzma.compress(data, format=lzma.FORMAT_ALONE)])
def test_a_compressed_executable_is_one_member(compress):
    """.exe.bz2 and friends hold no archive: libarchive reads them raw."""
    found, _ = listing(compress(PE))
    assert [m.data for m in found.members] == [PE]
    assert found.members[0].name == ""   # the caller names it after the holder
    assert not found.problems


def test_a_compressed_7z_fails_closed():
    """libarchive finds a 7z's header through a decompressing filter but cannot read its
    data (7z seeks): its members are named, and the listing is not clean."""
    inner = written("7zip", [("a.exe", PE)])
    found, _ = listing(lzma.compress(inner))
    assert [m.name for m in found.members] == ["a.exe"]
    assert found.members[0].problem is Uninspectable.CORRUPT
    assert Uninspectable.CORRUPT in found.problems


def test_a_gzip_member_is_named_from_its_header():
    out = io.BytesIO()
    with gzip.GzipFile("invoice.exe", "wb", fileobj=out) as stream:
        stream.write(PE)
    found, _ = listing(out.getvalue())
    assert [(m.name, m.data) for m in found.members] == [("invoice.exe", PE)]


def test_kind_is_by_content_never_by_the_declared_name_or_type():
    payload = written("7zip", [("a.exe", PE)])
    assert archives.kind(payload, "") == "libarchive"         # libmagic failed: magic bytes
    assert archives.kind(payload, "text/plain") == "libarchive"
    assert archives.kind(b"just text", "text/plain") is None
    assert archives.kind(zipped([("a", b"b")]), "") == "zip"


@pytest.mark.parametrize("text", [b"BZh, said the cat", b"070707 is my number" + b" " * 80,
                                  b"SIT! DOWN, please", b"WARC/x", b"LZIP is a compressor",
                                  b"StuffIt for sale", b"q\xc7 binary-ish", b"\x1f\x9d text"])
def test_text_that_starts_like_a_magic_is_no_container_by_its_bytes(text):
    """A false match would make an ordinary attachment an unreadable container, refused.
    (libmagic's own answer is trusted, and it calls most of these containers.)"""
    assert archives.kind(text, "text/plain") is None


@pytest.mark.parametrize("mime", [
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "application/vnd.oasis.opendocument.text", "application/epub+zip", "application/java-archive",
])
def test_zip_based_documents_are_opened_as_zips(mime):
    payload = zipped([("[Content_Types].xml", b"<Types/>"), ("word/document.xml", b"<w/>"),
                      ("word/vbaProject.bin", b"\xd0\xcf\x11\xe0macros")])
    assert archives.kind(payload, mime) == "zip"
    found, _ = listing(payload)
    assert sorted(m.name for m in found.members) == [
        "[Content_Types].xml", "word/document.xml", "word/vbaProject.bin"]


def test_a_self_extractor_is_a_zip():
    payload = b"MZ" + bytes(5000) + zipped([("setup.exe", PE)])
    assert archives.kind(payload, "application/vnd.microsoft.portable-executable") == "zip"
    found, _ = listing(payload)
    assert [(m.name, m.data) for m in found.members] == [("setup.exe", PE)]
    assert not found.disagreement and not found.problems


@pytest.mark.parametrize("payload", [
    b"SZDD\x88\xf0\x27\x33\x41\x00" + bytes(40),            # MS-compress (compress.exe)
    b"KWAJ\x88\xf0\x27\xd1" + bytes(40),
    b"\x60\xea\x22\x00" + bytes(60),                           # ARJ
    bytes(7) + b"**ACE**" + bytes(40),
    b"SIT!" + bytes(40),
    b"ITSF\x03\x00\x00\x00" + bytes(80),                       # CHM
    b"\x89LZO\x00\r\n\x1a\n" + bytes(40),        # lzop: libarchive would run a program
    b"LRZI\x00\x06" + bytes(40),                               # lrzip: likewise
])
def test_containers_we_cannot_open_are_unsupported(payload):
    assert archives.kind(payload, sniff.detect(payload)) == "unsupported"
    found = archives.members(payload, "unsupported", budget())
    assert found.problems == {Uninspectable.UNSUPPORTED} and not found.members


@pytest.mark.parametrize("name", ["clam.arj", "clam.exe.szdd", "clam.sis", "clam.chm"])
def test_real_arj_szdd_sis_chm_are_unsupported(name):
    payload = clamav(name)
    assert archives.kind(payload, sniff.detect(payload)) == "unsupported"
    assert listing(payload)[0].problems == {Uninspectable.UNSUPPORTED}


@pytest.mark.parametrize("mime", ["application/x-arj", "application/x-ms-compress-szdd",
                                  "application/vnd.symbian.install", "application/x-stuffit",
                                  "application/zlib", "application/x-apple-diskimage"])
def test_container_types_libmagic_names_and_libarchive_cannot_read_are_unsupported(mime):
    assert archives.kind(b"\x00\x01 opaque", mime) == "unsupported"


def test_an_iso_with_udf_is_unsupported():
    """Windows mounts the UDF view, which libarchive cannot read."""
    iso = written("iso9660", [("a.txt", b"x")])
    assert archives.kind(iso, "application/x-iso9660-image") == "libarchive"
    udf = bytearray(iso)
    udf[0x8800 + 1:0x8800 + 6] = b"NSR02"
    assert archives.kind(bytes(udf), "application/x-iso9660-image") == "unsupported"


def test_unknown_kind_is_a_programming_error():
    with pytest.raises(ValueError):
        archives.members(b"", "rar", budget())


# --- zip: the two readings -------------------------------------------------------------------

def test_zip_members_both_readings_agree_on_count_once():
    payload = zipped([("a.txt", b"a" * 5000), ("b.exe", PE), ("dir/", b"")])
    found, spent = listing(payload)
    assert [(m.name, m.data) for m in found.members] == [("a.txt", b"a" * 5000), ("b.exe", PE)]
    assert not found.disagreement and not found.problems
    assert spent.members == 3                     # the directory counts, as before
    assert spent.expanded_bytes == 5000 + len(PE)  # not twice


def test_two_zips_concatenated_list_both_and_disagree():
    """zipfile reads the last zip (its end record), a stream reader the first."""
    payload = zipped([("invoice.pdf", b"%PDF-1.4 fine")]) + zipped([("invoice.exe", PE)])
    found, _ = listing(payload)
    named = by_name(found)
    assert named["invoice.exe"][0].data == PE
    assert named["invoice.pdf"][0].data == b"%PDF-1.4 fine"
    assert found.disagreement


def test_zip_without_central_directory_is_read_by_its_local_headers():
    whole = zipped([("a.txt", b"text"), ("evil.exe", PE)])
    payload = whole[:whole.find(CENTRAL)]
    found, _ = listing(payload)
    assert [(m.name, m.data) for m in found.members] == [("a.txt", b"text"), ("evil.exe", PE)]
    assert found.disagreement


def test_local_name_that_differs_from_the_central_name_lists_both():
    payload = bytearray(zipped([("invoice.pdf", PE)]))
    local = payload.find(LOCAL)
    name_at = local + 30
    assert payload[name_at:name_at + 11] == b"invoice.pdf"
    payload[name_at:name_at + 11] = b"invoice.exe"
    found, _ = listing(bytes(payload))
    named = by_name(found)
    assert named["invoice.pdf"][0].data == PE    # what a central-directory client extracts
    assert named["invoice.exe"][0].data == PE    # what a stream reader extracts
    assert found.disagreement


def test_central_entry_pointing_at_another_members_local_header_disagrees():
    """The directory's "b.exe" points at the local header of "a.txt": a central-directory
    client fails on it (a.txt's bytes against b.exe's sizes and CRC), a stream reader
    extracts the real b.exe."""
    payload = bytearray(zipped([("a.txt", b"text"), ("b.exe", PE)]))
    first, second = signatures(payload, CENTRAL)
    offset_of_a = struct.unpack_from("<I", payload, first + 42)[0]
    struct.pack_into("<I", payload, second + 42, offset_of_a)
    found, _ = listing(bytes(payload))
    named = by_name(found)
    assert [m.data for m in named["a.txt"]] == [b"text"]
    assert sorted(m.problem is None for m in named["b.exe"]) == [False, True]
    assert any(m.data == PE for m in named["b.exe"])
    assert found.disagreement


def test_the_local_reading_still_finds_a_member_the_directory_does_not_list():
    """A local entry the central directory skips (its records removed): every zip is read by
    its local headers too, not only the odd-looking ones."""
    whole = zipped([("a.txt", b"text"), ("hidden.exe", PE)])
    info = zipfile.ZipFile(io.BytesIO(whole)).getinfo("hidden.exe")
    central = whole.find(CENTRAL)
    end = whole.find(b"PK\x05\x06")
    records = whole[central:end]
    second = records.find(CENTRAL, 4)
    kept = records[:second]
    eocd = bytearray(whole[end:])
    struct.pack_into("<HHII", eocd, 8, 1, 1, len(kept), central)
    payload = whole[:central] + kept + bytes(eocd)
    assert [i.filename for i in zipfile.ZipFile(io.BytesIO(payload)).infolist()] == ["a.txt"]
    found, _ = listing(payload)
    assert [(m.name, m.data) for m in found.members] == [("a.txt", b"text"), ("hidden.exe", PE)]
    assert found.disagreement
    assert info.filename == "hidden.exe"


def test_encryption_flag_cleared_in_the_central_directory_only_is_still_encrypted():
    encrypted = written("zip", [("evil.exe", PE), ("b.txt", b"hello")],
                        options="zip:encryption=zipcrypt", passphrase="secret")
    payload = patch_flags(encrypted, CENTRAL, clear=0x1)
    assert all(not info.flag_bits & 1 for info in zipfile.ZipFile(io.BytesIO(payload)).infolist())
    found, _ = listing(payload)
    assert found.members and all(m.encrypted and m.data is None for m in found.members)
    assert {m.problem for m in found.members} == {Uninspectable.ENCRYPTED}


def test_encryption_flag_cleared_in_the_local_header_only_is_still_encrypted():
    encrypted = written("zip", [("evil.exe", PE)], options="zip:encryption=zipcrypt",
                        passphrase="secret")
    found, _ = listing(patch_flags(encrypted, LOCAL, clear=0x1))
    assert found.members and all(m.encrypted and m.data is None for m in found.members)


def test_aes_encrypted_zip_members_are_encrypted():
    payload = written("zip", [("evil.exe", PE)], options="zip:encryption=aes256", passphrase="pw")
    found, _ = listing(payload)
    assert [(m.name, m.encrypted, m.problem) for m in found.members] == [
        ("evil.exe", True, Uninspectable.ENCRYPTED)]


def test_corrupt_deflate_member_does_not_hide_the_next_one():
    """zlib.error used to escape the member and end the whole listing."""
    good = os.urandom(100_000)
    payload = bytearray(zipped([("bad.bin", good + os.urandom(200_000)), ("next.exe", PE)]))
    info = zipfile.ZipFile(io.BytesIO(bytes(payload))).getinfo("bad.bin")
    data_at = info.header_offset + 30 + len(b"bad.bin")
    compressor = zlib.compressobj(wbits=-15)
    broken = compressor.compress(good) + compressor.flush(zlib.Z_FULL_FLUSH)
    broken += b"\xff" * (info.compress_size - len(broken))   # block type 3: reserved, invalid
    payload[data_at:data_at + info.compress_size] = broken
    found, _ = listing(bytes(payload))
    named = by_name(found)
    assert named["next.exe"][0].data == PE and named["next.exe"][0].problem is None
    for bad in named["bad.bin"]:
        assert bad.problem is Uninspectable.CORRUPT and bad.truncated
        assert good.startswith(bad.data)
    # zipfile hands out what inflated before the bad block (libarchive inflates 256 KiB ahead
    # and keeps nothing)
    assert max(len(bad.data) for bad in named["bad.bin"]) >= 64 * 1024


def test_bad_crc_is_corrupt_with_the_bytes_read():
    payload = bytearray(zipped([("a.txt", b"hello world")], zipfile.ZIP_STORED))
    payload[payload.find(b"hello world")] ^= 0x20
    found, _ = listing(bytes(payload))
    assert found.members and {m.problem for m in found.members} == {Uninspectable.CORRUPT}
    # Both readers raise in the read that reaches the end, so that read's bytes are lost.
    assert all(m.truncated and b"Hello world".startswith(m.data) for m in found.members)
    assert not found.disagreement   # they agree: same name, same bytes, same problem


@pytest.mark.parametrize("method", [9, 6, 99])   # deflate64, implode, AES marker
def test_zip_compression_methods_we_cannot_decode_are_unsupported(method):
    payload = patch_method(zipped([("a.exe", PE)]), method)
    found, _ = listing(payload)
    assert [(m.name, m.data, m.problem) for m in found.members] == [
        ("a.exe", None, Uninspectable.UNSUPPORTED)]
    assert not found.disagreement


@pytest.mark.parametrize("name", ["clam.d64.zip", "clam.impl.zip"])
def test_real_deflate64_and_implode_zips_are_unsupported(name):
    found, _ = listing(clamav(name))
    assert found.members and all(m.data is None and m.problem is Uninspectable.UNSUPPORTED
                                 for m in found.members)


def test_zip_symlink_member_agrees_between_readings():
    info = zipfile.ZipInfo("link")
    info.external_attr = 0o120777 << 16
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr(info, "target.txt")
        archive.writestr("target.txt", "x")
    found, _ = listing(out.getvalue())
    assert [(m.name, m.data) for m in found.members] == [
        ("link", b"target.txt"), ("target.txt", b"x")]
    assert not found.disagreement


def test_garbage_with_a_zip_signature_is_corrupt():
    found = archives.members(LOCAL + os.urandom(200), "zip", budget())
    assert Uninspectable.CORRUPT in found.problems


# --- bounds ----------------------------------------------------------------------------------

def test_zip_bomb_stops_at_the_compression_ratio():
    payload = zipped([("zeros.bin", bytes(50 * 1024 * 1024)), ("after.exe", PE)])
    found, spent = listing(payload)
    zeros = by_name(found)["zeros.bin"]
    assert all(m.problem is Uninspectable.LIMIT and m.truncated for m in zeros)
    assert all(len(m.data) < 50 * 1024 * 1024 for m in zeros)
    assert Limit.COMPRESSION_RATIO in spent.exceeded
    assert by_name(found)["after.exe"][0].data == PE   # zipfile reads each member on its own


@pytest.mark.parametrize("filter_name", ["gzip", "bzip2", "xz"])
def test_compressed_tar_bomb_stops_at_the_ratio_and_the_listing_stops_there(filter_name):
    payload = written("pax", [("zeros.bin", bytes(40 * 1024 * 1024)), ("after.exe", PE)],
                      filter_name)
    found, spent = listing(payload)
    assert [m.name for m in found.members] == ["zeros.bin"]
    assert found.members[0].problem is Uninspectable.LIMIT
    assert len(found.members[0].data) < 40 * 1024 * 1024
    assert Uninspectable.LIMIT in found.problems        # "after.exe" was never listed
    assert Limit.COMPRESSION_RATIO in spent.exceeded


def test_compressed_executable_bomb_stops_at_the_ratio():
    found, spent = listing(bz2.compress(b"MZ" + bytes(30 * 1024 * 1024)))
    assert found.members[0].problem is Uninspectable.LIMIT
    assert Limit.COMPRESSION_RATIO in spent.exceeded


def test_expanded_size_bound_cuts_the_member_and_is_recorded():
    payload = zipped([("a.bin", os.urandom(6000))], zipfile.ZIP_STORED)
    found, spent = listing(payload, max_expanded_size=4096)
    assert all(m.problem is Uninspectable.LIMIT and len(m.data) <= 4096 for m in found.members)
    assert spent.expanded_bytes <= 4096
    assert Limit.EXPANDED_SIZE in spent.exceeded


@pytest.mark.parametrize("make", [
    lambda files: zipped(files), lambda files: written("pax", files, "gzip"),
    lambda files: written("7zip", files),
])
def test_member_count_bound(make):
    payload = make([(f"m{i}.txt", b"x") for i in range(6)])
    found, spent = listing(payload, max_archive_members=3)
    assert [m.name for m in found.members] == ["m0.txt", "m1.txt", "m2.txt"]
    assert Uninspectable.LIMIT in found.problems
    assert Limit.ARCHIVE_MEMBERS in spent.exceeded and spent.members == 3


def test_the_budget_is_shared_across_containers():
    spent = budget(max_archive_members=4)
    archives.members(zipped([("a", b"1"), ("b", b"2"), ("c", b"3")]), "zip", spent)
    second = archives.members(written("pax", [("d", b"4"), ("e", b"5")]), "libarchive", spent)
    assert [m.name for m in second.members] == ["d"]
    assert Uninspectable.LIMIT in second.problems


# --- libarchive: broken, encrypted, links ----------------------------------------------------

def test_truncated_7z_is_corrupt():
    payload = written("7zip", [("a.exe", PE), ("b.txt", b"hello")])
    found, _ = listing(payload[: len(payload) // 2])
    assert Uninspectable.CORRUPT in found.problems


def test_truncated_tar_keeps_the_members_read_before():
    payload = written("pax", [("first.exe", PE), ("second.bin", os.urandom(200_000))], "xz")
    found, _ = listing(payload[: len(payload) - 60_000])
    assert found.members[0].name == "first.exe" and found.members[0].data == PE
    assert Uninspectable.CORRUPT in found.problems
    second = found.members[1:]
    assert all(m.problem is Uninspectable.CORRUPT and m.truncated for m in second)


def test_not_an_archive_given_to_libarchive_is_corrupt():
    found = archives.members(b"plain words, no container at all" * 10, "libarchive", budget())
    assert found.problems == {Uninspectable.CORRUPT} and not found.members


def test_mtree_is_never_read(tmp_path):
    """libarchive's mtree reader reads the files an mtree names from the local disk."""
    secret = tmp_path / "secret"
    secret.write_bytes(b"not to be read")
    spec = f"#mtree\n{secret} type=file\n".encode()
    found = archives.members(spec, "libarchive", budget())
    assert all(m.data != b"not to be read" for m in found.members)


def test_tar_with_pax_headers_is_read():
    long_name = "d/" + "x" * 300 + "é.exe"
    found, _ = listing(written("pax", [(long_name, PE)]))
    assert [(m.name, m.data) for m in found.members] == [(long_name, PE)]


def test_tar_with_a_crafted_pax_header_is_read_without_tarfile():
    """CVE-2024-6232 made tarfile's pax header parsing backtrack on such a record."""
    header = tarfile.TarInfo("././@PaxHeader")
    record = b"0" * 60_000 + b" path=x\n"
    header.size, header.type = len(record), tarfile.XHDTYPE
    member = tarfile.TarInfo("evil.exe")
    member.size = len(PE)
    payload = (header.tobuf(tarfile.USTAR_FORMAT) + record + bytes(-len(record) % 512)
               + member.tobuf(tarfile.USTAR_FORMAT) + PE + bytes(-len(PE) % 512) + bytes(1024))
    found, _ = listing(payload)
    assert any(m.data == PE for m in found.members) or found.problems


def test_tar_links_are_listed_with_their_names():
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as archive:
        info = tarfile.TarInfo("payload.bin")
        info.size = len(PE)
        archive.addfile(info, io.BytesIO(PE))
        hard = tarfile.TarInfo("invoice.exe")
        hard.type, hard.linkname = tarfile.LNKTYPE, "payload.bin"
        archive.addfile(hard)
        soft = tarfile.TarInfo("readme.exe")
        soft.type, soft.linkname = tarfile.SYMTYPE, "/etc/passwd"
        archive.addfile(soft)
    found, _ = listing(out.getvalue())
    named = by_name(found)
    assert named["invoice.exe"][0].data == PE          # a hard link is the same file
    assert named["readme.exe"][0].data == b"/etc/passwd"  # a symlink: its target, never followed


def test_real_7z_cab_cpio_tnef_list_the_executable():
    for name in ("clam.7z", "clam.cab", "clam.newc.cpio", "clam.bin-be.cpio", "clam.tnef",
                 "clam.tar.gz", "clam.exe.bz2"):
        found, _ = listing(clamav(name))
        assert any(m.data and m.data[:2] == b"MZ" for m in found.members), name
        assert not found.problems, name


# --- deadline --------------------------------------------------------------------------------

def test_past_deadline_stops_before_the_first_member():
    for payload in (zipped([("a", b"1")]), written("pax", [("a", b"1")], "gzip")):
        found, _ = listing(payload, deadline=time.monotonic() - 1)
        assert Uninspectable.TIME in found.problems and not found.members


@pytest.mark.parametrize("make", [
    lambda files: zipped(files), lambda files: written("pax", files, "gzip"),
])
def test_deadline_cuts_the_listing_between_and_inside_members(make, monkeypatch):
    """A clock that moves one tick per look: for every deadline, what is listed is a correct
    prefix, and a listing cut short says TIME (on itself, and on a member it cut)."""
    files = [(f"m{i}.bin", os.urandom(150_000)) for i in range(4)]
    payload = make(files)
    cut_inside = cut_between = False
    for deadline in range(0, 80):
        ticks = iter(range(10_000))
        monkeypatch.setattr(archives, "time", types.SimpleNamespace(monotonic=lambda: next(ticks)))
        found = archives.members(payload, archives.kind(payload, ""), budget(), float(deadline))
        complete = [m for m in found.members if m.problem is None]
        assert [(m.name, m.data) for m in complete] == files[:len(complete)]
        if Uninspectable.TIME not in found.problems:
            assert len(complete) == len(files)
            continue
        cut = [m for m in found.members if m.problem is not None]
        assert all(m.problem is Uninspectable.TIME and m.truncated for m in cut)
        for member in cut:
            assert dict(files)[member.name].startswith(member.data)
        cut_inside |= bool(cut)
        cut_between |= not cut and 0 < len(complete) < len(files)
    assert cut_inside and cut_between


def test_read_bounded_stops_at_the_deadline_inside_a_member(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(archives, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    source = io.BytesIO(bytes(500_000))

    def read(size: int) -> bytes:
        now[0] += 1    # each block takes a second
        return source.read(size)

    result = archives.read_bounded(read, None, budget(), deadline=2.5)
    assert result.problem is Uninspectable.TIME
    assert 0 < len(result.data) < 500_000


# --- TNEF ------------------------------------------------------------------------------------

def tnef_object(level: int, name: int, kind: int, data: bytes) -> bytes:
    return bytes([level]) + struct.pack("<HHI", name, kind, len(data)) + data \
        + struct.pack("<H", sum(data) & 0xFFFF)


TNEF_HEADER = struct.pack("<IH", 0x223E9F78, 1)


def tnef_with(attachments: list[tuple[bytes, bytes]], extra: bytes = b"") -> bytes:
    body = TNEF_HEADER + tnef_object(1, 0x9006, 0x0008, struct.pack("<I", 0x10000))
    for title, data in attachments:
        body += tnef_object(2, 0x9002, 0x0006, bytes(14))           # attRenddata: a new one
        body += tnef_object(2, 0x8010, 0x0001, title + b"\0")       # attAttachTitle
        body += tnef_object(2, 0x800F, 0x0006, data)                # attAttachData
    return body + extra


def test_tnef_attachments_are_members():
    payload = tnef_with([(b"invoice.exe", PE), (b"note.txt", b"hello")])
    assert archives.kind(payload, "") == "tnef"
    found, spent = listing(payload)
    assert [(m.name, m.data) for m in found.members] == [
        ("invoice.exe", PE), ("note.txt", b"hello")]
    assert not found.problems and spent.members == 2


def test_broken_tnef_is_corrupt():
    payload = TNEF_HEADER + tnef_object(2, 0x800F, 0x0006, PE)   # data before any attachment
    assert archives.members(payload, "tnef", budget()).problems == {Uninspectable.CORRUPT}


def test_tnef_with_an_impossible_property_count_is_refused_at_once():
    """tnefparse would go round 2**32 times, logging each."""
    mapi = struct.pack("<I", 0xFFFFFFFF) + bytes(8)
    payload = tnef_with([(b"a.txt", b"x")], tnef_object(2, 0x9005, 0x0006, mapi))
    assert archives.members(payload, "tnef", budget()).problems == {Uninspectable.CORRUPT}


def test_tnef_with_too_many_objects_is_refused_at_once():
    """tnefparse copies the rest of the file for each object: quadratic."""
    payload = TNEF_HEADER + tnef_object(1, 0x7777, 0x0006, b"") * 200_000
    spent = budget()
    assert archives.members(payload, "tnef", spent).problems == {Uninspectable.LIMIT}
    assert Limit.ARCHIVE_MEMBERS in spent.exceeded
