"""Content-Transfer-Encoding decoding, and files encoded inside text, lenient the way mail clients are.

A client that shows a part decodes it leniently; so must the inspector, or a part hidden from
us is shown to the recipient. Each decoder therefore returns the bytes a lenient client would
see plus a flag saying the input was not clean, which `inspect` records as an ambiguity.

Files encoded inside a text part are what a client, or a decoder the recipient runs, turns into
files: uuencode (`begin 644 name` ... `end`), BinHex 4.0 (RFC 1741: `(This file must be
converted with BinHex 4.0)` then `:...:`) and yEnc 1.3 (`=ybegin ... name=` ... `=yend`).
`text_blocks` finds all three; `has_text_blocks` is its cost-nothing pre-check (two searches at
memchr speed) for every text part. Each block is a `TextBlock`: the name, the decoded bytes,
whether the block was corrupt (broken encoding, a failed CRC or size check, a missing end:
`data` is what decoded before the fault, or what a lenient decoder makes of it) and whether our
bound cut it.

Guarantees: linear time, never raises on hostile input. Transfer decodings, uuencode and yEnc
never give more bytes than they read; BinHex's run-length coding may (up to 64 times the text),
so every text-block function takes `max_bytes`, the most it decodes in one call. Bounds:
`max_blocks` (blocks per call, default MAX_TEXT_BLOCKS), `max_bytes` (decoded bytes per call,
default MAX_TEXT_BLOCK_BYTES).

Past the 400-line guide: the text-block finders share the base64 alphabet and the leniency of
the transfer decoders, and were kept beside them; `content/textblocks.py` is
the cut to make when the module next grows.
"""

from __future__ import annotations

import binascii
import enum
import io
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from frontfilter.content.limits import MIB

_simd_b64decode: Callable[..., bytes] | None
try:     # SIMD base64 (the `fast` extra): 10x binascii on well-formed input, same answers
    from pybase64 import b64decode as _simd_b64decode
except ImportError:          # pragma: no cover - exercised by forcing the fallback in tests
    _simd_b64decode = None

_B64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_B64_WHITESPACE = b" \t\r\n"
_ALL_BYTES = bytes(range(256))
_NOT_ALPHABET_OR_PAD = _ALL_BYTES.translate(None, _B64_ALPHABET + b"=")
_PADDING = re.compile(rb"=+")


_CHUNK_BYTES = 1024 * 1024  # decode in slices: peak memory ~ output, not 3x input


Release = Callable[[], None]    # drops the pages of the input read so far (mapped.MappedText)


def base64(data: bytes | memoryview, release: Release | None = None,
           chunk: int = _CHUNK_BYTES) -> tuple[bytes, bool]:
    """Decode base64, skipping any character outside the alphabet. Returns (bytes, junk).

    `junk` is True when the input held anything but the alphabet, whitespace and trailing
    padding: characters a strict decoder refuses, data after padding (some clients stop
    there, others go on — we decode every segment, the superset), or a dangling character.

    `release` (see `transfer_decode`) is called after each `chunk` bytes read; `chunk` is a
    parameter so that tests can cut small inputs as big ones are cut.
    """
    view = memoryview(data)
    clean = _strict_base64(view)
    if clean is not None:
        return clean, False
    clean = _canonical_base64(view, release, chunk)
    if clean is not None:
        return clean, False
    return _base64_by_segments(view, release, chunk)


def _base64_by_segments(view: memoryview, release: Release | None = None,
                        chunk: int = _CHUNK_BYTES) -> tuple[bytes, bool]:
    """The general decoder: junk skipped, every padding-separated segment decoded."""
    out = io.BytesIO()     # its buffer becomes the result: no second copy of the output
    junk = False
    carry = b""
    after_padding = False
    for offset in range(0, len(view), chunk):
        piece = bytes(view[offset:offset + chunk]).translate(None, _B64_WHITESPACE)
        if release is not None:
            release()
        if piece.translate(None, _B64_ALPHABET + b"="):
            junk = True
            piece = piece.translate(None, _NOT_ALPHABET_OR_PAD)
        for index, segment in enumerate(_PADDING.split(piece)):
            if index > 0:  # a run of "=" ended the previous segment
                tail, bad = _finish(carry)
                out.write(tail)
                junk |= bad
                carry = b""
                after_padding = True
            if segment:
                junk |= after_padding
                after_padding = False
                segment = carry + segment
                cut = len(segment) - len(segment) % 4
                out.write(binascii.a2b_base64(segment[:cut]))
                carry = segment[cut:]
    tail, bad = _finish(carry)
    out.write(tail)
    return out.getvalue(), junk | bad


def _strict_base64(view: memoryview) -> bytes | None:
    """The decoded bytes of strictly valid base64 broken into lines, or None to look closer.

    Line breaks out, what is left is decoded strictly: alphabet only, whole quanta, padding
    only at the end. Whatever passes is canonical below and decodes to the same bytes, so this
    is a subset of that path at a fraction of the cost (on 132 KB: 85 us with pybase64, against
    720 us for the translate pass and binascii's byte loop). Blanks, junk and odd padding fail
    here and take the paths below, which tell them apart."""
    if len(view) > _CHUNK_BYTES:
        return None                  # big parts: the sliced path below bounds peak memory
    data = bytes(view)
    flat = _line_breaks_out_by_column(data)
    if flat is not None:
        decoded = _decode_strictly(flat)
        if decoded is not None:
            return decoded
    # Lines of mixed lengths, or a CR or LF inside a line: every one out, as a reader does.
    return _decode_strictly(data.replace(b"\n", b"").replace(b"\r", b""))


def _decode_strictly(flat: bytes | bytearray) -> bytes | None:
    try:
        if _simd_b64decode is not None:
            return _simd_b64decode(flat, validate=True)
        return binascii.a2b_base64(flat, strict_mode=True)
    except (binascii.Error, ValueError):
        return None


def _line_breaks_out_by_column(data: bytes) -> bytearray | None:
    """`data` without its line breaks when its lines are all of one length but the last (how
    every encoder writes base64: 76 characters and CRLF), else None.

    The CRs and LFs are found and deleted by column, every (length + 2)th byte, in strided
    passes at C speed: 5 us for 100 KB, where deleting each line break with `replace` costs
    75 (one copy per line). A CR or LF left inside a line is not alphabet: the strict decode
    refuses it, and `_strict_base64` then takes every line break out as before, so the bytes
    decoded are the same either way."""
    width = data.find(b"\r\n")
    if width <= 0:
        return None
    step = width + 2
    body = len(data) - len(data) % step          # the whole lines of `width`; then the last line
    crs, lfs = data[width:body:step], data[width + 1:body:step]
    if crs.lstrip(b"\r") or lfs.lstrip(b"\n"):
        return None
    flat = bytearray(data[:body])
    del flat[width::step]                        # the CRs
    del flat[width::step - 1]                    # the LFs, one place nearer for each CR gone
    flat += data[body:].replace(b"\n", b"").replace(b"\r", b"")
    return flat


def _canonical_base64(view: memoryview, release: Release | None = None,
                      chunk: int = _CHUNK_BYTES) -> bytes | None:
    """The decoded bytes of well-formed base64 (alphabet and whitespace, padding only at the
    end, whole quanta) in one C pass and one output buffer; None for anything else.

    Nearly all mail is well formed: this skips the segment-by-segment decoder below, which
    costs a Python loop per MiB. With `release`, the input is decoded in slices instead of one
    pass (the same bytes: each slice ends on a whole quantum, the padding stays with the last).
    """
    first_pad = -1
    for offset in range(0, len(view), chunk):
        piece = bytes(view[offset:offset + chunk])
        if release is not None:
            release()
        if piece.translate(None, _B64_ALPHABET + _B64_WHITESPACE + b"="):
            return None
        if first_pad < 0 and (at := piece.find(b"=")) >= 0:
            first_pad = offset + at
    if first_pad >= 0:
        for offset in range(first_pad, len(view), chunk):
            tail = bytes(view[offset:min(offset + chunk, len(view))])
            if tail.translate(None, b"=" + _B64_WHITESPACE):
                return None
        if bytes(view[first_pad:]).count(b"=") > 2:
            return None
    try:
        if release is None:
            return binascii.a2b_base64(view)     # lenient mode: skips the whitespace
        return _decode_in_slices(view, release, chunk)
    except binascii.Error:                   # a dangling character, missing padding
        return None


def _decode_in_slices(view: memoryview, release: Release, chunk: int) -> bytes:
    """`binascii.a2b_base64(view)` for canonical base64, reading `chunk` bytes at a time."""
    out = io.BytesIO()
    carry = b""
    for offset in range(0, len(view), chunk):
        piece = carry + bytes(view[offset:offset + chunk]).translate(None, _B64_WHITESPACE)
        release()
        pad = piece.find(b"=")
        usable = len(piece) if pad < 0 else pad
        cut = usable - usable % 4
        out.write(binascii.a2b_base64(piece[:cut]))
        carry = piece[cut:]
    if carry:
        out.write(binascii.a2b_base64(carry))
    return out.getvalue()


def _finish(carry: bytes) -> tuple[bytes, bool]:
    """Decode the last 0–3 characters of a segment; one lone character cannot make a byte."""
    if len(carry) == 1:
        return b"", True
    if not carry:
        return b"", False
    return binascii.a2b_base64(carry + b"=" * (4 - len(carry))), False


def quoted_printable(data: bytes | memoryview, release: Release | None = None,
                     chunk: int = _CHUNK_BYTES) -> bytes:
    """RFC 2045 §6.7, lenient: a malformed `=XY` is kept literally, as clients do.

    With `release`, decoded in slices of whole lines (quoted-printable is read line by line:
    a soft break or an `=XY` never spans a line end), `release` called after each."""
    if release is None or len(data) <= chunk:
        return binascii.a2b_qp(bytes(data))
    view = memoryview(data)
    out = io.BytesIO()
    start = 0
    while start < len(view):
        end = _line_end_within(view, start, chunk)
        piece = bytes(view[start:end])
        release()
        out.write(binascii.a2b_qp(piece))
        start = end
    return out.getvalue()


def _line_end_within(view: memoryview, start: int, chunk: int) -> int:
    """Where the slice from `start` ends: after the last line end of the next `chunk` bytes;
    for a line longer than that, after its own end (searched a chunk at a time, each byte
    looked at once), or the end of `view`."""
    end = min(start + chunk, len(view))
    if end == len(view):
        return end
    last = bytes(view[start:end]).rfind(b"\n")
    if last >= 0:
        return start + last + 1
    while end < len(view):                  # one line longer than a slice: read on
        following = min(end + chunk, len(view))
        first = bytes(view[end:following]).find(b"\n")
        if first >= 0:
            return end + first + 1
        end = following
    return end


def _copied(data: bytes | memoryview, release: Release | None, chunk: int = _CHUNK_BYTES) -> bytes:
    """`bytes(data)`; with `release`, copied a slice at a time."""
    if release is None or len(data) <= chunk:
        return bytes(data)
    view = memoryview(data)
    out = io.BytesIO()
    for offset in range(0, len(view), chunk):
        out.write(view[offset:offset + chunk])
        release()
    return out.getvalue()


def transfer_decode(data: bytes | memoryview, encoding: str,
                    release: Release | None = None) -> tuple[bytes, bool, bool]:
    """Decode a part body by its Content-Transfer-Encoding. Returns (bytes, junk, unknown).

    `release`: for a part of a big message mapped from its spill file (mapped.MappedText), the
    function that drops the pages read so far. The decoders then read in slices and call it
    after each, so the part's encoded bytes are never held mapped beside its decoded ones
    (issue 26's bound on a big message's memory); the bytes decoded are the same."""
    encoding = encoding.strip().lower()
    if encoding == "base64":
        decoded, junk = base64(data, release)
        return decoded, junk, False
    if encoding == "quoted-printable":
        return quoted_printable(data, release), False, False
    if encoding in ("x-uuencode", "x-uue", "uuencode", "x-uu"):
        blocks = uu_blocks(bytes(data), max_blocks=1)
        if blocks:   # a corrupt block is junk: what a client decodes of it may differ
            return blocks[0].data, blocks[0].corrupt, False
        return bytes(data), False, True
    # RFC 2045 §6.4: an unknown encoding means "treat as application/octet-stream"; the raw
    # bytes are what a client would offer to save.
    return _copied(data, release), False, encoding not in ("", "7bit", "8bit", "binary")


# ---- files encoded inside text -------------------------------------------------------------------

MAX_TEXT_BLOCK_BYTES = 100 * MIB  # the default inspection.max_decoded_bytes; callers pass what is left of theirs
MAX_TEXT_BLOCKS = 100             # blocks per call unless the caller says: more than any real mail


class BlockKind(enum.Enum):
    UUENCODE = "uuencode"
    BINHEX = "binhex"
    YENC = "yenc"


@dataclass(frozen=True, slots=True)
class TextBlock:
    """One file found encoded in a text part."""

    name: str           # as the block declares it, not normalised ("" when it gives none)
    data: bytes         # decoded: all of it, or what decoded before a fault or the bound
    corrupt: bool = False   # not whole and well formed: a client may decode it otherwise
    cut: bool = False       # decoding stopped at `max_bytes`: the rest was not read
    kind: BlockKind = BlockKind.UUENCODE

    def __iter__(self) -> Iterator[str | bytes]:
        """(name, data): the reading of callers written for the former (name, bytes) tuples.
        It drops `corrupt` and `cut`: a caller should read the fields."""
        return iter((self.name, self.data))


def has_text_blocks(text: bytes) -> bool:
    """Whether `text` may hold a uuencoded, BinHex or yEnc block: two searches at memchr speed
    (`begin` is in uuencode's `begin ` and yEnc's `=ybegin`), false on nearly all text."""
    return b"begin" in text or _BINHEX_MARK in text


def text_blocks(text: bytes, max_blocks: int = MAX_TEXT_BLOCKS,
                max_bytes: int = MAX_TEXT_BLOCK_BYTES) -> list[TextBlock]:
    """Every uuencoded, BinHex and yEnc block in `text`, in that order: at most `max_blocks`,
    and at most `max_bytes` decoded bytes together (the block that crosses it is `cut`, and
    nothing after it is decoded)."""
    found: list[TextBlock] = []
    if not has_text_blocks(text):
        return found
    budget = max_bytes
    for finder in (uu_blocks, binhex_blocks, yenc_blocks):
        if len(found) >= max_blocks or (found and found[-1].cut):
            break
        more = finder(text, max_blocks - len(found), budget)
        budget -= sum(len(block.data) for block in more)
        found += more
    return found


def _line_start(text: bytes, word: bytes, position: int) -> int:
    """The first offset from `position` where a line of `text` starts with `word`, or -1: a find
    per occurrence, so text that mentions the word mid-line costs a memchr-speed pass."""
    while (at := text.find(word, position)) >= 0:
        if at == 0 or text[at - 1] == 0x0A:
            return at
        position = at + 1
    return -1


def _bounded(block: TextBlock, budget: int) -> TextBlock:
    """`block`, cut to `budget` bytes if it is longer."""
    if len(block.data) <= budget:
        return block
    return TextBlock(block.name, block.data[:max(budget, 0)], block.corrupt, True, block.kind)


# uuencode: "begin <mode> <name>" ... "end". Mode is octal; some writers emit "begin-base64".
_UU_BEGIN = re.compile(rb"begin ([0-7]{3,4}) ([^\r\n]+)")
_UU_END = re.compile(rb"^end[ \t]*\r?$", re.M)


def uu_blocks(text: bytes, max_blocks: int = MAX_TEXT_BLOCKS,
              max_bytes: int = MAX_TEXT_BLOCK_BYTES) -> list[TextBlock]:
    """Every uuencoded block in `text`. A block missing its "end" line runs to the end of the
    text (a client decodes what is there) and is corrupt, as is one with a line no lenient
    reading decodes (the line is skipped)."""
    found: list[TextBlock] = []
    position = 0
    budget = max_bytes
    while len(found) < max_blocks and (at := _line_start(text, b"begin ", position)) >= 0:
        begin = _UU_BEGIN.match(text, at)
        if begin is None:
            position = at + 1
            continue
        end = _UU_END.search(text, begin.end())
        stop = end.start() if end else len(text)
        name = begin.group(2).strip().decode("utf-8", "replace")
        data, bad = _uu_decode(text[begin.end():stop])
        block = _bounded(TextBlock(name, data, bad or end is None, kind=BlockKind.UUENCODE), budget)
        found.append(block)
        budget -= len(block.data)
        if block.cut or end is None:
            break
        position = end.end()
    return found


def _uu_decode(body: bytes) -> tuple[bytes, bool]:
    """(bytes, whether some line could not be decoded at all)."""
    out = []
    bad = False
    for line in body.splitlines():
        if not line.strip():
            continue
        try:
            out.append(binascii.a2b_uu(line))
        except binascii.Error:
            # Writers that pad lines differently: decode the length the first byte declares.
            count = (line[0] - 32) & 63
            try:
                out.append(binascii.a2b_uu(line[: 1 + (count + 2) // 3 * 4].ljust(1, b" "))[:count])
            except binascii.Error:
                bad = True
    return b"".join(out), bad


# BinHex 4.0 (RFC 1741; the format as Apple's and StuffIt's decoders read it): after the mark,
# the encoded stream runs from a colon to the next. Its 64 characters stand for 6 bits each,
# packed as base64 packs them, so a translation to base64's alphabet and binascii decode it in
# C. Then RLE90: 0x90 n repeats the byte before it n times in all (0x90 0 is a literal 0x90).
# The decoded stream: name length, name (Mac Roman), version, type, creator, flags, data fork
# length, resource fork length, header CRC; the data fork and its CRC; the resource fork and its
# CRC. The CRCs are CRC-16/XMODEM (binascii.crc_hqx, which Python keeps).
_BINHEX_MARK = b"(This file must be converted with BinHex"
_HQX_ALPHABET = b"!\"#$%&'()*+,-012345689@ABCDEFGHIJKLMNPQRSTUVXYZ[`abcdefhijklmpqr"
_HQX_TO_BASE64 = bytes.maketrans(_HQX_ALPHABET, _B64_ALPHABET)
_NOT_HQX = re.compile(b"[^" + re.escape(_HQX_ALPHABET) + b"]")
_BLANKS = b" \t\r\n\f\v"      # between the lines of a stream; decoders skip them
_RUN = 0x90
_HQX_FIXED_HEADER = 21         # after the name: version 1, type 4, creator 4, flags 2, lengths 8, CRC 2
RSRC_FORK_SUFFIX = "/..namedfork/rsrc"   # how macOS names a file's resource fork


def binhex_blocks(text: bytes, max_blocks: int = MAX_TEXT_BLOCKS,
                  max_bytes: int = MAX_TEXT_BLOCK_BYTES) -> list[TextBlock]:
    """Every BinHex 4.0 stream in `text`: its data fork, and its resource fork (named
    `<name>/..namedfork/rsrc`) when that is not empty. A stream missing its closing colon is
    decoded to the end of the text; a character outside the alphabet ends it there; either, a
    failed CRC, or forks shorter than the header says make the block corrupt. A mark with no
    stream after it is a corrupt block with no name and no data."""
    found: list[TextBlock] = []
    position = 0
    budget = max_bytes
    while len(found) < max_blocks and (mark := text.find(_BINHEX_MARK, position)) >= 0:
        start = text.find(b":", mark + len(_BINHEX_MARK))
        if start < 0:
            found.append(TextBlock("", b"", True, kind=BlockKind.BINHEX))
            break
        end = text.find(b":", start + 1)
        stop = end if end >= 0 else len(text)
        for block in _binhex_decode(text[start + 1:stop], budget, end >= 0):
            if len(found) < max_blocks:
                found.append(block)
                budget -= len(block.data)
        if end < 0 or found[-1].cut:
            break
        position = end + 1
    return found


def _binhex_decode(encoded: bytes, budget: int, closed: bool) -> list[TextBlock]:
    """The forks of one stream (the text between its colons)."""
    flat = encoded.translate(None, _BLANKS)
    corrupt = not closed
    if (stray := _NOT_HQX.search(flat)) is not None:
        flat, corrupt = flat[:stray.start()], True
    packed = flat.translate(_HQX_TO_BASE64)
    whole = len(packed) - len(packed) % 4
    stream = binascii.a2b_base64(packed[:whole])
    rest = packed[whole:]
    if len(rest) >= 2:                   # the last 2 or 3 characters carry 1 or 2 bytes
        stream += binascii.a2b_base64(rest + b"=" * (4 - len(rest)))
    corrupt |= len(rest) == 1            # 6 bits make no byte: no encoder ends so
    # The header first: at most 255 + 22 bytes of the run-length stream.
    header, _ = _rle90(stream, 1 + 255 + _HQX_FIXED_HEADER)
    size = header[0] + 1 + _HQX_FIXED_HEADER if header else 1
    if len(header) < size:
        name = header[1:1 + header[0]].decode("mac_roman") if header else ""
        return [TextBlock(name, b"", True, kind=BlockKind.BINHEX)]
    length = header[0]
    name = header[1:1 + length].decode("mac_roman")
    at = length + 12
    data_length = int.from_bytes(header[at:at + 4], "big")
    rsrc_length = int.from_bytes(header[at + 4:at + 8], "big")
    corrupt |= binascii.crc_hqx(header[:size - 2], 0) != int.from_bytes(header[size - 2:size], "big")
    # Then only as much of the stream as the forks and their CRCs take, within the budget.
    data_kept = min(data_length, max(budget, 0))
    rsrc_kept = min(rsrc_length, max(budget - data_kept, 0))
    want = size + data_length + 2 + rsrc_kept + 2 if data_kept == data_length else size + data_kept
    whole_stream, clean = _rle90(stream, want)
    corrupt |= not clean
    data = bytes(whole_stream[size:size + data_kept])
    data_bad = corrupt or len(data) < data_kept or (
        data_kept == data_length and not _crc_matches(whole_stream, size, data_length))
    cut = len(data) == data_kept < data_length          # the budget stopped it, not the stream
    blocks = [TextBlock(name, data, data_bad, cut, BlockKind.BINHEX)]
    if rsrc_length and data_kept == data_length:
        at = size + data_length + 2
        rsrc = bytes(whole_stream[at:at + rsrc_kept])
        rsrc_bad = corrupt or len(rsrc) < rsrc_kept or (
            rsrc_kept == rsrc_length and not _crc_matches(whole_stream, at, rsrc_length))
        cut = len(rsrc) == rsrc_kept < rsrc_length
        blocks.append(TextBlock(name + RSRC_FORK_SUFFIX, rsrc, rsrc_bad, cut, BlockKind.BINHEX))
    return blocks


def _crc_matches(stream: bytearray, at: int, length: int) -> bool:
    """Whether the fork at `at` is whole and the CRC after it is its CRC."""
    crc = stream[at + length:at + length + 2]
    return len(crc) == 2 and binascii.crc_hqx(stream[at:at + length], 0) == int.from_bytes(crc, "big")


def _rle90(data: bytes, limit: int) -> tuple[bytearray, bool]:
    """BinHex's run-length decoding of `data`, stopped at `limit` bytes: (bytes, clean). A run
    marker with nothing before it or nothing after it is not clean (and skipped). One find per
    marker: compressed data holds one in 256 bytes, and a stream of nothing but runs costs a
    Python step per 2 bytes, still linear."""
    out = bytearray()
    position = 0
    clean = True
    while len(out) < limit:
        at = data.find(_RUN, position)
        if at < 0:
            out += data[position:position + limit - len(out)]
            break
        out += data[position:at]
        if at + 1 >= len(data):
            clean = False             # the stream ends inside a run
            break
        count = data[at + 1]
        if count == 0:
            out.append(_RUN)
        elif not out:
            clean = False             # a run of nothing: RFC 1741 decoders refuse the file
        elif count > 1:
            out += out[-1:] * min(count - 1, limit - len(out))
        position = at + 2
    del out[limit:]
    return out, clean


# yEnc 1.3 (www.yenc.org/yenc-draft.1.3.txt): "=ybegin line= size= name=" (name last, to the end
# of the line), "=ypart begin= end=" on the next line for a part of a multi-part file, data
# lines, "=yend size= crc32=/pcrc32=". Each byte is written plus 42; NUL, LF, CR and "=" (and
# whatever else an encoder likes) escaped as "=" and the byte plus 64. Line ends are not data.
_YBEGIN = re.compile(rb"=ybegin[ \t]([^\r\n]*)")
_YPART = re.compile(rb"\r?\n=ypart[ \t]([^\r\n]*)")
_YEND = re.compile(rb"^=yend([^\r\n]*)", re.M)
_YPARAM = re.compile(rb"(?:^|[ \t])(size|part|total|begin|end|crc32|pcrc32)=([0-9A-Fa-f]{1,16})")
_YNAME = re.compile(rb"(?:^|[ \t])name=([^\r\n]*)")
_YESCAPE = re.compile(rb"=(.)", re.S)
_YESCAPED = [bytes([(c - 64) & 0xFF]) for c in range(256)]
_YMINUS_42 = bytes((c - 42) & 0xFF for c in range(256))


def yenc_blocks(text: bytes, max_blocks: int = MAX_TEXT_BLOCKS,
                max_bytes: int = MAX_TEXT_BLOCK_BYTES) -> list[TextBlock]:
    """Every yEnc file in `text`. A block runs to its `=yend`, or when that is missing to the
    next `=ybegin` or the end of the text (then it is corrupt). The parts of a multi-part file
    found here are joined in part order into one block, corrupt unless together they are the
    whole file; a size or CRC that does not match the data also makes a block corrupt."""
    parts: list[_YPart] = []
    position = 0
    later_end: re.Match[bytes] | None = None
    no_more_ends = False
    while len(parts) < max_blocks and (at := _line_start(text, b"=ybegin", position)) >= 0:
        begin = _YBEGIN.match(text, at)
        if begin is None:
            position = at + 1
            continue
        fields = _yfields(begin.group(1))
        data_start = begin.end()
        if (part := _YPART.match(text, data_start)) is not None:
            fields.update({k: v for k, v in _yfields(part.group(1)).items() if k in ("begin", "end")})
            data_start = part.end()
        # One search for "=yend" serves every block before it: linear however many lack one.
        if not no_more_ends and (later_end is None or later_end.start() < data_start):
            later_end = _YEND.search(text, data_start)
            no_more_ends = later_end is None
        following = _line_start(text, b"=ybegin", data_start)
        if later_end is not None and (following < 0 or later_end.start() < following):
            stop, end_fields, position = later_end.start(), _yfields(later_end.group(1)), later_end.end()
        else:
            stop, end_fields = (following if following >= 0 else len(text)), None
            position = stop
        parts.append(_ydecode(text[data_start:stop], fields, end_fields))
    return _yjoin(parts, max_bytes)


@dataclass(frozen=True, slots=True)
class _YPart:
    name: str
    number: int | None     # the part number, None for a single-part file
    total_size: int | None  # the whole file's size, as `=ybegin` says
    offset: int | None     # where the part starts in the file (0-based), as `=ypart` says
    data: bytes
    corrupt: bool


def _yfields(line: bytes) -> dict[str, bytes]:
    """The `key=value` fields of a `=y` line; the name is the last and runs to the line's end,
    so nothing inside it is read as a field."""
    name = _YNAME.search(line)
    fields = {key.decode(): value for key, value in _YPARAM.findall(line, 0, name.start() if name else len(line))}
    if name is not None:
        fields["name"] = name.group(1).strip()
    return fields


def _yint(fields: dict[str, bytes], key: str) -> int | None:
    value = fields.get(key)
    return int(value) if value is not None and value.isdigit() else None


def _ydecode(body: bytes, fields: dict[str, bytes], end: dict[str, bytes] | None) -> _YPart:
    flat = body.replace(b"\r", b"").replace(b"\n", b"")
    corrupt = end is None
    if flat.endswith(b"=") and (len(flat) - len(flat.rstrip(b"="))) % 2:
        flat, corrupt = flat[:-1], True           # an escape with nothing to escape
    data = _YESCAPE.sub(lambda found: _YESCAPED[found.group()[1]], flat).translate(_YMINUS_42)
    number = _yint(fields, "part")
    first, last = _yint(fields, "begin"), _yint(fields, "end")
    if number is None:
        expected = _yint(fields, "size")
    else:
        expected = last - first + 1 if first is not None and last is not None else None
    corrupt |= expected is not None and len(data) != expected
    if end is not None:
        if (size := _yint(end, "size")) is not None and size != len(data):
            corrupt = True
        if (crc := end.get("crc32" if number is None else "pcrc32")) is not None:
            corrupt |= int(crc, 16) != binascii.crc32(data)
    name = fields.get("name", b"").decode("utf-8", "replace")
    return _YPart(name, number, _yint(fields, "size"), None if first is None else first - 1, data, corrupt)


def _yjoin(parts: list[_YPart], max_bytes: int) -> list[TextBlock]:
    """One block per single-part file and per multi-part file (its parts joined in order)."""
    groups: dict[tuple[str, int], list[_YPart]] = {}
    order: list[tuple[str, int]] = []
    for index, part in enumerate(parts):
        key = (part.name, -1) if part.number is not None else (part.name, index)
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append(part)
    found: list[TextBlock] = []
    budget = max_bytes
    for key in order:
        group = groups[key]
        if group[0].number is None:
            data, corrupt = group[0].data, group[0].corrupt
        else:
            group.sort(key=lambda part: part.number or 0)
            data = b"".join(part.data for part in group)
            numbers = [part.number for part in group]
            offsets = [sum(len(p.data) for p in group[:i]) for i in range(len(group))]
            corrupt = any(part.corrupt for part in group) or numbers != list(range(1, len(group) + 1)) \
                or group[0].total_size != len(data) \
                or any(part.offset is not None and part.offset != offset for part, offset in zip(group, offsets))
        block = _bounded(TextBlock(key[0], data, corrupt, kind=BlockKind.YENC), budget)
        found.append(block)
        budget -= len(block.data)
        if block.cut:
            break
    return found
