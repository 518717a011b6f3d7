"""Active content in documents: Office macros, PDF actions, HTML scripts.

Each check reports that a document *can* run code, never what the code does. All are linear in
the payload and never raise (MemoryError aside).

- OOXML macros: a zip member named `vbaProject.bin` (any case, any folder) — checked by the
  caller while listing members, since it needs the member names.
- OLE2 macros (`ole_has_macros`), in order, cheapest first:
  1. the byte search: `_VBA_PROJECT` anywhere, or a `VBA` directory entry at a 128-byte
     boundary (names are UTF-16LE; entries are 128-byte aligned since sectors start at
     multiples of 512). It may find a name in an unallocated slot: a false positive we accept.
  2. the directory read by olefile: a storage named `VBA` or a stream `_VBA_PROJECT` in any
     case (compound file names are compared case-insensitively by Office, not by the byte
     search), and the globals substream of a `Workbook`/`Book` stream declaring an Excel 4
     (XLM) macro sheet or VBA module sheet (BOUNDSHEET, [MS-XLS] §2.4.28). Our own walk:
     oletools finds XLM only when its type guesser takes the file for Excel by its CLSID,
     which the sender chooses.
  3. oletools' `VBA_Parser.detect_vba_macros()`: the VBA project structure ([MS-OVBA]
     §2.2.1) and compressed VBA source ("Attribut\\0") in any stream, orphans included.
     Skipped for PowerPoint 97 files (oletools inflates their compressed VBA storage without a
     bound: a zip bomb; `embedded` lists that storage as a member instead, which is then
     checked as an OLE2 file of its own).
  Fail closed: True also means "macros could not be ruled out": an OLE2 file that olefile or
  oletools cannot read, one whose directory declares more than MAX_OLEVBA_DIRECTORY_ENTRIES
  entries (counted from the raw header and FAT, `directory_entries`; not opened at all), one whose streams claim far more bytes than the file holds (a file
  built to make its readers loop), and an encrypted workbook (BIFF FILEPASS: the sheet types
  are encrypted, so an XLM sheet cannot be seen).
- PDF (`pdf_active_content`): JavaScript, launch actions, embedded files (/EmbeddedFile(s), and
  /EF, the embedded-file entry of a file specification, which an attachment annotation may
  carry without either), rich media, XFA. Names may be #xx-escaped. Names inside compressed
  object streams (/ObjStm) are searched when the caller passes the inflated object streams:
  `embedded.read` does, inflating each PDF once, and answers the flag itself.
- HTML (`html_script`): <script>, on* handlers, javascript:/vbscript: URLs, in the bytes as
  they are and, for HTML in UTF-16 or UTF-32 (marked by a BOM, or UTF-16 recognised by its
  NULs), in the decoded text. Known gap: entity-obfuscated schemes (`java&#x73;cript:`).

Bounds: MAX_OLEVBA_DIRECTORY_ENTRIES, MAX_STREAM_BYTES_FACTOR, MAX_BIFF_RECORDS below; the
UTF-16 guess looks at UTF16_SAMPLE_BYTES.
"""

from __future__ import annotations

import io
import re
import struct
import warnings
from collections.abc import Iterable, Iterator

import olefile

with warnings.catch_warnings():
    # oletools 0.60 calls pyparsing's pre-3.0 names at import; nothing we can change.
    warnings.simplefilter("ignore", DeprecationWarning)
    from oletools import olevba

OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_VBA_PROJECT = "_VBA_PROJECT".encode("utf-16-le")
_VBA_ENTRY = "VBA\0".encode("utf-16-le")

# Office documents hold tens of directory entries, big workbooks a few hundred. olefile checks
# each new stream against all earlier ones when it opens a file, and finds each stream by a scan
# of its siblings: quadratic (1.3 s to open 16k entries; 0.04 s, plus 0.17 s to read every
# stream, at this bound). Past it a compound file is not opened (`open_compound_file`).
MAX_OLEVBA_DIRECTORY_ENTRIES = 2048
# The bytes all streams of a compound file may claim together, as a multiple of the file's
# size (plus a MiB of slack): streams that share sectors make readers read one file many times.
MAX_STREAM_BYTES_FACTOR = 2
_STREAM_BYTES_SLACK = 1024 * 1024
# BIFF records walked in a workbook's globals substream; real ones hold a few thousand.
MAX_BIFF_RECORDS = 200_000

_BIFF_BOF, _BIFF_EOF, _BIFF_BOUNDSHEET, _BIFF_FILEPASS = 0x0809, 0x000A, 0x0085, 0x002F
_XLM_SHEET_TYPES = frozenset({0x01, 0x06})   # [MS-XLS] §2.4.28 dt: macro sheet, VBA module


class CompoundFileTooLarge(Exception):
    """A compound file whose directory holds more than MAX_OLEVBA_DIRECTORY_ENTRIES entries:
    not opened (olefile's reading is quadratic in them), so not inspected."""


class MalformedCompoundFile(ValueError):
    """A compound file whose header, FAT or directory tree we cannot follow."""


_ENDOFCHAIN, _FREESECT = 0xFFFFFFFE, 0xFFFFFFFF
_HEADER_DIFAT_ENTRIES = 109
_DIRECTORY_ENTRY_BYTES = 128


def directory_entries(payload: bytes) -> int:
    """The directory entries a compound file declares ([MS-CFB] §2.2, §2.3, §2.5): the sectors
    of the directory chain times the entries per sector, counted from the raw bytes without
    olefile. Counting stops past MAX_OLEVBA_DIRECTORY_ENTRIES and on a loop; a header, DIFAT
    or FAT that cannot be followed raises MalformedCompoundFile."""
    if len(payload) < 512 or not payload.startswith(OLE_MAGIC):
        raise MalformedCompoundFile("no compound file header")
    shift = struct.unpack_from("<H", payload, 0x1E)[0]
    if shift not in (9, 12):
        raise MalformedCompoundFile(f"sector shift {shift}")
    size = 1 << shift
    sectors = (len(payload) + size - 1) // size - 1   # as olefile counts them: the last may be short
    fat_count, first_directory = struct.unpack_from("<II", payload, 0x2C)
    difat_next, difat_count = struct.unpack_from("<II", payload, 0x44)
    if fat_count > sectors:
        raise MalformedCompoundFile("more FAT sectors than the file holds")

    def sector(number: int) -> bytes:
        if number >= sectors:
            raise MalformedCompoundFile(f"sector {number} past the end")
        return payload[(number + 1) * size:(number + 2) * size].ljust(size, b"\0")

    fat_sectors = list(struct.unpack_from(f"<{_HEADER_DIFAT_ENTRIES}I", payload, 0x4C))[:fat_count]
    per_difat = size // 4 - 1
    seen: set[int] = set()
    while len(fat_sectors) < fat_count and difat_next not in (_ENDOFCHAIN, _FREESECT):
        if difat_next in seen or len(seen) >= difat_count:   # bounded by the header's count
            raise MalformedCompoundFile("DIFAT chain loops or runs past its count")
        seen.add(difat_next)
        values = struct.unpack(f"<{per_difat + 1}I", sector(difat_next))
        fat_sectors.extend(values[:per_difat])
        difat_next = values[per_difat]
    fat_sectors = fat_sectors[:fat_count]
    if len(fat_sectors) < fat_count:
        raise MalformedCompoundFile("FAT sectors missing from the DIFAT")

    per_fat = size // 4
    bound = MAX_OLEVBA_DIRECTORY_ENTRIES * _DIRECTORY_ENTRY_BYTES // size
    count, current, visited = 0, first_directory, set()
    while current != _ENDOFCHAIN and count <= bound:
        if current in visited:
            break   # a loop: olefile decides what the file is; its size is what we counted
        if current >= sectors or current // per_fat >= len(fat_sectors):
            raise MalformedCompoundFile(f"directory sector {current} out of range")
        visited.add(current)
        count += 1
        current = struct.unpack_from("<I", sector(fat_sectors[current // per_fat]), current % per_fat * 4)[0]
    return count * size // _DIRECTORY_ENTRY_BYTES


def open_compound_file(payload: bytes) -> olefile.OleFileIO:
    """olefile's reader on `payload`, once its directory is known to be small enough:
    CompoundFileTooLarge past MAX_OLEVBA_DIRECTORY_ENTRIES, MalformedCompoundFile when the
    directory cannot be counted."""
    if directory_entries(payload) > MAX_OLEVBA_DIRECTORY_ENTRIES:
        raise CompoundFileTooLarge(f"more than {MAX_OLEVBA_DIRECTORY_ENTRIES} directory entries")
    # Always a file object: olefile takes bytes shorter than 1536 for a file name to open.
    return olefile.OleFileIO(io.BytesIO(payload))


def walk_compound_file(ole: olefile.OleFileIO) -> Iterator[tuple[list[str], olefile.olefile.OleDirectoryEntry]]:
    """(path components, entry) for every storage and stream of the directory tree, without
    recursion (olefile's own path lookup is linear per call: quadratic over a directory).
    Names compare case-insensitively ([MS-CFB] §2.6.4), as olefile's `openstream` finds them:
    two siblings whose names differ only in case raise MalformedCompoundFile (the second could
    not be read by its path)."""
    def kids(parent: list[str], storage) -> list[tuple[list[str], olefile.olefile.OleDirectoryEntry]]:
        names = {kid.name.lower() for kid in storage.kids}
        if len(names) < len(storage.kids):
            raise MalformedCompoundFile("two entries of one storage share a name")
        return [([*parent, kid.name], kid) for kid in reversed(storage.kids)]

    stack = kids([], ole.root)
    while stack:
        path, entry = stack.pop()
        yield path, entry
        if entry.entry_type == olefile.STGTY_STORAGE:
            stack.extend(kids(path, entry))


def read_stream(ole: olefile.OleFileIO, path: list[str]) -> bytes:
    """A stream's bytes by its path components (as `walk_compound_file` yields them)."""
    with ole.openstream(path) as stream:
        return stream.read()


def declared_stream_bytes(ole: olefile.OleFileIO) -> int:
    """The bytes all streams of the directory tree claim. Entries not in the tree (unused or
    orphaned) are not counted: olefile's public API reaches only the tree."""
    return sum(entry.size for _, entry in walk_compound_file(ole)
               if entry.entry_type == olefile.STGTY_STREAM)


def biff_globals(workbook: bytes) -> tuple[bool, bool]:
    """(declares an XLM or VBA module sheet, is encrypted) from a BIFF5/BIFF8 workbook stream's
    globals substream: the records from the first BOF to its EOF. A walk that cannot finish
    (a record past the end, too many records) answers (True, False): not ruled out."""
    position, count = 0, 0
    started = False
    while position + 4 <= len(workbook):
        kind, length = struct.unpack_from("<HH", workbook, position)
        body = position + 4
        if body + length > len(workbook):
            return True, False
        count += 1
        if count > MAX_BIFF_RECORDS:
            return True, False
        if kind == _BIFF_BOF:
            started = True
        elif kind == _BIFF_FILEPASS:
            return False, True
        elif kind == _BIFF_BOUNDSHEET and length >= 6 and workbook[body + 5] in _XLM_SHEET_TYPES:
            return True, False
        elif kind == _BIFF_EOF and started:
            return False, False
        position = body + length
    return False, False


def _vba_names(payload: bytes) -> bool:
    if _VBA_PROJECT in payload:
        return True
    position = payload.find(_VBA_ENTRY)
    while position != -1:
        if position % 128 == 0:
            return True
        position = payload.find(_VBA_ENTRY, position + 1)
    return False


def ole_has_macros(payload: bytes) -> bool:
    """VBA or Excel 4 macros in an OLE2 compound file, or macros that cannot be ruled out
    (see the module docstring). False at once for anything else."""
    if not payload.startswith(OLE_MAGIC):
        return False
    if _vba_names(payload):
        return True
    try:
        with open_compound_file(payload) as ole:
            if declared_stream_bytes(ole) > MAX_STREAM_BYTES_FACTOR * len(payload) + _STREAM_BYTES_SLACK:
                return True
            powerpoint = False
            for path, entry in walk_compound_file(ole):
                name, top = entry.name.lower(), len(path) == 1
                if entry.entry_type == olefile.STGTY_STORAGE and name == "vba":
                    return True
                if entry.entry_type != olefile.STGTY_STREAM:
                    continue
                if name == "_vba_project":
                    return True
                if top and name in ("workbook", "book"):
                    xlm, encrypted = biff_globals(read_stream(ole, path))
                    if xlm or encrypted:
                        return True
                powerpoint = powerpoint or (top and name == "powerpoint document")
            if powerpoint or len(ole.direntries) > MAX_OLEVBA_DIRECTORY_ENTRIES:
                return False
        parser = olevba.VBA_Parser("attachment", data=payload, relaxed=True)
        try:
            return bool(parser.detect_vba_macros())
        finally:
            parser.close()
    except MemoryError:
        raise
    except Exception:  # an OLE2 file its readers choke on or we do not open: not ruled out
        return True


# PDF names (ISO 32000 §7.3.5) may spell any byte as #xx: /J#61vaScript is /JavaScript.
_PDF_ACTIVE_NAMES = frozenset({b"javascript", b"js", b"launch", b"embeddedfile", b"embeddedfiles",
                               b"ef", b"richmedia", b"xfa"})
PDF_ENCRYPT = b"encrypt"   # the trailer's /Encrypt: strings and streams are encrypted
_PDF_NAMES = _PDF_ACTIVE_NAMES | {PDF_ENCRYPT}
# One pass over the PDF, not two: each name is either one we look for written plainly (group 1),
# or one with #xx escapes to decode and look up. Neither kind holds a "/", so no match of one
# kind can hide a match of the other.
_PDF_NAME = re.compile(rb"/(?:(JavaScript|JS|Launch|EmbeddedFiles?|EF|RichMedia|XFA|Encrypt)(?![A-Za-z0-9#])"
                       rb"|[A-Za-z0-9]*#[0-9A-Fa-f]{2}[A-Za-z0-9#]*)")
_HEX_ESCAPE = re.compile(rb"#([0-9A-Fa-f]{2})")


def unescape_pdf_names(data: bytes) -> bytes:
    """#xx escapes decoded (ISO 32000 §7.3.5). Applied to a name or to a dictionary's text."""
    return _HEX_ESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), data)


def is_pdf(payload: bytes) -> bool:
    # Readers accept the header anywhere in the first 1024 bytes.
    return b"%PDF-" in payload[:1024]


# Without any "#" only plain names can match: half the time on the name-dense object streams.
_PDF_PLAIN_NAME = re.compile(rb"/(JavaScript|JS|Launch|EmbeddedFiles?|EF|RichMedia|XFA|Encrypt)"
                             rb"(?![A-Za-z0-9#])")


def pdf_names(data: bytes) -> frozenset[bytes]:
    """The active names, and /Encrypt, that `data` holds: lower-case, #xx escapes decoded."""
    found = set()
    for match in (_PDF_NAME if b"#" in data else _PDF_PLAIN_NAME).finditer(data):
        plain = match.group(1)
        name = (plain if plain is not None else unescape_pdf_names(match.group(0))[1:]).lower()
        if name in _PDF_NAMES:
            found.add(name)
    return frozenset(found)


def names_active(found: frozenset[bytes]) -> bool:
    return not found.isdisjoint(_PDF_ACTIVE_NAMES)


def pdf_active_content(payload: bytes, object_streams: Iterable[bytes] = ()) -> bool:
    """JavaScript, launch actions, embedded files, rich media or XFA forms, escaped or not, in
    the PDF's bytes or in its inflated object streams (`object_streams`; `embedded.read`
    passes them; without them, names inside compressed object streams are not seen).
    An /OpenAction pointing at JavaScript is caught by the /JavaScript or /JS it must name."""
    return any(names_active(pdf_names(text)) for text in (payload, *object_streams))


_HTML_SCRIPT = re.compile(
    rb"<\s*script\b|[\s/\"'`]on[a-z]{3,30}\s*=|javascript\s*:|vbscript\s*:", re.I
)
HTML_EXTENSIONS = frozenset({"htm", "html", "xhtml", "shtml", "hta", "svg", "mht", "mhtml"})

# Byte order marks, longest first: FF FE 00 00 is UTF-32LE to some readers and UTF-16LE
# followed by a NUL to browsers (WHATWG Encoding has no UTF-32); both readings are searched.
_BOMS = ((b"\xff\xfe\x00\x00", ("utf-32-le", "utf-16-le")), (b"\x00\x00\xfe\xff", ("utf-32-be",)),
         (b"\xef\xbb\xbf", ()), (b"\xff\xfe", ("utf-16-le",)), (b"\xfe\xff", ("utf-16-be",)))
UTF16_SAMPLE_BYTES = 4096
_UTF16_NUL_SHARE = 0.3   # NULs at the even or odd positions of the sample: ASCII text in UTF-16


def html_readings(payload: bytes) -> Iterator[bytes]:
    """The payload, then (for UTF-16 or UTF-32 HTML) its decoded text as UTF-8: what a
    browser or mail client renders. Markup is ASCII, so a search of these finds it in any of
    the encodings. UTF-16 without a BOM is recognised by NULs at every other position (ASCII
    in UTF-16) and read both ways; a client told `charset=utf-16` reads it so."""
    yield payload
    for bom, encodings in _BOMS:
        if payload.startswith(bom):
            for encoding in encodings:
                yield payload[len(bom):].decode(encoding, "replace").encode("utf-8")
            return
    sample = payload[:UTF16_SAMPLE_BYTES]
    half = len(sample) // 2
    if half >= 4 and max(sample[0::2].count(0), sample[1::2].count(0)) >= _UTF16_NUL_SHARE * half:
        for encoding in ("utf-16-le", "utf-16-be"):
            yield payload[: len(payload) & ~1].decode(encoding, "replace").encode("utf-8")


def html_script(payload: bytes) -> bool:
    return any(_HTML_SCRIPT.search(text) is not None for text in html_readings(payload))
