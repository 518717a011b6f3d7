"""Header blocks on bytes: split into fields, unfold, decode RFC 2047, parse MIME parameters.

Guarantees: linear time in the size of the block (no backtracking regex, no stdlib parameter
parser: `email.message._parseparam` re-counts quotes from the start of the value at every `;`,
which is quadratic on a crafted header). Never raises on hostile input. Parameters are returned
in order with duplicates kept, so the caller can see a header that reads two ways.

Bounds: the caller hands in at most `InspectionLimits.max_header_bytes` of one block.
"""

from __future__ import annotations

import codecs
import email.header
import re
import urllib.parse
from dataclasses import dataclass

# RFC 5322 §2.2: a field name is printable US-ASCII except ":". Lines that are not a field and
# not a continuation are skipped: we keep reading the block rather than stop early, so a
# Content-Type after a junk line is still seen (a client may honour it).
_FIELD = re.compile(rb"([!-9;-~]+)[ \t]*:(.*)", re.S)
_LINE = re.compile(rb"\r?\n")
_FOLD = re.compile(r"\r?\n(?=[ \t])")


def split_fields(block: bytes) -> list[tuple[str, str]]:
    """(name, unfolded value) for every field of one header block, in order."""
    fields: list[tuple[str, str]] = []
    current: list[bytes] | None = None
    for line in _LINE.split(block):
        if line[:1] in (b" ", b"\t") and current is not None:
            current.append(line)
            continue
        if current is not None:
            fields.append(_field(current))
            current = None
        if _FIELD.match(line):
            current = [line]
    if current is not None:
        fields.append(_field(current))
    return fields


def _field(lines: list[bytes]) -> tuple[str, str]:
    match = _FIELD.match(lines[0])
    assert match is not None
    value = b"".join([match.group(2), *lines[1:]])
    # Raw 8-bit headers are UTF-8 under SMTPUTF8 (RFC 6532); anything else is made visible.
    return match.group(1).decode("ascii"), value.decode("utf-8", "replace").strip()


def decode_words(value: str) -> str:
    """Decode RFC 2047 encoded-words; text without "=?" is returned as is (fast path)."""
    if "=?" not in value:
        return value
    try:
        pieces = email.header.decode_header(value)
    except Exception:  # a malformed encoded-word stays as the sender wrote it
        return value
    out = []
    for piece, charset in pieces:
        if isinstance(piece, str):
            out.append(piece)
        else:
            out.append(decode_bytes(piece, charset or "ascii"))
    return "".join(out)


def decode_bytes(data: bytes, charset: str | None) -> str:
    """Bytes in a declared charset; an unknown charset falls back to UTF-8. Never raises."""
    name = (charset or "utf-8").strip().strip('"').lower() or "utf-8"
    try:
        codecs.lookup(name)
    except LookupError:
        name = "utf-8"
    try:
        return data.decode(name, "replace")
    except Exception:  # codecs that reject errors="replace" or crash on input
        return data.decode("utf-8", "replace")


# One parameter: `; name = value` with value a quoted-string (closing quote optional, as
# clients are lenient) or a token up to the next ";". Linear: no nested quantifiers.
_PARAM = re.compile(r';\s*([^\s=;"]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"?|([^;]*))', re.S)
_QUOTED_PAIR = re.compile(r"\\(.)", re.S)
_SECTION = re.compile(r"^(.*?)\*(\d+)(\*?)$|^(.*?)(\*)$")


@dataclass(frozen=True)
class MimeValue:
    """A structured MIME header: `value` (lower-cased, e.g. "text/plain") and its parameters."""

    value: str
    params: tuple[tuple[str, str], ...]   # (lower-cased name, decoded value); duplicates kept
    # Other readings of a parameter that some mail program makes (`_variants`): a value may
    # name a boundary or a file one way for us and another way for the recipient's client.
    variants: tuple[tuple[str, str], ...] = ()

    def get_all(self, name: str) -> list[str]:
        return [v for k, v in self.params if k == name]

    def readings(self, name: str) -> list[str]:
        """Every value of `name`, ours first, then the other readings; distinct, in order."""
        return list(dict.fromkeys(self.get_all(name) + [v for k, v in self.variants if k == name]))

    def get(self, name: str) -> str | None:
        values = self.get_all(name)
        return values[0] if values else None


def parse_mime_value(text: str) -> MimeValue:
    """Parse `type/subtype; a=b; c*=utf-8''x` with RFC 2231 continuations and charsets."""
    head, sep, rest = text.partition(";")
    raw_params: list[tuple[str, str]] = []
    variants: list[tuple[str, str]] = []
    if sep:
        for match in _PARAM.finditer(";" + rest):
            name = match.group(1).lower()
            if match.group(2) is not None:
                value = _QUOTED_PAIR.sub(r"\1", match.group(2))
            else:
                value = (match.group(3) or "").strip()
            raw_params.append((name, value))
            variants += ((name, other) for other in _variants(match.group(2), value) if other != value)
    return MimeValue(value=head.strip().lower(), params=_combine_rfc2231(raw_params),
                     variants=tuple(dict.fromkeys(variants)))


def _variants(quoted: str | None, value: str) -> list[str]:
    """How other mail programs read the same parameter, where that can differ from `value`.

    - Python's `email` (compat32) keeps a backslash inside quotes that is not before a quote
      or a backslash: `"a\\b"` is `a\\b` to it, `ab` to RFC 2045 readers.
    - Python's `email` strips the blanks a boundary ends with (`get_boundary`).
    - Clients end an unquoted value at the first blank: `filename=run.js x` is `run.js`.
    """
    found = []
    if quoted is not None:
        if "\\" in quoted:
            found.append(quoted)
        if quoted != quoted.strip():
            found.append(value.strip())
    elif value.split(maxsplit=1) and value.split(maxsplit=1)[0] != value:
        found.append(value.split(maxsplit=1)[0])
    return found


def _combine_rfc2231(raw: list[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """RFC 2231 §3–4: join `name*0*`, `name*1`… sections and decode `charset'lang'%xx`."""
    plain: list[tuple[str, str]] = []
    sections: dict[str, list[tuple[int, bool, str]]] = {}
    order: list[str] = []
    for name, value in raw:
        match = _SECTION.match(name)
        if match is None:
            plain.append((name, value))
            continue
        if match.group(1) is not None:
            base, index, encoded = match.group(1), int(match.group(2)), bool(match.group(3))
        else:
            base, index, encoded = match.group(4), 0, True
        if base not in sections:
            sections[base] = []
            order.append(base)
        sections[base].append((index, encoded, value))
    combined = list(plain)
    for base in order:
        pieces = sorted(sections[base], key=lambda item: item[0])
        charset = "us-ascii"
        data = bytearray()
        for position, (_index, encoded, value) in enumerate(pieces):
            if encoded and position == 0 and value.count("'") >= 2:
                charset, _lang, value = value.split("'", 2)
            if encoded:
                data += urllib.parse.unquote_to_bytes(value)
            else:
                data += value.encode("utf-8", "replace")
        combined.append((base, decode_bytes(bytes(data), charset or "us-ascii")))
    return tuple(combined)
