"""Objects hidden inside documents: the files an OLE2 Office document, an RTF, a PDF or an HTML
page carries, listed as a `members.Listing` so that `inspect` types, names and opens each one
exactly like an archive member (a PE inside a .doc meets the rules a PE inside a .zip meets).

Interface: `read(payload, detected_type, budget, deadline) -> Document | None` (the listing,
and for a PDF its active-content flag from the same single reading), `embedded(...)` (the
listing alone), `kinds(...)` (which readers apply). `budget` is the message's
`archives.Budget`; only its `limits`, `exceeded`, `members` and `expanded_bytes` are used.

What each kind gives:
- OLE2 compound files (olefile; Word, Excel, PowerPoint 97-2003 and embedded objects): every
  `\\x01Ole10Native` stream (an OLE1 object; an OLE Package gives the packaged file and its
  name, read by oletools' `OleNativeStream`), every `Package` stream (an embedded OOXML file),
  every stream that starts with an executable or container signature (SIGNATURES), and every
  ExOleObjStg record of a `PowerPoint Document` stream ([MS-PPT] §2.10.34, inflated: the
  objects and the VBA project of a .ppt), found at any offset since PowerPoint reaches them
  through offsets, not by walking records. Ordinary streams (WordDocument, 1Table…) are not
  listed. Encryption (an EncryptedPackage stream, Word's fEncrypted, Excel's FILEPASS, a
  PowerPoint EncryptedSummary) is ENCRYPTED on the listing.
- RTF (oletools' rtfobj tokenizer, which follows Word's quirks, made linear: `_RtfObjects`):
  each \\objdata; an OLE1 Package gives the packaged file and its name, another OLE1 object its
  native data (often an OLE2 file, which is then listed in turn), data that is no OLE1 object
  the raw bytes. An RTF without the word "objdata" is not parsed.
- PDF (our own bounded scan: no PDF library is a dependency): the decoded bytes of each
  /EmbeddedFile stream, of each stream an /EF entry of a file specification points at (named
  by the specification's /UF or /F), and of each stream whose decoded bytes start with a
  SIGNATURES entry. Object streams (/ObjStm) are inflated for `active.pdf_active_content`
  (`read` answers both, reading the PDF once). See "PDF streams" below.
- HTML (libmagic's HTML/XML types, or any text holding a data: URI; UTF-16/32 decoded as in
  `active.html_readings`): each `data:` URI (base64 or percent-encoded, `data&colon;` too),
  decoded, named by a `download=` attribute of the same tag when there is one; at most
  MAX_DATA_URIS (then LIMIT and Limit.ARCHIVE_MEMBERS).
A polyglot is read by each reader it fits ("%PDF-" within the first 1024 bytes of an OLE2 or
HTML file makes it a PDF too).

Guarantees:
- Never raises (MemoryError aside). A library's failure on a file that is an OLE2 or RTF file by
  its magic is CORRUPT on the listing when the library signals malformed input (OSError,
  ValueError, EOFError, IndexError, KeyError, struct.error, an assertion); any other exception
  is DECODER_ERROR. Either way, members found before the failure are kept.
- Fail closed: a member cut by a bound has `truncated` and problem LIMIT; a member that could
  not be decoded to its end has problem CORRUPT (partial bytes kept), UNSUPPORTED (a filter we
  do not decode) or ENCRYPTED; reading stopped by a bound or the deadline is LIMIT or TIME on
  the listing. A PDF stream that fails to inflate is a problem only if it would have been a
  member (a reader cannot get more out of it than we did), so slightly broken PDFs pass.
- Linear in the payload, bounded by the message's `archives.Budget`: every decoded or copied
  byte kept (members, object streams, the few bytes peeked at per PDF stream) counts against
  `max_expanded_size` (Limit.EXPANDED_SIZE past it), every member against
  `max_archive_members` (Limit.ARCHIVE_MEMBERS), every inflation against
  `max_compression_ratio` over the input it consumed, as `archives` does
  (Limit.COMPRESSION_RATIO). A member or object stream so cut has LIMIT. The deadline
  (`time.monotonic()`) is checked between objects and inside the RTF tokenizer; past it the
  listing has TIME and Limit.TIME is recorded. Compound files whose streams claim more than
  MAX_STREAM_BYTES_FACTOR x their size stop with CORRUPT (`active`); one whose directory
  declares more than `active.MAX_OLEVBA_DIRECTORY_ENTRIES` entries is not opened (olefile's
  reading is quadratic in them) and the listing has LIMIT.

PDF streams: every `stream` keyword is a candidate (a reader finds objects through offsets we
do not trust). Its dictionary is read from the text before it, back to the previous stream's
`endstream` (at most DICT_WINDOW_BYTES; a `stream` inside a string of the dictionary makes the
window reach further back): /EmbeddedFile, /ObjStm, filters, object number. Data with a zlib
header is inflated whatever the dictionary says (a crafted file can hide a dictionary from a
byte scan, not its data); hex, ASCII85 and raw deflate when the dictionary names them (hex
also when its decoded start is a signature), chained two deep. Inflation runs from the
keyword to the deflate stream's own end, not to /Length: what a reader gets is a prefix of
what we get. A stream is read as an object stream when its dictionary names /ObjStm (or
/First and /N), when its dictionary window was cut, or when its decoded start is an
object-stream header (integers, then an object, not an operator); each other stream is only
peeked at (PEEK_BYTES). Blind spots: LZW and RunLength data (UNSUPPORTED when a member or
object stream needs them), PNG predictors (the signature test sees predicted bytes),
decryption (an encrypted PDF's object streams and embedded files are ENCRYPTED; an encrypted
PDF without them passes), an object stream whose dictionary hides behind both a fake
`stream` and more than DICT_WINDOW_BYTES of padding and whose header is followed by junk,
names of embedded files beyond the nearest /UF or /F.

Bounds (and why) are the constants below. This module is longer than 400 lines because its four
readers share one set of bounds (`_Reader`) and one inflater; each reader is its own section.
"""

from __future__ import annotations

import base64
import binascii
import enum
import html
import re
import struct
import time
import urllib.parse
import warnings
import zlib
from dataclasses import dataclass

import olefile

from frontfilter.content import active, names
from frontfilter.content.members import Listing, Member
from frontfilter.content.facts import Limit, Uninspectable

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)   # oletools 0.60 on pyparsing 3
    from oletools import oleobj, rtfobj

KIB = 1024
MIB = 1024 * KIB
CHUNK_BYTES = 64 * KIB         # inflate output per step: a bound is overshot by at most this
INPUT_CHUNK_BYTES = 64 * KIB   # compressed input handed to zlib per step
RATIO_FLOOR_BYTES = 1 * MIB    # as `archives`: a small member cannot hurt, runs of zeros compress well
PEEK_BYTES = 64                # decoded bytes looked at to type a PDF stream
PREFIX_INPUT_BYTES = 8 * KIB   # encoded bytes decoded to get those
DICT_WINDOW_BYTES = 64 * KIB   # text before a PDF `stream` read as its dictionary
WINDOW_WORK_FACTOR = 4         # dictionary text scanned, at most this x the PDF (+1 MiB)
MAX_PDF_STREAMS = 50_000       # stream candidates per PDF (~10 µs each); large scans hold ~10k
MAX_DATA_URIS = 100            # data: URIs listed per HTML document; newsletters carry tens
MAX_NAME_CHARS = 1024          # a member name longer than this is padding

# Files that run or hold other files. A member of a document is listed when it starts so.
SIGNATURES = (
    b"MZ",                                    # DOS/Windows executable
    b"\x7fELF",                               # ELF
    b"\xfe\xed\xfa\xce", b"\xfe\xed\xfa\xcf", b"\xce\xfa\xed\xfe", b"\xcf\xfa\xed\xfe",  # Mach-O
    b"\xca\xfe\xba\xbe",                      # Mach-O universal (or a Java class)
    b"PK\x03\x04", b"Rar!\x1a\x07", b"7z\xbc\xaf\x27\x1c", b"\x1f\x8b", b"MSCF", b"ITSF",
    active.OLE_MAGIC, b"%PDF", b"{\\rt",
    b"L\x00\x00\x00\x01\x14\x02\x00",         # Windows shortcut (.lnk)
)

_MALFORMED = (OSError, ValueError, EOFError, IndexError, KeyError, struct.error, AssertionError,
              zlib.error)
_SIGNATURE = re.compile(b"|".join(re.escape(signature) for signature in SIGNATURES))


def _has_signature(data: bytes | memoryview) -> bool:
    return _SIGNATURE.match(bytes(data[:8])) is not None


class _OutOfTime(Exception):
    pass


class _Reader:
    """One document's listing, drawing on the message's budget."""

    def __init__(self, budget, deadline: float | None) -> None:
        self.budget = budget
        self.limits = budget.limits
        self.deadline = deadline
        self.members: list[Member] = []
        self.problems: set[Uninspectable] = set()

    def late(self) -> bool:
        if self.deadline is not None and time.monotonic() > self.deadline:
            self.budget.exceeded.add(Limit.TIME)
            self.problems.add(Uninspectable.TIME)
            return True
        return False

    def room(self) -> int:
        return self.limits.max_expanded_size - self.budget.expanded_bytes

    def slot(self) -> bool:
        """Take one member from the budget; False (and LIMIT) when none is left."""
        if self.budget.members >= self.limits.max_archive_members:
            self.budget.exceeded.add(Limit.ARCHIVE_MEMBERS)
            self.problems.add(Uninspectable.LIMIT)
            return False
        self.budget.members += 1
        return True

    def charge(self, data: bytes) -> tuple[bytes, bool]:
        """Count copied bytes against the expanded size: (what fits, whether cut)."""
        room = max(self.room(), 0)
        cut = len(data) > room
        if cut:
            self.budget.exceeded.add(Limit.EXPANDED_SIZE)
            data = data[:room]
        self.budget.expanded_bytes += len(data)
        return data, cut

    def add(self, name: str, data: bytes | None, problem: Uninspectable | None = None, *,
            truncated: bool = False, encrypted: bool = False, charged: bool = False) -> None:
        """A member whose slot was taken. Bytes not yet counted (`charged`) are counted here."""
        if data is not None and not charged:
            data, cut = self.charge(data)
            truncated = truncated or cut
        if truncated and problem is None:
            problem = Uninspectable.LIMIT
        self.members.append(Member(name[:MAX_NAME_CHARS], data, encrypted=encrypted,
                                   truncated=truncated, problem=problem))

    def listing(self) -> Listing:
        return Listing(tuple(self.members), frozenset(self.problems))


class _End(enum.Enum):
    """How a decoding ended."""

    DONE = "done"        # the encoded data ended as it should
    SHORT = "short"      # the input ran out first: a reader gets the same prefix
    BROKEN = "broken"    # invalid data: a reader gets at most the prefix
    BOUND = "bound"      # a bound of the budget cut it (recorded)
    PEEKED = "peeked"    # the bytes asked for were produced


def _inflate(source: memoryview, reader: _Reader, wbits: int = 15,
             want: int | None = None) -> tuple[bytes, _End]:
    """Inflate a zlib (wbits 15) or raw deflate (-15) stream at the start of `source`; input
    after the stream's end is never read. Output counts against the budget and stops at the
    compression ratio over the input consumed so far."""
    limits = reader.limits
    inflater = zlib.decompressobj(wbits)
    out: list[bytes] = []
    total = fed = 0
    pending: bytes | memoryview = b""
    while True:
        if not pending and fed < len(source):
            step = 4 * KIB if fed == 0 else INPUT_CHUNK_BYTES
            pending = source[fed:fed + step]
            fed += len(pending)
        allowed = CHUNK_BYTES if want is None else min(CHUNK_BYTES, want - total)
        room = reader.room()
        if room <= 0:
            reader.budget.exceeded.add(Limit.EXPANDED_SIZE)
            return b"".join(out), _End.BOUND
        allowed = min(allowed, room)
        try:
            chunk = inflater.decompress(pending, allowed)
        except zlib.error:
            return b"".join(out), _End.BROKEN
        pending = inflater.unconsumed_tail
        out.append(chunk)
        total += len(chunk)
        reader.budget.expanded_bytes += len(chunk)
        if inflater.eof:
            return b"".join(out), _End.DONE
        if want is not None and total >= want:
            return b"".join(out), _End.PEEKED
        consumed = fed - len(pending)
        if total > max(limits.max_compression_ratio * max(consumed, 1), RATIO_FLOOR_BYTES):
            reader.budget.exceeded.add(Limit.COMPRESSION_RATIO)
            return b"".join(out), _End.BOUND
        if not chunk and not pending and fed >= len(source):
            return b"".join(out), _End.SHORT


def _riskiest(*candidates: str | None) -> str:
    found = [names.basename(c) for c in candidates if c]
    return max(found, key=names.risk, default="")


def _package(native: bytes, package: bool) -> tuple[str, bytes] | None:
    """(name, file) from an OLE1 Package's native data ([MS-OLEDS] §2.3.6), or None when it is
    not one. The name is the riskiest of the label and the two paths (Packager writes the
    file under one of them)."""
    try:
        stream = oleobj.OleNativeStream(bindata=native, package=package)
    except MemoryError:
        raise
    except Exception:
        return None
    if stream.is_link or stream.data is None:
        return None
    return _riskiest(stream.filename, stream.src_path, stream.temp_path), bytes(stream.data)


def _failure(error: Exception) -> Uninspectable:
    return Uninspectable.CORRUPT if isinstance(error, _MALFORMED) else Uninspectable.DECODER_ERROR


# --- OLE2 compound files -------------------------------------------------------------------

# An ExOleObjStg record header: recVer 0 and recInstance 0 or 1, then recType 0x1011.
_EX_OLE_OBJ_STG = re.compile(rb"[\x00\x10]\x00\x11\x10")
_POWERPOINT_STREAM = "powerpoint document"


def _ole(payload: bytes, reader: _Reader) -> None:
    try:
        with active.open_compound_file(payload) as ole:
            _ole_streams(ole, len(payload), reader)
    except _OutOfTime:
        pass
    except active.CompoundFileTooLarge:
        reader.problems.add(Uninspectable.LIMIT)
    except MemoryError:
        raise
    except Exception as error:
        reader.problems.add(_failure(error))


def _ole_streams(ole, size: int, reader: _Reader) -> None:
    # Streams that share sectors would make us read the file many times over: a file built so
    # is malformed ([MS-CFB] §2.3: one chain per sector); we read up to the bound and stop.
    read_cap = active.MAX_STREAM_BYTES_FACTOR * size + 64 * KIB
    read = 0
    for path, entry in active.walk_compound_file(ole):
        if reader.late():
            raise _OutOfTime
        if entry.entry_type != olefile.STGTY_STREAM:
            continue
        read += entry.size
        if read > read_cap:
            reader.problems.add(Uninspectable.CORRUPT)
            return
        name = entry.name
        lowered = name.lower()
        top = len(path) == 1
        if top and lowered in ("encryptedpackage", "encryptedsummary"):
            reader.problems.add(Uninspectable.ENCRYPTED)
        data = active.read_stream(ole, path)
        if top and lowered == "worddocument" and len(data) >= 12 and data[11] & 0x01:
            reader.problems.add(Uninspectable.ENCRYPTED)   # [MS-DOC] §2.5.1 FibBase.fEncrypted
        elif top and lowered in ("workbook", "book") and active.biff_globals(data)[1]:
            reader.problems.add(Uninspectable.ENCRYPTED)   # FILEPASS
        if top and lowered == _POWERPOINT_STREAM:
            _powerpoint_objects(data, reader)
        if lowered == "\x01ole10native":
            if not reader.slot():
                return
            packaged = _package(data, package=False)
            if packaged is not None:
                reader.add(*packaged)
            else:   # an OLE1 object that is no package: its native data, after the size field
                reader.add("", data[4:])
        elif lowered == "package" or _has_signature(data):
            if not reader.slot():
                return
            reader.add(name if lowered != "package" else "", data)


def _powerpoint_objects(document: bytes, reader: _Reader) -> None:
    """Each ExOleObjStg record: recInstance 1 (zlib after a 4-byte size) or 0 (the compound
    file itself), wherever it starts in the stream."""
    view = memoryview(document)
    for count, match in enumerate(_EX_OLE_OBJ_STG.finditer(document)):
        if count % 1024 == 0 and reader.late():
            raise _OutOfTime
        body = match.start() + 8
        if body > len(document):
            return
        length = struct.unpack_from("<I", document, match.start() + 4)[0]
        if body + length > len(document):
            continue
        record = view[body:body + length]
        if document[match.start()] == 0x10 and length > 6 and _zlib_header(record[4:6]):
            if not reader.slot():
                return
            data, end = _inflate(record[4:], reader)
            problem = {_End.BROKEN: Uninspectable.CORRUPT, _End.BOUND: Uninspectable.LIMIT}.get(end)
            reader.add("", data, problem, truncated=problem is not None, charged=True)
        elif document[match.start()] == 0x00 and bytes(record[:8]) == active.OLE_MAGIC:
            if not reader.slot():
                return
            reader.add("", bytes(record))


# --- RTF --------------------------------------------------------------------------------------

_NOT_HEX = re.compile(rb"[^0-9A-Fa-f]+")


class _Dropped:
    """A destination's `data` that drops what is appended to it: oletools' RtfParser appends
    every text run to its destination's `data` (bytes concatenation: quadratic)."""

    def __iadd__(self, _other: bytes) -> _Dropped:
        return self


class _RtfObjects(rtfobj.RtfObjParser):
    """rtfobj's tokenizer and destinations, keeping only \\objdata hex, in linear time.

    oletools keeps every destination's text in one bytes object grown by concatenation (and
    re-filters the whole objdata at each \\'hh): quadratic, 20 s for a 4 MB RTF. Here each
    destination's `data` is a `_Dropped` (set through the public `open_destination` hook and
    `current_destination` attribute) and the public `text` hook keeps \\objdata's hex digits
    as filtered chunks, with Word's quirk (an odd hex digit before \\'hh is dropped) applied
    to the last chunk."""

    def __init__(self, data: bytes, reader: _Reader) -> None:
        super().__init__(data)
        self.current_destination.data = _Dropped()   # the document's own destination
        self.reader = reader
        self.found: list[bytes] = []
        self.ticks = 0

    def _tick(self) -> None:
        self.ticks += 1
        if self.ticks % 4096 == 0 and self.reader.late():
            raise _OutOfTime

    def _keep(self, destination, digits: bytes) -> None:
        if not hasattr(destination, "chunks"):
            destination.chunks, destination.digits = [], 0
        if digits:
            destination.chunks.append(digits)
            destination.digits += len(digits)

    def open_destination(self, destination) -> None:
        destination.data = _Dropped()

    def text(self, matchobject, text: bytes) -> None:
        self._tick()
        if self.current_destination.cword == b"objdata":
            self._keep(self.current_destination, _NOT_HEX.sub(b"", text))

    def bin(self, bindata: bytes) -> None:
        if self.current_destination.cword == b"objdata":
            self._keep(self.current_destination, binascii.hexlify(bindata))

    def open_group(self) -> None:
        self._tick()

    def control_word(self, matchobject, cword, param) -> None:
        self._tick()

    def control_symbol(self, matchobject) -> None:
        if matchobject.group()[1:2] == b"'":
            self.index += 2   # the two characters after \' are consumed, whatever they are
            destination = self.current_destination
            if destination.cword == b"objdata" and getattr(destination, "digits", 0) % 2:
                destination.chunks[-1] = destination.chunks[-1][:-1]
                destination.digits -= 1
                if not destination.chunks[-1]:
                    destination.chunks.pop()

    def close_destination(self, destination) -> None:
        if destination.cword == b"objdata":
            self.found.append(b"".join(getattr(destination, "chunks", ())))


def _rtf(payload: bytes, reader: _Reader) -> None:
    if b"objdata" not in payload:   # the only destination that carries objects
        return
    parser = _RtfObjects(payload, reader)
    try:
        parser.parse()
    except _OutOfTime:
        pass
    except MemoryError:
        raise
    except Exception as error:
        reader.problems.add(_failure(error))
    for digits in parser.found:
        if reader.late():
            return
        if not reader.slot():
            return
        raw = binascii.unhexlify(digits[: len(digits) & ~1])
        name, data = "", raw
        try:
            header = oleobj.OleObject()
            header.parse(raw)
            native = bytes(header.data) if getattr(header, "data", None) is not None else None
        except MemoryError:
            raise
        except Exception:   # not an OLE1 object: the raw bytes
            native = None
        if native is not None:
            data = native
            if header.class_name.lower().rstrip(b"\0") == b"package":
                packaged = _package(native, package=True)
                if packaged is not None:
                    name, data = packaged
        reader.add(name, data)


# --- PDF --------------------------------------------------------------------------------------

_PDF_WHITESPACE = b"\0\t\n\f\r "
_PDF_REGULAR = frozenset(range(256)) - frozenset(_PDF_WHITESPACE + b"()<>[]{}/%")
_OBJECT_HEADER = re.compile(rb"(\d+)\s+\d+\s+obj(?![A-Za-z0-9])")
_NAME = re.compile(rb"/([A-Za-z0-9_.\-]+)")
_LINE_END = re.compile(rb"\r\n|\n|\r")
_FLATE = frozenset({b"FlateDecode", b"Fl"})
_HEX = frozenset({b"ASCIIHexDecode", b"AHx"})
_A85 = frozenset({b"ASCII85Decode", b"A85"})
_UNDECODED = frozenset({b"LZWDecode", b"LZW", b"RunLengthDecode", b"RL", b"Crypt", b"DCTDecode",
                        b"DCT", b"JPXDecode", b"JBIG2Decode", b"CCITTFaxDecode", b"CCF"})
_HEX_TEXT = re.compile(rb"[\0\t\n\f\r ]*(?:[0-9A-Fa-f][\0\t\n\f\r ]*){16}")
# An object stream starts with pairs of integers (ISO 32000 §7.5.7), then objects; a content
# stream that starts with numbers has an operator (a bare word) after them.
_W = rb"[\0\t\n\f\r ]"
_NUMBER_END = rb"(?=[\0\t\n\f\r <\[(/]|\Z)"
_OBJECT_STREAM_HEAD = re.compile(
    _W + rb"*\d+" + _W + rb"+\d+" + _NUMBER_END
    + rb"(?:" + _W + rb"*[-+]?(?:\d+\.?\d*|\.\d+)" + _NUMBER_END + rb")*"
    + _W + rb"*(?:<|\[|\(|/|true|false|null|\Z)")
_EMBEDDED_REFERENCE = re.compile(rb"/(?:EF|E#46|#45F|#45#46)\s*<<(.{0,1024}?)>>", re.S | re.I)
_REFERENCE = re.compile(rb"(\d+)\s+\d+\s+R")
_FILE_NAME = re.compile(rb"/(UF|F)\s*(\((?:\\.|[^\\)])*\)|<[0-9A-Fa-f\s]*>)", re.S)


@dataclass
class _Stream:
    start: int                      # first data byte
    window: tuple[int, int]         # the text read as its dictionary
    names: frozenset[bytes]         # names in that text, #xx decoded
    steps: tuple[str, ...]          # the decoding judged from its bytes
    signature: bool = False
    object_stream: bool = False
    decoded: bytes | None = None
    end: _End = _End.DONE


def _zlib_header(head: bytes | memoryview) -> bool:
    """RFC 1950 §2.2: deflate, window <= 32 KiB, FCHECK, no preset dictionary."""
    if len(head) < 2:
        return False
    cmf, flg = head[0], head[1]
    return cmf & 0x0F == 8 and cmf >> 4 <= 7 and (cmf * 256 + flg) % 31 == 0 and not flg & 0x20


def _until(data: bytes | memoryview, marker: bytes) -> tuple[bytes, bool]:
    """The bytes before `marker` (whether it was found), copied a chunk at a time: `data` may
    be the rest of a large file."""
    parts: list[bytes] = []
    position = 0
    while position < len(data):
        chunk = bytes(data[position:position + INPUT_CHUNK_BYTES + len(marker) - 1])
        found = chunk.find(marker)
        if found != -1:
            parts.append(chunk[:found])
            return b"".join(parts), True
        parts.append(chunk[:INPUT_CHUNK_BYTES])
        position += INPUT_CHUNK_BYTES
    return b"".join(parts), False


def _hex_decode(data: bytes | memoryview) -> tuple[bytes, _End]:
    raw, ended = _until(data, b">")
    digits = _NOT_HEX.sub(b"", raw)
    if len(digits) % 2:
        digits += b"0"   # ISO 32000 §7.4.2: a missing last digit is 0
    return binascii.unhexlify(digits), (_End.DONE if ended else _End.SHORT)


def _a85_decode(data: bytes | memoryview) -> tuple[bytes, _End]:
    raw, ended = _until(data, b"~>")
    text = re.sub(rb"[\0\t\n\f\r ]+", b"", raw)
    text = text[2:] if text.startswith(b"<~") else text
    try:
        return base64.a85decode(text), (_End.DONE if ended else _End.SHORT)
    except ValueError:
        usable = len(text) - len(text) % 5
        try:
            return base64.a85decode(text[:usable]), _End.BROKEN
        except ValueError:
            return b"", _End.BROKEN


def _steps(data: memoryview, names_: frozenset[bytes]) -> tuple[str, ...]:
    """How to decode a stream: a zlib header is inflated whatever the dictionary says (a
    dictionary can be hidden from a byte scan, the data cannot); hex and ASCII85 when the
    dictionary names them (hex also when a crafted dictionary hid it: see `_pdf_streams`),
    raw deflate when it names Flate without a zlib header. A second step follows when the
    first one's output is zlib (or, after Flate, hex the dictionary names)."""
    if _zlib_header(data[:2]):
        if names_ & _HEX:
            inner, _ = _inflate_prefix(data)
            if _HEX_TEXT.match(inner):
                return ("flate", "hex")
        return ("flate",)
    if names_ & _HEX:
        first = "hex"
    elif names_ & _A85 or bytes(data[:2]) == b"<~":
        first = "a85"
    elif names_ & _FLATE:
        return ("deflate",)
    else:
        return ()
    inner, _ = (_hex_decode if first == "hex" else _a85_decode)(data[:PREFIX_INPUT_BYTES])
    return (first, "flate") if _zlib_header(inner[:2]) else (first,)


def _inflate_prefix(data: memoryview) -> tuple[bytes, bool]:
    """Up to PEEK_BYTES inflated, outside the budget (a few bytes, to choose a decoding)."""
    try:
        inflater = zlib.decompressobj()
        return inflater.decompress(data[:PREFIX_INPUT_BYTES], PEEK_BYTES), True
    except zlib.error:
        return b"", False


def _decode(data: memoryview, steps: tuple[str, ...], reader: _Reader,
            want: int | None = None) -> tuple[bytes, _End]:
    """Apply `steps` (all of it, or about `want` bytes); every output counts on the budget."""
    current: bytes | memoryview = data
    end = _End.DONE
    for index, step in enumerate(steps):
        last = index == len(steps) - 1
        if step in ("flate", "deflate"):
            inner_want = want if last or want is None else PREFIX_INPUT_BYTES
            current, end = _inflate(memoryview(current), reader, 15 if step == "flate" else -15, inner_want)
        else:
            source = current if want is None else current[:PREFIX_INPUT_BYTES]
            current, end = (_hex_decode if step == "hex" else _a85_decode)(source)
            current, cut = reader.charge(current)
            if cut:
                return current, _End.BOUND
        if end in (_End.BROKEN, _End.BOUND):
            break
    return bytes(current), end


def _peek(data: memoryview, steps: tuple[str, ...], reader: _Reader) -> bytes:
    """About PEEK_BYTES of the decoded start (charged to the budget); a broken start is b"".
    Flate alone, the common case, without `_decode`'s bookkeeping: this runs for every stream."""
    if steps == ("flate",):
        inflater = zlib.decompressobj()
        head = b""
        try:   # 1 KiB of input almost always gives 64 bytes: zlib copies back what it leaves
            for start, end in ((0, KIB), (KIB, PREFIX_INPUT_BYTES)):
                head += inflater.decompress(inflater.unconsumed_tail + bytes(data[start:end]),
                                            PEEK_BYTES - len(head))
                if len(head) >= PEEK_BYTES or inflater.eof:
                    break
        except zlib.error:
            pass
        reader.budget.expanded_bytes += len(head)
        return head
    return _decode(data, steps, reader, want=PEEK_BYTES)[0]


def _data_start(payload: bytes, keyword_end: int) -> int:
    """After the end of line that follows `stream` (readers skip to the next line)."""
    if payload.startswith(b"\r\n", keyword_end):
        return keyword_end + 2
    if payload[keyword_end:keyword_end + 1] in (b"\n", b"\r"):
        return keyword_end + 1
    line_end = _LINE_END.search(payload, keyword_end, keyword_end + 256)
    return line_end.end() if line_end else keyword_end


def _pdf_streams(payload: bytes, reader: _Reader, encrypted: bool) -> list[_Stream]:
    """Every stream candidate, typed and peeked at; object streams decoded."""
    streams: list[_Stream] = []
    window_work = 0
    window_cap = WINDOW_WORK_FACTOR * len(payload) + MIB
    previous_window: int | None = None   # the previous candidate's window start
    first_end: int | None = None         # the first "endstream" after the previous candidate
    position = payload.find(b"stream")
    while position != -1:
        after = position + 6
        if (position and payload[position - 1] in _PDF_REGULAR) or \
                (after < len(payload) and payload[after] in _PDF_REGULAR):
            if first_end is None and payload[position - 3:position] == b"end":
                first_end = after
            position = payload.find(b"stream", after)
            continue
        if reader.late():
            break
        if len(streams) >= MAX_PDF_STREAMS:
            reader.problems.add(Uninspectable.LIMIT)
            break
        # The dictionary: back to the previous stream's endstream. No endstream between the
        # previous data and this keyword: that "stream" was inside this dictionary (a string)
        # or this keyword is inside that data; either way the window reaches further back.
        natural = first_end if first_end is not None else (previous_window or 0)
        window_start = max(natural, position - DICT_WINDOW_BYTES)
        window_work += position - window_start
        if window_work > window_cap:
            reader.problems.add(Uninspectable.LIMIT)
            break
        streams.append(_stream(payload, (window_start, position), window_start > natural, reader, encrypted))
        previous_window, first_end = window_start, None
        position = payload.find(b"stream", after)
    return streams


def _stream(payload: bytes, window: tuple[int, int], cut: bool, reader: _Reader,
            encrypted: bool) -> _Stream:
    """One candidate: its dictionary's names, its decoding, its decoded start; an object
    stream (or a window `cut` short, which might hide one) decoded whole."""
    text = payload[window[0]:window[1]]
    if b"#" in text:
        text = active.unescape_pdf_names(text)
    stream_names = frozenset(_NAME.findall(text))
    start = _data_start(payload, window[1] + 6)
    data = memoryview(payload)[start:]
    steps = _steps(data, stream_names)
    stream = _Stream(start=start, window=window, names=stream_names, steps=steps)
    stream.signature = _has_signature(data)
    head = b""
    if steps and not (encrypted and steps == ("deflate",)):   # ciphertext has no header
        head = _peek(data, steps, reader)
        stream.signature = stream.signature or _has_signature(head)
    elif not steps and _HEX_TEXT.match(data[:64]):
        # Hex data under a dictionary we could not read: typed by its decoded start.
        decoded, _ = _hex_decode(data[:256])
        if _has_signature(decoded):
            stream.steps, stream.signature = ("hex",), True
    stream.object_stream = (b"ObjStm" in stream_names
                            or (b"First" in stream_names and b"N" in stream_names)
                            or cut
                            or (bool(head) and _OBJECT_STREAM_HEAD.match(head) is not None))
    if stream.object_stream:
        if head:
            stream.decoded, stream.end = _decode(data, steps, reader)
        if encrypted and (stream.decoded is None or stream.end is _End.BROKEN):
            reader.problems.add(Uninspectable.ENCRYPTED)
        elif stream.decoded is None and stream_names & _UNDECODED:
            reader.problems.add(Uninspectable.UNSUPPORTED)
        if stream.end is _End.BOUND:
            reader.problems.add(Uninspectable.LIMIT)
    return stream


def _pdf_string(token: bytes) -> str:
    """A PDF string's text: literal (ISO 32000 §7.3.4.2 escapes) or hex; UTF-16BE with a BOM,
    else PDFDocEncoding (read as Latin-1)."""
    if token.startswith(b"<"):
        raw, _ = _hex_decode(token[1:])
    else:
        raw = re.sub(rb"\\([0-7]{1,3}|.)", lambda m: _unescape_literal(m.group(1)), token[1:-1], flags=re.S)
    if raw.startswith(b"\xfe\xff"):
        return raw[2:].decode("utf-16-be", "replace")
    return raw.decode("latin-1")


def _unescape_literal(escape: bytes) -> bytes:
    simple = {b"n": b"\n", b"r": b"\r", b"t": b"\t", b"b": b"\b", b"f": b"\f", b"\n": b"", b"\r": b""}
    if escape[:1].isdigit():
        return bytes([int(escape, 8) & 0xFF])
    return simple.get(escape, escape)


def _embedded_file_names(texts: list[bytes]) -> dict[int, str]:
    """Object number -> name, for each stream an /EF entry points at: the /UF (or else /F)
    string nearest to it in the same text."""
    found: dict[int, str] = {}
    for text in texts:
        for match in _EMBEDDED_REFERENCE.finditer(text):
            around = text[max(0, match.start() - 1024):match.end() + 1024]
            offset = match.start() - max(0, match.start() - 1024)
            candidates = sorted(_FILE_NAME.finditer(around),
                                key=lambda m: (m.group(1) != b"UF", abs(m.start() - offset)))
            name = _pdf_string(candidates[0].group(2)) if candidates else ""
            for number in _REFERENCE.findall(match.group(1)):
                found.setdefault(int(number), name)
    return found


def _pdf_members(payload: bytes, streams: list[_Stream], reader: _Reader, encrypted: bool,
                 embedded_names: dict[int, str]) -> None:
    view = memoryview(payload)
    for stream in streams:
        if reader.late():
            return
        number = _object_number(payload, stream) if embedded_names else None
        if not (b"EmbeddedFile" in stream.names or number in embedded_names or stream.signature):
            continue
        if not reader.slot():
            return
        name = embedded_names.get(number, "") if number is not None else ""
        data = view[stream.start:]
        if not stream.steps or (encrypted and stream.steps == ("deflate",)):
            if encrypted and not stream.signature:
                reader.add(name, None, Uninspectable.ENCRYPTED, encrypted=True)
                continue
            if stream.names & (_UNDECODED | _FLATE | _HEX | _A85):
                reader.add(name, None, Uninspectable.UNSUPPORTED)
                continue
            reader.add(name, _raw_stream(payload, stream))
            continue
        if stream.object_stream and stream.decoded is not None:
            decoded, end = stream.decoded, stream.end   # already decoded and charged
        else:
            decoded, end = _decode(data, stream.steps, reader)
        if end is _End.BROKEN and encrypted:
            reader.add(name, decoded or None, Uninspectable.ENCRYPTED, encrypted=True, charged=True)
            continue
        problem = {_End.BROKEN: Uninspectable.CORRUPT, _End.BOUND: Uninspectable.LIMIT}.get(end)
        reader.add(name, decoded, problem, truncated=problem is not None, charged=True)


def _window(payload: bytes, stream: _Stream) -> bytes:
    text = payload[stream.window[0]:stream.window[1]]
    return active.unescape_pdf_names(text) if b"#" in text else text


def _object_number(payload: bytes, stream: _Stream) -> int | None:
    """From the last "N G obj" of its dictionary window (read only when /EF entries exist)."""
    numbers = _OBJECT_HEADER.findall(_window(payload, stream))
    return int(numbers[-1]) if numbers else None


def _raw_stream(payload: bytes, stream: _Stream) -> bytes:
    """An unfiltered stream's bytes: to the next `endstream` (less its end of line, ISO 32000
    §7.3.8.1) or to a direct /Length, whichever is longer; to the end of the file without one."""
    found = payload.find(b"endstream", stream.start)
    end = len(payload) if found == -1 else found
    if found != -1:
        end -= 2 if payload[end - 2:end] == b"\r\n" else int(payload[end - 1:end] in (b"\n", b"\r"))
    lengths = re.findall(rb"/Length\s+(\d+)(?![\s\d]*R)", _window(payload, stream))
    if lengths:
        end = max(end, min(stream.start + int(lengths[-1]), len(payload)))
    return payload[stream.start:max(end, stream.start)]


def _pdf(payload: bytes, found: frozenset[bytes], reader: _Reader) -> bool:
    """List the PDF's members; answer whether an object stream names active content (`found`:
    the names in the PDF's own bytes)."""
    encrypted = active.PDF_ENCRYPT in found
    streams = _pdf_streams(payload, reader, encrypted)
    texts = [(payload, found)] + [(s.decoded, active.pdf_names(s.decoded)) for s in streams
                                  if s.object_stream and s.decoded]
    embedded_names = _embedded_file_names([text for text, names_ in texts if b"ef" in names_])
    _pdf_members(payload, streams, reader, encrypted, embedded_names)
    return any(active.names_active(names_) for _, names_ in texts)


# --- HTML -------------------------------------------------------------------------------------

_HTML_TYPES = frozenset({"text/html", "application/xhtml+xml", "image/svg+xml", "text/xml",
                         "application/xml"})
_DATA_URI = re.compile(rb"data(?::|&colon;|&#0*58;?|&#[xX]0*3[aA];?)", re.I)
_UNQUOTED_END = re.compile(rb"[^\s\"'<>)]*")
_DOWNLOAD = re.compile(rb"\sdownload(?:\s*=\s*(?:\"([^\"]*)\"|'([^']*)'|([^\s>\"']+)))?", re.I)
_BASE64_METADATA = re.compile(rb";[\t\n\f\r ]*base64[\t\n\f\r ]*$", re.I)


def _next_data_uri(text: bytes, lowered: bytes, position: int) -> re.Match | None:
    """The next data: URI from `position`: "data" found by bytes.find (the case-insensitive
    regex alone scans at 5 ms/MB), then matched where it stands."""
    position = lowered.find(b"data", position)
    while position != -1:
        match = _DATA_URI.match(text, position)
        if match is not None:
            return match
        position = lowered.find(b"data", position + 4)
    return None


def _data_uris(text: bytes, reader: _Reader, listed: list[int]) -> None:
    lowered = text.lower()
    position = 0
    while listed[0] < MAX_DATA_URIS:
        match = _next_data_uri(text, lowered, position)
        if match is None or reader.late():
            return
        start = match.start()
        quote = text[start - 1:start] if start else b""
        if quote in (b'"', b"'"):
            end = text.find(quote, match.end())
            end = len(text) if end == -1 else end
        else:
            unquoted = _UNQUOTED_END.match(text, match.end())     # matches, if only the empty string
            end = unquoted.end() if unquoted is not None else match.end()
        position = max(end, match.end())
        value = text[start:end]
        if b"&" in value:   # an attribute's character references are decoded before the URL
            value = html.unescape(value.decode("utf-8", "surrogateescape")).encode("utf-8", "surrogateescape")
        comma = value.find(b",")
        if comma == -1:
            continue
        metadata, body = value[5:comma], value[comma + 1:]
        if not reader.slot():
            return
        listed[0] += 1
        raw = urllib.parse.unquote_to_bytes(body)
        if _BASE64_METADATA.search(metadata):
            # The fetch standard's forgiving base64: blanks dropped, padding optional. Other
            # junk makes browsers refuse the URI; we decode what decodes (a superset).
            letters = re.sub(rb"[^A-Za-z0-9+/]", b"", raw)
            letters = letters[: len(letters) - (len(letters) % 4 == 1)]
            raw = binascii.a2b_base64(letters + b"=" * (-len(letters) % 4))
        reader.add(_download_name(text, start, end), raw)
    if _next_data_uri(text, lowered, position) is not None:
        reader.budget.exceeded.add(Limit.ARCHIVE_MEMBERS)
        reader.problems.add(Uninspectable.LIMIT)


def _download_name(text: bytes, start: int, end: int) -> str:
    """The `download=` value of the tag holding the URI, if it has one."""
    tag_start = text.rfind(b"<", max(0, start - 2048), start)
    tag_end = text.find(b">", end, end + 2048)
    if tag_start == -1:
        return ""
    attributes = text[tag_start:start] + b" " + text[end:tag_end if tag_end != -1 else end]
    match = _DOWNLOAD.search(attributes)
    if match is None:
        return ""
    value = next((g for g in match.groups() if g is not None), b"")
    return html.unescape(value.decode("utf-8", "replace"))


def _html(payload: bytes, reader: _Reader) -> None:
    listed = [0]
    for text in active.html_readings(payload):
        _data_uris(text, reader, listed)


# --- the entry point --------------------------------------------------------------------------

@dataclass(frozen=True)
class Document:
    """What `read` found in one payload."""

    listing: Listing
    # A PDF naming JavaScript, a launch action, an embedded file… in its bytes or in an
    # inflated object stream (`active.pdf_active_content`); False for anything not a PDF.
    pdf_active_content: bool = False


def kinds(payload: bytes, detected_type: str) -> tuple[str, ...]:
    """Which readers apply, by content ("ole", "rtf", "pdf", "html"); for HTML also by
    libmagic's type, or a data: URI in any text. A polyglot gets each of its readers: a PDF
    reader takes "%PDF-" anywhere in the first 1024 bytes, after an OLE2 or HTML head."""
    found = []
    if payload.startswith(active.OLE_MAGIC):
        found.append("ole")
    elif payload.startswith(b"{\\rt"):   # what Word requires of an RTF file
        found.append("rtf")
    if active.is_pdf(payload):
        found.append("pdf")
    if detected_type in _HTML_TYPES or (detected_type.startswith("text/") and _has_data_uri(payload)):
        found.append("html")
    elif payload[:2] in (b"\xff\xfe", b"\xfe\xff") and any(
            _has_data_uri(text) for text in active.html_readings(payload)):
        found.append("html")
    return tuple(found)


def _has_data_uri(text: bytes) -> bool:
    return _next_data_uri(text, text.lower(), 0) is not None


_READERS = {"ole": _ole, "rtf": _rtf, "html": _html}


def read(payload: bytes, detected_type: str, budget, deadline: float | None = None) -> Document | None:
    """The objects `payload` carries (and, for a PDF, its active-content flag, from the same
    single reading), or None when it is no document of these kinds. `budget` is the message's
    `archives.Budget`; `deadline` a `time.monotonic()` value."""
    found = kinds(payload, detected_type)
    if not found:
        return None
    reader = _Reader(budget, deadline)
    flag = False
    for document in found:
        try:
            if document == "pdf":
                # The PDF's own bytes first, so that a failure below still answers from them.
                found_names = active.pdf_names(payload)
                flag = active.names_active(found_names)
                if not reader.late():
                    flag = _pdf(payload, found_names, reader) or flag
            elif not reader.late():
                _READERS[document](payload, reader)
        except _OutOfTime:
            pass
        except MemoryError:
            raise
        except Exception as error:   # a bug or an input nobody foresaw: a fact, never a pass
            malformed = document in ("ole", "rtf")   # by their magic: the library's failure is ours
            reader.problems.add(_failure(error) if malformed else Uninspectable.DECODER_ERROR)
    return Document(reader.listing(), flag)


def embedded(payload: bytes, detected_type: str, budget, deadline: float | None = None) -> Listing | None:
    """`read(...).listing`: the objects `payload` carries, or None when it is no document of
    these kinds. For a PDF, `read` also answers the active-content flag without a second pass."""
    document = read(payload, detected_type, budget, deadline)
    return None if document is None else document.listing
