"""Archive members, listed and read in memory under a per-message budget. Never extracts.

Interface: `kind(payload, detected_type)` says which reader opens a payload;
`members(payload, kind, budget, deadline)` lists what it holds as a `members.Listing`;
`read_bounded(...)` is the one bounded read loop, for other container readers too. `Budget`
is what all containers of one message may still use (`embedded` draws on it as well).

Which reader (`kind`), by content only — magic bytes first, then libmagic's detected type; the
sender's name and declared type never count. libmagic's word is taken even where it is loose
(it calls text that starts "SIT!" StuffIt): such a part is then a container that cannot be
read, which fails closed.
- "zip": zip and everything built on it (OOXML, ODF, EPUB, JAR, APK, CRX, self-extractors).
  Read twice, because clients read zips two ways: by the central directory with stdlib
  `zipfile` (Windows Explorer, 7-Zip, unzip; data prepended to the zip is allowed), and by the
  local headers with libarchive's streaming zip reader (Java's ZipInputStream, bsdtar from a
  pipe, streaming scanners), from the first local header signature. libarchive reads a zip in
  memory by its central directory too, so the local reading asks for "zip_streamable" by name.
  A member both readings agree on (same stored name, same bytes) is listed once; every other
  member of either is listed as well, and `Listing.disagreement` is set when the two list
  different names (two zips concatenated: zipfile reads the last, the stream the first; a zip
  without a central directory; local names that differ from the central ones) or read one
  name differently (different bytes; or cleanly by one, failing in the other). A member is
  encrypted when its central flag, its local flag (APPNOTE 4.4.4 bit 0) or libarchive says
  so: clearing the flag in the central directory only does not hide encryption. Cost: when
  the stream stands at the very local header the directory points at (its position says so)
  and that header says what the directory says (name, method, CRC, sizes; no data
  descriptor, no encryption), both readers decode the same bytes the same way, so that member
  is not inflated a second time; every other local entry is read in full. A zip written as a
  stream (data descriptors: Java's jars, many streaming writers) is inflated twice.
- "libarchive": 7z, rar 4 and 5, cab, cpio, iso9660, lha/lzh, xar, tar (pax headers, GNU
  sparse files), ar (.deb), warc, rpm, and the single-file compressors gzip, bzip2, xz,
  lzma, lzip, zstd, lz4 and compress (.Z), alone or around any of these. A compressed stream
  that holds no archive is one member, named from the gzip FNAME field or "" (the caller then
  names it after the holder). Links are members: a hard link with its target's bytes, a
  symbolic link with its target path as its data (never followed). A 7z inside a compressor
  is listed by name but cannot be read (7z seeks): CORRUPT. stdlib `tarfile` is not used: a
  crafted pax header stalls it for seconds (CVE-2024-6232).
- "tnef": Microsoft TNEF (winmail.dat), read by `tnefparse`; each attachment is a member (an
  attached message is a member that is itself TNEF). tnefparse is quadratic in the number of
  objects and loops on counts it reads from the file, so the file's structure is walked first,
  linearly, and one that would cost more than MAX_TNEF_STEPS or MAX_TNEF_COPY_BYTES is not
  given to it (LIMIT and `Limit.ARCHIVE_MEMBERS`; messages nested past MAX_TNEF_DEPTH: LIMIT
  and `Limit.ARCHIVE_DEPTH`; a count larger than the file could hold: CORRUPT). tnefparse's
  log lines are silenced: each malformed object would make one.
- "unsupported": container formats we know and cannot open — ARJ, ACE, StuffIt, zoo, ARC,
  MS-compress (SZDD, KWAJ, SZ), Symbian .sis, CHM, MacBinary, lzop, lrzip, grzip, bzip (1),
  raw zlib, disk images (VHD, VHDX, qcow, DMG, WIM, raw). An ISO image with a UDF file system
  is unsupported too: Windows mounts its UDF view, which libarchive cannot read. (BinHex is
  text: `decode` finds and decodes its blocks.)

Guarantees:
- Never raises on hostile input (MemoryError aside). What could not be read is a `problem`:
  on a member — ENCRYPTED (data None), UNSUPPORTED (a compression method we cannot decode;
  data None), CORRUPT (a broken stream or CRC; `data` is what was read before, `truncated`),
  DECODER_ERROR (a reader raised something unforeseen), LIMIT (a bound cut it), TIME (the
  deadline cut it). Both readers raise in the read that meets a bad CRC or block, so that
  read's bytes are not in `data` (libarchive inflates up to 256 KiB ahead). On the listing —
  CORRUPT (the container could not be opened, or its
  listing broke off: members read before are kept), UNSUPPORTED ("unsupported" kind), ENCRYPTED
  (a listing stopped by encryption: encrypted headers, or a streamed zip that cannot find the
  end of an encrypted member), LIMIT (members left unlisted by a bound), TIME, DECODER_ERROR.
  One bad member never hides the next: each is read in its own try.
- Nothing is written to disk, no path is followed, no program is run: libarchive gets only
  the formats and filters above (not its "all": "mtree" would read the files an archive names
  from our disk, and lrzip, lzop and grzip run external programs).
- libarchive's errors are classified by their text (ENCRYPTED, UNSUPPORTED, else CORRUPT).

Bounds (from `InspectionLimits`, shared by all containers of one message through `Budget`):
- `max_archive_members`: entries of all containers together (directories count); past it
  the listing stops, LIMIT on the listing and `Limit.ARCHIVE_MEMBERS`. A member both zip
  readings agree on counts once.
- `max_expanded_size`: bytes read out of all members together, read in CHUNK_BYTES blocks and
  stopped at the bound (LIMIT, `Limit.EXPANDED_SIZE`), so a bomb never fully inflates. Bytes
  the second zip reading shares with the first are neither kept nor counted twice.
- `max_compression_ratio`: a member whose bytes read pass the ratio times its compressed size
  (and at least RATIO_FLOOR_BYTES: a tiny member cannot hurt, and short runs of zeros compress
  very well) stops there (LIMIT, `Limit.COMPRESSION_RATIO`). Only bytes actually produced
  count; the compressed size is the zip's declared one, at most the payload (zipfile), or the
  compressed bytes libarchive has consumed since the member began (so a member of a solid or
  compressed archive is measured on what it really took).
- A libarchive listing stops at the first member cut by a bound: moving on to the next member
  would make libarchive decompress the rest of the cut one inside a single call.
- `deadline` (a `time.monotonic()` value) is checked between members and between blocks; past
  it the listing stops with TIME (the caller records `Limit.TIME`).
- `max_archive_depth` is applied by the caller (`inspect`), which recurses into members.

Known gaps: one libarchive call is not interruptible (a 7z whose header alone decompresses to
libarchive's own 100 MB bound is read before we see a member); a file that is two formats at
once is read as the one its first bytes say (a zip whose local header is also a valid tar
header reads as zip); zipfile parses a whole central directory before the member bound
applies (linear in the payload); libarchive converts names to the process locale, so under a
non-UTF-8 locale a UTF-8 member name of the local reading is lost (read as "", a
disagreement): run the relay with a UTF-8 LC_CTYPE; the TNEF message body (plain, HTML,
compressed RTF) is not listed, only attachments.

This module is longer than 400 lines because its four readers share one budget, one read loop
and one libarchive handle; each reader is its own section.
"""

from __future__ import annotations

import copy
import ctypes
import io
import logging
import lzma
import posixpath
import re
import struct
import time
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import IO, cast

import libarchive.ffi
import tnefparse

from frontfilter import bytesfind
from frontfilter.content.limits import InspectionLimits
from frontfilter.content.members import Listing, Member
from frontfilter.content.facts import Limit, Uninspectable
from frontfilter.mapped import MappedText, MessageBytes, as_bytes, release_pages

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB

CHUNK_BYTES = 64 * KIB
RATIO_FLOOR_BYTES = 1 * MIB
# TNEF: tnefparse copies the rest of the file for every object it reads and runs Python code
# per object and per MAPI property. A real winmail.dat has a few dozen objects and a few
# hundred properties; these bounds keep one file under about a second of parsing.
MAX_TNEF_STEPS = 50_000           # objects + MAPI properties + property values, nested included
MAX_TNEF_COPY_BYTES = 1 * GIB     # bytes tnefparse would copy (about 0.2 s of memcpy)
MAX_TNEF_DEPTH = 8                # messages attached to attached messages: Outlook nests forwards
_TNEF_SKIPPED_PROPERTIES = 16     # properties past the end tnefparse may skip (one log call each)

_EOCD = b"PK\x05\x06"
_EOCD_SEARCH_BYTES = 65536 + 22   # the end record sits in the last 22 bytes + a 64 KiB comment
_LOCAL_HEADER = struct.Struct("<4s5H3L2H")   # APPNOTE 4.3.7: signature … name, extra lengths
_LOCAL_SIGNATURE = b"PK\x03\x04"
_ZIP_FLAG_ENCRYPTED = 0x1        # APPNOTE 4.4.4 bit 0
_ZIP_FLAG_DESCRIPTOR = 0x8       # APPNOTE 4.4.4 bit 3: sizes and CRC follow the data
_ZIP_FLAG_UTF8 = 0x800           # APPNOTE 4.4.4 bit 11: the name is UTF-8, else CP437

# --- kinds -----------------------------------------------------------------------------------

_TNEF_MAGIC = b"\x78\x9f\x3e\x22"    # 0x223e9f78, little-endian
# What libarchive opens with the formats and filters below, by its first bytes: regex
# alternatives matched at offset 0, each strict enough that text or random bytes do not start
# with it (a false match makes an ordinary attachment a CORRUPT container). Binary cpio's two
# bytes are too few: libmagic's detected type finds it.
_LIBARCHIVE_MAGIC = (
    rb"7z\xbc\xaf\x27\x1c", rb"Rar!\x1a\x07[\x00\x01]", rb"MSCF\x00{4}", rb"xar!\x00\x1c",
    rb"!<arch>\n", rb"07070[12][0-9A-Fa-f]{104}", rb"070707[0-7]{70}",     # cpio newc/crc, odc
    rb"WARC/[01]\.[0-9]", rb"\xed\xab\xee\xdb",                           # warc, rpm
    rb"\x1f\x8b\x08", rb"BZh[1-9](?:1AY&SY|\x17rE8P\x90)", rb"\xfd7zXZ\x00",  # gzip bzip2 xz
    rb"\x28\xb5\x2f\xfd", rb"\x04\x22\x4d\x18", rb"\x02\x21\x4c\x18",       # zstd, lz4 frame/legacy
    rb"\x1f\x9d[\x09-\x10\x89-\x90]", rb"LZIP\x01",                    # compress (.Z), lzip
    rb".{257}ustar", rb"..-l[hz][0-9a-z ]-",                                # tar; lha/lzh method id
)
_ISO_DESCRIPTORS = 0x8000        # ECMA-119 §6.2.1: the system area is the first 16 sectors
_SECTOR_BYTES = 2048
_UDF_IDS = (b"NSR02", b"NSR03")  # ECMA-167 volume recognition: a UDF file system is present
_UNSUPPORTED_MAGIC = (
    rb"SZDD\x88\xf0\x27\x33", rb"KWAJ\x88\xf0\x27\xd1", rb"SZ \x88\xf0\x27\x33\xd1",   # MS compress
    rb".{7}\*\*ACE\*\*", rb"SIT!.{6}rLau", rb"StuffIt \(c\)1997", rb".{20}\xdc\xa7\xc4\xfd",  # zoo
    rb"\x89LZO\x00\r\n\x1a\n", rb"LRZI\x00", rb"GRZipII\x00", rb"BZ0[1-9]",  # lzop lrzip grzip bzip
    rb"ITSF\x03\x00{3}", rb"vhdxfile", rb"conectix", rb"QFI\xfb", rb"MSWIM\x00{3}",  # CHM, images
    rb"\xff\x06\x00\x00sNaPpY", rb"mozLz40\x00",                          # snappy, mozlz4
)
_LIBARCHIVE_TYPES = frozenset({
    "application/x-7z-compressed", "application/x-rar", "application/vnd.rar",
    "application/vnd.ms-cab-compressed", "application/x-cpio", "application/x-iso9660-image",
    "application/x-lha", "application/x-lzh-compressed", "application/x-xar",
    "application/x-tar", "application/x-gtar", "application/x-ustar", "application/x-archive",
    "application/vnd.debian.binary-package", "application/warc", "application/x-rpm",
    "application/gzip", "application/x-gzip", "application/x-bzip2", "application/x-xz",
    "application/x-lzma", "application/x-lzip", "application/zstd", "application/x-lz4",
    "application/x-compress",
})
_UNSUPPORTED_TYPES = frozenset({
    "application/x-arj", "application/x-ace-compressed", "application/x-stuffit",
    "application/x-zoo", "application/x-arc", "application/x-ms-compress-szdd",
    "application/x-ms-compress-kwaj", "application/x-ms-compress-sz",
    "application/x-installshield-compress-szdd", "application/vnd.symbian.install",
    "application/vnd.ms-htmlhelp", "application/x-macbinary", "application/x-lrzip",
    "application/x-bzip", "application/zlib",
    "application/x-compress-cazip", "application/x-compress-ftcomp", "application/x-compress-j",
    "application/x-compress-jar", "application/x-compress-pucrunch",
    "application/x-compress-ttcomp", "application/x-dzip", "application/x-fzip",
    "application/x-qpress", "application/x-snappy-framed", "application/x-lz4+json",
    "application/x-novell-compress", "application/x-edi-pack-lzss", "application/x-ia-arc",
    "application/x-svr4-package", "application/x-compressed-iso", "application/x-apple-diskimage",
    "application/x-ms-wim", "application/x-qemu-disk", "application/x-virtualbox-vhd",
    "application/x-raw-disk-image", "application/x-nrg",
})


_LIBARCHIVE_AT = re.compile(b"|".join(_LIBARCHIVE_MAGIC), re.DOTALL)
_UNSUPPORTED_AT = re.compile(b"|".join(_UNSUPPORTED_MAGIC), re.DOTALL)
_ZIP_TYPES = frozenset({
    "application/zip", "application/x-zip", "application/java-archive", "application/epub+zip",
    "application/vnd.android.package-archive", "application/x-chrome-extension",
})


def kind(payload: MessageBytes, detected_type: str) -> str | None:
    """"zip", "libarchive", "tnef", "unsupported" or None (no container), by content."""
    if payload[:4] == _LOCAL_SIGNATURE:
        return "zip"
    if payload[:4] == _TNEF_MAGIC:
        return "tnef"
    if _UNSUPPORTED_AT.match(payload) or _arj(payload) \
            or payload[-512:-508] in (b"koly", b"conectix"):   # DMG, fixed-size VHD
        return "unsupported"
    if _LIBARCHIVE_AT.match(payload):
        return "libarchive"
    if any(payload.startswith(b"CD001", _ISO_DESCRIPTORS + i * _SECTOR_BYTES + 1)
           for i in range(3)):
        return "unsupported" if _udf(payload) else "libarchive"
    # From one \x05 to the next: text holds none (bytesfind; 2 us for 64 KB of text, 29 before).
    if bytesfind.find(payload, _EOCD, 2, max(len(payload) - _EOCD_SEARCH_BYTES, 0)) != -1:
        return "zip"   # data prepended: a self-extractor, a polyglot
    if detected_type in _ZIP_TYPES or detected_type.endswith("+zip") \
            or detected_type.startswith(("application/vnd.openxmlformats-officedocument.",
                                         "application/vnd.oasis.opendocument.")):
        return "zip"
    if detected_type == "application/vnd.ms-tnef":
        return "tnef"
    if detected_type in _UNSUPPORTED_TYPES:
        return "unsupported"
    if detected_type in _LIBARCHIVE_TYPES:
        return "unsupported" if _udf(payload) else "libarchive"
    return None


def _arj(payload: MessageBytes) -> bool:
    """ARJ: 0x60 0xEA, then a basic header of at most 2600 bytes (ARJ's own technote)."""
    return payload[:2] == b"\x60\xea" and len(payload) >= 4 \
        and 0 < int.from_bytes(payload[2:4], "little") <= 2600


def _udf(payload: MessageBytes) -> bool:
    """An ECMA-167 volume recognition sequence among the first descriptors: a UDF file system."""
    return any(payload.startswith(udf, _ISO_DESCRIPTORS + i * _SECTOR_BYTES + 1)
               for i in range(32) for udf in _UDF_IDS)


# --- budget and the bounded read -------------------------------------------------------------

@dataclass
class Budget:
    """What all containers of one message may still use. Mutable; owned by one `inspect` call."""

    limits: InspectionLimits
    exceeded: set[Limit] = field(default_factory=set)
    members: int = 0
    expanded_bytes: int = 0


@dataclass(frozen=True)
class BoundedRead:
    data: bytes
    problem: Uninspectable | None = None   # None: read to its end; else why it stopped there


def _take_member(budget: Budget) -> bool:
    if budget.members >= budget.limits.max_archive_members:
        budget.exceeded.add(Limit.ARCHIVE_MEMBERS)
        return False
    budget.members += 1
    return True


def _charge(budget: Budget, data: bytes) -> tuple[bytes, bool]:
    """Count kept bytes against the expanded size: (what fits, whether it was cut)."""
    room = max(budget.limits.max_expanded_size - budget.expanded_bytes, 0)
    if len(data) > room:
        budget.exceeded.add(Limit.EXPANDED_SIZE)
        data = data[:room]
        budget.expanded_bytes += room
        return data, True
    budget.expanded_bytes += len(data)
    return data, False


def _late(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() > deadline


# What the readers raise on malformed input: zipfile (BadZipFile, and the decompressors' zlib,
# lzma and bz2 (OSError) errors, EOFError when a stream ends early), struct on short headers.
_MALFORMED = (zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError, OSError, ValueError,
              struct.error, IndexError, KeyError)


def _failure(error: Exception) -> Uninspectable:
    if isinstance(error, _LibarchiveError):
        return error.problem
    if isinstance(error, NotImplementedError):   # zipfile: a compression method it lacks
        return Uninspectable.UNSUPPORTED
    return Uninspectable.CORRUPT if isinstance(error, _MALFORMED) else Uninspectable.DECODER_ERROR


def read_bounded(read: Callable[[int], bytes], compressed: int | Callable[[], int] | None,
                 budget: Budget, deadline: float | None = None,
                 twin: bytes | None = None) -> BoundedRead:
    """Read one member through `read(n)` (at most n bytes; b"" at its end) until its end, a
    bound, the deadline or an error. Never raises (MemoryError aside).

    `compressed` is the member's compressed size in bytes, or a function giving the compressed
    bytes consumed so far, or None when it is stored (no ratio bound). `twin` is what another
    reading of the same container already holds under this member's name: while the bytes
    read are a prefix of it they are neither kept nor counted again, and when the reading ends
    equal to it, `data` is `twin` itself."""
    limits = budget.limits
    # Written into one buffer that getvalue() hands over without a copy: a list of chunks
    # joined at the end held the member twice at its peak (a 19 MiB member: +19 MiB).
    kept = io.BytesIO()
    total = 0
    shared = twin is not None     # every byte so far equals same[:total] and is not kept
    same: bytes = twin if twin is not None else b""

    def result(problem: Uninspectable | None) -> BoundedRead:
        if not shared:
            return BoundedRead(kept.getvalue(), problem)
        if problem is None and total == len(same):
            return BoundedRead(same)
        data, cut = _charge(budget, same[:total])   # now a second, different copy
        return BoundedRead(data, problem or (Uninspectable.LIMIT if cut else None))

    while True:
        if _late(deadline):
            return result(Uninspectable.TIME)
        cap = None
        if compressed is not None:
            consumed = compressed() if callable(compressed) else compressed
            cap = max(limits.max_compression_ratio * max(consumed, 1), RATIO_FLOOR_BYTES)
        if cap is not None and total >= cap:
            try:
                more = read(1)
            except MemoryError:
                raise
            except Exception as error:
                return result(_failure(error))
            if not more:   # ended exactly at the cap: within the ratio
                return result(None)
            budget.exceeded.add(Limit.COMPRESSION_RATIO)
            return result(Uninspectable.LIMIT)
        room = limits.max_expanded_size - budget.expanded_bytes
        if room <= 0 and not shared:
            budget.exceeded.add(Limit.EXPANDED_SIZE)
            return result(Uninspectable.LIMIT)
        want = CHUNK_BYTES if shared else min(CHUNK_BYTES, room)
        if cap is not None:
            want = min(want, cap - total)
        try:
            chunk = read(want)
        except MemoryError:
            raise
        except Exception as error:   # a bad CRC, a broken stream: keep what a client got so far
            return result(_failure(error))
        if not chunk:
            return result(None)
        if shared:
            if same[total:total + len(chunk)] == chunk:
                total += len(chunk)
                continue
            shared = False
            prefix, cut = _charge(budget, same[:total])
            kept.write(prefix)
            if cut:
                return result(Uninspectable.LIMIT)
        chunk, cut = _charge(budget, chunk)
        kept.write(chunk)
        total += len(chunk)
        if cut:
            return result(Uninspectable.LIMIT)


def _member(name: str, read: BoundedRead, encrypted: bool = False) -> Member:
    data: bytes | None = read.data
    if read.problem in (Uninspectable.UNSUPPORTED, Uninspectable.ENCRYPTED) and not data:
        data = None
    return Member(name, data, encrypted=encrypted or read.problem is Uninspectable.ENCRYPTED,
                  truncated=read.problem is not None and data is not None, problem=read.problem)


def _decode_name(raw: bytes) -> str:
    """A stored name without a declared charset: UTF-8 when it is, else CP437 (zip's default)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("cp437")


# --- entry points ----------------------------------------------------------------------------

# The kinds whose readers take a payload mapped from a file (content.scratch): zipfile reads it
# as the file it is, libarchive through a pointer; both drop its pages behind them.
MAPPED_KINDS = ("zip", "libarchive")


def _releasing(read: Callable[[int], bytes], payload: MessageBytes) -> Callable[[int], bytes]:
    """`read`, and after each call the pages of a mapped `payload` dropped (MappedText.release):
    an archive's bytes are not held mapped beside the member read out of them."""
    if not isinstance(payload, MappedText):
        return read

    def read_then_release(size: int) -> bytes:
        try:
            return read(size)
        finally:
            payload.release()
    return read_then_release


def members(payload: MessageBytes, archive_kind: str, budget: Budget,
            deadline: float | None = None) -> Listing:
    """What the container holds, read under `budget` until `deadline` (`time.monotonic()`).
    `payload` may be mapped from a file (content.scratch): zip and libarchive read it there."""
    if archive_kind == "unsupported":
        return Listing(problems=frozenset({Uninspectable.UNSUPPORTED}))
    if archive_kind not in ("zip", "libarchive", "tnef"):
        raise ValueError(f"unknown archive kind {archive_kind!r}")
    if not isinstance(payload, (bytes, MappedText)):
        payload = bytes(payload)     # a bytearray or a view: libarchive needs bytes to point into
    try:
        if archive_kind == "zip":
            return _zip(payload, budget, deadline)
        if archive_kind == "libarchive":
            return _libarchive(payload, budget, deadline)
        return _tnef(as_bytes(payload), budget, deadline)
    except MemoryError:
        raise
    except Exception:   # a bug here, or an input nobody foresaw: a fact, never a pass
        return Listing(problems=frozenset({Uninspectable.DECODER_ERROR}))


@dataclass
class _Reading:
    """One reader's members, in order, with the names exactly as stored (bytes)."""

    members: list[Member] = field(default_factory=list)
    stored: list[bytes] = field(default_factory=list)
    problems: set[Uninspectable] = field(default_factory=set)
    opened: bool = True
    complete: bool = False   # every entry was seen (the names are the container's)
    first_header: int = -1   # zip: where the central directory's first member starts
    # zip: local header offset -> (member index, data offset), for the members whose local
    # header agrees field for field with the central directory (`_verbatim`)
    verbatim: dict[int, tuple[int, int]] = field(default_factory=dict)

    def add(self, stored: bytes, member: Member) -> None:
        self.stored.append(stored)
        self.members.append(member)


# --- libarchive ------------------------------------------------------------------------------

# Only what is listed here is read: libarchive's "all" would add mtree, which reads the files an
# archive names from our own disk, and filters that run lrzip, lzop or grzip as programs.
_FORMATS = ("7zip", "ar", "cab", "cpio", "empty", "iso9660", "lha", "rar", "rar5", "tar",
            "warc", "xar", "raw")   # raw: a compressed stream that holds no archive (.exe.bz2)
_FILTERS = ("bzip2", "compress", "gzip", "lz4", "lzip", "lzma", "rpm", "xz", "zstd")
_ARCHIVE_EOF, _ARCHIVE_WARN = 1, -20    # archive.h; below WARN the call failed
_FORMAT_RAW, _FORMAT_BASE_MASK = 0x90000, 0xFF0000
_TYPE_MASK, _TYPE_REGULAR, _TYPE_LINK = 0o170000, 0o100000, 0o120000

_lib = libarchive.ffi.libarchive   # the libarchive libarchive-c has loaded


def _function(name: str, restype, *argtypes):
    # Our own prototypes (indexing the CDLL makes a new function object): libarchive-c's
    # raise on ARCHIVE_FAILED and log ARCHIVE_WARN, and here what a return code means depends
    # on the call it came from (a failed member is not a failed archive).
    function = _lib[name]
    function.restype = restype
    function.argtypes = argtypes
    return function


_p, _int = ctypes.c_void_p, ctypes.c_int
_read_new = _function("archive_read_new", _p)
_read_free = _function("archive_read_free", _int, _p)
_support = {name: _function(f"archive_read_support_format_{name}", _int, _p) for name in _FORMATS}
_support_zip_streamable = _function("archive_read_support_format_zip_streamable", _int, _p)
_support_filter = {name: _function(f"archive_read_support_filter_{name}", _int, _p)
                   for name in _FILTERS}
_open_memory = _function("archive_read_open_memory", _int, _p, _p, ctypes.c_size_t)
_next_header = _function("archive_read_next_header2", _int, _p, _p)
_read_data = _function("archive_read_data", ctypes.c_ssize_t, _p, _p, ctypes.c_size_t)
_read_data_skip = _function("archive_read_data_skip", _int, _p)
_error_string = _function("archive_error_string", ctypes.c_char_p, _p)
_format = _function("archive_format", _int, _p)
_filter_count = _function("archive_filter_count", _int, _p)
_filter_bytes = _function("archive_filter_bytes", ctypes.c_int64, _p, _int)
_entry_new = _function("archive_entry_new", _p)
_entry_free = _function("archive_entry_free", None, _p)
_entry_pathname = _function("archive_entry_pathname", ctypes.c_char_p, _p)
_entry_pathname_utf8 = _function("archive_entry_pathname_utf8", ctypes.c_char_p, _p)
_entry_filetype = _function("archive_entry_filetype", ctypes.c_uint, _p)
_entry_hardlink = _function("archive_entry_hardlink", ctypes.c_char_p, _p)
_entry_symlink = _function("archive_entry_symlink", ctypes.c_char_p, _p)
_entry_is_encrypted = _function("archive_entry_is_encrypted", _int, _p)


class _LibarchiveError(Exception):
    def __init__(self, message: str):
        super().__init__(message)
        self.problem = _archive_problem(message)


def _archive_problem(message: str) -> Uninspectable:
    """libarchive says why only in words: "Passphrase required…", "Unsupported ZIP
    compression method (9: deflation-64-bit)", "The archive header is encrypted…"."""
    lowered = message.lower()
    if "encrypt" in lowered or "passphrase" in lowered or "password" in lowered:
        return Uninspectable.ENCRYPTED
    if "unsupported" in lowered or "not supported" in lowered:
        return Uninspectable.UNSUPPORTED
    return Uninspectable.CORRUPT


@dataclass(frozen=True)
class _Entry:
    stored: bytes            # the name as libarchive gives it, undecoded
    encrypted: bool
    regular: bool            # a file with data (a hard link may carry its data too)
    symlink: bytes | None
    hardlink: bytes | None
    scan_from: int           # where libarchive began looking for this header (from `start`)
    data_at: int             # where its data begins (from `start`)


class _Handle:
    """One libarchive reading of bytes in memory, from `start`."""

    def __init__(self, payload: MessageBytes, start: int, supports) -> None:
        self._payload = payload            # libarchive reads it in place: keep it alive
        # A mapped payload (content.scratch) is read through a ctypes view of its mapping,
        # let go of in `close` (a view held would keep the mapping from closing).
        self._view: ctypes.Array[ctypes.c_char] | None = None
        if isinstance(payload, MappedText):
            self._view = (ctypes.c_char * len(payload)).from_buffer(payload)
            base = ctypes.addressof(self._view)
        else:
            base = ctypes.cast(ctypes.c_char_p(payload), ctypes.c_void_p).value or 0
        self._archive = _read_new()
        self._entry = _entry_new()
        self._buffer = ctypes.create_string_buffer(CHUNK_BYTES)
        if not self._archive or not self._entry:
            self.close()
            raise MemoryError("libarchive could not allocate a reader")
        for support in supports:
            support(self._archive)
        opened = _open_memory(self._archive, base + start, len(payload) - start)
        self.opened = opened >= _ARCHIVE_WARN
        self._member_start = 0

    def __enter__(self) -> _Handle:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._archive:
            _read_free(self._archive)
            self._archive = None
        if self._entry:
            _entry_free(self._entry)
            self._entry = None
        self._view = None

    def error(self) -> str:
        return (_error_string(self._archive) or b"").decode("utf-8", "replace")

    def raw(self) -> bool:
        """The stream holds no archive format we enable: read as one raw member."""
        return _format(self._archive) & _FORMAT_BASE_MASK == _FORMAT_RAW

    def compressed(self) -> bool:
        """A compression filter was recognised (the count includes the reader's own "none")."""
        return _filter_count(self._archive) > 1

    def consumed(self) -> int:
        """Bytes of the payload consumed since the current member's header."""
        return _filter_bytes(self._archive, -1) - self._member_start

    def entries(self, reading: _Reading, deadline: float | None) -> Iterator[_Entry]:
        """Each header in turn. Records TIME, a failed header's problem, or completeness."""
        if not self.opened:
            reading.opened = False
            reading.problems.add(_archive_problem(self.error()))
            return
        first = True
        while True:
            if _late(deadline):
                reading.problems.add(Uninspectable.TIME)
                return
            # Skipped here rather than inside the next header call, so that where the search
            # for the next header begins is known (`_Entry.scan_from`).
            if not first and _read_data_skip(self._archive) < _ARCHIVE_WARN:
                reading.problems.add(_archive_problem(self.error()))
                return
            first = False
            scan_from = _filter_bytes(self._archive, -1)
            status = _next_header(self._archive, self._entry)
            if status == _ARCHIVE_EOF:
                reading.complete = True
                return
            if status < _ARCHIVE_WARN:   # WARN is a usable header (a name not convertible…)
                reading.problems.add(_archive_problem(self.error()))
                return
            self._member_start = _filter_bytes(self._archive, -1)
            entry = self._entry
            filetype = _entry_filetype(entry) & _TYPE_MASK
            yield _Entry(
                stored=_entry_pathname(entry) or _entry_pathname_utf8(entry) or b"",
                encrypted=bool(_entry_is_encrypted(entry)),
                regular=filetype == _TYPE_REGULAR,
                symlink=_entry_symlink(entry) if filetype == _TYPE_LINK else None,
                hardlink=_entry_hardlink(entry),
                scan_from=scan_from,
                data_at=self._member_start,
            )

    def read(self, size: int) -> bytes:
        got = _read_data(self._archive, self._buffer, min(size, CHUNK_BYTES))
        release_pages(self._payload)     # what libarchive read of a mapped payload
        if got < 0:
            raise _LibarchiveError(self.error())
        return ctypes.string_at(self._buffer, got)


_STOPS_LISTING = (Uninspectable.LIMIT, Uninspectable.TIME)


def _libarchive(payload: MessageBytes, budget: Budget, deadline: float | None) -> Listing:
    reading = _Reading()
    kept: dict[str, bytes] = {}   # normalised name -> data, for hard links
    supports = [_support_filter[name] for name in _FILTERS] + [_support[name] for name in _FORMATS]
    with _Handle(payload, 0, supports) as handle:
        for entry in handle.entries(reading, deadline):
            if handle.raw() and not handle.compressed():
                reading.problems.add(Uninspectable.CORRUPT)   # it looked like one, it is none
                break
            if not _take_member(budget):
                reading.problems.add(Uninspectable.LIMIT)
                break
            name = _gzip_name(payload) if handle.raw() else _decode_name(entry.stored)
            if entry.encrypted:
                reading.add(entry.stored, Member(name, None, encrypted=True,
                                                 problem=Uninspectable.ENCRYPTED))
                continue
            if entry.symlink is not None:
                # Listed with its target as its data, as zip stores a link; never followed.
                data, cut = _charge(budget, entry.symlink)
                reading.add(entry.stored, Member(name, data, truncated=cut,
                                                 problem=Uninspectable.LIMIT if cut else None))
                continue
            if not entry.regular and entry.hardlink is None:
                continue   # directories, devices, fifos: nothing to read
            result = read_bounded(handle.read, handle.consumed, budget, deadline)
            if entry.hardlink is not None and not result.data and result.problem is None:
                # The same file under another name: extracted, it has the target's bytes.
                result = BoundedRead(kept.get(_path_key(entry.hardlink), b""))
            member = _member(name, result)
            reading.add(entry.stored, member)
            if member.problem is None and member.data:
                kept[_path_key(entry.stored)] = member.data
            if member.problem in _STOPS_LISTING:
                reading.problems.add(member.problem)
                break
    return Listing(tuple(reading.members), frozenset(reading.problems))


def _path_key(stored: bytes) -> str:
    return posixpath.normpath("/" + _decode_name(stored)).lstrip("/")


def _gzip_name(payload: MessageBytes) -> str:
    """RFC 1952 §2.3: the optional FNAME field, after the optional FEXTRA field."""
    if payload[:2] != b"\x1f\x8b":
        return ""
    flags = payload[3] if len(payload) > 3 else 0
    position = 10
    if flags & 0x04 and len(payload) >= 12:
        position += 2 + int.from_bytes(payload[10:12], "little")
    if flags & 0x08:
        end = payload.find(b"\0", position, position + 1024)
        if end != -1:
            return payload[position:end].decode("latin-1")
    return ""


# --- zip -------------------------------------------------------------------------------------

def _zip(payload: MessageBytes, budget: Budget, deadline: float | None) -> Listing:
    central = _zip_by_directory(payload, budget, deadline)
    local = _zip_by_local_headers(payload, budget, deadline, central)
    central_names = Counter(central.stored)
    local_names = Counter(local.reading.stored)
    if central.complete and local.reading.complete:
        disagreement = central_names != local_names
    else:   # a reading cut short says nothing of the names it did not reach
        disagreement = bool(local_names - central_names) \
            or (local.reading.complete and bool(central_names - local_names))
    problems = central.problems | local.reading.problems
    if not central.opened and not local.reading.members:
        problems.add(Uninspectable.CORRUPT)
    return Listing(tuple(central.members + local.extra), frozenset(problems),
                   disagreement=disagreement or local.differing)


@dataclass(frozen=True)
class _LocalHeader:
    flags: int
    method: int
    crc: int
    compressed: int
    size: int
    name: bytes
    data_at: int


def _local_header(payload: MessageBytes, offset: int) -> _LocalHeader | None:
    if offset < 0 or offset + _LOCAL_HEADER.size > len(payload):
        return None
    fields = _LOCAL_HEADER.unpack_from(payload, offset)
    if fields[0] != _LOCAL_SIGNATURE:
        return None
    start = offset + _LOCAL_HEADER.size
    return _LocalHeader(flags=fields[2], method=fields[3], crc=fields[6], compressed=fields[7],
                        size=fields[8], name=payload[start:start + fields[9]],
                        data_at=start + fields[9] + fields[10])


def _verbatim(local: _LocalHeader | None, info: zipfile.ZipInfo, stored: bytes) -> bool:
    """The local header says what the central directory says: the same name, method, CRC
    and sizes, no data descriptor, no encryption. A reader at that header decodes the bytes
    zipfile decoded, the same way."""
    return local is not None and not local.flags & (_ZIP_FLAG_ENCRYPTED | _ZIP_FLAG_DESCRIPTOR) \
        and (local.method, local.crc, local.compressed, local.size, local.name) \
        == (info.compress_type, info.CRC, info.compress_size, info.file_size, stored)


def _stored_name(info: zipfile.ZipInfo) -> bytes:
    # zipfile decodes by bit 11 as UTF-8 or CP437; CP437 maps every byte, so this is exact.
    return info.orig_filename.encode("utf-8" if info.flag_bits & _ZIP_FLAG_UTF8 else "cp437")


def _zip_by_directory(payload: MessageBytes, budget: Budget, deadline: float | None) -> _Reading:
    reading = _Reading()
    try:
        # A mapped payload is a file already: zipfile reads it there, as the bytes it is.
        # (zipfile reads, seeks and tells: what mmap does.)
        archive = zipfile.ZipFile(cast(IO[bytes], payload) if isinstance(payload, MappedText)
                                  else io.BytesIO(payload))
    except MemoryError:
        raise
    except Exception:   # no end record, a broken directory: the local reading may still list
        reading.opened = False
        reading.complete = True   # it lists no name, and that is its whole answer
        return reading
    with archive:
        infos = archive.infolist()
        reading.first_header = min((info.header_offset for info in infos), default=-1)
        for info in infos:
            if _late(deadline):
                reading.problems.add(Uninspectable.TIME)
                return reading
            if not _take_member(budget):
                reading.problems.add(Uninspectable.LIMIT)
                return reading
            if info.is_dir():
                continue
            stored = _stored_name(info)
            local = _local_header(payload, info.header_offset)
            member = _zip_member(archive, info, stored, local, payload, budget, deadline)
            if local is not None and _verbatim(local, info, stored):
                reading.verbatim.setdefault(info.header_offset,
                                            (len(reading.members), local.data_at))
            reading.add(stored, member)
            if member.problem is Uninspectable.TIME:
                reading.problems.add(Uninspectable.TIME)
                return reading
    reading.complete = True
    return reading


def _zip_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, stored: bytes,
                local: _LocalHeader | None,
                payload: MessageBytes, budget: Budget, deadline: float | None) -> Member:
    if info.flag_bits & _ZIP_FLAG_ENCRYPTED or (local and local.flags & _ZIP_FLAG_ENCRYPTED):
        return Member(info.filename, None, encrypted=True, problem=Uninspectable.ENCRYPTED)
    try:
        target = info
        if local is not None and local.name != stored:
            # zipfile refuses a member whose local name differs; a client reading the central
            # directory extracts these bytes under the central name, so we read them so.
            target = copy.copy(info)
            target.orig_filename = local.name.decode(
                "utf-8" if local.flags & _ZIP_FLAG_UTF8 else "cp437")
        stream = archive.open(target)
    except MemoryError:
        raise
    except Exception as error:
        return Member(info.filename, None, problem=_failure(error))
    with stream:
        # The declared compressed size sets the ratio's cap: at most the payload's own size.
        result = read_bounded(_releasing(stream.read, payload), min(info.compress_size, len(payload)),
                              budget, deadline)
    return _member(info.filename, result)


@dataclass
class _LocalReading:
    reading: _Reading
    extra: list[Member] = field(default_factory=list)   # members the central reading lacks
    differing: bool = False   # a name the two read differently (`_differ`)


def _zip_by_local_headers(payload: MessageBytes, budget: Budget, deadline: float | None,
                          central: _Reading) -> _LocalReading:
    """The reading by local headers, merged into `central` as it goes."""
    starts: list[int] = []
    # From the first local header signature, as a scanning stream reader starts; then, if that
    # one was a stray signature (in a self-extractor's stub), from the central directory's
    # first member.
    for start in (payload.find(_LOCAL_SIGNATURE), central.first_header):
        if start >= 0 and start not in starts:
            starts.append(start)
    local = _LocalReading(_Reading(complete=True))   # no local header: nothing to stream
    for start in starts:
        local = _local_pass(payload, start, budget, deadline, central)
        if local.reading.members or local.reading.complete:
            break
    return local


def _local_pass(payload: MessageBytes, start: int, budget: Budget, deadline: float | None,
                central: _Reading) -> _LocalReading:
    """One reading from `start`. A member it agrees on with `central` (`_agree`) is listed
    once, encrypted if either saw encryption, and costs no member slot; any other takes a
    slot and is one of `extra`."""
    local = _LocalReading(_Reading())
    reading = local.reading
    by_name: dict[bytes, list[int]] = {}
    for position, stored in enumerate(central.stored):
        by_name.setdefault(stored, []).append(position)
    matched: set[int] = set()
    with _Handle(payload, start, [_support_zip_streamable]) as handle:
        for entry in handle.entries(reading, deadline):
            same_name = by_name.get(entry.stored, [])
            candidates = [i for i in same_name if i not in matched]
            found = central.verbatim.get(payload.find(_LOCAL_SIGNATURE, start + entry.scan_from))
            index, data_at = found if found is not None else (-1, -1)
            if index >= 0 and index not in matched and start + entry.data_at == data_at \
                    and entry.stored == central.stored[index] and not entry.encrypted:
                # libarchive stands at the very local header zipfile decoded, and that header
                # says what the directory says: it would decode the same bytes the same way.
                # Not inflating them twice is what keeps the second reading cheap.
                matched.add(index)
                reading.add(entry.stored, central.members[index])
                continue
            if entry.encrypted:
                result = BoundedRead(b"", Uninspectable.ENCRYPTED)
            elif entry.symlink is not None:
                result = BoundedRead(entry.symlink)   # what zip stores, and zipfile reads
            elif not entry.regular:
                continue   # directories: the central reading skips them too
            else:
                twin = next((central.members[i].data for i in candidates
                             if central.members[i].data is not None), None)
                result = read_bounded(handle.read, handle.consumed, budget, deadline, twin)
            member = _member(_decode_name(entry.stored), result, encrypted=entry.encrypted)
            agreeing = next((i for i in candidates if _agree(central.members[i], member)), None)
            if agreeing is not None:
                matched.add(agreeing)
                both = central.members[agreeing]
                if member.encrypted and not both.encrypted:   # ciphertext read as plain
                    central.members[agreeing] = Member(both.name, None, encrypted=True,
                                                       problem=Uninspectable.ENCRYPTED)
                reading.add(entry.stored, member)
            elif not _take_member(budget):
                reading.problems.add(Uninspectable.LIMIT)
                break
            else:
                if entry.symlink is not None:
                    data, cut = _charge(budget, entry.symlink)
                    if cut:
                        member = Member(member.name, data, truncated=True,
                                        problem=Uninspectable.LIMIT)
                reading.add(entry.stored, member)
                local.extra.append(member)
                if any(_differ(central.members[i], member) for i in same_name):
                    local.differing = True
            if member.problem in _STOPS_LISTING:
                reading.problems.add(member.problem)
                break
    return local


def _agree(central: Member, local: Member) -> bool:
    """Two readings of one name agree: the same bytes with the same problem (a reading cut
    by time or a bound has not confirmed the other), or encryption on one side explaining the
    failure of the other (a reader that misses a flag reads ciphertext)."""
    if central.encrypted or local.encrypted:
        return (central.encrypted or central.problem is not None) \
            and (local.encrypted or local.problem is not None)
    return central.data == local.data and central.problem is local.problem


def _differ(central: Member, local: Member) -> bool:
    """Two readings of one name that do not agree, where a client would see the difference:
    both read to the end to different bytes, or one reads cleanly where the other fails (a
    CRC or method only one header has). A reading cut by a bound or the deadline says nothing."""
    if {central.problem, local.problem} & {Uninspectable.LIMIT, Uninspectable.TIME}:
        return False
    return (central.problem is None) != (local.problem is None) \
        or (central.problem is None and central.data != local.data)


# --- TNEF ------------------------------------------------------------------------------------

# tnefparse logs a warning or an error for each malformed object or property of the file:
# lines a sender could multiply at will. What it fails on is reported as a problem instead.
logging.getLogger("tnefparse").setLevel(logging.CRITICAL)

_TNEF_ATTACHMENT_LEVEL = 0x02
_ATT_MAPI_PROPS, _ATT_RECIP_TABLE, _ATT_ATTACHMENT = 0x9003, 0x9004, 0x9005
_MAPI_ATTACH_DATA_OBJ = 0x3701
_MAPI_MULTI_VALUE, _MAPI_NAMED = 0x1000, 0x8000
_MAPI_SHORT, _MAPI_BOOLEAN = 0x0002, 0x000B
_MAPI_FIXED_BYTES = {0x0002: 2, 0x000B: 2, 0x0003: 4, 0x0004: 4, 0x000A: 4, 0x0005: 8,
                     0x0007: 8, 0x0006: 8, 0x0014: 8, 0x0040: 8, 0x0048: 16}
_MAPI_VARIABLE = frozenset({0x001E, 0x001F, 0x000D, 0x0102, 0x0000})
_IMESSAGE_SIGNATURE = b"\x07\x03\x02\x00\x00\x00\x00\x00\xc0\x00\x00\x00\x00\x00\x00\x46"
_u16 = struct.Struct("<H").unpack_from
_u32 = struct.Struct("<I").unpack_from


class _TnefRefused(Exception):
    def __init__(self, problem: Uninspectable, limit: Limit | None = None):
        super().__init__(problem.value)
        self.problem = problem
        self.limit = limit


@dataclass
class _TnefCost:
    """What tnefparse would do with a file: Python steps and bytes copied."""

    steps: int = 0
    copied: int = 0

    def add(self, steps: int = 1, copied: int = 0) -> None:
        self.steps += steps
        self.copied += copied
        if self.steps > MAX_TNEF_STEPS or self.copied > MAX_TNEF_COPY_BYTES:
            raise _TnefRefused(Uninspectable.LIMIT, Limit.ARCHIVE_MEMBERS)


def _tnef_walk(data: memoryview, depth: int, cost: _TnefCost) -> None:
    """Walk a TNEF stream the way tnefparse's `TNEF` does (its offsets, its loop conditions),
    counting its work; refuse what would loop on a count (CORRUPT) or cost too much (LIMIT)."""
    if depth > MAX_TNEF_DEPTH:
        raise _TnefRefused(Uninspectable.LIMIT, Limit.ARCHIVE_DEPTH)
    if bytes(data[:4]) != _TNEF_MAGIC:
        return   # tnefparse refuses it at once
    end = len(data)
    offset = 6
    while offset + 12 < end:   # tnefparse: TNEF.MIN_OBJ_SIZE
        rest = end - offset
        cost.add(copied=rest)  # TNEFObject(data[offset:]) copies the rest of the file
        level = data[offset]
        name = _u16(data, offset + 1)[0]
        length = min(rest, _u32(data, offset + 5)[0] + 11)
        body = data[offset + 9:offset + length - 2]
        if level == _TNEF_ATTACHMENT_LEVEL:
            if name == _ATT_ATTACHMENT:
                _mapi_walk(body, 0, depth, cost, attachment=True)
        elif name == _ATT_MAPI_PROPS:
            _mapi_walk(body, 0, depth, cost, attachment=False)
        elif name == _ATT_RECIP_TABLE and len(body) >= 4:
            position = 4
            for _ in range(_u32(body, 0)[0]):
                if position + 4 > len(body):
                    break   # tnefparse raises there
                cost.add()
                position = _mapi_walk(body, position, depth, cost, attachment=False)
        offset += length


def _mapi_walk(data: memoryview, offset: int, depth: int, cost: _TnefCost, attachment: bool) -> int:
    """tnefparse's `decode_mapi` over a MAPI property block: where it ends."""
    end = len(data)
    if offset + 4 > end:
        return offset
    count = _u32(data, offset)[0]
    offset += 4
    try:
        for done in range(count):
            if offset >= end:
                # tnefparse goes round once for each property left, logging each
                if count - done > _TNEF_SKIPPED_PROPERTIES:
                    raise _TnefRefused(Uninspectable.CORRUPT)
                break
            cost.add()
            attr_type, attr_name = _u16(data, offset)[0], _u16(data, offset + 2)[0]
            offset += 4
            if attr_name >= _MAPI_NAMED:
                if offset + 16 > end:
                    break   # its GUID cannot be read: tnefparse stops
                offset += 16
                named_kind = _u32(data, offset)[0]
                offset += 4
                if named_kind == 0:
                    _u32(data, offset)
                    offset += 4
                else:
                    name_bytes = _u32(data, offset)[0]
                    offset += 4 + name_bytes + (-name_bytes % 4)
            values = None
            if attr_type & _MAPI_MULTI_VALUE:
                attr_type ^= _MAPI_MULTI_VALUE
                values = _u32(data, offset)[0]
                offset += 4
            rounds = values or 1
            size = _MAPI_FIXED_BYTES.get(attr_type)
            if size is not None:
                if rounds * size > end - offset:   # read without a check: it would go round
                    raise _TnefRefused(Uninspectable.CORRUPT)
                cost.add(rounds)
                offset += rounds * size
                if rounds % 2 and attr_type in (_MAPI_SHORT, _MAPI_BOOLEAN):
                    offset += 2
            elif attr_type in _MAPI_VARIABLE:
                items: list[bytes] = []
                for _ in range(rounds):
                    entries = 1
                    if not values:
                        entries = _u32(data, offset)[0]
                        offset += 4
                    for _ in range(entries):
                        cost.add()
                        length = _u32(data, offset)[0]
                        offset += 4
                        length += -length % 4
                        items.append(bytes(data[offset:offset + length]))
                        offset += length
                if attachment and attr_name == _MAPI_ATTACH_DATA_OBJ:
                    joined = b"".join(item.rstrip(b"\0") for item in items)
                    if joined.startswith(_IMESSAGE_SIGNATURE):   # an attached message: parsed too
                        cost.add(copied=2 * len(joined))
                        _tnef_walk(memoryview(joined)[len(_IMESSAGE_SIGNATURE):], depth + 1, cost)
            else:
                break   # an unknown type: tnefparse stops the block there
    except struct.error:
        pass   # past the end: tnefparse stops the block there
    return offset


def _tnef(payload: bytes, budget: Budget, deadline: float | None) -> Listing:
    try:
        _tnef_walk(memoryview(payload), 0, _TnefCost())
    except _TnefRefused as refused:
        if refused.limit is not None:
            budget.exceeded.add(refused.limit)
        return Listing(problems=frozenset({refused.problem}))
    try:
        parsed = tnefparse.TNEF(payload, do_checksum=False)
    except MemoryError:
        raise
    except Exception:   # "a TNEF that fails to parse is corrupt"
        return Listing(problems=frozenset({Uninspectable.CORRUPT}))
    found: list[Member] = []
    problems: set[Uninspectable] = set()
    for attachment in parsed.attachments:
        if _late(deadline):
            problems.add(Uninspectable.TIME)
            break
        if not _take_member(budget):
            problems.add(Uninspectable.LIMIT)
            break
        name = _tnef_name(attachment)
        data = attachment.data
        if not isinstance(data, (bytes, bytearray)):
            found.append(Member(name or "", None, problem=Uninspectable.CORRUPT))
            continue
        if name is None:
            found.append(Member("", bytes(data), problem=Uninspectable.DECODER_ERROR))
            continue
        data, cut = _charge(budget, bytes(data))
        found.append(Member(name, data, truncated=cut,
                            problem=Uninspectable.LIMIT if cut else None))
    return Listing(tuple(found), frozenset(problems))


def _tnef_name(attachment) -> str | None:
    """The long file name, else the title; None when tnefparse cannot decode either.

    tnefparse decodes a title as strict UTF-8, and Outlook may write it in the file's code page.
    The raw title is only in tnefparse's private state, which we do not read: a name we cannot
    read is a member not fully inspected (the extension rules would not see it)."""
    try:
        name = attachment.long_filename()
    except (UnicodeDecodeError, struct.error, ValueError):
        return None
    if isinstance(name, (bytes, bytearray)):
        name = _decode_name(bytes(name))
    return name.strip("\x00") if isinstance(name, str) else ""
