"""Rewriting a message after the verdict: strip parts (with a notice), header fields to add.

Guarantees:
- `strip_parts` replaces exactly the byte ranges of the named MIME leaves (`Part.raw_start`
  to `Part.raw_end`, found by `inspect`) and adds one `X-Frontfilter-Stripped:` field at the
  top; every other byte of the message is left identical. A leaf that is a message's own
  body (the whole message is one leaf) keeps its non-`Content-*` header fields (From, Subject…).
- Every header field written is ASCII, has no CR/LF inside a value, and is folded so no
  line passes MAX_LINE_OCTETS (RFC 5322 §2.1.1: 998 octets; we fold at 78 where we can).
- `render_notice` substitutes only `NOTICE_FIELDS`; the loader validates templates with
  `validate_notice` so an unknown placeholder is a load error, not a runtime one.
"""

from __future__ import annotations

import binascii
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass

from frontfilter.content.headers import split_fields
from frontfilter.content.names import BIDI_CONTROLS
from frontfilter.content.facts import MessageView, Part
from frontfilter.mapped import MessageBytes

MAX_LINE_OCTETS = 998   # RFC 5322 §2.1.1 hard limit
FOLD_OCTETS = 78        # RFC 5322 §2.1.1 recommended limit
MAX_NAME_CHARS_IN_SUMMARY = 120  # keeps one summary entry on few lines
STRIPPED_HEADER = "X-Frontfilter-Stripped"

NOTICE_FIELDS = frozenset({"filename", "declared_type", "detected_type", "size", "sha256", "rule"})
DEFAULT_NOTICE = (
    "The attachment {filename} ({detected_type}, {size} bytes, sha256 {sha256}) "
    "was removed by the mail filter (rule {rule})."
)


@dataclass(frozen=True)
class StripOrder:
    mime_path: str   # the MIME leaf to replace
    rule: str        # the rule that asked for it
    notice: str      # the rendered notice text


def validate_notice(template: str) -> None:
    """Raise ValueError unless every placeholder is a bare name from NOTICE_FIELDS."""
    try:
        pieces = list(string.Formatter().parse(template))
    except ValueError as error:
        raise ValueError(f"notice template: {error}") from None
    for _literal, name, spec, conversion in pieces:
        if name is None:
            continue
        if name not in NOTICE_FIELDS:
            raise ValueError(f"notice template: unknown placeholder {{{name}}}; "
                             f"known: {', '.join(sorted(NOTICE_FIELDS))}")
        if spec or conversion:
            raise ValueError(f"notice template: {{{name}}} takes no format spec or conversion")


def render_notice(template: str, part: Part, rule: str) -> str:
    validate_notice(template)
    values = {
        "filename": _printable(part.filename or "(unnamed)"),
        "declared_type": _printable(part.declared_type or "unknown"),
        "detected_type": _printable(part.detected_type or "unknown"),
        "size": str(part.size),
        "sha256": part.sha256 or "unknown",
        "rule": _printable(rule),
    }
    return "".join(literal + (values[name] if name is not None else "")
                   for literal, name, _spec, _conv in string.Formatter().parse(template))


def _printable(text: str) -> str:
    """Controls and bidi overrides escaped: a notice must not reorder or hide what it says."""
    return "".join(f"\\u{ord(c):04x}" if (c in BIDI_CONTROLS or ord(c) < 32 or ord(c) == 127) else c
                   for c in text)


def _ascii(text: str, limit: int) -> str:
    """For header values: non-ASCII and controls escaped, long text cut."""
    text = _printable(text)
    if len(text) > limit:
        text = text[:limit] + "..."
    return text.encode("ascii", "backslashreplace").decode("ascii")


_NAME = re.compile(r"[!-9;-~]+\Z")


def fold(name: str, value: str) -> bytes:
    """`Name: value` folded at spaces to FOLD_OCTETS where possible, ending in CRLF."""
    if not _NAME.match(name):
        raise ValueError(f"invalid header field name {name!r}")
    if any(c in value for c in "\r\n\0"):
        raise ValueError(f"header field {name} value holds CR, LF or NUL")
    if not value.isascii():
        raise ValueError(f"header field {name} value is not ASCII")
    lines: list[str] = []
    current = f"{name}:"
    for word in value.split(" "):
        if len(current) + 1 + len(word) > FOLD_OCTETS and current.strip() and current != f"{name}:":
            lines.append(current)
            current = ""
        current += " " + word
    lines.append(current)
    if any(len(line) > MAX_LINE_OCTETS for line in lines):
        raise ValueError(f"header field {name} has a word longer than {MAX_LINE_OCTETS} octets")
    return "\r\n".join(lines).encode("ascii") + b"\r\n"


def header_fields(headers: Sequence[tuple[str, str]]) -> bytes:
    """The fields to add at the top of a message, in the order given (trace fields go first:
    RFC 5321 §4.4), folded, whole CRLF lines only. Non-ASCII values are written as RFC 2047
    words (unstructured fields only). Kept apart from the message they go on
    (`decision.Decision.head`): joining them would copy the message."""
    out = []
    for name, value in headers:
        if any(c in value for c in "\r\n\0"):
            raise ValueError(f"header field {name} value holds CR, LF or NUL")
        if not value.isascii():
            value = " ".join(_encoded_words(value))
        out.append(fold(name, value))
    return b"".join(out)


def _encoded_words(value: str) -> list[str]:
    """RFC 2047 B-words of at most 75 characters, cut on character boundaries."""
    words, chunk = [], ""
    for char in value:
        if len((chunk + char).encode("utf-8")) > 45:   # 45 bytes -> 60 base64 chars + 12
            words.append(chunk)
            chunk = ""
        chunk += char
    words.append(chunk)
    return ["=?utf-8?b?" + binascii.b2a_base64(w.encode("utf-8"), newline=False).decode() + "?="
            for w in words if w]


def _notice_entity(original_headers: bytes, notice: str, eol: bytes, message_body: bool) -> bytes:
    """A text/plain part carrying the notice; a message's own non-Content-* fields are kept."""
    kept = b""
    if message_body:
        kept = b"".join(_raw_fields(original_headers, keep=lambda n: not n.lower().startswith("content-")))
    body = notice.replace("\r\n", "\n").replace("\r", "\n")
    if body.isascii() and all(len(line) <= FOLD_OCTETS for line in body.split("\n")):
        encoding, data = "7bit", body.encode("ascii")
    else:
        encoding, data = "quoted-printable", binascii.b2a_qp(body.encode("utf-8"), istext=True)
    data = data.replace(b"\n", eol)
    head = (b"Content-Type: text/plain; charset=utf-8" + eol
            + b"Content-Transfer-Encoding: " + encoding.encode() + eol
            + b"Content-Disposition: inline" + eol)
    return kept + head + eol + data + (eol if message_body else b"")


def _raw_fields(block: bytes, keep) -> list[bytes]:
    """The raw lines of each field of a header block (continuations included), filtered."""
    out, current, name = [], b"", None
    for line in block.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and current:
            current += line
            continue
        if current and name is not None and keep(name):
            out.append(current)
        current = line
        name = line.split(b":", 1)[0].decode("ascii", "replace").strip() if b":" in line else None
    if current and name is not None and keep(name):
        out.append(current)
    return out


def strip_parts(raw: MessageBytes, view: MessageView, orders: Sequence[StripOrder]) -> MessageBytes:
    """Replace each ordered MIME leaf by a notice part; add one summary field at the top."""
    if not orders:
        return raw
    leaves = {p.path: p for p in view.parts if p.path == p.mime_path and not p.in_archive}
    chosen: dict[str, tuple[Part, list[StripOrder]]] = {}
    for order in orders:
        if order.mime_path not in leaves:
            raise ValueError(f"no MIME leaf {order.mime_path!r} in this message")
        chosen.setdefault(order.mime_path, (leaves[order.mime_path], []))[1].append(order)
    # Two readings of an ambiguous entity can give overlapping ranges: replace their union.
    spans: list[list] = []
    for part, part_orders in sorted(chosen.values(), key=lambda item: (item[0].raw_start, -item[0].raw_end)):
        if spans and part.raw_start < spans[-1][1]:
            spans[-1][1] = max(spans[-1][1], part.raw_end)
            spans[-1][2].append((part, part_orders))
        else:
            spans.append([part.raw_start, part.raw_end, [(part, part_orders)]])
    eol = b"\r\n" if b"\r\n" in raw[:4096] or b"\n" not in raw[:4096] else b"\n"
    out, position = [], 0
    for start, end, members in spans:
        first = members[0][0]
        notice = "\n\n".join(o.notice for _part, os_ in members for o in os_[:1])
        header_block = raw[first.raw_start:first.raw_body]
        message_body = any(not n.lower().startswith(("content-", "mime-version"))
                           for n, _v in split_fields(header_block))
        out.append(raw[position:start])
        out.append(_notice_entity(header_block, notice, eol, message_body))
        position = end
    out.append(raw[position:])
    summary = _summary(chosen)
    return fold(STRIPPED_HEADER, summary).replace(b"\r\n", eol) + b"".join(out)


def _summary(chosen: dict[str, tuple[Part, list[StripOrder]]]) -> str:
    count = len(chosen)
    entries = [f"{count} part{'s' if count != 1 else ''}"]
    for path, (part, orders) in chosen.items():
        name = _ascii(part.filename or "(unnamed)", MAX_NAME_CHARS_IN_SUMMARY)
        rules = ", ".join(dict.fromkeys(_ascii(o.rule, 64) for o in orders))
        entries.append(f"{_ascii(path, 32)} {name} (rule {rules})")
    return "; ".join(entries)
